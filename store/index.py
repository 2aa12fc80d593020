"""Published FAISS indexes of a run's item vectors: build, publish atomically, load, search.

Layout (ARCHITECTURE.md): `index/<run_id>/items.faiss` + `index/<run_id>/manifest.json`.

Why the manifest carries the SHA-256 of the index file: publishing replaces two files, and no
filesystem renames two files at once. `publish` writes both into a fresh temporary directory,
then renames the index over the old one and the manifest after it. A reader that has already
loaded an index keeps it (FAISS indexes are read fully into memory, and a renamed-over file stays
readable through an open handle), and a reader that starts between the two renames sees a hash
that does not match and simply re-reads. The same hash turns a truncated or corrupt file into a
clear error instead of a crash deep inside FAISS.

Why the manifest carries the item vectors' hash: a run can be retrained in place; an index built
from the old vectors would then silently answer for a model that no longer exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import faiss
import numpy as np
from tqdm.auto import tqdm

from store import fixes
from store.errors import StoreError
from store.hashing import file_sha256
from store.layout import DatasetPaths, check_name
from store.tables import read_json, read_metadata, read_table, write_json
from store.vectors import align_features, read_features, read_vectors, verified_vectors_hash, write_vectors

INDEX_FILE = "items.faiss"
MANIFEST_FILE = "manifest.json"
METRIC = "ip"
KINDS = ("auto", "flat", "hnsw")
NO_ID = -1  # FAISS's own marker for "no result in this slot"


@dataclass(frozen=True)
class IndexConfig:
    """How to index a catalog. 'auto' is exact below `hnsw_threshold` items, HNSW above."""

    kind: str = "auto"
    hnsw_threshold: int = 100_000
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("hnsw_threshold", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def resolve(self, count: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "hnsw" if count >= self.hnsw_threshold else "flat"


# ---------------------------------------------------------------------------------------- build


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str, config: IndexConfig) -> faiss.Index:
    """An inner-product index whose search returns the real item ids (IndexIDMap2)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    if kind == "flat":
        inner = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, int(config.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(config.ef_construction)
        inner.hnsw.efSearch = int(config.ef_search)
    else:
        raise ValueError(f"index kind must be 'flat' or 'hnsw', got {kind!r}")
    index = faiss.IndexIDMap2(inner)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    # HNSW insertion of a large catalog takes minutes: add in batches so progress shows.
    batch = 1 << 16
    with tqdm(total=len(ids), desc=f"index {kind}", unit="item", disable=kind == "flat" or len(ids) <= batch) as bar:
        for start in range(0, len(ids), batch):
            index.add_with_ids(vectors[start : start + batch], ids[start : start + batch])
            bar.update(min(batch, len(ids) - start))
    return index


def _check_item_vectors(path: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids) == 0:
        raise StoreError(path, "has no rows: nothing to index", fixes.repair(path, "train"))
    if len(np.unique(ids)) != len(ids):
        raise StoreError(path, "has duplicate item_id values", fixes.repair(path, "train"))
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise StoreError(
            path,
            f"{int(bad.sum())} item vector(s) contain NaN/inf (first item_id {int(ids[bad][0])})",
            f"the run diverged: lower --lr and {fixes.repair(path, 'train')}",
        )


def republish(paths: DatasetPaths, run_id: str) -> str:
    """Fix text for a bad index: `publish` rebuilds it (it publishes the run its options train)."""
    name = paths.name
    return (
        f"rerun: anchorrec publish --dataset {name} with the options that trained run {run_id} "
        f"(or anchorrec pipeline --dataset {name})"
    )


@contextlib.contextmanager
def _publish_lock(directory: Path) -> Iterator[None]:
    """Two publishers of one run would interleave their renames; serialize them."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".publish.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def publish(
    paths: DatasetPaths,
    run_id: str,
    *,
    kind: str = "auto",
    hnsw_threshold: int = 100_000,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
) -> dict[str, Any]:
    """Index `runs/<run_id>/item_vectors.parquet` into `index/<run_id>/`; returns the manifest.

    Always rebuilds from the vectors, so a missing, truncated or stale index is repaired by
    calling it again; vectors that disagree with the hash their writer recorded (rows reordered
    or edited) are refused, since an index of them would answer for no trained model.
    Re-publishing replaces the index in place; readers holding the old one keep answering from
    it, readers opening afterwards get the new one (see the module docstring).
    """
    check_name("run", run_id)
    config = IndexConfig(kind, hnsw_threshold, hnsw_m, ef_construction, ef_search)
    source = paths.item_vectors(run_id)
    ids, vectors, meta = read_vectors(source, "item_id")
    _check_item_vectors(source, ids, vectors)
    chosen = config.resolve(len(ids))
    start = time.perf_counter()
    index = build_index(vectors, ids, chosen, config)
    build_s = time.perf_counter() - start
    params: dict[str, Any] = {}
    if chosen == "hnsw":
        params = {"hnsw_m": config.hnsw_m, "ef_construction": config.ef_construction, "ef_search": config.ef_search}
    manifest: dict[str, Any] = {
        "run": run_id,
        "dim": int(vectors.shape[1]),
        "metric": METRIC,
        "kind": chosen,
        "index_type": f"IndexIDMap2({type(faiss.downcast_index(index.index)).__name__})",
        "params": params,
        "requested": asdict(config),
        "count": int(index.ntotal),
        "vectors_hash": meta["vectors_hash"],
        "hash_of": meta.get("hash_of", "vectors"),
        "model": meta.get("model"),
        "item_vectors": str(source.relative_to(paths.root)),
        "faiss_version": faiss.__version__,
        "build_seconds": round(build_s, 3),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    target = paths.index_dir(run_id)
    with _publish_lock(target):
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=target))
        try:
            faiss.write_index(index, str(tmp / INDEX_FILE))
            _fsync(tmp / INDEX_FILE)
            manifest["index_sha256"] = file_sha256(tmp / INDEX_FILE)
            manifest["index_bytes"] = (tmp / INDEX_FILE).stat().st_size
            write_json(manifest, tmp / MANIFEST_FILE)
            os.replace(tmp / INDEX_FILE, target / INDEX_FILE)
            os.replace(tmp / MANIFEST_FILE, target / MANIFEST_FILE)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# ------------------------------------------------------------------------- content (catalog-only)
CONTENT_PREFIX = "content-"
CONTENT_MODALITIES = ("mm", "text", "image")  # what answers best first: fused, then text, then image


def content_run_id(feature: str) -> str:
    """The item-only run that serves a feature table's vectors: `content-<feature>`."""
    return check_name("run", f"{CONTENT_PREFIX}{feature}")


def choose_content_feature(paths: DatasetPaths, wanted: str | None = None) -> str:
    """The feature table a catalog without interactions answers `similar` from: `wanted`, else the
    first mm table (pretrained), else text, else image."""
    names = paths.feature_names()
    if wanted is not None:
        if wanted not in names:
            raise ValueError(
                f"--vectors {wanted}: dataset {paths.name!r} has no features/{wanted}.parquet; "
                f"feature tables: {', '.join(names) or 'none'}"
            )
        return wanted
    modality = {name: read_metadata(paths.feature(name)).get("modality") for name in names}
    for kind in CONTENT_MODALITIES:
        found = [name for name in names if modality[name] == kind]
        if found:
            return found[0]
    raise ValueError(
        f"dataset {paths.name!r} has no feature tables to publish for similar(); extract them first: "
        f"anchorrec features --dataset {paths.name}"
    )


def publish_content(paths: DatasetPaths, feature: str, **index_options: Any) -> dict[str, Any]:
    """Index a feature table's vectors as the item-only run `content-<feature>`; returns the manifest.

    Why a run: `similar` and SQL `similar()` then answer from it exactly as from a trained run
    (runs/<run>/item_vectors.parquet + index/<run>/), with no second code path. Vectors are
    L2-normalised (inner product = cosine: content similarity should not favour long vectors),
    aligned to the current items by asin; items without a vector (no text, no image) are left
    out and counted in the manifest (`without_vector`).
    """
    source = paths.feature(feature)
    table = read_features(source)
    asins = read_table(paths.items, columns=["asin"]).column("asin").to_pylist()
    vectors, valid = align_features(table, asins, source)
    ids = np.nonzero(valid)[0]
    if not len(ids):
        raise StoreError(
            source,
            "has no item with a vector: nothing to index",
            f"publish another table with --vectors NAME ({', '.join(paths.feature_names())})",
        )
    chosen = vectors[ids]
    norms = np.linalg.norm(chosen, axis=1, keepdims=True)
    chosen = chosen / np.where(norms > 0, norms, 1.0)
    run_id = content_run_id(feature)
    modality = table.metadata.get("modality", "")
    write_vectors(
        paths.item_vectors(run_id),
        "item_id",
        ids,
        chosen,
        metadata={
            "model": f"content:{feature}",
            "content_feature": feature,
            "modality": modality,
            "feature_content_hash": table.metadata.get("content_hash", ""),
        },
    )
    write_json(
        {
            "model": "content",
            "feature": feature,
            "modality": modality,
            "items": len(asins),
            "with_vector": int(len(ids)),
        },
        paths.run(run_id) / "config.json",
    )
    manifest = publish(paths, run_id, **index_options)
    return {**manifest, "content_feature": feature, "without_vector": len(asins) - int(len(ids))}


def content_feature(manifest: dict[str, Any]) -> str | None:
    """The feature table a published index serves (a content run), or None for a trained run."""
    model = str(manifest.get("model") or "")
    return model.removeprefix("content:") if model.startswith("content:") else None


# ----------------------------------------------------------------------------------------- load


def manifests(paths: DatasetPaths) -> list[tuple[str, dict[str, Any] | StoreError]]:
    """(run_id, manifest or the StoreError that reading it raised) of every index directory."""
    if not paths.index_root.is_dir():
        return []
    found: list[tuple[str, dict[str, Any] | StoreError]] = []
    for manifest_path in sorted(paths.index_root.glob(f"*/{MANIFEST_FILE}")):
        run_id = manifest_path.parent.name
        try:
            manifest = read_json(manifest_path)
            if not isinstance(manifest, dict) or not manifest.get("created_at"):
                raise StoreError(manifest_path, "is not an index manifest (no created_at)", republish(paths, run_id))
        except StoreError as exc:
            found.append((run_id, StoreError(manifest_path, exc.problem, republish(paths, run_id))))
            continue
        found.append((run_id, manifest))
    return found


def published_runs(paths: DatasetPaths) -> list[tuple[str, dict[str, Any]]]:
    """(run_id, manifest) of every readable published index, oldest first by publication time.

    Unreadable manifests are left out here (see `manifests`); `latest_run` refuses them.
    """
    found = [(run, m) for run, m in manifests(paths) if isinstance(m, dict)]
    return sorted(found, key=lambda rm: (str(rm[1].get("created_at", "")), rm[0]))


def latest_run(paths: DatasetPaths) -> str | None:
    """The most recently published run, or None when nothing is published.

    An unreadable manifest is an error, not a skip: its run may be the newest one, and answering
    from an older run without saying so is worse than not answering.
    """
    for run_id, manifest in manifests(paths):
        if isinstance(manifest, StoreError):
            raise StoreError(
                manifest.path,
                f"{manifest.problem}; the newest published run cannot be told without it",
                f"{manifest.fix}, or delete {manifest.path.parent} and pass --run-id RUN to use another published run",
            )
    runs = published_runs(paths)
    return runs[-1][0] if runs else None


def _read_consistent(directory: Path, run_id: str, attempts: int = 5) -> tuple[dict[str, Any], np.ndarray]:
    """Manifest and index bytes that belong together (retrying across a concurrent publish)."""
    manifest_path, index_path = directory / MANIFEST_FILE, directory / INDEX_FILE
    paths = DatasetPaths(directory.parent.parent)
    fix = republish(paths, run_id)
    for attempt in range(attempts):
        if not manifest_path.exists():
            raise StoreError(manifest_path, f"run {run_id!r} has no published index", fix)
        try:
            manifest = read_json(manifest_path)
        except StoreError as exc:
            raise StoreError(manifest_path, exc.problem, fix) from exc
        if not isinstance(manifest, dict):
            raise StoreError(manifest_path, f"is not an index manifest (a JSON {type(manifest).__name__})", fix)
        missing = [k for k in ("run", "dim", "count", "vectors_hash", "index_sha256") if k not in manifest]
        if missing:
            raise StoreError(manifest_path, f"manifest lacks {missing}", fix)
        if not index_path.exists():
            raise StoreError(index_path, "index file is missing", fix)
        data = index_path.read_bytes()
        if hashlib.sha256(data).hexdigest() == manifest["index_sha256"]:
            return manifest, np.frombuffer(data, dtype=np.uint8)
        time.sleep(0.05 * (attempt + 1))  # a publish may be between its two renames
    raise StoreError(
        index_path,
        f"index file does not match {manifest_path.name} (sha256 differs: corrupt or partly written)",
        fix,
    )


def load_index(paths: DatasetPaths, run_id: str, *, check_vectors: bool = True) -> "ItemIndex":
    """Load and verify the published index of `run_id`.

    Refuses (StoreError naming the file) a missing or corrupt index, a manifest that does not
    describe the file, and — with check_vectors — an index built from item vectors other than
    the ones now in the run directory.
    """
    directory = paths.index_dir(run_id)
    manifest, data = _read_consistent(directory, run_id)
    index_path = directory / INDEX_FILE
    fix = republish(paths, run_id)
    try:
        index = faiss.deserialize_index(data)
    except RuntimeError as exc:
        raise StoreError(index_path, f"FAISS cannot read it ({str(exc).splitlines()[0][:200]})", fix) from exc
    if index.ntotal != manifest["count"] or index.d != manifest["dim"]:
        raise StoreError(
            index_path,
            f"holds {index.ntotal} vectors of dim {index.d}, manifest says {manifest['count']} of dim {manifest['dim']}",
            fix,
        )
    if check_vectors:
        source = paths.item_vectors(run_id)
        if not source.exists():
            raise StoreError(
                source,
                f"item vectors of run {run_id!r} are gone but an index is published",
                fixes.repair(source, "train"),
            )
        current = verified_vectors_hash(source, "item_id")  # refuses rows that disagree with their hash
        if current != manifest["vectors_hash"]:
            raise StoreError(
                directory / MANIFEST_FILE,
                f"index was built from item vectors {manifest['vectors_hash']} but {source} now holds {current}",
                fix,
            )
    item_index = ItemIndex(run_id=run_id, manifest=manifest, index=index, path=index_path)
    if manifest.get("kind") == "hnsw":
        item_index.set_ef_search(int(manifest.get("params", {}).get("ef_search", 128)))
    return item_index


# --------------------------------------------------------------------------------------- search


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    return int(k)


def excluded_mask(ids: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """mask[i, j] = ids[i, j] is in exclude[i]; one vectorized isin over (row, id) keys."""
    m = ids.shape[0]
    sizes = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=m)
    if sizes.sum() == 0:
        return np.zeros(ids.shape, dtype=bool)
    flat = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude])
    stride = int(max(ids.max(initial=0), flat.max(initial=0))) + 2
    rows = np.repeat(np.arange(m, dtype=np.int64), sizes)
    keys = np.arange(m, dtype=np.int64)[:, None] * stride + (ids + 1)
    return np.isin(keys, rows * stride + (flat + 1))


