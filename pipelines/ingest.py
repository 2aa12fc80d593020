"""Raw files in, prepared tables out: the one call the `ingest` flow and the CLI make.

It chooses where the two raw files come from (the catalog's URLs with their mirrors, any
URL / file:// URL / local path given instead, or the generated demo), fetches them into
raw/ (verified, resumable, recorded in raw/manifest.json), parses them with the reader of their
release, and hands the records to prepare. Tables are written only after every line of both
files has been read, so a failed ingest leaves the previous tables as they were.

`release="csv"` brings a user's own interactions (CSV / TSV / Parquet, pipelines.tabular) with
optional metadata (any Amazon release file, detected, or a metadata CSV/TSV/Parquet); metadata
without interactions makes a catalog-only dataset (pipelines.catalog_only). For every
release but the demo, prepare refuses (ValueError, old tables kept) a result where fewer than
`min_meta_match` of the kept items found a metadata record, unless `allow_missing_meta`.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines import amazon, catalog, download, tabular
from pipelines.catalog_only import prepare_catalog
from pipelines.prepare import PrepareConfig, prepare
from pipelines.records import BadRecords, ReviewBatch
from store.layout import DatasetPaths, dataset_paths, source_name

log = logging.getLogger(__name__)

RELEASES = ("2014", "2018", "2023", "demo", "csv")
META_RELEASES = ("auto", "2014", "2018", "2023", "table")
DEMO_META = "meta_Demo.json.gz"
DEMO_REVIEWS = "Demo_5.json.gz"


def ingest(
    dataset: str,
    release: str = "2018",
    category: str | None = None,
    *,
    meta: str | None = None,
    reviews: str | None = None,
    home: str | Path | None = None,
    kcore: int = 5,
    seed: int = 0,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 30,
    backoff: float = 1.0,
    demo_items: int = 300,
    demo_users: int = 400,
    columns: str | dict[str, str] | None = None,
    meta_release: str = "auto",
    min_meta_match: float = 0.5,
    allow_missing_meta: bool = False,
    no_header: bool = False,
    meta_columns: str | dict[str, str] | None = None,
    train: str | None = None,
    valid: str | None = None,
    test: str | None = None,
    cold_items: float = 0.0,
) -> dict[str, Any]:
    """Fetch, parse and prepare one dataset; return prepare's data-quality report.

    `meta` / `reviews` replace the catalog's URL of that file (any http(s) URL, file:// URL or
    local path); with both given, `category` may be omitted. `retries`, `timeout` and `backoff`
    go to `download.fetch` for each file. For `release="csv"`, `reviews` and/or `meta` (`meta`
    alone: a catalog-only dataset, no interactions); `columns` names the interaction columns
    ('user=reviewerID,item=asin,...') and `meta_release` says what the metadata file is
    (auto-detected by default). `no_header`: the interaction (and metadata table) files start with
    data; `meta_columns` names a metadata table's columns; `train`/`valid`/`test` are a given split
    as three interaction files (instead of `reviews`); `cold_items` holds out that seeded fraction of
    items with all their interactions (the item-cold protocol, pipelines.prepare). Without `meta` (and without a category for
    an Amazon release) the dataset is ID-only: items have no text and no image.
    """
    release = str(release)
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, got {release!r}")
    if meta_release not in META_RELEASES:
        raise ValueError(f"meta_release must be one of {META_RELEASES}, got {meta_release!r}")
    splits = {k: v for k, v in (("train", train), ("valid", valid), ("test", test)) if v}
    if release != "csv" and (columns or splits or no_header or meta_columns):
        raise ValueError(
            "--columns, --meta-columns, --no-header and --train/--valid/--test apply to --release csv (your own files)"
        )
    if splits and (reviews or "train" not in splits or "test" not in splits):
        raise ValueError("a given split is --train FILE with --test FILE (and --valid FILE), instead of --reviews")
    id_only = meta is None and (release == "csv" or (release in amazon.RELEASES and category is None and reviews))
    check = None if release == "demo" or id_only else min_meta_match
    # validate before any download
    config = PrepareConfig(
        kcore=kcore, seed=seed, min_meta_match=check, allow_missing_meta=allow_missing_meta, cold_items=cold_items
    )
    paths = dataset_paths(dataset, home)
    fetch_opts = {"retries": retries, "timeout": timeout, "backoff": backoff, "progress": progress}
    table_opts = {"columns": columns, "no_header": no_header, "meta_columns": meta_columns}
    if release == "csv" and reviews is None and not splits and meta is not None:
        if columns:
            raise ValueError(
                "--columns names interaction columns; a catalog-only ingest (--meta without --reviews) "
                "has none: name the metadata table's columns with --meta-columns, or give --reviews FILE"
            )
        return _ingest_catalog(paths, meta, meta_release, config, fetch_opts, progress, table_opts)
    if release == "csv":
        tabular.parse_columns(columns)
        tabular.parse_columns(meta_columns, tabular.META_ROLES, "--meta-columns")
        inputs = splits or ({"reviews": reviews} if reviews else {})
        return _ingest_csv(paths, inputs, meta, meta_release, config, fetch_opts, progress, table_opts)
    if id_only:
        assert reviews is not None  # id_only outside csv means --reviews was given
        return _ingest_csv(
            paths, {"reviews": reviews}, None, meta_release, config, fetch_opts, progress, table_opts, release=release
        )
    if release == "demo":
        meta_path, reviews_path, sources = _demo_files(paths, progress, demo_items, demo_users, seed)
        parse_as = "2018"
    else:
        meta_path, reviews_path, sources = _fetch_files(paths, release, category, meta, reviews, fetch_opts)
        parse_as = release

    bad = BadRecords()
    log.info("%s: parsing %s and %s as Amazon %s", dataset, reviews_path.name, meta_path.name, parse_as)
    report = prepare(
        paths,
        amazon.read_review_batches(reviews_path, parse_as, bad, progress=progress),
        amazon.read_products(meta_path, parse_as, bad, progress=progress),
        bad=bad,
        sources={"release": release, "category": category, **sources},
        config=config,
        meta_file=str(meta_path),
    )
    return report


def _ingest_csv(
    paths: DatasetPaths,
    inputs: dict[str, str],
    meta: str | None,
    meta_release: str,
    config: PrepareConfig,
    fetch_opts: dict[str, Any],
    progress: bool,
    table_opts: dict[str, Any],
    release: str = "csv",
) -> dict[str, Any]:
    """A user's own interactions (one file, or a given split as train/valid/test files; a table or
    Amazon review lines) + optional metadata → prepare. No metadata: an ID-only dataset."""
    if not inputs:
        raise ValueError(
            "--release csv needs --reviews PATH_OR_URL: a CSV, TSV or Parquet file with user and item "
            'columns (name them with --columns "user=COL,item=COL"), or --meta alone for a catalog-only dataset'
        )
    wanted = {k: str(v) for k, v in inputs.items()}
    if meta is not None:
        wanted["meta"] = str(meta)
    got, sources = _fetch_plan(paths, {k: (v, [], _file_name(v)) for k, v in wanted.items()}, fetch_opts)
    bad = BadRecords()
    batches = []
    for kind in inputs:
        split = SPLIT_FILES.get(kind)
        batch, info = _read_interactions(got[kind], bad, table_opts, split, release, progress)
        sources[kind].update(info)
        batches.extend(batch)
    products: Any = iter(())
    if meta is not None:
        kind = _meta_kind(got["meta"], meta_release)
        sources["meta"]["format"] = kind
        if kind == "table":
            base = _source_dir(str(meta)) or got["meta"].parent
            products = tabular.read_meta_table(
                got["meta"], bad, base_dir=base, columns=table_opts["meta_columns"], no_header=table_opts["no_header"]
            )
        else:
            products = amazon.read_products(got["meta"], kind, bad, progress=progress)
    else:
        sources["meta"] = {"source": None, "note": "no metadata: an ID-only dataset (items have no text or image)"}
    log.info(
        "%s: %d interactions read from %s",
        paths.name,
        sum(len(b) for b in batches),
        ", ".join(got[k].name for k in inputs),
    )
    return prepare(
        paths,
        batches,
        products,
        bad=bad,
        sources={"release": release, "category": None, **sources},
        config=config,
        meta_file=str(got["meta"]) if meta is not None else None,
    )


SPLIT_FILES = {"train": 0, "valid": 1, "test": 2}


def _read_interactions(
    path: Path, bad: BadRecords, opts: dict[str, Any], split: int | None, release: str, progress: bool
) -> tuple[list[ReviewBatch], dict[str, Any]]:
    """One interactions file: a table (CSV/TSV/Parquet) or Amazon review lines (detected)."""
    if release in amazon.RELEASES or _is_review_lines(path):
        kind = release if release in amazon.RELEASES else amazon.detect_review_release(path)
        if opts["columns"]:
            raise ValueError(f"{path.name}: Amazon {kind} review lines have their own fields; leave --columns out")
        batches = [_with_split(b, split) for b in amazon.read_review_batches(path, kind, bad, progress=progress)]
        return batches, {"format": f"amazon {kind} reviews"}
    notes: dict[str, Any] = {}
    batch, used = tabular.read_interactions(
        path, bad, opts["columns"], no_header=opts["no_header"], split=split, notes=notes
    )
    units = {k: v for k, v in sorted(notes.get("timestamp_units", {}).items())}
    info: dict[str, Any] = {"format": "table", "columns": used, "header": notes.get("header", True)}
    if "timestamp" in used:
        info["timestamps"] = {"read_as": units, "rule": "integers above 1e11 are milliseconds; strings are ISO 8601"}
    return [batch], info


def _is_review_lines(path: Path) -> bool:
    return not (tabular.is_table_file(path) or tabular.is_parquet(path)) and amazon.review_format(path) == "json"


def _with_split(batch: ReviewBatch, split: int | None) -> ReviewBatch:
    if split is None:
        return batch
    return ReviewBatch(batch.table.append_column("split", pa.array([split] * len(batch), pa.int8())))


def _ingest_catalog(
    paths: DatasetPaths,
    meta: str,
    meta_release: str,
    config: PrepareConfig,
    fetch_opts: dict[str, Any],
    progress: bool,
    table_opts: dict[str, Any],
) -> dict[str, Any]:
    """Metadata alone (no --reviews) → a catalog-only dataset (pipelines.catalog_only)."""
    got, sources = _fetch_plan(paths, {"meta": (str(meta), [], _file_name(str(meta)))}, fetch_opts)
    bad = BadRecords()
    kind = _meta_kind(got["meta"], meta_release)
    sources["meta"]["format"] = kind
    if kind == "table":
        products: Any = tabular.read_meta_table(
            got["meta"],
            bad,
            base_dir=_source_dir(str(meta)) or got["meta"].parent,
            columns=table_opts["meta_columns"],
            no_header=table_opts["no_header"],
        )
    else:
        products = amazon.read_products(got["meta"], kind, bad, progress=progress)
    log.info("%s: catalog-only dataset from %s (no interactions)", paths.name, got["meta"].name)
    return prepare_catalog(
        paths, products, bad=bad, sources={"release": "csv", "category": None, **sources}, config=config
    )


def _meta_kind(path: Path, hint: str) -> str:
    """'table' for a CSV/TSV/Parquet metadata file, else the Amazon release of its records."""
    if hint != "auto":
        return hint
    if tabular.is_table_file(path) or tabular.is_parquet(path):
        return "table"
    return amazon.detect_meta_release(path)


def _source_dir(source: str) -> Path | None:
    """The folder of a local path or file:// URL (relative image paths are relative to it)."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parts.path)).parent
    if parts.scheme.lower() in ("http", "https"):
        return None
    return Path(source).expanduser().resolve().parent


