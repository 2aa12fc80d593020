"""Published FAISS indexes of a run's item vectors: build, publish as a version, load, search.

Layout (docs/store.md): `index/<run_id>/versions/<NNNN>/` (items.faiss, manifest.json, the
version's own item and user vectors, change.json) and `index/<run_id>/CURRENT` naming the version
served (store.versions). An index directory written before versions existed (`items.faiss` +
`manifest.json` directly in it, vectors in `runs/<run_id>/`) is still read as it is.

Why the manifest carries the SHA-256 of the index file: a truncated or corrupt file becomes a
clear error naming it instead of a crash deep inside FAISS (and, for the unversioned layout, a
reader that starts between an older publisher's two renames sees a hash that does not match and
simply re-reads).

Why the manifest carries the vectors' hashes: the index and the vectors a reader combines with
it (the user vectors of `recommend`, the item vectors of `similar`) must be the ones it was built
with; a file swapped or edited under it is refused instead of answering for no model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
from tqdm.auto import tqdm

from store import fixes, versions
from store.errors import StoreError
from store.hashing import file_sha256
from store.layout import DatasetPaths, check_name
from store.tables import NUM_ROWS, read_json, read_metadata, read_table, write_json
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


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str, config: IndexConfig) -> faiss.IndexIDMap2:
    """An inner-product index whose search returns the real item ids (IndexIDMap2)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    inner: faiss.Index
    if kind == "flat":
        inner = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(d, int(config.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = int(config.ef_construction)
        hnsw.hnsw.efSearch = int(config.ef_search)
        inner = hnsw
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


def check_item_vectors(path: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Refuse what no index should serve: no rows, duplicate ids, NaN/inf rows."""
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


def _fix(paths: DatasetPaths, serving: versions.Serving) -> str:
    """A damaged version can also be left behind: the version it replaced still serves."""
    text = republish(paths, serving.run_id)
    if serving.version is not None:
        text += f"; or serve the version before: anchorrec rollback --dataset {paths.name} --run {serving.run_id}"
    return text


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


_OWN_KEYS = ("dim", "vectors_hash", "hash_of", NUM_ROWS)  # write_vectors/write_table set these themselves


def publish(
    paths: DatasetPaths,
    run_id: str,
    *,
    kind: str = "auto",
    hnsw_threshold: int = 100_000,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
    keep: int = versions.KEEP,
) -> dict[str, Any]:
    """Publish `runs/<run_id>/` (item vectors, and user vectors when present) as a new index
    version of the run (store.versions); returns its manifest.

    Always rebuilds from the vectors, so a missing, truncated or stale index is repaired by
    calling it again; vectors that disagree with the hash their writer recorded (rows reordered
    or edited) are refused, since an index of them would answer for no trained model.
    Readers holding the old version keep answering from it, readers opening afterwards get the
    new one; the newest `keep` versions stay (see store.versions).
    """
    check_name("run", run_id)
    config = IndexConfig(kind, hnsw_threshold, hnsw_m, ef_construction, ef_search)
    source = paths.item_vectors(run_id)
    ids, vectors, meta = read_vectors(source, "item_id")
    check_item_vectors(source, ids, vectors)
    user_ids = users = None
    if paths.user_vectors(run_id).exists():
        user_ids, users, _ = read_vectors(paths.user_vectors(run_id), "user_id")
    change = {
        "kind": "train",
        "note": f"published from runs/{run_id}",
        "source_vectors_hash": meta.get("vectors_hash"),
    }
    carried = {k: v for k, v in meta.items() if k not in _OWN_KEYS}
    version = publish_version(paths, run_id, ids, vectors, user_ids, users, change, config, metadata=carried, keep=keep)
    return read_json(versions.version_dir(paths, run_id, version) / MANIFEST_FILE)


def write_index(
    directory: Path,
    run_id: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    config: IndexConfig,
    meta: dict[str, str],
    extra: dict[str, Any],
    where: str,
) -> dict[str, Any]:
    """Build the index of `vectors` into `directory` (beside the version's vectors files, whose
    recorded hashes the manifest repeats) and write its manifest; returns the manifest."""
    vectors = np.asarray(vectors, dtype=np.float32)
    chosen = config.resolve(len(ids))
    start = time.perf_counter()
    index = build_index(vectors, ids, chosen, config)
    build_s = time.perf_counter() - start
    params: dict[str, Any] = {}
    if chosen == "hnsw":
        params = {"hnsw_m": config.hnsw_m, "ef_construction": config.ef_construction, "ef_search": config.ef_search}
    items_meta = read_metadata(directory / versions.ITEM_VECTORS)
    users_path = directory / versions.USER_VECTORS
    users_meta = read_metadata(users_path) if users_path.exists() else {}
    faiss.write_index(index, str(directory / INDEX_FILE))
    _fsync(directory / INDEX_FILE)
    manifest: dict[str, Any] = {
        "run": run_id,
        "dim": int(vectors.shape[1]),
        "metric": METRIC,
        "kind": chosen,
        "index_type": f"IndexIDMap2({type(faiss.downcast_index(index.index)).__name__})",
        "params": params,
        "requested": asdict(config),
        "count": int(index.ntotal),
        "vectors_hash": items_meta["vectors_hash"],
        "hash_of": items_meta.get("hash_of", "vectors"),
        "users": int(users_meta[NUM_ROWS]) if users_meta else 0,
        "user_vectors_hash": users_meta.get("vectors_hash"),
        "model": meta.get("model"),
        "item_vectors": f"{where}/{versions.ITEM_VECTORS}",
        "faiss_version": faiss.__version__,
        "build_seconds": round(build_s, 3),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "index_sha256": file_sha256(directory / INDEX_FILE),
        "index_bytes": (directory / INDEX_FILE).stat().st_size,
        **extra,
    }
    write_json(manifest, directory / MANIFEST_FILE)
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


def _index_dirs(paths: DatasetPaths) -> list[str]:
    """Runs with an index directory that holds a version pointer or an (older) unversioned manifest."""
    if not paths.index_root.is_dir():
        return []
    return sorted(
        d.name
        for d in paths.index_root.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and any((d / f).exists() for f in (versions.CURRENT_FILE, MANIFEST_FILE))
    )


def manifests(paths: DatasetPaths) -> list[tuple[str, dict[str, Any] | StoreError]]:
    """(run_id, manifest of the version it serves, or the StoreError reading it raised) of every
    index directory. The manifest gains `version` (None: unversioned) and `published_at` (when the
    run's newest version was published, which orders the runs)."""
    found: list[tuple[str, dict[str, Any] | StoreError]] = []
    for run_id in _index_dirs(paths):
        manifest_path = paths.index_dir(run_id) / MANIFEST_FILE
        try:
            serving = versions.serving(paths, run_id)
            manifest_path = serving.directory / MANIFEST_FILE
            manifest = read_json(manifest_path)
            if not isinstance(manifest, dict) or not manifest.get("created_at"):
                raise StoreError(manifest_path, "is not an index manifest (no created_at)", republish(paths, run_id))
        except StoreError as exc:
            found.append(
                (run_id, StoreError(exc.path or manifest_path, exc.problem, exc.fix or republish(paths, run_id)))
            )
            continue
        newest = versions.newest_created(paths, run_id) if serving.version else None
        found.append(
            (run_id, {**manifest, "version": serving.version, "published_at": newest or manifest["created_at"]})
        )
    return found


def _published_at(manifest: dict[str, Any]) -> str:
    return str(manifest.get("published_at") or manifest.get("created_at", ""))


def published_runs(paths: DatasetPaths) -> list[tuple[str, dict[str, Any]]]:
    """(run_id, manifest) of every readable published index, oldest first by publication time.

    Unreadable manifests are left out here (see `manifests`); `latest_run` refuses them.
    """
    found = [(run, m) for run, m in manifests(paths) if isinstance(m, dict)]
    return sorted(found, key=lambda rm: (_published_at(rm[1]), rm[0]))


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
                f"{manifest.fix}, or delete {paths.index_dir(run_id)} and pass --run-id RUN to use another published run",
            )
    runs = published_runs(paths)
    return runs[-1][0] if runs else None


def _read_consistent(
    paths: DatasetPaths, serving: versions.Serving, attempts: int = 5
) -> tuple[dict[str, Any], np.ndarray]:
    """Manifest and index bytes that belong together (an unversioned directory may be between
    the two renames of an older publisher; a version never changes)."""
    manifest_path, index_path = serving.directory / MANIFEST_FILE, serving.directory / INDEX_FILE
    run_id = serving.run_id
    fix = _fix(paths, serving)
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
        if serving.version is not None:
            break
        time.sleep(0.05 * (attempt + 1))  # a publish may be between its two renames
    raise StoreError(
        index_path,
        f"index file does not match {manifest_path.name} (sha256 differs: corrupt or partly written)",
        fix,
    )


def load_index(
    paths: DatasetPaths, run_id: str, *, check_vectors: bool = True, serving: versions.Serving | None = None
) -> "ItemIndex":
    """Load and verify the index `run_id` serves now (or the version `serving` names).

    Refuses (StoreError naming the file) a missing or corrupt index, a manifest that does not
    describe the file, and — with check_vectors — item vectors other than the ones the index was
    built from (the version's own copy; for an unversioned index, the run's).
    """
    serving = serving or versions.serving(paths, run_id)
    manifest, data = _read_consistent(paths, serving)
    index_path = serving.directory / INDEX_FILE
    fix = _fix(paths, serving)
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
        _check_source(paths, serving, manifest, "item_id", fix)
    item_index = ItemIndex(run_id=run_id, manifest=manifest, index=index, path=index_path, version=serving.version)
    if manifest.get("kind") == "hnsw":
        item_index.set_ef_search(int(manifest.get("params", {}).get("ef_search", 128)))
    return item_index


def _check_source(paths: DatasetPaths, serving: versions.Serving, manifest: dict[str, Any], key: str, fix: str) -> None:
    """The vectors file a reader will combine with this index is the one the manifest records."""
    source = serving.item_vectors if key == "item_id" else serving.user_vectors
    recorded = manifest.get("vectors_hash" if key == "item_id" else "user_vectors_hash")
    where = f"version {serving.version} of run {serving.run_id!r}" if serving.version else f"run {serving.run_id!r}"
    if not source.exists():
        what = "item vectors" if key == "item_id" else "user vectors"
        raise StoreError(
            source,
            f"{what} of {where} are gone but an index is published",
            fix if serving.version else fixes.repair(source, "train"),
        )
    current = verified_vectors_hash(source, key)  # refuses rows that disagree with their hash
    if recorded is not None and current != recorded:
        raise StoreError(
            serving.directory / MANIFEST_FILE,
            f"index was built from {key.split('_')[0]} vectors {recorded} but {source} now holds {current}",
            fix,
        )


def check_serving(paths: DatasetPaths, serving: versions.Serving) -> "ItemIndex":
    """Everything a version serves, verified: its index, item vectors and user vectors (rollback's check)."""
    index = load_index(paths, serving.run_id, serving=serving)
    if serving.version is not None and index.manifest.get("user_vectors_hash") is not None:
        _check_source(paths, serving, index.manifest, "user_id", _fix(paths, serving))
    return index


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
    version: str | None = None  # None: an unversioned index directory (older homes)

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
            keep = (ids != NO_ID) & ~excluded_mask(ids, [exclude[r] for r in rows.tolist()])
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            kept = np.take_along_axis(keep, order, axis=1)
            out_ids[rows] = np.where(kept, np.take_along_axis(ids, order, axis=1), NO_ID)
            out_scores[rows] = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
        return out_ids, out_scores


def _clean_scores(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """FAISS pads empty slots with -FLT_MAX; make them -inf so they can never look like scores."""
    return np.where(ids == NO_ID, np.float32(-np.inf), scores).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- versions
def publish_version(
    paths: DatasetPaths,
    run_id: str,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    user_ids: np.ndarray | None,
    user_vectors: np.ndarray | None,
    change: dict[str, Any],
    index_config: Any = None,
    *,
    metadata: dict[str, str] | None = None,
    keep: int = versions.KEEP,
) -> str:
    """Write a new immutable version of `run_id` and make it current; returns its name (e.g. '0002').

    `change` says what changed (kind 'train' | 'update', items_added, items_changed, users_updated,
    note; from_version is filled in). `index_config` is a store.index.IndexConfig (default: auto).
    `metadata` goes into both vectors files (model, …). Then the versions beyond the newest
    `keep` are pruned (never the current one). user_ids/user_vectors None: an item-only run.
    """
    check_name("run", run_id)
    keep = versions.check_keep(keep)
    config = index_config or IndexConfig()
    item_ids = np.asarray(item_ids, dtype=np.int64)
    check_item_vectors(paths.index_dir(run_id) / versions.ITEM_VECTORS, item_ids, np.asarray(item_vectors, np.float32))
    root = versions.versions_root(paths, run_id)
    with versions.run_lock(paths, run_id):
        previous = versions.current_version(paths, run_id)
        kept = versions.version_names(paths, run_id)
        name = f"{int(kept[-1]) + 1 if kept else 1:04d}"
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".new-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            meta = dict(metadata or {})
            write_vectors(tmp / versions.ITEM_VECTORS, "item_id", item_ids, item_vectors, meta)
            if user_vectors is not None:
                write_vectors(
                    tmp / versions.USER_VECTORS, "user_id", np.asarray(user_ids, dtype=np.int64), user_vectors, meta
                )
            record = versions.change_record(change, previous)
            write_json(record, tmp / versions.CHANGE_FILE)
            extra = {"version": name, "kind_of_change": record["kind"], "from_version": previous}
            write_index(tmp, run_id, item_ids, item_vectors, config, meta, extra, paths.relative(root / name))
            os.rename(tmp, root / name)  # a whole version appears at once
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        versions.switch_current(paths, run_id, name)
        versions.prune_locked(paths, run_id, keep)
    return name


def rollback(paths: DatasetPaths, run_id: str) -> str:
    """Serve the version the current one replaced (one pointer switch); returns its name.

    Refuses (one line, nothing changed) an unversioned or unpublished run, a first version, a
    target that was pruned, and a target whose files fail their checks.
    """
    with versions.run_lock(paths, run_id):
        current = versions.current_version(paths, run_id)
        if current is None:
            raise ValueError(
                f"run {run_id} of dataset {paths.name} has no index versions: nothing to roll back to "
                f"(publish it first: anchorrec publish --dataset {paths.name})"
            )
        change = versions.read_dict(versions.version_dir(paths, run_id, current) / versions.CHANGE_FILE)
        target = change.get("from_version")
        if not target:
            raise ValueError(
                f"run {run_id}: version {current} is its first version, nothing to roll back to "
                f"(anchorrec versions --dataset {paths.name} --run {run_id} lists them)"
            )
        if not versions.version_dir(paths, run_id, str(target)).is_dir():
            raise ValueError(
                f"run {run_id}: version {current} replaced version {target}, which was pruned; "
                f"kept: {', '.join(versions.version_names(paths, run_id))} (keep more with --keep N)"
            )
        target = str(target)
        check_serving(paths, versions.pinned(paths, run_id, target))  # never switch to a damaged version
        versions.switch_current(paths, run_id, target)
    return target