@dataclass
class ItemIndex:
    """A loaded, verified index. Thread-safe for concurrent `search` calls (FAISS is)."""

    run_id: str
    manifest: dict[str, Any]
    index: faiss.Index
    path: Path

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "flat"))

    def set_ef_search(self, ef_search: int) -> None:
        """HNSW breadth at query time (recall vs speed); a no-op for exact indexes."""
        if self.kind == "hnsw":
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", int(_check_k(ef_search)))

    def reconstruct(self, item_ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `item_ids` (unknown ids raise ValueError naming them)."""
        item_ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(item_ids), self.dim), dtype=np.float32)
        for row, item_id in enumerate(item_ids):
            try:
                out[row] = self.index.reconstruct(int(item_id))
            except RuntimeError:
                raise ValueError(f"unknown item_id {int(item_id)}: not in the index of run {self.run_id!r}") from None
        return out

    def check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"query vectors have shape {queries.shape}, but the index of run {self.run_id!r} "
                f"({self.path}) has dimension {self.dim}"
            )
        if not np.isfinite(queries).all():
            raise ValueError("query vectors contain NaN or inf")
        return np.ascontiguousarray(queries)

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and inner-product scores per query, best first.

        k larger than the catalog is clamped to the catalog size (a list can never be longer
        than the catalog). Excluded ids are removed by over-fetching k + |exclude[i]| and
        filtering, which is exact for the flat index; queries are grouped by how much they
        over-fetch so one heavy user does not make the whole batch fetch deep. Slots with no
        result (catalog exhausted by exclusions) hold id -1 and score -inf.
        """
        queries = self.check_queries(queries)
        k = min(_check_k(k), self.count)
        if exclude is None:
            scores, ids = self.index.search(queries, k)
            return ids, _clean_scores(ids, scores)
        if len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        n = len(queries)
        out_ids = np.full((n, k), NO_ID, dtype=np.int64)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        fetch = np.minimum(k + np.fromiter((len(e) for e in exclude), dtype=np.int64, count=n), self.count)
        group = np.ceil(np.log2(fetch)).astype(np.int64)
        for g in np.unique(group):
            rows = np.nonzero(group == g)[0]
            depth = int(fetch[rows].max())
            scores, ids = self.index.search(queries[rows], depth)
            keep = (ids != NO_ID) & ~excluded_mask(ids, [exclude[r] for r in rows])
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            kept = np.take_along_axis(keep, order, axis=1)
            out_ids[rows] = np.where(kept, np.take_along_axis(ids, order, axis=1), NO_ID)
            out_scores[rows] = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
        return out_ids, out_scores


def _clean_scores(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """FAISS pads empty slots with -FLT_MAX; make them -inf so they can never look like scores."""
    return np.where(ids == NO_ID, np.float32(-np.inf), scores).astype(np.float32, copy=False)
