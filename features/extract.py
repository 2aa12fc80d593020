"""Batched extraction of one feature table: items (text or images) in, features/<name>.parquet out.

Design points:
- Rows follow items.parquet and carry `asin`, so a re-indexed catalog cannot silently misalign.
- An item whose modality is missing gets a null vector and a reason ('no image: …',
  'undecodable image: …', 'empty text'), never a zero vector that looks like data.
- Resumable: finished rows go to `features/.<name>.partial/part-*.parquet` as they are produced,
  each with a per-item content key (hash of the text or of the image file); a rerun reuses the
  rows whose key still matches and encodes only the rest. The partial folder has no `.parquet`
  suffix so it is never listed as a feature. A stopped run (Ctrl-C, SIGTERM: see `Running` and
  cli._stop) saves what it encoded on the way out.
- A rerun with the same encoder and the same inputs (input_hash) does nothing.
- Images are decoded in background threads (JPEG draft mode) while the main process
  runs the model; CUDA autocast (bf16/fp16) is the encoder's business.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from features.base import Encoder, parse_spec
from features.decode import UNDECODABLE, image_batches
from features.registry import get_encoder
from store import schemas
from store.errors import StoreError
from store.hashing import file_sha256
from store.layout import DatasetPaths, portable
from store.tables import read_json, read_metadata, read_table, write_json, write_table
from store.vectors import fixed_list, to_matrix, write_features
from store.verify import problem

log = logging.getLogger(__name__)

NO_IMAGE = "no image"
EMPTY_TEXT = "empty text"


@dataclass
class Inputs:
    """What each item feeds the encoder: `payload[i]` (text or image path) or a `missing[i]` reason."""

    asins: list[str]
    item_ids: np.ndarray
    payload: list[str | None]
    missing: list[str | None]
    keys: list[str]

    def __post_init__(self) -> None:
        n = len(self.asins)
        if not (len(self.item_ids) == len(self.payload) == len(self.missing) == len(self.keys) == n):
            raise ValueError("Inputs columns have different lengths")

    def input_hash(self, spec: str) -> str:
        """Hash of the encoder spec and every item's content key, in item order."""
        h = hashlib.sha256(spec.encode())
        for asin, key in zip(self.asins, self.keys):
            h.update(f"\n{asin}\t{key}".encode())
        return h.hexdigest()[:16]


def _read_items(paths: DatasetPaths) -> pa.Table:
    items = read_table(paths.items, schemas.ITEMS, columns=["item_id", "asin", "text"])
    asins = items.column("asin").to_pylist()
    if len(set(asins)) != len(asins):
        dup = next(a for a, c in Counter(asins).items() if c > 1)
        raise StoreError(
            paths.items, f"asin {dup!r} appears more than once", "features are keyed by asin: rebuild items"
        )
    return items


def text_inputs(items: pa.Table) -> Inputs:
    texts = items.column("text").to_pylist()
    payload: list[str | None] = []
    missing: list[str | None] = []
    keys: list[str] = []
    for text in texts:
        if text is None or not text.strip():
            payload.append(None)
            missing.append(EMPTY_TEXT)
            keys.append("empty")
        else:
            payload.append(text)
            missing.append(None)
            keys.append(hashlib.sha256(text.encode()).hexdigest()[:16])
    return Inputs(items.column("asin").to_pylist(), items.column("item_id").to_numpy(), payload, missing, keys)


def _audit(paths: DatasetPaths) -> dict[str, tuple[str, int | None, str | None]]:
    """asin → (status, http status, detail) from images/audit.parquet, when the fetcher wrote one."""
    if not paths.image_audit.exists():
        return {}
    table = read_table(paths.image_audit, schemas.IMAGE_AUDIT)
    return {
        a: (s, h, d)
        for a, s, h, d in zip(
            table.column("asin").to_pylist(),
            table.column("status").to_pylist(),
            table.column("http_status").to_pylist(),
            table.column("detail").to_pylist(),
        )
    }