def _demo_files(
    paths: DatasetPaths, progress: bool, n_items: int, n_users: int, seed: int
) -> tuple[Path, Path, dict[str, Any]]:
    """The generated demo catalog, (re)made for these parameters.

    generate_demo is deterministic and rewrites nothing that is already identical, so calling it
    every time is cheap and a changed size or seed can never be served from stale raw files.
    """
    from pipelines.demo import generate_demo

    meta_path, reviews_path = paths.raw_dir / DEMO_META, paths.raw_dir / DEMO_REVIEWS
    log.info("%s: demo catalog (%d items, %d users, seed %d) in %s", paths.name, n_items, n_users, seed, paths.raw_dir)
    generate_demo(paths.raw_dir, n_items=n_items, n_users=n_users, seed=seed, progress=progress)
    if not (meta_path.is_file() and reviews_path.is_file()):
        raise FileNotFoundError(
            f"generate_demo did not write {meta_path} and {reviews_path}; delete {paths.raw_dir} and retry"
        )
    demo = {"source": "generated demo", "n_items": n_items, "n_users": n_users, "seed": seed}
    sources = {
        "meta": {**demo, "file": paths.relative(meta_path)},
        "reviews": {**demo, "file": paths.relative(reviews_path)},
    }
    return meta_path, reviews_path, sources


