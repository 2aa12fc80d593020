"""Cache keys of the flow's stages: a stage's config, the content of its inputs and its code.

"Its code" is the source of the project modules the stage really runs: its entry modules and,
transitively, every project module they import (read from the source, imports inside functions
included). Hashing whole rooms made any edit anywhere invalidate everything: a fix in the
recommender trainer renamed the ICA run (its id comes from the pretrain key), the `mm` table got a
new name, and every tuning study on the dataset refused to continue. Modules loaded by name at run
time (the model registry) are not visible in the source; a stage names them as entry modules.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from store.hashing import file_sha256

REPO = Path(__file__).resolve().parent
PROJECT = ("models", "store", "features", "pipelines", "pipeline_config", "flows", "stage_keys")


def module_file(name: str) -> Path | None:
    """The source file of project module `name` (a package's __init__.py), or None if it is not ours."""
    if name.split(".")[0] not in PROJECT:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# `from X import a, b` (also in parentheses over lines) and `import X, Y as Z`, at any indent. Read
# with a regex, not ast.parse: CPython 3.11's ast.parse is not thread-safe ("AST constructor
# recursion depth mismatch" when Prefect parses in another thread), and a stray match in a
# docstring can only add a file to the hash, never leave one out.
_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.MULTILINE)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n]*)", re.MULTILINE)


def _names(clause: str) -> list[str]:
    """The imported names of `a, b as c` or `(a,\n b)`, comments and aliases dropped."""
    clause = re.sub(r"#[^\n]*", "", clause).strip("()\\ \n")
    return [part.split()[0] for part in clause.replace("\n", " ").split(",") if part.split()]


def _imported(path: Path, name: str) -> set[str]:
    """Project modules named by the imports in `path` (module `name`), wherever they stand in it."""
    source = path.read_text()
    found = {m for match in _IMPORT.finditer(source) for m in _names(match.group(1))}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for match in _FROM.finditer(source):
        base = match.group(1)
        level = len(base) - len(base.lstrip("."))
        if level:  # relative: from . import x, from ..y import z
            parent = package.rsplit(".", level - 1)[0] if level > 1 else package
            base = f"{parent}.{base[level:]}" if base[level:] else parent
        found.add(base)
        found.update(f"{base}.{n}" for n in _names(match.group(2)))  # `from store import fixes` names a module
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if module_file(m) is not None}


@functools.lru_cache(maxsize=None)
def closure(*entries: str) -> tuple[Path, ...]:
    """Source files of `entries` and of every project module they import, transitively, sorted."""
    unknown = [e for e in entries if module_file(e) is None]
    if unknown:
        raise ValueError(f"code version: {unknown[0]!r} is not a module of this project")
    seen: dict[str, Path] = {}
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name not in seen:  # _imported names only project modules: each has a file
            seen[name] = module_file(name)  # type: ignore[assignment]
            todo.extend(_imported(seen[name], name) - set(seen))
    return tuple(sorted(set(seen.values())))


@functools.lru_cache(maxsize=None)
def code_version(*entries: str) -> str:
    """Hash of the source a stage runs: editing a module it does not import leaves its key alone."""
    h = hashlib.sha256()
    for f in closure(*sorted(entries)):
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, config: dict[str, Any], inputs: list[Path], code: tuple[str, ...]) -> str:
    """Cache key of a stage: its config, the content of its input files and the code it runs."""
    h = hashlib.sha256(stage.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for p in inputs:
        h.update(str(p.name).encode())
        h.update(file_sha256(p).encode() if p.is_file() else b"<missing>")
    h.update(code_version(*code).encode())
    return f"{stage}-{h.hexdigest()[:20]}"
