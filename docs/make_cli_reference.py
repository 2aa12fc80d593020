"""Write docs/cli-reference.md from the command line itself: every command, every option, its help.

Typer carries its own copy of click, so commands and parameters are read by their attributes
(param_type_name, choices), not by click's classes. Run it after changing a command or an option (`.venv/bin/python docs/make_cli_reference.py`);
tests/test_docs.py fails while the file differs from what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import app  # noqa: E402

OUT = Path(__file__).resolve().parent / "cli-reference.md"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _kind(param: Any, ctx: Any) -> str:
    """What the option takes, as the CLI's own help shows it (choices, INTEGER, TEXT, a flag)."""
    if param.is_flag:
        return "flag"
    text = " ".join(str(param.display_type(ctx)).split()).strip("<>[]")
    return " \\| ".join(part.strip() for part in text.split("|")) or "str"


def _default(param: Any) -> str:
    value = param.default
    if value is None or getattr(param, "is_flag", False) and not value:
        return ""
    return f"`{value}`"


def command_section(name: str, command: Any, ctx: Any) -> list[str]:
    lines = [f"## anchorrec {name}", "", _cell(command.help or ""), ""]
    args = [p for p in command.params if p.param_type_name == "argument"]
    if args:
        lines += [f"Arguments: {', '.join(f'`{a.name.upper()}`' for a in args)}.", ""]
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
    if options:
        lines += ["| option | values | default | what it does |", "| --- | --- | --- | --- |"]
        for opt in options:
            flags = ", ".join(f"`{o}`" for o in opt.opts)
            lines.append(f"| {flags} | {_kind(opt, ctx)} | {_default(opt)} | {_cell(opt.help or '')} |")
        lines.append("")
    return lines


def reference() -> str:
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="anchorrec")  # typer's own (vendored) click
    lines = [
        "# Command-line reference",
        "",
        "Generated from the command line itself by `docs/make_cli_reference.py`; do not edit by hand "
        "(a test fails when it is stale). Examples and the error table: [command-line.md](command-line.md).",
        "",
    ]
    names = root.list_commands(ctx)  # type: ignore[attr-defined]
    lines += [", ".join(f"[`{n}`](#anchorrec-{n})" for n in names), ""]
    for name in names:
        sub = root.get_command(ctx, name)  # type: ignore[attr-defined]
        lines += command_section(name, sub, sub.context_class(sub, info_name=name, parent=ctx))
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    OUT.write_text(reference(), encoding="utf-8")
    print(f"wrote {OUT}")
