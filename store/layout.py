"""Where each file of a dataset lives (ARCHITECTURE.md, "One dataset = one directory").

All rooms ask this module for paths instead of joining strings, so the layout can change in one
place and two stages can never disagree about where a table is.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def anchorrec_home() -> Path:
    """Root of all datasets: $ANCHORREC_HOME, else ./data."""
    return Path(os.environ.get("ANCHORREC_HOME", "data")).expanduser()


def check_name(kind: str, name: str) -> str:
    """Dataset, feature and run names become path parts; refuse anything that could escape."""
    if not _NAME.match(name or ""):
        raise ValueError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '-', '.' (no slashes, not starting with '.')"
        )
    return name


@dataclass(frozen=True)
class DatasetPaths:
    """The paths of one dataset directory; creating it does not touch the disk."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def manifest(self) -> Path:
        return self.raw_dir / "manifest.json"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image(self, asin: str) -> Path:
        return self.images_dir / f"{asin}.jpg"

    @property
    def image_audit(self) -> Path:
        return self.images_dir / "audit.parquet"

    @property
    def items(self) -> Path:
        return self.root / "items.parquet"

    @property
    def users(self) -> Path:
        return self.root / "users.parquet"

    @property
    def interactions(self) -> Path:
        return self.root / "interactions.parquet"

    @property
    def cold_items(self) -> Path:
        """Items held out with all their interactions (ingest --cold-items); absent = none."""
        return self.root / "cold_items.parquet"

    @property
    def catalog_only(self) -> bool:
        """Items but no interactions (ingested without --reviews): features and pretrain can run,
        training cannot. The one marker every room and command checks (pipelines.catalog_only)."""
        return self.items.exists() and not self.interactions.exists()

    @property
    def prepare_report(self) -> Path:
        """Data-quality summary of the last prepare step (counts per step, split seed/hash)."""
        return self.root / "prepare.json"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def feature(self, name: str) -> Path:
        return self.features_dir / f"{check_name('feature', name)}.parquet"

    @property
    def tokens_dir(self) -> Path:
        """Token-level features (one row of fp16 tokens per item); outside features/ so a token
        table is never taken for a pooled feature."""
        return self.root / "tokens"

    def token_feature(self, name: str) -> Path:
        return self.tokens_dir / f"{check_name('feature', name)}.parquet"

    def token_names(self) -> list[str]:
        if not self.tokens_dir.is_dir():
            return []
        return sorted(p.stem for p in self.tokens_dir.glob("*.parquet"))

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> Path:
        return self.runs_dir / check_name("run", run_id)

    def user_vectors(self, run_id: str) -> Path:
        return self.run(run_id) / "user_vectors.parquet"

    def item_vectors(self, run_id: str) -> Path:
        return self.run(run_id) / "item_vectors.parquet"

    def metrics(self, run_id: str) -> Path:
        return self.run(run_id) / "metrics.json"

    @property
    def index_root(self) -> Path:
        return self.root / "index"

    def index_dir(self, run_id: str) -> Path:
        return self.index_root / check_name("run", run_id)

    @property
    def cache_dir(self) -> Path:
        """Derived, recomputable artefacts (kNN graphs, …), keyed by content hash."""
        return self.root / "cache"

    def feature_names(self) -> list[str]:
        if not self.features_dir.is_dir():
            return []
        return sorted(p.stem for p in self.features_dir.glob("*.parquet"))

    def run_ids(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir())

    def relative(self, path: str | Path) -> str:
        """`path` as recorded in a data file: relative to the dataset directory (posix), so a copied
        or moved home stays byte-identical and a cache hit. ValueError for a path outside it."""
        p = Path(path).absolute()  # a relative path is relative to the cwd, as a relative root is
        for base, q in ((self.root.absolute(), p), (self.root.resolve(), p.resolve())):
            if q.is_relative_to(base):
                return q.relative_to(base).as_posix()
        raise ValueError(f"{path} is outside the dataset directory {self.root}")

    def located(self, recorded: str | Path) -> Path:
        """The real file a recorded (dataset-relative) path names; an absolute one as it is."""
        p = Path(recorded)
        return p if p.is_absolute() else self.root / p


def dataset_paths(dataset: str, home: str | Path | None = None) -> DatasetPaths:
    """Paths of `dataset` under `home` (default $ANCHORREC_HOME or ./data)."""
    base = Path(home).expanduser() if home is not None else anchorrec_home()
    return DatasetPaths(base / check_name("dataset", dataset))


def source_name(source: str | Path) -> str:
    """How a data file or cache key records an input: a URL names no machine and stays as given;
    a local path or file:// URL is recorded by its file name only (with its sha256 beside it,
    where the content matters), so the same input gives the same record wherever it lies."""
    text = str(source)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if len(scheme) > 1 and scheme != "file":
        return text
    path = urllib.parse.unquote(urllib.parse.urlsplit(text).path) if scheme == "file" else text
    return Path(path).name


_ABSOLUTE = re.compile(r"(?<![\w.:/-])/[^\s()\[\],;:'\"]+")


def portable(text: str) -> str:
    """`text` (an encoder's 'weights' note, say) with each absolute path cut to what names no
    machine: the part after site-packages/ for an installed package, else the file or folder name.
    Table metadata is compared byte for byte across homes and machines (a copied home must stay a
    cache hit), and a path such as /home/me/.venv/… would make two identical tables differ."""

    def cut(m: re.Match) -> str:
        path = m.group(0)
        return path.split("/site-packages/", 1)[1] if "/site-packages/" in path else Path(path).name

    return _ABSOLUTE.sub(cut, text)