def missing_image_reason(audit_row: tuple[str, int | None, str | None] | None) -> str:
    """Why an item has no image file, in the audit's words when there is an audit."""
    if audit_row is None:
        return NO_IMAGE
    status, http_status, detail = audit_row
    if status in ("ok", "cached"):
        return f"{NO_IMAGE}: file missing although the audit says {status}"
    extra = ([f"http {http_status}"] if http_status else []) + ([detail] if detail else [])
    if status == "undecodable":
        return f"{UNDECODABLE}: {', '.join(extra)}" if extra else UNDECODABLE
    return f"{NO_IMAGE}: {status}" + (f" ({', '.join(extra)})" if extra else "")


def image_inputs(paths: DatasetPaths, items: pa.Table, threads: int = 8) -> Inputs:
    """Image path per item; file content hashes computed in threads (hashlib releases the GIL)."""
    asins = items.column("asin").to_pylist()
    audit = _audit(paths)
    files = [paths.image(a) for a in asins]
    exists = [f.is_file() for f in files]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        hashes = list(pool.map(lambda f: file_sha256(f)[:16], [f for f, e in zip(files, exists) if e]))
    hashes_iter = iter(hashes)
    payload: list[str | None] = []
    missing: list[str | None] = []
    keys: list[str] = []
    for asin, f, e in zip(asins, files, exists):
        if e:
            payload.append(str(f))
            missing.append(None)
            keys.append(next(hashes_iter))
        else:
            reason = missing_image_reason(audit.get(asin))
            payload.append(None)
            missing.append(reason)
            keys.append(f"missing:{reason}")
    return Inputs(asins, items.column("item_id").to_numpy(), payload, missing, keys)


def item_inputs(paths: DatasetPaths, modality: str) -> Inputs:
    """What each item of the dataset feeds an encoder of `modality` (pooled and token extraction)."""
    items = _read_items(paths)
    return text_inputs(items) if modality == "text" else image_inputs(paths, items)


# --- batch iterators, reused by benchmarks ------------------------------------------------------


def text_batches(
    encoder: Encoder, texts: Sequence[str], batch_size: int, encode: Callable[[Any], Any] | None = None
) -> Iterator[tuple[list[int], Any]]:
    """(positions, vectors) per batch; texts go longest first so each batch pads to similar lengths.
    `encode` replaces encoder.encode (token extraction asks for per-token outputs instead)."""
    encode = encode or encoder.encode
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        yield pos, encode([texts[i] for i in pos])


