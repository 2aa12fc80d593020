"""Import a dataset published in MMRec format, keeping its ids and its split.

MMRec sets (Baby, Sports, Clothing, …) are the benchmarks multimodal recommenders report on, so
they are imported as they are: MMRec's userID/itemID become our user_id/item_id, x_label becomes
the split, and positional `.npy` features (row i = itemID i) become feature tables keyed by asin.
Nothing is re-filtered or re-split, otherwise the published numbers would not be comparable.

Input directory:
    <name>.inter          userID itemID [timestamp] [rating] x_label   (tab-separated, header)
    i_id_mapping.tsv      asin itemID
    u_id_mapping.tsv      user_id userID      (optional: reviewer ids are then synthesized)
    item_text.tsv         itemID asin keywords (optional: becomes items.text)
    image_feat.npy, text_feat.npy              (optional)

Malformed lines are counted with file and line and skipped; structural problems (ids that are
not 0..n-1, a feature file with the wrong number of rows) stop the import with a message that
says what to fix, because guessing there would misalign every vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from pipelines.prepare import cold_interaction_split, cold_report, draw_cold_items, row_accounting, write_cold_items
from pipelines.records import BadRecords
from store import schemas
from store.errors import StoreError
from store.hashing import file_sha256
from store.layout import DatasetPaths, dataset_paths
from store.tables import write_json, write_table
from store.vectors import array_hash, write_features

ITEM_MAPPING = "i_id_mapping.tsv"
USER_MAPPING = "u_id_mapping.tsv"
ITEM_TEXT = "item_text.tsv"
INTER_SUFFIX = ".inter"
# npy file → (feature table name, modality)
FEATURE_FILES = {"image_feat.npy": ("image-mmrec", "image"), "text_feat.npy": ("text-mmrec", "text")}
X_LABELS = {0: "train", 1: "valid", 2: "test"}
SPLIT_RULE = "given: MMRec x_label (0 train, 1 valid, 2 test), kept as published"

_UINT = r"^[0-9]{1,18}$"  # non-negative ids that fit int64


@dataclass
class _Tsv:
    """A TSV read as strings, with the physical (1-based) line number of every row."""

    path: Path
    table: pa.Table
    lines: np.ndarray
    skipped: int = 0  # lines the parser skipped (wrong number of fields; counted in BadRecords)

    def column(self, name: str) -> pa.Array:
        col = self.table.column(name)
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _bulk_add(bad: BadRecords, path: Path, lines: np.ndarray, reason: str, details: list[str] | None = None) -> None:
    """Count many bad rows at once; only the first few become examples (BadRecords keeps 5)."""
    n = len(lines)
    if n == 0:
        return
    k = min(n, bad.max_examples)
    for j in range(k):
        bad.add(path, int(lines[j]), reason, details[j] if details else "")
    bad.counts[reason] += n - k
    bad.dropped_counts[reason] += n - k
    bad.dropped_by_file_reason[(path.name, reason)] += n - k


def _header(path: Path) -> list[str]:
    with open(path, "r", encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
    if not first.strip():
        raise StoreError(path, "is empty or has no header line", "MMRec files start with a tab-separated header")
    return [c.strip() for c in first.rstrip("\r\n").split("\t")]


def _read_tsv(path: Path, required: tuple[str, ...], bad: BadRecords) -> _Tsv:
    """Read every column as a string; rows with the wrong number of fields are counted and skipped.

    Single-threaded parsing is what lets pyarrow report the physical line of a bad row, and is
    still far faster than anything else here (~0.3 s for 300k lines). Empty lines are kept as
    rows so that row → line arithmetic stays exact; they then fail validation and are counted.
    """
    if not path.is_file():
        raise StoreError(path, "not found", f"an MMRec directory needs {path.name}")
    names = _header(path)
    missing = [c for c in required if c not in names]
    if missing:
        raise StoreError(path, f"header {names} lacks column(s) {missing}", f"expected columns {list(required)}")
    skipped: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        skipped.append(int(row.number) if row.number is not None else -1)
        bad.add(
            path,
            row.number,
            "wrong number of fields",
            f"expected {row.expected_columns}, got {row.actual_columns}: {row.text[:80]!r}",
        )
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                delimiter="\t", quote_char=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in names}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise StoreError(path, f"cannot be parsed as tab-separated text ({exc})") from exc
    return _Tsv(path, table, _row_lines(table.num_rows, skipped), len(skipped))


def _row_lines(n_rows: int, skipped: list[int]) -> np.ndarray:
    """Physical line of each kept row: lines 2, 3, … minus the lines the parser skipped."""
    total = n_rows + len(skipped) + 2
    taken = np.zeros(total, dtype=bool)
    s = np.asarray([x for x in skipped if 0 <= x < total], dtype=np.int64)
    taken[s] = True
    return (np.flatnonzero(~taken[2:]) + 2)[:n_rows]


def _ints(tsv: _Tsv, names: tuple[str, ...], bad: BadRecords) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Columns as int64 and one validity mask; a bad row is counted once, for its first bad column."""
    values: dict[str, np.ndarray] = {}
    ok = np.ones(tsv.table.num_rows, dtype=bool)
    empty = np.ones(tsv.table.num_rows, dtype=bool)  # every field blank: an empty line
    for name in tsv.table.column_names:
        blank = pc.equal(pc.utf8_trim_whitespace(tsv.column(name)), "")
        empty &= np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
    _bulk_add(bad, tsv.path, tsv.lines[empty], "empty line")
    failed: list[tuple[str, np.ndarray, pa.Array]] = []
    for name in names:
        col = pc.utf8_trim_whitespace(tsv.column(name))
        good = np.asarray(pc.match_substring_regex(col, _UINT).to_numpy(zero_copy_only=False), dtype=bool)
        v = np.zeros(len(col), dtype=np.int64)
        if good.any():
            v[good] = pc.cast(col.filter(pa.array(good)), pa.int64()).to_numpy()
        values[name] = v
        failed.append((name, ok & ~good, col))
        ok &= good
    for name, rows_mask, col in failed:
        rows = np.flatnonzero(rows_mask & ~empty)
        if rows.size:
            shown = col.take(pa.array(rows[: bad.max_examples])).to_pylist()
            _bulk_add(
                bad,
                tsv.path,
                tsv.lines[rows],
                f"{name} is not a non-negative integer",
                [f"{name}={v!r}" for v in shown],
            )
    return values, ok


