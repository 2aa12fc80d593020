"""The docs cannot drift from the code: the CLI reference is regenerated, and every command the
README shows is accepted by the CLI as written (its options exist and take those values)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))
import make_cli_reference  # noqa: E402

from cli import app  # noqa: E402


def shell_lines(markdown: str) -> list[str]:
    """The commands of a document's ```bash blocks, continuation lines joined, comments dropped."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def anchorrec_args(line: str) -> list[str] | None:
    """The arguments after `anchorrec` in a shell line (env assignments and paths before it dropped)."""
    words = shlex.split(line)
    at = next((i for i, w in enumerate(words) if w.endswith("anchorrec")), None)
    return None if at is None else words[at + 1 :]


README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS = [args for line in shell_lines(README) if (args := anchorrec_args(line)) is not None]


def test_the_cli_reference_is_what_the_cli_says():
    written = (REPO / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert written == make_cli_reference.reference(), "stale: run .venv/bin/python docs/make_cli_reference.py"


def test_the_readme_begins_with_exactly_the_two_commands():
    first = re.match(r"```bash\n(.*?)```", README, flags=re.S)
    assert first and [line.split("#")[0].strip() for line in first.group(1).strip().splitlines()] == [
        "make demo",
        "make test",
    ]
    for target in ("demo", "test", "lock"):
        assert subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True).returncode == 0, target


def test_the_readme_shows_a_tour_of_every_kind_of_command():
    assert len(COMMANDS) >= 8 and {"pipeline", "sql", "recommend", "similar", "serve"} <= {c[0] for c in COMMANDS}


def parse(args: list[str]) -> None:
    """Parse and convert `anchorrec ARGS` exactly as the CLI would, without running the command:
    an unknown command or option, or a value it refuses (a choice, a number), raises."""
    root = typer.main.get_command(app)
    ctx = root.make_context("anchorrec", list(args))
    name, command, rest = root.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
    command.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_is_accepted_as_written(args):
    parse(args)


@pytest.mark.parametrize(
    "bad", [["pipeline", "--release", "2019"], ["pipeline", "--nosuch"], ["recommend", "--user", "x"]]
)
def test_a_wrong_command_in_the_docs_would_be_caught(bad):
    with pytest.raises(Exception, match="(?i)is not one of|no such option|valid integer"):
        parse(bad)


def test_the_benchmarks_readme_names_every_script() -> None:
    """benchmarks/README.md is the index of the benchmark rooms: a script it does not name is lost."""
    index = (REPO / "benchmarks" / "README.md").read_text(encoding="utf-8")
    scripts = [p for p in (REPO / "benchmarks").glob("*/*") if p.suffix in (".py", ".sh") and p.parent.name != "common"]
    missing = sorted(
        str(p.relative_to(REPO)) for p in scripts if f"`{p.name}`" not in index and p.name != "__init__.py"
    )
    assert not missing, f"benchmarks/README.md does not name: {missing}"
