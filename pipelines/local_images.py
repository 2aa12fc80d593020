"""Images the user already has: a folder of <asin>.jpg|.jpeg|.png|.webp, or a CSV/TSV `asin,path`.

Many users hold the product photos already (a research copy, a previous crawl) while the URLs
in the metadata are dead. `find_local_images` maps each asin to its local file so that the
image fetcher can take it before trying any URL. Bad CSV rows and ambiguous folder entries are
counted and reported (file, line, reason), never fatal; a missing folder or a CSV without the
two columns is a user error, raised at once.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # preference order when one asin has several files
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
FIX = "pass --images a folder of <asin>.jpg/.jpeg/.png/.webp files or a .csv/.tsv file with header asin,path"


@dataclass(frozen=True)
class LocalImage:
    """Where one item's image is on disk, and how it was found (`where` names the CSV line)."""

    path: Path
    source: str  # 'local_dir' or 'local_csv'
    where: str


@dataclass
class LocalImages:
    """asin → LocalImage, plus the skipped entries as (file, line or None, reason)."""

    images: dict[str, LocalImage] = field(default_factory=dict)
    problems: list[tuple[str, int | None, str]] = field(default_factory=list)

    def get(self, asin: str) -> LocalImage | None:
        return self.images.get(asin)


def find_local_images(images_dir: str | Path | None) -> LocalImages:
    """Scan a folder or read a CSV/TSV of local images; ValueError when it cannot be used."""
    found = _collect(images_dir)
    where = Path(images_dir).expanduser() if images_dir is not None else None
    if found.problems:
        shown = "; ".join(f"{f}{f':{n}' if n else ''}: {r}" for f, n, r in found.problems[:5])
        more = f" (and {len(found.problems) - 5} more)" if len(found.problems) > 5 else ""
        log.warning(
            "images_dir %s: %d entr%s skipped: %s%s",
            where,
            len(found.problems),
            "y" if len(found.problems) == 1 else "ies",
            shown,
            more,
        )
    return found


def fingerprint(images_dir: str | Path | None) -> str | None:
    """Which file each asin would be taken from (by name, not where it lies), with its size and
    mtime: the images stage's cache key part. Cheap (no image is read), it changes exactly when the
    images used change, and a moved or copied images folder keeps it."""
    if images_dir is None:
        return None
    h = hashlib.sha256()
    for asin, image in sorted(_collect(images_dir).images.items()):
        st = image.path.stat() if image.path.exists() else None
        h.update(f"{asin}:{image.path.name}:{st and st.st_size}:{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _collect(images_dir: str | Path | None) -> LocalImages:
    if images_dir is None:
        return LocalImages()
    where = Path(images_dir).expanduser()
    if not where.exists():
        raise ValueError(f"images_dir {where}: no such file or folder — {FIX}")
    return _scan_folder(where) if where.is_dir() else _read_table(where)


def _scan_folder(folder: Path) -> LocalImages:
    by_asin: dict[str, list[Path]] = {}
    for p in folder.iterdir():
        if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith("."):
            by_asin.setdefault(p.stem, []).append(p)
    out = LocalImages()
    for asin, files in sorted(by_asin.items()):
        files.sort(key=lambda f: (EXTENSIONS.index(f.suffix.lower()), f.name))
        out.images[asin] = LocalImage(files[0].resolve(), "local_dir", files[0].name)
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            problem = f"{len(files)} files for asin {asin} ({names}): using {files[0].name}"
            out.problems.append((str(folder), None, problem))
    return out


def _read_table(table: Path) -> LocalImages:
    delimiter = TABLE_SUFFIXES.get(table.suffix.lower())
    if delimiter is None:
        raise ValueError(f"images_dir {table}: a file must end in .csv or .tsv — {FIX}")
    out = LocalImages()
    first_line: dict[str, int] = {}
    with open(table, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = [h.strip().lower() for h in next(reader, [])]
        if "asin" not in header or "path" not in header:
            raise ValueError(f"{table}:1: header must name columns asin and path, got {header} — {FIX}")
        ia, ip = header.index("asin"), header.index("path")
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            problem = _row_problem(row, ia, ip, first_line)
            if problem:
                out.problems.append((str(table), line, problem))
                continue
            asin, raw = row[ia].strip(), row[ip].strip()
            path = Path(raw).expanduser()
            path = path if path.is_absolute() else table.parent / path
            first_line[asin] = line
            out.images[asin] = LocalImage(path.resolve(), "local_csv", f"{table.name}:{line}")
    return out


def _row_problem(row: list[str], ia: int, ip: int, first_line: dict[str, int]) -> str | None:
    if len(row) <= max(ia, ip):
        return f"{len(row)} column(s), expected at least {max(ia, ip) + 1}"
    asin, raw = row[ia].strip(), row[ip].strip()
    if not asin:
        return "empty asin"
    if not raw:
        return f"empty path for asin {asin}"
    if asin in first_line:
        return f"duplicate asin {asin} (first on line {first_line[asin]})"
    return None
