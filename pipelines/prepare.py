"""Normalized records → the three tables of a dataset (items, users, interactions) + a report.

Steps, in order: dedup (same user+item: keep the latest), k-core to a fixed point, contiguous
ids (sorted asin / sorted reviewer id, so the same input always gives the same ids), the
per-user split of METHOD.md, and the item `text` the text encoder reads. Nothing is written
until every step has succeeded, so a failure leaves the previous tables untouched.

Split rule (METHOD.md, checked against ../shared/data/mmrec-sports, whose published split it
reproduces count-for-count): a user with n interactions
- n >= 10: a seeded shuffle, then the first ceil(0.8 n) train, the next floor(0.1 n) valid, the
  rest test;
- 3 <= n < 10: by timestamp (ties broken by the same seeded key), the last one test, the one
  before it valid, the rest train;
- n < 3 (only possible with kcore < 3): all train — there is nothing left to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.amazon import TRUNCATED
from pipelines.html_text import CleaningCounts, clean_text, first_sentence
from pipelines.image_paths import rebase_images
from pipelines.records import REVIEW_BATCH_SCHEMA, REVIEW_SPLIT_SCHEMA, BadRecords, Product, Review, ReviewBatch
from store import schemas
from store.layout import DatasetPaths
from store.tables import write_json, write_table
from store.vectors import array_hash

SPLIT_NAMES = schemas.SPLITS  # codes 0, 1, 2
SPLIT_RULE = (
    "per user: n>=10 -> seeded shuffle, first ceil(0.8n) train, next floor(0.1n) valid, rest "
    "test; 3<=n<10 -> by timestamp (seeded tie-break) last test, one before valid, rest train; "
    "n<3 -> all train"
)


@dataclass(frozen=True)
class PrepareConfig:
    """What prepare may be asked to vary; defaults reproduce the paper protocol."""

    kcore: int = 5
    seed: int = 0
    max_text_chars: int = 2000
    # Fewer kept items with a metadata record than this share is an error (a --meta file of the
    # wrong category, or an unreadable one, would otherwise surface two stages later). None = no
    # check (the demo and callers with no metadata file).
    min_meta_match: float | None = None
    allow_missing_meta: bool = False
    # item-cold protocol: this seeded fraction of items is held out with all its interactions
    cold_items: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.kcore, int) or self.kcore < 1:
            raise ValueError(f"kcore must be an integer >= 1 (1 = no filtering), got {self.kcore!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.max_text_chars < 16:
            raise ValueError(f"max_text_chars must be >= 16, got {self.max_text_chars!r}")
        if not 0.0 <= self.cold_items < 1.0:
            raise ValueError(f"cold_items must be in [0, 1), got {self.cold_items!r}")
        if self.min_meta_match is not None and not 0.0 <= self.min_meta_match <= 1.0:
            raise ValueError(f"min_meta_match must be between 0 and 1, got {self.min_meta_match!r}")


# --------------------------------------------------------------------------------------------
# text cleaning
# --------------------------------------------------------------------------------------------
def clean_html(value: str | None) -> str | None:
    """Plain text of a raw field (see pipelines.html_text: a real HTML parser, CSS/JS dropped)."""
    return clean_text(value)


def clean_categories(categories: Iterable[str]) -> list[str]:
    """Cleaned category names, empties dropped, duplicates removed keeping the first."""
    seen: dict[str, None] = {}
    for raw in categories:
        c = clean_html(raw)
        if c and c not in seen:
            seen[c] = None
    return list(seen)


def item_text(
    title: str | None,
    brand: str | None,
    categories: list[str],
    description: str | None,
    max_chars: int = 2000,
) -> str | None:
    """The one string the text encoder sees: 'Title. Brand: B. Categories: a, b. Description'."""
    parts = []
    if title:
        parts.append(title)
    if brand:
        parts.append(f"Brand: {brand}")
    if categories:
        parts.append("Categories: " + ", ".join(categories))
    if description:
        parts.append(description)
    if not parts:
        return None
    text = ". ".join(p.rstrip(" .") for p in parts[:-1]) + (". " if len(parts) > 1 else "") + parts[-1]
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        text = text[: cut if cut > max_chars // 2 else max_chars].rstrip()
    return text


# --------------------------------------------------------------------------------------------
# reviews → integer arrays
# --------------------------------------------------------------------------------------------
@dataclass
class ReviewArrays:
    """Reviews as parallel arrays of codes into `users` / `items` (first-seen order)."""

    users: pa.Array  # string
    items: pa.Array  # string
    u: np.ndarray
    i: np.ndarray
    rating: np.ndarray  # float64, NaN = no rating
    ts: np.ndarray
    split: np.ndarray | None = None  # given split codes (-1 = not given); None: no batch had one

    def __len__(self) -> int:
        return len(self.u)


def _batches(reviews: Iterable[Review | ReviewBatch], size: int = 1 << 16) -> Iterator[ReviewBatch]:
    pending: list[Review] = []
    for r in reviews:
        if isinstance(r, ReviewBatch):
            if pending:
                yield ReviewBatch.from_reviews(pending)
                pending = []
            yield r
        else:
            pending.append(r)
            if len(pending) >= size:
                yield ReviewBatch.from_reviews(pending)
                pending = []
    if pending:
        yield ReviewBatch.from_reviews(pending)


def collect_reviews(reviews: Iterable[Review | ReviewBatch]) -> ReviewArrays:
    """Reviews (records or Arrow batches) → integer codes; hashing happens in Arrow, not Python."""
    batches = list(_batches(reviews))
    given = any(b.has_split for b in batches)
    tables = [_with_split(b) if given else b.table for b in batches]
    table = pa.concat_tables(tables) if tables else REVIEW_BATCH_SCHEMA.empty_table()

    def codes(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
        names = pc.unique(column)
        if isinstance(names, pa.ChunkedArray):
            names = names.combine_chunks()
        idx = pc.index_in(column, value_set=names)
        return names, idx.to_numpy().astype(np.int64) if len(column) else np.zeros(0, np.int64)

    users, u = codes(table.column("reviewer_id"))
    items, i = codes(table.column("asin"))
    rating = pc.fill_null(table.column("rating"), float("nan")).to_numpy()
    ts = table.column("timestamp").to_numpy().astype(np.int64, copy=False)
    split = None
    if given:
        split = pc.fill_null(table.column("split"), -1).to_numpy().astype(np.int8, copy=False)
    return ReviewArrays(users, items, u, i, np.asarray(rating, dtype=np.float64), ts, split)


def _with_split(batch: ReviewBatch) -> pa.Table:
    if batch.has_split:
        return batch.table
    return batch.table.append_column("split", pa.nulls(len(batch), pa.int8())).cast(REVIEW_SPLIT_SCHEMA)


def dedup_latest(u: np.ndarray, i: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Indices to keep: one per (user, item), the latest by timestamp, then by file order."""
    if len(u) == 0:
        return np.zeros(0, dtype=np.int64)
    key = u * (int(i.max()) + 1) + i
    order = np.lexsort((np.arange(len(u)), ts, key))
    k = key[order]
    last = np.ones(len(k), dtype=bool)
    last[:-1] = k[1:] != k[:-1]
    return np.sort(order[last])