def _fetch_files(
    paths: DatasetPaths,
    release: str,
    category: str | None,
    meta: str | None,
    reviews: str | None,
    fetch_opts: dict[str, Any],
) -> tuple[Path, Path, dict[str, Any]]:
    remote: dict[str, catalog.RemoteFile] = {}
    if category is not None:
        remote = {f.kind: f for f in catalog.resolve(release, category)}  # ValueError if unknown
    elif meta is None or reviews is None:
        raise ValueError(
            f"Amazon {release}: give a category (one of {', '.join(catalog.categories(release))}) "
            "or both meta= and reviews= (URL, file:// URL or local path)"
        )
    overrides = {"meta": meta, "reviews": reviews}
    plan: dict[str, tuple[str, list[str], str]] = {}
    for kind in ("meta", "reviews"):
        if overrides[kind] is not None:
            plan[kind] = (str(overrides[kind]), [], _file_name(str(overrides[kind])))
        else:
            f = remote[kind]
            plan[kind] = (f.url, list(f.mirrors), f.filename)
    got, sources = _fetch_plan(paths, plan, fetch_opts)
    return got["meta"], got["reviews"], sources


def _fetch_plan(
    paths: DatasetPaths, plan: dict[str, tuple[str, list[str], str]], fetch_opts: dict[str, Any]
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Each (source, mirrors, raw name) fetched into raw/ and described for the report."""
    names = [name for _, _, name in plan.values()]
    if len(set(names)) < len(names):
        raise ValueError(f"meta and reviews would both be stored as raw/{names[0]}: rename one")
    got: dict[str, Path] = {}
    sources: dict[str, Any] = {}
    for kind, (source, mirrors, name) in plan.items():
        dest = paths.raw_dir / name
        log.info("%s: fetching %s → %s", paths.name, source, dest)
        got[kind] = download.fetch(source, dest, manifest=paths.manifest, mirrors=mirrors, **fetch_opts)
        entry = download.read_manifest(paths.manifest).get(dest.name, {})
        sources[kind] = {
            "source": source_name(source),  # a URL as given, a local file by name (+ sha256): no machine path
            "url": source_name(entry.get("url", source)),
            "file": paths.relative(dest),
            "bytes": entry.get("bytes"),
            "sha256": entry.get("sha256"),
        }
    return got, sources


def _file_name(source: str) -> str:
    """The name a URL or path is stored under in raw/ (its last path segment)."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme.lower() in ("http", "https", "file"):
        name = urllib.parse.unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    else:
        name = Path(source).name
    if not name or name in (".", ".."):
        raise ValueError(f"cannot tell a file name from {source!r}: give a URL or path that ends in one")
    return name