def _mapping(path: Path, key: str, id_col: str, bad: BadRecords) -> list[str]:
    """Names in id order; the ids must be exactly 0..n-1 with one name each."""
    tsv = _read_tsv(path, (key, id_col), bad)
    cols, ok = _ints(tsv, (id_col,), bad)
    ids = cols[id_col]
    names = np.asarray(pc.utf8_trim_whitespace(tsv.column(key)).to_numpy(zero_copy_only=False), dtype=object)
    empty = ok & (names == "")
    if empty.any():
        _bulk_add(bad, path, tsv.lines[empty], f"empty {key}")
    ok &= ~empty
    ids, names, lines = ids[ok], names[ok], tsv.lines[ok]
    n = len(ids)
    if n == 0:
        raise StoreError(path, "has no valid rows", f"expected '{key}\\t{id_col}' lines")
    order = np.argsort(ids, kind="stable")
    ids, names, lines = ids[order], names[order], lines[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1]) + 1
    if dup.size:
        raise StoreError(
            path, f"{id_col} {ids[dup[0]]} appears twice (line {lines[dup[0]]})", "each id must map to exactly one name"
        )
    if ids[0] != 0 or ids[-1] != n - 1:
        gap = int(np.flatnonzero(ids != np.arange(n))[0]) if (ids != np.arange(n)).any() else n
        raise StoreError(
            path,
            f"{id_col} values are not contiguous 0..{n - 1}: id {gap} is missing",
            "MMRec ids index positional feature rows; fix the mapping or its bad lines",
        )
    uniq, counts = np.unique(names.astype(str), return_counts=True)
    if (counts > 1).any():
        twice = str(uniq[counts > 1][0])
        at = sorted(int(x) for x in lines[names == twice])
        raise StoreError(
            path,
            f"{key} {twice!r} maps to {int((names == twice).sum())} different {id_col}s (lines {at[:5]})",
            "the mapping must be one-to-one",
        )
    return [str(x) for x in names]


