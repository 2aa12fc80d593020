"""Raw files in, prepared tables out: the one call the `ingest` flow and the CLI make.

It chooses where the two raw files come from (the catalog's URLs with their mirrors, any
URL / file:// URL / local path given instead, or the generated demo), fetches them into
raw/ (verified, resumable, recorded in raw/manifest.json), parses them with the reader of their
release, and hands the records to prepare. Tables are written only after every line of both
files has been read, so a failed ingest leaves the previous tables as they were.
"""
from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Any

from pipelines import amazon, catalog, download
from pipelines.prepare import PrepareConfig, prepare
from pipelines.records import BadRecords
from store.layout import DatasetPaths, dataset_paths

log = logging.getLogger(__name__)

RELEASES = ("2014", "2018", "2023", "demo")
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
) -> dict[str, Any]:
    """Fetch, parse and prepare one dataset; return prepare's data-quality report.

    `meta` / `reviews` replace the catalog's URL of that file (any http(s) URL, file:// URL or
    local path); with both given, `category` may be omitted. `retries`, `timeout` and `backoff`
    go to `download.fetch` for each file.
    """
    release = str(release)
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, got {release!r}")
    config = PrepareConfig(kcore=kcore, seed=seed)  # validate before any download
    paths = dataset_paths(dataset, home)
    if release == "demo":
        meta_path, reviews_path, sources = _demo_files(paths, progress, demo_items, demo_users, seed)
        parse_as = "2018"
    else:
        fetch_opts = {"retries": retries, "timeout": timeout, "backoff": backoff, "progress": progress}
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
    )
    return report


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
    sources = {"meta": {**demo, "file": str(meta_path)}, "reviews": {**demo, "file": str(reviews_path)}}
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
    if plan["meta"][2] == plan["reviews"][2]:
        raise ValueError(f"meta and reviews would both be stored as raw/{plan['meta'][2]}: rename one")
    got: dict[str, Path] = {}
    sources: dict[str, Any] = {}
    for kind, (source, mirrors, name) in plan.items():
        dest = paths.raw_dir / name
        log.info("%s: fetching %s → %s", paths.name, source, dest)
        got[kind] = download.fetch(source, dest, manifest=paths.manifest, mirrors=mirrors, **fetch_opts)
        entry = download.read_manifest(paths.manifest).get(dest.name, {})
        sources[kind] = {
            "source": source,
            "url": entry.get("url", source),
            "file": str(dest),
            "bytes": entry.get("bytes"),
            "sha256": entry.get("sha256"),
        }
    return got["meta"], got["reviews"], sources


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