def kcore_filter(u: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, list[dict[str, int]]]:
    """Mask of interactions in the k-core (every user and item has >= k), iterated to a fixed
    point, and what each iteration removed."""
    keep = np.ones(len(u), dtype=bool)
    n_u = int(u.max()) + 1 if len(u) else 0
    n_i = int(i.max()) + 1 if len(i) else 0
    iterations: list[dict[str, int]] = []
    while True:
        du = np.bincount(u[keep], minlength=n_u)
        di = np.bincount(i[keep], minlength=n_i)
        drop = keep & ((du[u] < k) | (di[i] < k))
        n_drop = int(drop.sum())
        if n_drop == 0:
            return keep, iterations
        keep &= ~drop
        iterations.append(
            {
                "iteration": len(iterations) + 1,
                "users_below_k": int(((du > 0) & (du < k)).sum()),
                "items_below_k": int(((di > 0) & (di < k)).sum()),
                "interactions_removed": n_drop,
                "interactions": int(keep.sum()),
                "users": int(np.unique(u[keep]).size),
                "items": int(np.unique(i[keep]).size),
            }
        )


def assign_split(user_id: np.ndarray, ts: np.ndarray, item_id: np.ndarray, seed: int) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) per interaction, by the rule in the module doc.

    The random key is drawn in (user_id, item_id) order, so the split depends only on the data
    and the seed, never on the order of lines in the source files.
    """
    n = len(user_id)
    split = np.zeros(n, dtype=np.int8)
    if n == 0:
        return split
    rng = np.random.default_rng(seed)
    canon = np.lexsort((item_id, user_id))
    key = np.empty(n)
    key[canon] = rng.random(n)
    counts = np.bincount(user_id)
    n_of = counts[user_id]
    by_time = np.where(n_of < 10, ts, 0)  # large users: shuffle only (key), small: time, then key
    order = np.lexsort((key, by_time, user_id))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    uo = user_id[order]
    pos = np.arange(n) - starts[uo]
    m = counts[uo]
    code = np.zeros(n, dtype=np.int8)
    small = (m >= 3) & (m < 10)
    code[small & (pos == m - 1)] = 2
    code[small & (pos == m - 2)] = 1
    big = m >= 10
    n_train = (8 * m + 9) // 10  # ceil(0.8 m) in integers
    n_valid = m // 10
    code[big & (pos >= n_train)] = 1
    code[big & (pos >= n_train + n_valid)] = 2
    split[order] = code
    return split


COLD_RULE = (
    "item-cold: a seeded draw of round(F n_items) items after k-core and id assignment, the first "
    "half (rounded down) valid, the rest test; every interaction of a cold item is in its item's "
    "half; the warm items' interactions are split by the usual rule over warm interactions only"
)
COLD_STREAM = 33  # the cold draw's own random stream beside the split's (issue 33)


def draw_cold_items(n_items: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted cold item ids, split code per id: 1 valid, 2 test) for the item-cold protocol.

    A stream of its own ([seed, 33]), so the draw does not shift the warm split's random keys.
    The test half gets the odd item: test is the division the report leads with.
    """
    n_cold = int(round(fraction * n_items))
    if n_cold == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int8)
    if n_cold >= n_items:
        raise ValueError(f"--cold-items {fraction} holds out all {n_items} items: no warm item is left to train on")
    drawn = np.random.default_rng([seed, COLD_STREAM]).permutation(n_items)[:n_cold]
    code = np.full(n_cold, 2, np.int8)
    code[: n_cold // 2] = 1
    order = np.argsort(drawn)
    return drawn[order].astype(np.int64), code[order]


def cold_interaction_split(
    item_id: np.ndarray, warm_split: np.ndarray, cold_ids: np.ndarray, cold_code: np.ndarray
) -> np.ndarray:
    """Split codes of all interactions: a cold item's interactions take its half, others `warm_split`."""
    split = np.asarray(warm_split, np.int8).copy()
    if len(cold_ids):
        pos = np.searchsorted(cold_ids, item_id)
        hit = (pos < len(cold_ids)) & (cold_ids[np.minimum(pos, len(cold_ids) - 1)] == item_id)
        split[hit] = cold_code[pos[hit]]
    return split


def cold_report(
    fraction: float, seed: int | None, cold_ids: np.ndarray, cold_code: np.ndarray, item_id: np.ndarray
) -> dict[str, Any]:
    """prepare.json's `cold_items`: what was held out, in items and interactions per half."""
    per_item = np.bincount(item_id, minlength=int(item_id.max(initial=-1)) + 1)
    counts = per_item[cold_ids] if len(cold_ids) else np.zeros(0, np.int64)
    return {
        "fraction": fraction,
        "seed": seed,
        "rule": COLD_RULE,
        "items": int(len(cold_ids)),
        "valid_items": int((cold_code == 1).sum()),
        "test_items": int((cold_code == 2).sum()),
        "valid_interactions": int(counts[cold_code == 1].sum()),
        "test_interactions": int(counts[cold_code == 2].sum()),
    }


def write_cold_items(paths: DatasetPaths, cold_ids: np.ndarray, cold_code: np.ndarray, asins: list[str]) -> None:
    """cold_items.parquet when there are cold items; otherwise remove an older one (absent = none)."""
    if not len(cold_ids):
        paths.cold_items.unlink(missing_ok=True)
        return
    table = pa.table(
        {
            "item_id": pa.array(cold_ids.astype(np.int32)),
            "asin": pa.array([asins[i] for i in cold_ids.tolist()], pa.string()),
            "split": pa.array(np.array(SPLIT_NAMES, dtype=object)[cold_code], pa.string()),
        }
    )
    write_table(table, paths.cold_items, schemas.COLD_ITEMS)


# --------------------------------------------------------------------------------------------
# the prepare step
# --------------------------------------------------------------------------------------------
DUPLICATE_POLICY = (
    "merged by asin: the most complete record is kept (most non-empty of title, description, "
    "brand, categories, image_url, after cleaning); ties keep the first seen"
)
GIVEN_SPLIT_RULE = (
    "given: the split column of the interactions file, or its --train/--valid/--test files, kept as given"
)


@dataclass
class _Catalog:
    products: dict[str, Product] = field(default_factory=dict)
    seen: int = 0  # records read
    duplicates: int = 0  # records whose asin had been read before
    duplicate_asins: int = 0  # asins read more than once
    replaced: int = 0  # kept items whose record came from a later, more complete copy

    def report(self) -> dict[str, Any]:
        """prepare.json's `metadata` counts (interactions and catalog-only datasets alike)."""
        return {
            "products_read": self.seen,
            "duplicate_products": self.duplicates,
            "duplicate_asins": self.duplicate_asins,
            "duplicates_replaced_by_more_complete": self.replaced,
            "duplicate_policy": DUPLICATE_POLICY,
        }


def completeness(p: Product) -> int:
    """How many of the fields prepare uses are non-empty once cleaned."""
    return sum(
        (
            clean_text(p.title) is not None,
            clean_text(p.description) is not None,
            clean_text(p.brand) is not None,
            bool(clean_categories(p.categories)),
            bool(p.image_url and p.image_url.strip()),
        )
    )


def _collect_products(products: Iterable[Product], wanted: set[str]) -> _Catalog:
    """Keep only the products that survived k-core (metadata files are 10-100x larger).

    The 2018 dumps repeat about a third of their lines, sometimes with a copy that has more
    fields: repeats are merged by DUPLICATE_POLICY (scored only for wanted items, so the cost
    stays with the few kept products).
    """
    cat = _Catalog()
    seen: set[str] = set()
    repeated: set[str] = set()
    score: dict[str, int] = {}
    for p in products:
        cat.seen += 1
        if p.asin in seen:
            cat.duplicates += 1
            repeated.add(p.asin)
            if p.asin in wanted:
                kept = cat.products[p.asin]
                if p.asin not in score:
                    score[p.asin] = completeness(kept)
                new = completeness(p)
                if new > score[p.asin]:
                    cat.products[p.asin], score[p.asin] = p, new
                    cat.replaced += 1
            continue
        seen.add(p.asin)
        if p.asin in wanted:
            cat.products[p.asin] = p
    cat.duplicate_asins = len(repeated)
    return cat


def _step(name: str, n: int, users: int, items: int) -> dict[str, Any]:
    return {"step": name, "interactions": int(n), "users": int(users), "items": int(items)}


def prepare(
    paths: DatasetPaths,
    reviews: Iterable[Review | ReviewBatch],
    products: Iterable[Product],
    *,
    kcore: int = 5,
    seed: int = 0,
    bad: BadRecords | None = None,
    sources: dict[str, Any] | None = None,
    config: PrepareConfig | None = None,
    meta_file: str | None = None,
) -> dict[str, Any]:
    """Build and write items/users/interactions and the data-quality report; return the report.

    `products` is consumed only after k-core, so a lazy metadata reader never holds more than the
    surviving items in memory. `meta_file` (the metadata file's path or name) is what the
    metadata-match error names (config.min_meta_match). A refusal (ValueError) still writes
    prepare.json with the reason and the counts known by then (the tables stay as they were):
    the numbers that explain a failure are the ones a user needs most.
    """
    bad = bad if bad is not None else BadRecords()
    known: dict[str, Any] = {}
    try:
        return _prepare(
            paths,
            reviews,
            products,
            kcore=kcore,
            seed=seed,
            bad=bad,
            sources=sources,
            config=config,
            meta_file=meta_file,
            known=known,
        )
    except ValueError as exc:
        write_failure_report(paths, str(exc), known, bad, sources)
        raise


def write_failure_report(
    paths: DatasetPaths, reason: str, known: dict[str, Any], bad: BadRecords, sources: dict[str, Any] | None
) -> dict[str, Any]:
    """prepare.json for an ingest that refused: why, and every count gathered before it stopped."""
    report = {
        "dataset": paths.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "failed": reason,
        "tables": "unchanged: the tables of the previous successful ingest, if any, are kept",
        "sources": sources or {},
        **known,
        "bad_records": bad.as_dict(),
    }
    report["facts"] = data_facts(report, bad)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json(report, paths.prepare_report)
    return report


def exact_duplicates(arr: ReviewArrays) -> int:
    """Records that repeat an earlier one in user, item, rating and time (the 2018 dumps repeat
    whole lines: Appliances 5-core has 2,094 of 2,277), as opposed to a user re-reviewing an item."""
    if len(arr) == 0:
        return 0
    rating = np.nan_to_num(arr.rating, nan=-1.0e300).view(np.int64)
    rows = np.stack([arr.u, arr.i, arr.ts, rating], axis=1)
    return len(arr) - len(np.unique(rows, axis=0))


def data_facts(report: dict[str, Any], bad: BadRecords) -> list[str]:
    """One line per fact a user should see without opening prepare.json (the stage prints them)."""
    facts = [truncation_fact(e) for e in (bad.examples.get(TRUNCATED) or [])]
    dup = report.get("duplicates") or {}
    if dup.get("exact") or dup.get("merged"):
        facts.append(
            f"duplicate lines: {dup['exact']:,} exact duplicates (same user, item, rating and time) and "
            f"{dup['merged']:,} merged records (same user and item, the latest kept) of {dup['records']:,} reviews"
        )
    meta = report.get("metadata") or {}
    if meta.get("duplicate_products"):
        facts.append(
            f"metadata: {meta['duplicate_products']:,} repeated product records of {meta['products_read']:,} "
            f"({meta['duplicate_asins']:,} asins) merged, the most complete kept"
        )
    missing, items = (report.get("missing") or {}).get("metadata", 0), (report.get("output") or {}).get("items")
    if missing and items:
        facts.append(f"{missing:,} of {items:,} items have no metadata record (no title, text or image)")
    kc = report.get("kcore") or {}
    if kc.get("iterations"):
        rounds = ", ".join(f"{r['interactions_removed']:,}" for r in kc["iterations"][:8])
        more = ", …" if len(kc["iterations"]) > 8 else ""
        facts.append(
            f"{kc['k']}-core: {kc['before']:,} → {kc['iterations'][-1]['interactions']:,} interactions in "
            f"{len(kc['iterations'])} round(s), removed per round: {rounds}{more}"
        )
    return facts


def truncation_fact(example: dict[str, Any]) -> str:
    """'F: cut off after line N (gzip ends mid-stream); N lines read': where the cut was and what survived."""
    complete = max(int(example.get("line") or 1) - 1, 0)
    return (
        f"{example.get('file')}: cut off after line {complete:,} (gzip ends mid-stream); {complete:,} lines read, "
        "the rest of the file is lost: download it again"
    )


def _prepare(
    paths: DatasetPaths,
    reviews: Iterable[Review | ReviewBatch],
    products: Iterable[Product],
    *,
    kcore: int,
    seed: int,
    bad: BadRecords,
    sources: dict[str, Any] | None,
    config: PrepareConfig | None,
    meta_file: str | None,
    known: dict[str, Any],
) -> dict[str, Any]:
    """prepare's work; `known` collects the counts as they come, for the report of a refusal."""
    cfg = config or PrepareConfig(kcore=kcore, seed=seed)
    arr = collect_reviews(reviews)
    steps = [_step("parsed", len(arr), len(arr.users), len(arr.items))]
    known["steps"] = steps
    if len(arr) == 0:
        raise ValueError(
            f"dataset {paths.name!r}: no usable reviews were read "
            f"({bad.dropped} line(s) rejected: {dict(bad.counts)}); check the review file"
        )

    keep = dedup_latest(arr.u, arr.i, arr.ts)
    duplicates = len(arr) - len(keep)
    exact = exact_duplicates(arr)
    known["duplicates"] = {"records": len(arr), "exact": exact, "merged": duplicates - exact}
    u, i, ts, rating = arr.u[keep], arr.i[keep], arr.ts[keep], arr.rating[keep]
    steps.append(_step("deduplicated", len(u), np.unique(u).size, np.unique(i).size))

    in_core, iterations = kcore_filter(u, i, cfg.kcore)
    removed_users = np.setdiff1d(np.unique(u), np.unique(u[in_core]))
    removed_items = np.setdiff1d(np.unique(i), np.unique(i[in_core]))
    u, i, ts, rating = u[in_core], i[in_core], ts[in_core], rating[in_core]
    steps.append(_step(f"{cfg.kcore}-core", len(u), np.unique(u).size, np.unique(i).size))
    known["kcore"] = {"k": cfg.kcore, "before": steps[1]["interactions"], "iterations": iterations}
    if len(u) == 0:
        raise ValueError(
            f"dataset {paths.name!r}: {cfg.kcore}-core filtering removed every interaction "
            f"({steps[1]['interactions']:,} interactions, {steps[1]['users']:,} users, {steps[1]['items']:,} items "
            f"before){_duplicates_note(known['duplicates'])}; use a smaller --kcore (see prepare.json)"
        )

    # contiguous ids: sorted names, so ids do not depend on file order
    user_codes, item_codes = np.unique(u), np.unique(i)
    user_names = arr.users.take(pa.array(user_codes))
    item_names = arr.items.take(pa.array(item_codes))
    u_sort = pc.sort_indices(user_names).to_numpy()
    i_sort = pc.sort_indices(item_names).to_numpy()
    u_map = np.empty(len(arr.users), dtype=np.int64)
    u_map[user_codes[u_sort]] = np.arange(len(user_codes))
    i_map = np.empty(len(arr.items), dtype=np.int64)
    i_map[item_codes[i_sort]] = np.arange(len(item_codes))
    user_id, item_id = u_map[u], i_map[i]
    reviewer_ids = user_names.take(pa.array(u_sort))
    asins = item_names.take(pa.array(i_sort)).to_pylist()

    cold_ids, cold_code = draw_cold_items(len(asins), cfg.cold_items, cfg.seed)
    warm = ~np.isin(item_id, cold_ids)
    split, split_info = _split(arr, keep, in_core, user_id, ts, item_id, cfg.seed, warm)
    split = cold_interaction_split(item_id, split, cold_ids, cold_code)
    order = np.lexsort((item_id, ts, user_id))
    user_id, item_id, ts, rating, split = (a[order] for a in (user_id, item_id, ts, rating, split))
    split_hash = array_hash(user_id.astype(np.int32), item_id.astype(np.int32), split)

    catalog = _collect_products(products, set(asins))
    rebase_images(catalog.products.values(), paths)  # local images: dataset-relative, no machine path
    items, missing, cleaning = _items_table(asins, catalog.products, cfg.max_text_chars)
    known.update(metadata=catalog.report(), missing=missing)
    meta_check = check_meta_match(cfg, catalog.seen, len(asins) - missing["metadata"], len(asins), bad, meta_file)

    users = pa.table({"user_id": pa.array(np.arange(len(reviewer_ids), dtype=np.int32)), "reviewer_id": reviewer_ids})
    inter = pa.table(
        {
            "user_id": pa.array(user_id.astype(np.int32)),
            "item_id": pa.array(item_id.astype(np.int32)),
            "rating": pa.array(rating.astype(np.float32), mask=np.isnan(rating)),
            "timestamp": pa.array(ts.astype(np.int64)),
            "split": pa.array(np.array(SPLIT_NAMES, dtype=object)[split]),
        }
    )
    sizes = {name: int((split == c).sum()) for c, name in enumerate(SPLIT_NAMES)}
    report = {
        "dataset": paths.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": sources or {},
        "steps": steps,
        "duplicates_removed": int(duplicates),
        "duplicates": known["duplicates"],
        "kcore": {
            "k": cfg.kcore,
            "before": steps[1]["interactions"],
            "iterations": iterations,
            "users_removed": int(removed_users.size),
            "items_removed": int(removed_items.size),
            "users_removed_examples": _first_sorted(arr.users, removed_users),
            "items_removed_examples": _first_sorted(arr.items, removed_items),
        },
        "metadata": {**catalog.report(), **meta_check},
        "missing": missing,
        "text_cleaning": cleaning,
        "bad_records": bad.as_dict(),
        "rows": row_accounting(bad, duplicates, steps[1]["interactions"] - steps[2]["interactions"], inter.num_rows),
        "split": {"seed": cfg.seed, "hash": split_hash, "sizes": sizes, **split_info},
        "output": {"items": items.num_rows, "users": users.num_rows, "interactions": inter.num_rows},
    }
    if cfg.cold_items:
        report["cold_items"] = cold_report(cfg.cold_items, cfg.seed, cold_ids, cold_code, item_id)
    report["facts"] = data_facts(report, bad)
    write_table(items, paths.items, schemas.ITEMS)
    write_table(users, paths.users, schemas.USERS)
    write_table(
        inter,
        paths.interactions,
        schemas.INTERACTIONS,
        metadata={"split_seed": str(cfg.seed), "split_hash": split_hash, "kcore": str(cfg.kcore)},
    )
    write_cold_items(paths, cold_ids, cold_code, asins)
    write_json(report, paths.prepare_report)
    return report


def _duplicates_note(dup: dict[str, int]) -> str:
    """' (2,094 of 2,277 lines were exact duplicates)': why so few were left, when that is why."""
    return f" ({dup['exact']:,} of {dup['records']:,} lines were exact duplicates)" if dup.get("exact") else ""


def _split(
    arr: ReviewArrays,
    keep: np.ndarray,
    in_core: np.ndarray,
    user_id: np.ndarray,
    ts: np.ndarray,
    item_id: np.ndarray,
    seed: int,
    warm: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The given split when every kept interaction has one, else the METHOD.md split (over the
    `warm` interactions only when given: a cold item's interactions get their half afterwards)."""
    if warm is not None and not warm.all():
        split = np.zeros(len(user_id), np.int8)
        split[warm], info = _split_all(
            arr, keep, in_core, user_id[warm], ts[warm], item_id[warm], seed, given_mask=warm
        )
        return split, info
    return _split_all(arr, keep, in_core, user_id, ts, item_id, seed)


def _split_all(
    arr: ReviewArrays,
    keep: np.ndarray,
    in_core: np.ndarray,
    user_id: np.ndarray,
    ts: np.ndarray,
    item_id: np.ndarray,
    seed: int,
    given_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    if arr.split is not None and (arr.split >= 0).any():
        given = arr.split[keep][in_core]
        given = given if given_mask is None else given[given_mask]
        unset = int((given < 0).sum())
        if unset == 0:
            return given.astype(np.int8), {
                "seed": None,
                "rule": GIVEN_SPLIT_RULE,
                "given": True,
                **_eval_only_users(user_id, given),
            }
        note = f"given split ignored: {unset} kept interaction(s) have no split value; assigned by the rule"
        return assign_split(user_id, ts, item_id, seed), {"rule": SPLIT_RULE, "given": False, "note": note}
    return assign_split(user_id, ts, item_id, seed), {"rule": SPLIT_RULE}


def _eval_only_users(user_id: np.ndarray, split: np.ndarray) -> dict[str, int]:
    """Users of a given split with no train interaction (research sets put some only in valid/test).

    They stay in their split as the source intends; a model has no history for them, so their
    scores come from the untrained user vector and the evaluator ranks them like anyone else."""
    in_train = np.unique(user_id[split == 0])
    users = np.unique(user_id)
    only = np.setdiff1d(users, in_train)
    mask = np.isin(user_id, only)
    return {"users_without_train": int(only.size), "interactions_of_users_without_train": int(mask.sum())}


NOT_A_ROW = ("truncated or corrupt gzip (rest of file lost)",)  # amazon.TRUNCATED: a cut, not a line


def row_accounting(bad: BadRecords, merged: int, removed_by_kcore: int, kept: int) -> dict[str, Any]:
    """Every line of the interaction files, accounted for: header, blank, rejected (by reason),
    merged into another record (same user and item), removed by k-core, or kept. `balanced` says
    the parts add up to the lines read; when they do not, a row went missing and the report says so."""
    files = sorted(bad.lines_read)
    rejected = bad.rejected(files, NOT_A_ROW)
    parts = {
        "header": sum(bad.header_lines[f] for f in files),
        "blank": sum(bad.blank_lines[f] for f in files),
        "rejected": sum(rejected.values()),
        "merged_duplicates": int(merged),
        "removed_by_kcore": int(removed_by_kcore),
        "kept": int(kept),
    }
    read = sum(bad.lines_read.values())
    return {
        "files": files,
        "lines_read": read,
        **parts,
        "rejected_by_reason": rejected,
        "balanced": read == sum(parts.values()),
    }


def check_meta_match(
    cfg: PrepareConfig, products_read: int, matched: int, n_items: int, bad: BadRecords, meta_file: str | None
) -> dict[str, Any]:
    """Fail (before any table is written) when too few kept items found a metadata record.

    An empty, unreadable or wrong-category --meta file would otherwise give items with no text
    and no image, and the ingest would only fail two stages later.
    """
    ratio = matched / n_items if n_items else 1.0
    info: dict[str, Any] = {"matched_items": matched, "items": n_items, "match_ratio": round(ratio, 4)}
    if cfg.min_meta_match is None:
        return {**info, "meta_check": "not checked"}
    info.update(min_meta_match=cfg.min_meta_match, allow_missing_meta=cfg.allow_missing_meta)
    if ratio >= cfg.min_meta_match:
        return {**info, "meta_check": "passed"}
    name = Path(meta_file).name if meta_file else "the metadata file"
    if cfg.allow_missing_meta:
        return {**info, "meta_check": f"failed ({ratio:.0%} < {cfg.min_meta_match:.0%}), allowed by allow_missing_meta"}
    cause = ""
    if products_read == 0:
        cause = (
            f"0 records parsed from {name}, {bad.by_file.get(name, 0)} bad line(s) (see bad_records in prepare.json); "
        )
    raise ValueError(
        f"{cause}{name} matched metadata for {matched} of {n_items} items ({ratio:.0%}, fewer than "
        f"min_meta_match {cfg.min_meta_match:.0%}); check that --meta is the same category as --reviews, "
        "or pass --allow-missing-meta"
    )


def _first_sorted(names: pa.Array, codes: np.ndarray, n: int = 5) -> list[str]:
    chosen = names.take(pa.array(codes, pa.int64()))
    return chosen.take(pc.sort_indices(chosen)[:n]).to_pylist()


def _items_table(
    asins: list[str], products: dict[str, Product], max_chars: int
) -> tuple[pa.Table, dict[str, int], dict[str, Any]]:
    cols: dict[str, list] = {k: [] for k in ("title", "description", "brand", "categories", "image_url", "text")}
    missing = dict.fromkeys(("metadata", "title", "description", "brand", "categories", "image", "text"), 0)
    counts = CleaningCounts()
    for name in ("title", "description", "brand", "categories"):
        counts.add(name, "values", 0)
    fallback_examples: list[str] = []
    for asin in asins:
        p = products.get(asin)
        if p is None:
            missing["metadata"] += 1
            p = Product(asin)
        title, desc, brand = clean_text(p.title), clean_text(p.description), clean_text(p.brand)
        for name, raw, clean in (
            ("title", p.title, title),
            ("description", p.description, desc),
            ("brand", p.brand, brand),
        ):
            counts.record(name, raw, clean)
        for c in p.categories:
            counts.record("categories", c, clean_text(c))
        cats = clean_categories(p.categories)
        title, why = _title_fallback(p.title, title, brand, desc)
        if why:
            counts.add("title", why)
            counts.add("title", "fallback_name")
            if len(fallback_examples) < 5:
                fallback_examples.append(asin)
        image = p.image_url.strip() if p.image_url and p.image_url.strip() else None
        text = item_text(title, brand, cats, desc, max_chars)
        for name, value in (
            ("title", title),
            ("description", desc),
            ("brand", brand),
            ("categories", cats),
            ("image", image),
            ("text", text),
        ):
            missing[name] += not value
        for name, value in (
            ("title", title),
            ("description", desc),
            ("brand", brand),
            ("categories", cats),
            ("image_url", image),
            ("text", text),
        ):
            cols[name].append(value)
    table = pa.table(
        {
            "item_id": pa.array(np.arange(len(asins), dtype=np.int32)),
            "asin": pa.array(asins, pa.string()),
            "title": pa.array(cols["title"], pa.string()),
            "description": pa.array(cols["description"], pa.string()),
            "brand": pa.array(cols["brand"], pa.string()),
            "categories": pa.array(cols["categories"], pa.list_(pa.string())),
            "image_url": pa.array(cols["image_url"], pa.string()),
            "text": pa.array(cols["text"], pa.string()),
        }
    )
    cleaning: dict[str, Any] = {"items": len(asins), **counts.as_dict()}
    for key in ("fallback_name", *TITLE_FALLBACKS):
        cleaning.setdefault("title", {}).setdefault(key, 0)
    cleaning["title"]["fallback_examples"] = fallback_examples
    cleaning["title"]["fallback_rule"] = (
        "title that is only markup or only the brand -> first description sentence "
        "(cleaned, cut at a word, at most 120 chars), else the brand"
    )
    return table, missing, cleaning


TITLE_FALLBACKS = ("markup_title_to_description", "markup_title_to_brand", "brand_title_to_description")


def _title_fallback(raw: str | None, title: str | None, brand: str | None, desc: str | None) -> tuple[str | None, str]:
    """A name for an item whose title says nothing: only markup (Magazine_Subscriptions: 126 of
    132 titles are a bare <span>) or only the brand ("Hearst Magazines" for every magazine).
    The description's first sentence usually names the product; the brand is the last resort."""
    markup = title is None and bool(raw and raw.strip())
    is_brand = title is not None and brand is not None and title.casefold() == brand.casefold()
    if not (markup or is_brand):
        return title, ""
    sentence = (first_sentence(desc) or "").rstrip(" .") or None  # a name, not a sentence: no final full stop
    if sentence:
        return sentence, "markup_title_to_description" if markup else "brand_title_to_description"
    if markup and brand:
        return brand, "markup_title_to_brand"
    return title, ""


def format_summary(report: dict[str, Any]) -> str:
    """A short human-readable data-quality block for the command line."""
    lines = [f"dataset {report['dataset']}"]
    for s in report["steps"]:
        lines.append(
            f"  {s['step']:<14} {s['interactions']:>10,} interactions {s['users']:>9,} users {s['items']:>9,} items"
        )
    kc = report["kcore"]
    lines.append(
        f"  duplicates removed: {report['duplicates_removed']:,}; {kc['k']}-core: "
        f"{len(kc['iterations'])} iteration(s), {kc['users_removed']:,} users and "
        f"{kc['items_removed']:,} items removed"
    )
    n_items = report["output"]["items"]
    miss = report["missing"]
    lines.append(
        "  items missing: " + ", ".join(f"{k} {v:,}/{n_items:,}" for k, v in miss.items() if k != "categories")
    )
    br = report["bad_records"]
    if br["total"]:
        reasons = "; ".join(f"{r}: {n:,}" for r, n in br["by_reason"].items())
        lines.append(f"  bad records: {br['total']:,} ({br['dropped']:,} dropped) — {reasons}")
        for reason, examples in br["examples"].items():
            ex = examples[0]
            lines.append(f"    e.g. {ex['file']}:{ex['line']} {reason}")
    else:
        lines.append("  bad records: none")
    sp = report["split"]
    sizes = sp["sizes"]
    lines.append(
        f"  split (seed {sp['seed']}, hash {sp['hash']}): train {sizes['train']:,} / "
        f"valid {sizes['valid']:,} / test {sizes['test']:,}"
    )
    cold = report.get("cold_items")
    if cold:
        lines.append(
            f"  cold items ({cold['fraction']:g}): {cold['valid_items']:,} valid / {cold['test_items']:,} test items, "
            f"{cold['valid_interactions']:,} / {cold['test_interactions']:,} interactions, none in train"
        )
    return "\n".join(lines)