def _interactions(path: Path, n_users: int | None, n_items: int, bad: BadRecords) -> dict[str, Any]:
    tsv = _read_tsv(path, ("userID", "itemID", "x_label"), bad)
    bad.count_lines(path, tsv.table.num_rows + tsv.skipped + 1, header=1)  # every line accounted for in prepare.json
    has_ts = "timestamp" in tsv.table.column_names
    cols, ok = _ints(tsv, ("userID", "itemID", "x_label") + (("timestamp",) if has_ts else ()), bad)
    user, item, label = cols["userID"], cols["itemID"], cols["x_label"]
    ts = cols["timestamp"] if has_ts else np.zeros(len(user), np.int64)
    rating: np.ndarray = np.full(len(user), np.nan, dtype=np.float32)
    if "rating" in tsv.table.column_names:
        rating = _floats(tsv, "rating", bad)
    checks = [
        (ok & ~np.isin(label, list(X_LABELS)), "x_label not in {0, 1, 2}", label, "x_label"),
        (ok & (item >= n_items), f"itemID not in {ITEM_MAPPING} (0..{n_items - 1})", item, "itemID"),
    ]
    if n_users is not None:
        checks.append((ok & (user >= n_users), f"userID not in {USER_MAPPING} (0..{n_users - 1})", user, "userID"))
    for mask, reason, values, name in checks:
        rows = np.flatnonzero(mask)
        _bulk_add(bad, path, tsv.lines[rows], reason, [f"{name}={values[r]}" for r in rows[: bad.max_examples]])
        ok &= ~mask
    keep = np.flatnonzero(ok)
    user, item, label, ts, rating, lines = (a[keep] for a in (user, item, label, ts, rating, tsv.lines))
    # A repeated (user, item) pair would put one interaction in two splits: keep its first line.
    key = user * np.int64(n_items) + item
    _, first = np.unique(key, return_index=True)
    dup = np.setdiff1d(np.arange(len(key)), first)
    _bulk_add(
        bad,
        path,
        lines[dup],
        "duplicate (userID, itemID) pair",
        [f"userID={user[r]} itemID={item[r]}" for r in dup[: bad.max_examples]],
    )
    first.sort()
    return {
        "user": user[first],
        "item": item[first],
        "label": label[first],
        "timestamp": ts[first],
        "rating": rating[first],
        "lines_read": np.int64(tsv.table.num_rows),
        "duplicates": np.int64(len(dup)),
    }