def extract_texts(encoder: Encoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Vectors for `texts` in their order (all must be non-empty strings)."""
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for pos, vec in text_batches(encoder, texts, batch_size):
        out[pos] = vec
    return out


def encoded_image_batches(
    encoder: Encoder,
    image_paths: Sequence[str | Path],
    *,
    batch_size: int,
    workers: int,
    draft: bool = True,
    encode: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """(positions, vectors, [(position, undecodable reason)]) per batch, decoding in `workers`;
    `encode` replaces encoder.encode (it is not called for a batch where nothing decoded)."""
    for pos, batch, failed in image_batches(
        image_paths,
        encoder.preprocess,  # type: ignore[attr-defined]
        min_side=getattr(encoder, "decode_size", getattr(encoder, "image_size", None)),
        batch_size=batch_size,
        workers=workers,
        draft=draft,
        pin_memory=str(encoder.device).startswith("cuda"),
    ):
        if batch is None:
            yield pos, np.zeros((0, encoder.dim), np.float32), failed
        else:
            yield pos, (encode or encoder.encode)(batch), failed


def pending_batches(
    encoder: Encoder,
    inputs: Inputs,
    pending: list[int],
    modality: str,
    *,
    batch_size: int,
    workers: int,
    draft: bool,
    encode: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """Encoded batches of the items at `pending` (positions into `inputs`), in those positions:
    (positions encoded, outputs, [(position, undecodable reason)])."""
    if modality == "text":
        texts = [inputs.payload[p] for p in pending]
        for local, out in text_batches(encoder, texts, batch_size, encode):  # type: ignore[arg-type]
            yield [pending[i] for i in local], out, []
        return
    files: list[str | Path] = []
    for p in pending:
        path = inputs.payload[p]
        assert path is not None  # pending items are the ones with a photo
        files.append(path)
    for local, out, failed in encoded_image_batches(
        encoder,
        files,
        batch_size=batch_size,
        workers=workers,
        draft=draft,
        encode=encode,
    ):
        yield [pending[i] for i in local], out, [(pending[i], reason) for i, reason in failed]


class Running:
    """The extractions encoding in this process right now, for whoever handles a stop signal.

    A signal interrupts only the main thread; an extraction in a task runner's worker thread sees
    `stop` between batches instead. Each one saves its finished rows on the way out; `idle` is set
    once none is encoding any more, and `kept` is how many finished rows their partial folders then
    hold, so a handler can wait for exactly that (with its own deadline) and say what a rerun reuses.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.active = 0
        self.kept = 0
        self._lock = threading.Lock()

    @contextmanager
    def one(self, already_kept: int) -> Iterator[list[int]]:
        """Count an extraction as encoding; it adds the rows it saves to the yielded one-item list,
        and when it ends by an exception (a stop) those rows and `already_kept` count as kept."""
        saved = [0]
        with self._lock:
            self.active += 1
            self.idle.clear()
        try:
            yield saved
        except BaseException:
            with self._lock:
                self.kept += already_kept + saved[0]
            raise
        finally:
            with self._lock:
                self.active -= 1
                if self.active == 0:
                    self.idle.set()


RUNNING = Running()


class Stopped(KeyboardInterrupt):
    """Raised in a worker thread's extraction when a stop was asked for (RUNNING.stop)."""


class SideOutput(Protocol):
    """A second output filled from the same encoder pass as the pooled vectors (token features),
    so that a photo goes through the backbone once for both."""

    def begin(self, encoder: Encoder, inputs: Inputs, shard: tuple[int, int] | None, resume: bool) -> None:
        """Called once the encoder is loaded and the items are known, before any batch."""

    def encode(self, batch: Any) -> tuple[np.ndarray, Any]:
        """A batch → (pooled vectors, this output's part), from one forward pass."""

    def store(self, positions: list[int], out: Any) -> None: ...

    def fail(self, pos: int, reason: str) -> None: ...

    def save(self, positions: list[int]) -> None:
        """Make the rows at `positions` durable, when the pooled rows are (a rerun resumes both)."""


def run_pending(
    encoder: Encoder,
    inputs: Inputs,
    pending: list[int],
    modality: str,
    *,
    store: Callable[[list[int], Any], None],
    fail: Callable[[int, str], None],
    save: Callable[[list[int]], None],
    buffer: list[int],
    batch_size: int,
    workers: int,
    draft: bool,
    chunk_size: int,
    progress: bool,
    desc: str,
    encode: Callable[[Any], Any] | None = None,
    kept: int = 0,
) -> None:
    """Encode the items at `pending` with a progress bar: each batch's outputs go to `store`, each
    undecodable item to `fail`, and finished positions (after those already in `buffer`) to `save`
    every `chunk_size` items and once more on the way out, also when interrupted (KeyboardInterrupt
    in the main thread, RUNNING.stop in any), so a rerun resumes; `kept` counts the rows the
    partial folder already holds, for RUNNING's report."""

    def flush(saved: list[int], force: bool = False) -> None:
        if buffer and (force or len(buffer) >= chunk_size):
            save(list(buffer))
            saved[0] += len(buffer)
            buffer.clear()

    bar = tqdm(total=len(pending), unit="item", desc=desc, disable=not progress, dynamic_ncols=True)
    with RUNNING.one(kept) as saved:
        try:
            for done, out, failed in pending_batches(
                encoder, inputs, pending, modality, batch_size=batch_size, workers=workers, draft=draft, encode=encode
            ):
                if done:
                    store(done, out)
                for pos, reason in failed:
                    fail(pos, reason)
                buffer.extend(done + [pos for pos, _ in failed])
                bar.update(len(done) + len(failed))
                flush(saved)
                if RUNNING.stop.is_set():
                    raise Stopped(desc)
        finally:
            flush(saved, force=True)  # keep what was finished, even when interrupted
            bar.close()


def shard_plan(inputs: Inputs, filled: np.ndarray, shard: tuple[int, int] | None) -> tuple[list[int], list[int]]:
    """(this shard's unfinished items with no input: recorded with their reason now, items to encode)."""
    n = len(inputs.asins)
    mine = np.ones(n, dtype=bool) if shard is None else (np.arange(n) % shard[1] == shard[0])
    todo = [p for p in range(n) if mine[p] and not filled[p]]
    return [p for p in todo if inputs.missing[p] is not None], [p for p in todo if inputs.missing[p] is None]


def check_extract_args(batch_size: int, workers: int, chunk_size: int, shard: tuple[int, int] | None) -> None:
    """Refuse bad sizes before any model is loaded (shared by pooled and token extraction)."""
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be ≥ 0, got {workers}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")


def extract_images(
    encoder: Encoder,
    image_paths: Sequence[str | Path],
    *,
    batch_size: int = 64,
    workers: int = 2,
    draft: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(vectors, valid, reasons) for image files in order; undecodable files are invalid rows."""
    n = len(image_paths)
    out = np.zeros((n, encoder.dim), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    for pos, vec, failed in encoded_image_batches(
        encoder, image_paths, batch_size=batch_size, workers=workers, draft=draft
    ):
        out[pos] = vec
        valid[pos] = True
        for i, reason in failed:
            reasons[i] = reason
    return out, valid, reasons


# --- resumable partial output --------------------------------------------------------------------


class Partial:
    """Rows finished by an interrupted run, in `features/.<name>.partial/`."""

    def __init__(self, root: Path, spec: str, dim: int, tag: str = "") -> None:
        self.root = root
        self.spec = spec
        self.dim = dim
        self.tag = tag  # shards of one extraction write side by side under their own tag
        self.state = root / "state.json"

    def open(self, resume: bool) -> None:
        if self.root.exists() and not resume:
            self.remove()
        if self.root.exists():
            state = read_json(self.state) if self.state.exists() else {}
            if state.get("spec") != self.spec or state.get("dim") != self.dim:
                log.warning("%s: partial rows of another encoder (%s); starting over", self.root, state.get("spec"))
                self.remove()
        if not self.root.exists() or not self.state.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            write_json({"spec": self.spec, "dim": self.dim}, self.state)

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def matching_rows(self, inputs: Inputs) -> Iterator[tuple[pa.Table, list[int], list[int]]]:
        """(part table, its rows, their positions in `inputs`) for rows whose content key still matches."""
        current = {a: (i, k) for i, (a, k) in enumerate(zip(inputs.asins, inputs.keys))}
        for part in self.parts():
            table = read_table(part)
            rows, positions = [], []
            for j, (asin, key) in enumerate(zip(table.column("asin").to_pylist(), table.column("key").to_pylist())):
                hit = current.get(asin)
                if hit is not None and hit[1] == key:
                    rows.append(j)
                    positions.append(hit[0])
            yield table, rows, positions

    def load(self, inputs: Inputs) -> dict[int, tuple[np.ndarray | None, str | None]]:
        """position → (vector or None, reason) for rows whose content key still matches."""
        done: dict[int, tuple[np.ndarray | None, str | None]] = {}
        for table, rows, positions in self.matching_rows(inputs):
            vectors, valid = to_matrix(table.column("vector"), self.dim)
            reasons = table.column("reason").to_pylist()
            for j, pos in zip(rows, positions):
                done[pos] = (vectors[j] if valid[j] else None, reasons[j])
        return done

    def write(
        self, inputs: Inputs, positions: list[int], vectors: np.ndarray, valid: np.ndarray, reasons: list[str | None]
    ) -> None:
        self.write_columns(
            inputs,
            positions,
            {
                "vector": fixed_list(vectors[positions], valid[positions]),
                "reason": pa.array([reasons[p] for p in positions], pa.string()),
            },
        )

    def write_columns(self, inputs: Inputs, positions: list[int], columns: dict[str, pa.Array]) -> None:
        """One part file: asin and item_id of `positions`, the given columns, then the content keys."""
        if not positions:
            return
        table = pa.table(
            {
                "asin": pa.array([inputs.asins[p] for p in positions], pa.string()),
                "item_id": pa.array(inputs.item_ids[positions].astype(np.int32)),
                **columns,
                "key": pa.array([inputs.keys[p] for p in positions], pa.string()),
            }
        )
        mine = len(list(self.root.glob(f"part-{self.tag}*.parquet")))
        write_table(table, self.root / f"part-{self.tag}{mine:06d}.parquet")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- rows of the published table, reused byte for byte --------------------------------------------
KEYS_DIR = ".keys"  # features/.keys/<name>.parquet: not a `features/*.parquet`, so never listed as a feature


def keys_path(table_path: Path) -> Path:
    """The per-item content keys of a published feature table (asin, key), beside it."""
    return table_path.parent / KEYS_DIR / table_path.name


def write_keys(table_path: Path, inputs: Inputs, meta: dict[str, str]) -> None:
    """Keep the key each row was encoded from, tied to the table by its content hash, so that a
    later extraction (a changed catalog, `anchorrec update`) can tell which rows still hold."""
    table = pa.table({"asin": pa.array(inputs.asins, pa.string()), "key": pa.array(inputs.keys, pa.string())})
    tie = {"encoder": meta.get("encoder", ""), "content_hash": meta.get("content_hash", "")}
    write_table(table, keys_path(table_path), metadata=tie)


@dataclass
class PublishedRows:
    """Rows of the published table whose item still feeds the encoder exactly what it read then."""

    dim: int
    meta: dict[str, str]
    rows: dict[int, tuple[np.ndarray | None, str | None]]  # position in the current inputs → (vector, reason)

    def covers(self, inputs: Inputs) -> bool:
        """Every item with an input has a reusable row: nothing to encode, no encoder to load."""
        return all(p in self.rows for p, why in enumerate(inputs.missing) if why is None)

    def fill(self, filled: np.ndarray, vectors: np.ndarray, valid: np.ndarray, reasons: list[str | None]) -> int:
        """Copy the rows not already filled (partial rows of this extraction win); how many were copied."""
        count = 0
        for pos, (vec, reason) in self.rows.items():
            if filled[pos]:
                continue
            if vec is not None:
                vectors[pos], valid[pos] = vec, True
            reasons[pos], filled[pos] = reason, True
            count += 1
        return count


def published_rows(table_path: Path, spec_text: str, inputs: Inputs) -> PublishedRows | None:
    """The reusable rows of the table this extraction replaces; None when there is no such table,
    it is damaged, made by another encoder, or its keys belong to another version of it."""
    kpath = keys_path(table_path)
    if not table_path.exists() or not kpath.exists() or problem(table_path) is not None:
        return None
    meta = read_metadata(table_path)
    kmeta = read_metadata(kpath)
    if meta.get("encoder") != spec_text or kmeta.get("content_hash") != meta.get("content_hash"):
        return None
    keys = read_table(kpath)
    table = read_table(table_path, columns=["asin", "vector", "reason"])
    if keys.column("asin").to_pylist() != table.column("asin").to_pylist():
        return None
    dim = int(meta["dim"])
    vectors, valid = to_matrix(table.column("vector"), dim)
    reasons = table.column("reason").to_pylist()
    where = {a: (i, k) for i, (a, k) in enumerate(zip(inputs.asins, inputs.keys))}
    rows: dict[int, tuple[np.ndarray | None, str | None]] = {}
    for j, (asin, key) in enumerate(zip(keys.column("asin").to_pylist(), keys.column("key").to_pylist())):
        hit = where.get(asin)
        if hit is not None and hit[1] == key:
            rows[hit[0]] = (vectors[j] if valid[j] else None, reasons[j])
    return PublishedRows(dim, meta, rows)


# --- the stage ---------------------------------------------------------------------------------


def up_to_date(out_path: Path, ihash: str, spec_text: str) -> bool:
    """The table exists, was made by this encoder from these inputs, and passes its checks.

    The checks matter: a table whose footer is intact but whose pages are damaged still carries
    the right input hash, and calling it up to date would leave the damage in place on a rerun.
    """
    if not out_path.exists():
        return False
    damage = problem(out_path)
    if damage is not None:
        log.warning("rebuilding: %s", damage)
        return False
    meta = read_metadata(out_path)
    if meta.get("input_hash") != ihash or meta.get("encoder") != spec_text:
        return False
    log.info("%s is up to date (input hash %s)", out_path, ihash)
    return True


def extract(
    paths: DatasetPaths,
    spec: str | Encoder,
    *,
    name: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    workers: int = 2,
    resume: bool = True,
    progress: bool = True,
    chunk_size: int = 2048,
    draft: bool = True,
    shard: tuple[int, int] | None = None,
    side: SideOutput | None = None,
) -> dict:
    """Encode every item of `paths` with `spec` into features/<name>.parquet; returns a summary.

    `spec` is an encoder spec string (see features.base.parse_spec) or an already loaded encoder.
    Finished rows are saved every `chunk_size` items, so an interrupted run resumes there.
    With `shard=(i, n)` only items at positions ≡ i (mod n) are encoded, into the partial rows,
    and no table is written: a final call without `shard` then finds every row done and writes
    the table. That is the Prefect flow's fan-out over a distributed task runner.
    `side` fills a second output from the same encoder pass (features.tokens.extract_with_tokens).
    """
    check_extract_args(batch_size, workers, chunk_size, shard)
    t0 = time.perf_counter()
    if isinstance(spec, str):
        parsed = parse_spec(spec)
        spec_text, modality, default_name = parsed.text, parsed.modality, parsed.default_name
        encoder: Encoder | None = None
    else:
        encoder = spec
        spec_text, modality, default_name = encoder.spec, encoder.modality, encoder.name
    name = name or default_name
    out_path = paths.feature(name)

    inputs = item_inputs(paths, modality)
    ihash = inputs.input_hash(spec_text)
    n = len(inputs.asins)

    if resume and up_to_date(out_path, ihash, spec_text):
        meta = read_metadata(out_path)
        if not keys_path(out_path).exists():  # a table written before keys were kept: keep them now
            write_keys(out_path, inputs, meta)
        dim = int(meta["dim"])  # every row kept as it is: all reused
        return _summary(
            name, out_path, spec_text, modality, dim, meta, t0, resumed=0, encoded=0, skipped=True, reused=n
        )

    prior = published_rows(out_path, spec_text, inputs) if resume and side is None else None
    if encoder is None and not (prior is not None and prior.covers(inputs)):
        encoder = get_encoder(spec_text, device)
    dim = encoder.dim if encoder is not None else prior.dim  # type: ignore[union-attr]
    tag = f"s{shard[0]}of{shard[1]}-" if shard else ""
    partial = Partial(paths.features_dir / f".{name}.partial", spec_text, dim, tag)
    partial.open(resume)

    vectors = np.zeros((n, dim), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    filled = np.zeros(n, dtype=bool)
    for pos, (vec, reason) in partial.load(inputs).items():
        if vec is not None:
            vectors[pos], valid[pos] = vec, True
        reasons[pos] = reason
        filled[pos] = True
    resumed = int(filled.sum())
    reused = prior.fill(filled, vectors, valid, reasons) if prior is not None else 0

    buffer, pending = shard_plan(inputs, filled, shard)
    for pos in buffer:
        reasons[pos] = inputs.missing[pos]
        filled[pos] = True

    def store(positions: list[int], out: Any) -> None:
        if side is not None:
            out, extra = out
            side.store(positions, extra)
        vectors[positions], valid[positions], filled[positions] = out, True, True

    def fail(pos: int, reason: str) -> None:
        reasons[pos], filled[pos] = reason, True
        if side is not None:
            side.fail(pos, reason)

    def save(positions: list[int]) -> None:
        partial.write(inputs, positions, vectors, valid, reasons)
        if side is not None:
            side.save(positions)

    if side is not None:
        assert encoder is not None  # a side output turns the published-rows shortcut off: the encoder is loaded
        side.begin(encoder, inputs, shard, resume)
    t_encode = time.perf_counter()
    if encoder is None:  # every row reused (PublishedRows.covers): only the items without input are left
        save(list(buffer))
    else:
        run_pending(
            encoder,
            inputs,
            pending,
            modality,
            store=store,
            fail=fail,
            buffer=buffer,
            save=save,
            batch_size=batch_size,
            workers=workers,
            draft=draft,
            chunk_size=chunk_size,
            progress=progress,
            desc=f"extract {name}",
            kept=resumed,
            encode=side.encode if side is not None else None,
        )
    encode_seconds = time.perf_counter() - t_encode
    if shard is not None:
        return {
            "name": name,
            "shard": list(shard),
            "encoded": len(pending),
            "resumed": resumed,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    if not filled.all():  # pragma: no cover - a bug guard: every item must have a row
        raise RuntimeError(f"{int((~filled).sum())} items got no row")
    write_features(
        out_path,
        inputs.asins,
        inputs.item_ids,
        vectors,
        encoder=spec_text,
        model=encoder.model if encoder is not None else prior.meta["model"],  # type: ignore[union-attr]
        # no machine path in table metadata (a copied home stays identical)
        weights=portable(encoder.weights) if encoder is not None else prior.meta["weights"],  # type: ignore[union-attr]
        modality=modality,
        input_hash=ihash,
        valid=valid,
        reasons=reasons,
        extra={"name": name, "n_items": str(n), "n_missing": str(int((~valid).sum()))},
    )
    meta = read_metadata(out_path)
    write_keys(out_path, inputs, meta)
    partial.remove()
    summary = _summary(
        name,
        out_path,
        spec_text,
        modality,
        dim,
        meta,
        t0,
        resumed=resumed,
        encoded=len(pending),
        skipped=False,
        reused=reused,
    )
    summary["encode_seconds"] = round(encode_seconds, 3)
    summary["items_per_s"] = round(len(pending) / encode_seconds, 1) if encode_seconds > 0 and pending else 0.0
    summary["device"] = encoder.device if encoder is not None else None
    counts = ", ".join(f"{k}: {v}" for k, v in summary["reasons"].items()) or "none"
    log.info(
        "%s: %d items, %d vectors, %d without (%s); %d encoded, %d resumed, %d reused",
        out_path,
        n,
        summary["n_vectors"],
        summary["n_missing"],
        counts,
        len(pending),
        resumed,
        reused,
    )
    return summary


def _summary(name, path, spec, modality, dim, meta, t0, *, resumed, encoded, skipped, reused=0) -> dict:
    table = read_table(path, columns=["vector", "reason"])
    reasons = [r for r in table.column("reason").to_pylist() if r]
    n_missing = table.column("vector").null_count
    return {
        "name": name,
        "path": str(path),
        "encoder": spec,
        "modality": modality,
        "dim": dim,
        "n_items": table.num_rows,
        "n_vectors": table.num_rows - n_missing,
        "n_missing": n_missing,
        "reasons": dict(Counter(r.split(":")[0] for r in reasons)),
        "input_hash": meta.get("input_hash"),
        "encoded": encoded,
        "resumed": resumed,
        "reused": reused,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
    }