def _floats(tsv: _Tsv, name: str, bad: BadRecords) -> np.ndarray:
    """Optional numeric column (rating): unparseable values become NaN and are counted (row kept)."""
    col = pc.utf8_trim_whitespace(tsv.column(name))
    ok = np.asarray(pc.match_substring_regex(col, r"^-?[0-9]+(\.[0-9]*)?$").to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full(len(col), np.nan, dtype=np.float32)
    if ok.any():
        out[ok] = pc.cast(col.filter(pa.array(ok)), pa.float32()).to_numpy()
    rows = np.flatnonzero(~ok)
    for r in rows[: bad.max_examples]:
        bad.add(tsv.path, int(tsv.lines[r]), f"{name} is not a number (kept as null)", dropped=False)
    if len(rows) > bad.max_examples:
        bad.counts[f"{name} is not a number (kept as null)"] += len(rows) - bad.max_examples
    return out


def _item_text(path: Path, asins: list[str], bad: BadRecords) -> list[str | None]:
    """items.text from item_text.tsv; rows whose asin disagrees with the mapping are not used."""
    tsv = _read_tsv(path, ("itemID", "asin", "keywords"), bad)
    cols, ok = _ints(tsv, ("itemID",), bad)
    ids = cols["itemID"]
    n = len(asins)
    out_of_range = ok & (ids >= n)
    _bulk_add(
        bad,
        path,
        tsv.lines[out_of_range],
        f"itemID not in {ITEM_MAPPING}",
        [f"itemID={i}" for i in ids[out_of_range][: bad.max_examples]],
    )
    ok &= ~out_of_range
    file_asins = np.asarray(pc.utf8_trim_whitespace(tsv.column("asin")).to_numpy(zero_copy_only=False), dtype=object)
    expected = np.asarray(asins, dtype=object)
    mismatch = np.zeros(len(ids), dtype=bool)
    mismatch[ok] = file_asins[ok] != expected[ids[ok]]
    rows = np.flatnonzero(mismatch)
    _bulk_add(
        bad,
        path,
        tsv.lines[rows],
        f"asin differs from {ITEM_MAPPING}",
        [
            f"itemID={ids[r]} asin={file_asins[r]!r}, mapping says {expected[ids[r]]!r}"
            for r in rows[: bad.max_examples]
        ],
    )
    ok &= ~mismatch
    keywords = pc.utf8_trim_whitespace(tsv.column("keywords")).to_pylist()
    text: list[str | None] = [None] * n
    seen = np.zeros(n, dtype=bool)
    dup_lines = []
    for r in np.flatnonzero(ok):
        i = ids[r]
        if seen[i]:
            dup_lines.append(tsv.lines[r])
            continue
        seen[i] = True
        text[i] = keywords[r] or None
    _bulk_add(bad, path, np.asarray(dup_lines, dtype=np.int64), "duplicate itemID (first line kept)")
    return text


def _open_features(src: Path, n_items: int) -> dict[str, np.ndarray]:
    """Memory-map the npy files and check their shape before anything is written."""
    out: dict[str, np.ndarray] = {}
    for fname in FEATURE_FILES:
        path = src / fname
        if not path.is_file():
            continue
        try:
            mat = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise StoreError(path, f"is not a readable .npy array ({exc})") from exc
        if mat.ndim != 2 or mat.shape[0] != n_items or mat.shape[1] == 0:
            raise StoreError(
                path,
                f"has shape {mat.shape} but {ITEM_MAPPING} has {n_items} items",
                "row i must be the vector of itemID i: export it for exactly this item mapping",
            )
        if not np.issubdtype(mat.dtype, np.number):
            raise StoreError(path, f"has dtype {mat.dtype}, expected a numeric matrix")
        out[fname] = mat
    return out


def _write_features(
    src: Path, paths: DatasetPaths, asins: list[str], mats: dict[str, np.ndarray], progress: bool
) -> dict[str, Any]:
    written: dict[str, Any] = {}
    for fname, mat in tqdm(mats.items(), desc="mmrec features", disable=not progress or not mats):
        name, modality = FEATURE_FILES[fname]
        path = src / fname
        vectors = np.asarray(mat, dtype=np.float32)
        finite = np.asarray(np.isfinite(vectors).all(axis=1))
        vectors = np.where(finite[:, None], vectors, 0.0).astype(np.float32)
        digest = file_sha256(path)
        write_features(
            paths.feature(name),
            asins,
            np.arange(len(asins)),
            vectors,
            encoder="mmrec-npy",
            model=f"mmrec:{fname}",
            weights="precomputed by MMRec",
            modality=modality,
            input_hash=digest[:16],
            valid=finite,
            reasons=[None if v else "non-finite values in npy row" for v in finite],
            extra={"source": "MMRec npy", "source_file": path.name, "source_sha256": digest},
        )
        written[name] = {
            "file": fname,
            "dim": int(mat.shape[1]),
            "rows": int(mat.shape[0]),
            "invalid_rows": int((~finite).sum()),
            "modality": modality,
        }
    return written


def _find_inter(src: Path, name: str | None) -> Path:
    if name is not None:
        return src / f"{name}{INTER_SUFFIX}"
    found = sorted(src.glob(f"*{INTER_SUFFIX}"))
    if len(found) != 1:
        raise StoreError(
            src,
            f"has {len(found)} *{INTER_SUFFIX} files {[p.name for p in found]}",
            "keep one <name>.inter in the --source folder (or call import_mmrec(..., name=...))",
        )
    return found[0]


def import_mmrec(
    src: Path,
    dataset: str,
    *,
    home: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
    cold_items: float = 0.0,
    seed: int = 0,
) -> dict:
    """Import the MMRec directory `src` as `dataset`; returns the report also written to prepare.json.

    `cold_items` > 0: the item-cold protocol (pipelines.prepare.draw_cold_items, seeded by `seed`);
    warm interactions keep the published split, a cold item's move to its item's half."""
    src = Path(src)
    if not src.is_dir():
        raise StoreError(src, "is not a directory", "point to a folder holding <name>.inter and i_id_mapping.tsv")
    paths = dataset_paths(dataset, home)
    inter_path = _find_inter(src, name)
    bad = BadRecords()
    steps = tqdm(total=4, desc=f"mmrec import {dataset}", disable=not progress)

    asins = _mapping(src / ITEM_MAPPING, "asin", "itemID", bad)
    user_map = src / USER_MAPPING
    reviewer_ids = _mapping(user_map, "user_id", "userID", bad) if user_map.is_file() else None
    steps.update()
    inter = _interactions(inter_path, len(reviewer_ids) if reviewer_ids is not None else None, len(asins), bad)
    if reviewer_ids is None:  # no mapping published: ids are all we know
        n_users = int(inter["user"].max()) + 1 if len(inter["user"]) else 0
        reviewer_ids = [f"mmrec-user-{u}" for u in range(n_users)]
    steps.update()
    text_path = src / ITEM_TEXT
    text = _item_text(text_path, asins, bad) if text_path.is_file() else [None] * len(asins)
    steps.update()

    n_items, n_users = len(asins), len(reviewer_ids)
    order = np.lexsort((inter["item"], inter["timestamp"], inter["user"]))
    user, item, ts, rating = (inter[k][order] for k in ("user", "item", "timestamp", "rating"))
    split_code = inter["label"][order].astype(np.int8)
    cold_ids, cold_code = draw_cold_items(n_items, cold_items, seed)
    split_code = cold_interaction_split(item, split_code, cold_ids, cold_code)
    split_hash = array_hash(user.astype(np.int32), item.astype(np.int32), split_code)
    items = pa.table(
        {
            "item_id": pa.array(np.arange(n_items, dtype=np.int32)),
            "asin": pa.array(asins, pa.string()),
            "title": pa.nulls(n_items, pa.string()),
            "description": pa.nulls(n_items, pa.string()),
            "brand": pa.nulls(n_items, pa.string()),
            "categories": pa.array([[] for _ in range(n_items)], pa.list_(pa.string())),
            "image_url": pa.nulls(n_items, pa.string()),
            "text": pa.array(text, pa.string()),
        }
    )
    users = pa.table(
        {"user_id": pa.array(np.arange(n_users, dtype=np.int32)), "reviewer_id": pa.array(reviewer_ids, pa.string())}
    )
    interactions = pa.table(
        {
            "user_id": pa.array(user.astype(np.int32)),
            "item_id": pa.array(item.astype(np.int32)),
            "rating": pa.array(rating, pa.float32(), mask=np.isnan(rating)),
            "timestamp": pa.array(ts.astype(np.int64)),
            "split": pa.array(np.array(schemas.SPLITS, dtype=object)[split_code], pa.string()),
        }
    )
    feature_mats = _open_features(src, n_items)
    steps.update()

    sizes = {X_LABELS[c]: int((split_code == c).sum()) for c in sorted(X_LABELS)}
    sources = {
        p.name: {"path": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}  # by name: no machine path
        for p in [inter_path, src / ITEM_MAPPING, user_map, text_path, *(src / f for f in FEATURE_FILES)]
        if p.is_file()
    }
    report = {
        "dataset": paths.name,
        "source": "mmrec",
        "src": src.resolve().name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": sources,
        "steps": [
            {
                "step": "read",
                "lines": int(inter["lines_read"]),
                "interactions": int(len(user)),
                "users": int(np.unique(user).size),
                "items": int(np.unique(item).size),
            }
        ],
        "duplicates_removed": int(inter["duplicates"]),
        "missing": {
            "text": int(sum(t is None for t in text)),
            "user_mapping": not user_map.is_file(),
            "users_without_interactions": int(n_users - np.unique(user).size),
            "items_without_interactions": int(n_items - np.unique(item).size),
        },
        "bad_records": bad.as_dict(),
        "rows": row_accounting(bad, 0, 0, int(len(user))),  # repeated pairs are rejected lines here (first kept)
        "split": {"seed": None, "hash": split_hash, "rule": SPLIT_RULE, "sizes": sizes},
        "features": {},
        "output": {"items": n_items, "users": n_users, "interactions": int(len(user))},
    }
    if cold_items:
        report["cold_items"] = cold_report(cold_items, seed, cold_ids, cold_code, item)
    write_table(items, paths.items, schemas.ITEMS)
    write_table(users, paths.users, schemas.USERS)
    write_table(
        interactions,
        paths.interactions,
        schemas.INTERACTIONS,
        metadata={"split_hash": split_hash, "split_rule": SPLIT_RULE, "source": "mmrec"},
    )
    write_cold_items(paths, cold_ids, cold_code, asins)
    report["features"] = _write_features(src, paths, asins, feature_mats, progress)
    steps.close()
    write_json(report, paths.prepare_report)
    return report
