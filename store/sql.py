"""DuckDB over the store: views over the Parquet tables and FAISS-backed vector functions.

One connection sees

- views `items`, `users`, `interactions`, `feature_<name>` (every feature table; characters
  other than letters, digits and '_' in the name become '_'), and `user_vectors`,
  `item_vectors` of the run whose index is used;
- vector functions, each returning `LIST(STRUCT(item_id INTEGER, score FLOAT))`, best first,
  score = inner product:
    `topn(query FLOAT[], k)`      top-k items for a query vector (FLOAT[d] arrays and numeric
                                  literals cast implicitly; DOUBLE[] needs `::FLOAT[]`),
    `recommend(user_id, k)`       top-k for a user, the user's training items excluded,
    `recommend_all(user_id, k)`   the same without excluding anything,
    `similar(item_id, k)`         top-k items for an item's vector, the item excluded.
  Ids and k take any integer type (the parameters are BIGINT, so `range()` columns work).
  They are Arrow-vectorized: DuckDB hands over a chunk of up to 2048 rows and the chunk costs
  one FAISS search, so `SELECT user_id, recommend(user_id, 10) FROM users` is a batch search.
  k larger than the catalog is clamped to the catalog (a list is never longer than the
  catalog); k ≤ 0, an unknown id or a query of the wrong dimension is an error naming it.
  A connection resolves the run's CURRENT index version once, when it opens (store.versions):
  its `user_vectors`/`item_vectors` views and its vector functions read only that version's
  files, so a query answers wholly from the old version or wholly from the new one while
  versions are published or rolled back; the next connection sees the new CURRENT.
  `published_version()` names the version (NULL for an index written before versions).

Every view is verified before it answers, as `recommend` verifies its files (store.verify.checked:
readable, footer and row count, the stage record of store.records, page CRCs and recorded content
hashes), with the verdict cached per file identity. A view whose file fails is a view that raises
that one line when a query touches it, so one bad or unreadable feature table blocks only the
queries that name it; `run_query` also verifies (and creates) only the views a SELECT names.

The ARCHITECTURE.md example runs verbatim:

    SELECT r.item_id, r.score, i.title
    FROM (SELECT unnest(recommend(42, 10), recursive := true)) r JOIN items i USING (item_id);

(a join does not keep the list order: add `ORDER BY r.score DESC` for a ranked list).

Read-only (the default) is enforced by DuckDB itself, not by inspecting statements:
the catalog the session works in is a database attached READ_ONLY (so CREATE/INSERT/DROP of
persistent objects fail with "attached in read-only mode"), the views are Arrow datasets scanned
through Python instead of files opened by DuckDB, and then `enable_external_access` is switched
off and the configuration locked (except a few settings that cannot reach files, such as
`threads` and `memory_limit`) — so COPY TO, ATTACH, INSTALL, read_parquet/read_csv of any
path and re-enabling access all fail with DuckDB's "Permission Error". (DuckDB's
`allowed_paths` would have let the views read the files, but it lets COPY TO overwrite them
too.) Temporary tables and views (CREATE TEMP ...) still work: they live in the session only.
A read-write connection (read_only=False) uses plain `read_parquet` views, which a file
database keeps, so the DuckDB command line can open it later.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from duckdb import sqltypes as T

from store import fixes, versions
from store.errors import StoreError
from store.index import MANIFEST_FILE, NO_ID, ItemIndex, latest_run, load_index, published_runs, republish
from store.inventory import require_dataset
from store.layout import DatasetPaths, check_name
from store.tables import atomic_path, read_json, read_table, write_table
from store.vectors import read_vectors
from store.verify import checked

FORMATS = ("table", "parquet", "csv")
# Settings a read-only session may still change: they cannot reach files.
SAFE_SETTINGS = ("threads", "memory_limit", "preserve_insertion_order", "default_order", "default_null_order")
FUNCTIONS = ("topn", "recommend", "recommend_all", "similar")
RUN_KEY = b"run_id"  # schema metadata of recommend_for/similar_to results: the run that answered
VERSION_KEY = b"version"  # … and the index version of that run
RESULT = pa.list_(pa.struct([pa.field("item_id", pa.int32()), pa.field("score", pa.float32())]))


def _result_type() -> Any:
    return duckdb.list_type(duckdb.struct_type({"item_id": T.INTEGER, "score": T.FLOAT}))


class QueryError(StoreError):
    """A SQL statement failed; the message carries DuckDB's and lists what can be queried."""


def feature_view_name(feature: str) -> str:
    return "feature_" + re.sub(r"[^A-Za-z0-9_]", "_", feature)


def table_sources(paths: DatasetPaths, serving: versions.Serving | None) -> dict[str, Path]:
    """View name → Parquet file, for the files that exist now (the vectors of the version served)."""
    sources = {
        name: p
        for name, p in (("items", paths.items), ("users", paths.users), ("interactions", paths.interactions))
        if p.exists()
    }
    for feature in paths.feature_names():
        sources[feature_view_name(feature)] = paths.feature(feature)
    if serving is not None:
        for name, p in (("user_vectors", serving.user_vectors), ("item_vectors", serving.item_vectors)):
            if p.exists():
                sources[name] = p
    return sources


# ----------------------------------------------------------------------------- vector functions


class _Lookup:
    """id → row of a matrix, without a dense array (ids may be sparse and large)."""

    def __init__(self, ids: np.ndarray, what: str, source: Path) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]
        self.what, self.source = what, source

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """The ids of `ids` that have no row."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.sorted):
            return ids
        pos = np.clip(np.searchsorted(self.sorted, ids), 0, len(self.sorted) - 1)
        return ids[self.sorted[pos] != ids]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self.sorted, ids), 0, max(len(self.sorted) - 1, 0))
        found = (self.sorted[pos] == ids) if len(self.sorted) else np.zeros(len(ids), bool)
        if not found.all():
            bad = np.asarray(ids)[~found]
            raise ValueError(
                f"unknown {self.what} {int(bad[0])}"
                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                + f": not in {self.source}"
            )
        return self.order[pos]


class VectorFunctions:
    """The state behind the SQL vector functions of one connection, loaded on first use.

    Loading lazily keeps `connect` cheap for queries that never touch vectors; a lock makes the
    first load safe when DuckDB calls from several threads. Every file comes from `serving`, the
    version resolved once when the connection opened, never from what CURRENT names later.
    """

    def __init__(self, paths: DatasetPaths, serving: versions.Serving | None) -> None:
        self.paths, self.serving = paths, serving
        self.run_id = serving.run_id if serving is not None else None
        self.version = serving.version if serving is not None else None
        self._lock = threading.Lock()
        self._index: ItemIndex | None = None
        self._users: tuple[_Lookup, np.ndarray] | None = None
        self._items: tuple[_Lookup, np.ndarray] | None = None
        self._train: tuple[np.ndarray, np.ndarray] | None = None

    def _require_run(self) -> str:
        if self.run_id is None:
            raise StoreError(
                self.paths.index_root,
                "no run has a published index",
                f"create one: anchorrec publish --dataset {self.paths.name}",
            )
        return self.run_id

    @property
    def index(self) -> ItemIndex:
        with self._lock:
            if self._index is None:
                self._index = load_index(self.paths, self._require_run(), serving=self.serving)
            return self._index

    def _vectors(self, key: str) -> tuple[_Lookup, np.ndarray]:
        self._require_run()
        assert self.serving is not None
        path = self.serving.user_vectors if key == "user_id" else self.serving.item_vectors
        assert self._index is not None  # loaded by the caller before it took the lock
        manifest = self._index.manifest  # what the version recorded of the vectors it serves
        ids, vectors, meta = read_vectors(path, key)
        recorded = manifest.get("vectors_hash" if key == "item_id" else "user_vectors_hash")
        if self.version is not None and recorded is not None and meta.get("vectors_hash") != recorded:
            raise StoreError(
                path,
                f"holds vectors {meta.get('vectors_hash')} but version {self.version} of run {self.run_id!r} "
                f"recorded {recorded}",
                f"{republish(self.paths, self.run_id or '')}; or anchorrec rollback --dataset {self.paths.name}",
            )
        return _Lookup(ids, key, path), vectors

    @property
    def users(self) -> tuple[_Lookup, np.ndarray]:
        self.index  # loaded first, outside the lock: _vectors compares with its manifest
        with self._lock:
            if self._users is None:
                self._users = self._vectors("user_id")
            return self._users

    @property
    def items(self) -> tuple[_Lookup, np.ndarray]:
        self.index
        with self._lock:
            if self._items is None:
                self._items = self._vectors("item_id")
            return self._items

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """(user ids, item ids) of training interactions, sorted by user: slices per user."""
        with self._lock:
            if self._train is None:
                if not self.paths.interactions.exists():
                    raise StoreError(
                        self.paths.interactions,
                        "does not exist, and recommend() excludes the training items it lists",
                        f"use recommend_all(user_id, k), or {fixes.repair(self.paths.interactions)}",
                    )
                table = read_table(self.paths.interactions, columns=["user_id", "item_id", "split"])
                table = table.filter(pc.equal(table.column("split"), "train"))
                users = table.column("user_id").to_numpy().astype(np.int64)
                items = table.column("item_id").to_numpy().astype(np.int64)
                order = np.argsort(users, kind="stable")
                self._train = (users[order], items[order])
            return self._train

    def train_items(self, user_ids: np.ndarray) -> list[np.ndarray]:
        users, items = self.train
        starts = np.searchsorted(users, user_ids, side="left")
        ends = np.searchsorted(users, user_ids, side="right")
        return [items[s:e] for s, e in zip(starts, ends)]

    # Each function takes the Arrow chunk DuckDB passes and returns one list per row.

    def topn(self, query: pa.ChunkedArray, k: pa.ChunkedArray) -> pa.Array:
        index = self.index
        return self._search(_query_matrix(query, index), _ks(k), None)

    def recommend(self, user: pa.ChunkedArray, k: pa.ChunkedArray) -> pa.Array:
        user_ids = _ints(user)
        lookup, vectors = self.users
        queries = vectors[lookup.rows(user_ids)]
        return self._search(queries, _ks(k), self.train_items(user_ids))

    def recommend_all(self, user: pa.ChunkedArray, k: pa.ChunkedArray) -> pa.Array:
        lookup, vectors = self.users
        return self._search(vectors[lookup.rows(_ints(user))], _ks(k), None)

    def similar(self, item: pa.ChunkedArray, k: pa.ChunkedArray) -> pa.Array:
        item_ids = _ints(item)
        lookup, vectors = self.items
        queries = vectors[lookup.rows(item_ids)]
        return self._search(queries, _ks(k), [np.array([i]) for i in item_ids])

    def _search(self, queries: np.ndarray, ks: np.ndarray, exclude: list[np.ndarray] | None) -> pa.Array:
        index = self.index
        if len(queries) == 0:
            return pa.array([], RESULT)
        ids, scores = index.search(queries, int(ks.max()), exclude)
        return result_lists(ids, scores, ks)


def _ints(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.int64)


def _ks(column: pa.ChunkedArray) -> np.ndarray:
    ks = column.to_numpy().astype(np.int64)
    if len(ks) and ks.min() < 1:
        raise ValueError(f"k must be ≥ 1, got {int(ks.min())}")
    return ks


def _query_matrix(column: pa.ChunkedArray, index: ItemIndex) -> np.ndarray:
    """LIST<FLOAT> chunk → (n, d) matrix, refusing any row whose length is not the index's dim."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr, pa.FixedSizeListArray):
        lengths = np.full(len(arr), arr.type.list_size)
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    bad = np.nonzero(lengths != index.dim)[0]
    if len(bad):
        raise ValueError(
            f"topn: query vector has {int(lengths[bad[0]])} values but the index of run "
            f"{index.run_id!r} has dimension {index.dim}"
        )
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(arr), index.dim)


def result_lists(ids: np.ndarray, scores: np.ndarray, ks: np.ndarray) -> pa.ListArray:
    """(n, K) search results → n lists of (item_id, score), row i cut to ks[i], empty slots dropped."""
    keep = (ids != NO_ID) & (np.arange(ids.shape[1])[None, :] < ks[:, None])
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    struct = pa.StructArray.from_arrays(
        [pa.array(ids[keep].astype(np.int32)), pa.array(scores[keep].astype(np.float32))],
        fields=list(RESULT.value_type),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), struct)


def register_functions(con: duckdb.DuckDBPyConnection, functions: VectorFunctions) -> None:
    result = _result_type()
    specs: list[tuple[str, Callable[..., pa.Array], list[Any]]] = [
        ("topn", functions.topn, [duckdb.list_type(T.FLOAT), T.BIGINT]),
        ("recommend", functions.recommend, [T.BIGINT, T.BIGINT]),
        ("recommend_all", functions.recommend_all, [T.BIGINT, T.BIGINT]),
        ("similar", functions.similar, [T.BIGINT, T.BIGINT]),
    ]
    for name, fn, params in specs:
        con.create_function(name, fn, params, result, type="arrow")  # type: ignore[call-overload]  # stubs take only the enum


# ------------------------------------------------------------------------------------ connection


def _resolve_run(paths: DatasetPaths, run_id: str | None) -> str | None:
    """The run whose index answers: the given one, or the newest published (never a silent fallback)."""
    if run_id is None:
        return latest_run(paths)
    check_name("run", run_id)
    manifest = paths.index_dir(run_id) / MANIFEST_FILE
    if versions.current_file(paths, run_id).exists() or manifest.exists():
        return run_id
    published = ", ".join(run for run, _ in published_runs(paths)) or "none"
    if not paths.run(run_id).is_dir():
        raise ValueError(
            f"no run {run_id} in dataset {paths.name}; published runs: {published} "
            f"(pass one as --run-id, or leave it out for the newest; anchorrec runs --dataset {paths.name} lists all runs)"
        )
    raise StoreError(
        manifest, f"run {run_id!r} has no published index; published runs: {published}", republish(paths, run_id)
    )


def referenced_tables(sql: str) -> set[str] | None:
    """The tables a SELECT statement names, from DuckDB's parser alone (nothing is bound, so the
    views need not exist yet); None when it cannot tell (not a SELECT, a syntax error, no table)."""
    try:
        with duckdb.connect() as parser:
            row = parser.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()
        if row is None:
            return None
        text = row[0]
        tree = json.loads(text)
    except (duckdb.Error, ValueError, TypeError):
        return None
    if not isinstance(tree, dict) or tree.get("error"):
        return None
    found: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                found.add(node["table_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found or None  # none named (SHOW TABLES, duckdb_views(), …): it may look at all of them


def verified_sources(sources: dict[str, Path]) -> tuple[dict[str, Path], dict[str, str]]:
    """(the sources that pass every check a reader makes, view name → one-line problem of the others).

    The checks are store.verify.checked's (readable, footer and rows, stage record or page CRCs
    and content hash), cached per file identity, so a repeated query does not read the files again.
    """
    good, bad = {}, {}
    for name, path in sources.items():
        found = checked(path)
        if found:
            bad[name] = found
        else:
            good[name] = path
    return good, bad


def _columns_sql(path: Path) -> str:
    """`NULL::type AS "col", …` with the file's own columns (from its footer, when it can be read),
    so a query over a refusing view binds and reaches the refusal instead of a missing-column error."""
    try:
        empty = pq.read_schema(path).remove_metadata().empty_table()
        with duckdb.connect() as scratch:
            rel = scratch.from_arrow(empty)
            columns = list(zip(rel.columns, (str(t) for t in rel.types)))
    except Exception:  # noqa: BLE001 - unreadable footer: one placeholder column
        return "NULL AS unavailable"
    return ", ".join(f'NULL::{kind} AS "{name.replace(chr(34), chr(34) * 2)}"' for name, kind in columns)


def _refusing_views(con: duckdb.DuckDBPyConnection, bad: dict[str, str], sources: dict[str, Path]) -> None:
    """A view over a file that failed its check raises the check's line when a query touches it, and
    only then: one bad feature table does not block a query over `items`."""
    for name, found in bad.items():
        literal = "'" + f"{StoreError.__name__}: {found}".replace("'", "''") + "'"
        con.execute(
            f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT {_columns_sql(sources[name])} '
            f"WHERE error({literal}) IS NULL"
        )


def refuse_touched(bad: dict[str, str], tables: set[str] | None) -> None:
    """Raise the first problem of a bad view the statement names (before DuckDB binds anything)."""
    for name in sorted(bad):
        if tables is not None and name in tables:
            raise StoreError(None, bad[name])


def published_table(paths: DatasetPaths, current: str | None) -> pa.Table:
    """One row per published run (oldest first): what the `published` view shows; `version` is
    the index version each run serves now (NULL for an index written before versions)."""
    rows = []
    for run, manifest in published_runs(paths):
        config_path = paths.run(run) / "config.json"
        try:
            config = read_json(config_path) if config_path.is_file() else {}
        except StoreError:
            config = {}
        config = config if isinstance(config, dict) else {}
        rows.append(
            {
                "run_id": run,
                "model": manifest.get("model") or config.get("model"),
                "seed": config.get("seed"),
                "created": str(manifest.get("created_at", "")),
                "count": manifest.get("count"),
                "dim": manifest.get("dim"),
                "kind": manifest.get("kind"),
                "vectors_hash": manifest.get("vectors_hash"),
                "version": manifest.get("version"),
                "current": run == current,
            }
        )
    schema = pa.schema(
        [
            ("run_id", pa.string()),
            ("model", pa.string()),
            ("seed", pa.int64()),
            ("created", pa.string()),
            ("count", pa.int64()),
            ("dim", pa.int32()),
            ("kind", pa.string()),
            ("vectors_hash", pa.string()),
            ("version", pa.string()),
            ("current", pa.bool_()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _register_published(con: duckdb.DuckDBPyConnection, paths: DatasetPaths, serving: versions.Serving | None) -> None:
    """`published` view, `published_run()` and `published_version()`: SQL can ask which run, and
    which version of it, answers its vector functions."""
    run = serving.run_id if serving is not None else None
    con.register("published", published_table(paths, run))
    version = serving.version if serving is not None else None
    for macro, value in (("published_run", run), ("published_version", version)):
        literal = "NULL" if value is None else "'" + value.replace("'", "''") + "'"
        con.execute(f"CREATE TEMP MACRO {macro}() AS {literal}")


def _sql_string(path: Path) -> str:
    return "'" + str(path.resolve()).replace("'", "''") + "'"


def _create_file_views(con: duckdb.DuckDBPyConnection, sources: dict[str, Path]) -> None:
    """Persistent `read_parquet` views; stale views of ours whose file is gone are dropped."""
    ours = {"items", "users", "interactions", "user_vectors", "item_vectors"}
    existing = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary AND database_name = current_database()"
    ).fetchall()
    for (name,) in existing:
        if (name in ours or name.startswith("feature_")) and name not in sources:
            con.execute(f'DROP VIEW "{name}"')
    for name, path in sources.items():
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet({_sql_string(path)})')


def _open_read_write(database: str | Path | None, sources: dict[str, Path]) -> duckdb.DuckDBPyConnection:
    if database is not None:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database) if database is not None else ":memory:")
    _create_file_views(con, sources)
    return con


def _open_read_only(database: str | Path | None, sources: dict[str, Path]) -> duckdb.DuckDBPyConnection:
    if database is None:
        # DuckDB cannot open an in-memory database read-only; an empty database file attached
        # READ_ONLY is the session's catalog instead (the file is deleted once attached).
        tmp = Path(tempfile.mkdtemp(prefix="anchorrec-sql-"))
        try:
            empty = tmp / "store.duckdb"
            duckdb.connect(str(empty)).close()
            con = duckdb.connect(":memory:")
            con.execute(f"ATTACH {_sql_string(empty)} AS store (READ_ONLY)")
            con.execute("USE store")
            con.execute("DETACH memory")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        if not Path(database).exists():
            _open_read_write(database, sources).close()
        try:
            con = duckdb.connect(str(database), read_only=True)
        except duckdb.Error as exc:
            raise StoreError(
                database,
                f"cannot open the database read-only ({exc})",
                "close the program that has it open for writing",
            ) from exc
    for name, path in sources.items():
        # Temporary views shadow the database's own read_parquet views of the same name.
        con.register(name, ds.dataset(str(path), format="parquet"))
    return con


def connect(
    paths: DatasetPaths,
    run_id: str | None = None,
    *,
    database: str | Path | None = None,
    read_only: bool = True,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over the dataset and the published index of `run_id` (default: latest).

    `database` None is in-memory; a path is a DuckDB file (created with the views if absent).
    See the module docstring for what read-only guarantees. `published_run()` in SQL names the
    run whose index the vector functions use.
    """
    return _connect(paths, run_id, database=database, read_only=read_only)[0]


def _connect(
    paths: DatasetPaths,
    run_id: str | None,
    *,
    database: str | Path | None = None,
    read_only: bool = True,
    tables: set[str] | None = None,
) -> tuple[duckdb.DuckDBPyConnection, VectorFunctions]:
    """The connection and its vector functions; `tables` limits the views (and the files verified)
    to those a statement names (None: all)."""
    require_dataset(paths)
    run = _resolve_run(paths, run_id)
    serving = versions.serving(paths, run) if run is not None else None  # CURRENT, resolved once
    sources = table_sources(paths, serving)
    if tables is not None and database is None and read_only:  # a file database keeps views of all
        sources = {name: path for name, path in sources.items() if name in tables}
    good, bad = verified_sources(sources)
    refuse_touched(bad, tables)
    con = _open_read_only(database, good) if read_only else _open_read_write(database, good)
    _refusing_views(con, bad, sources)
    functions = VectorFunctions(paths, serving)
    register_functions(con, functions)
    _register_published(con, paths, serving)
    if read_only:
        con.execute("SET enable_external_access = false")
        con.execute(f"SET allowed_configs = {list(SAFE_SETTINGS)}")
        con.execute("SET lock_configuration = true")
    return con, functions


# ------------------------------------------------------------------------------ one-shot helpers


def _what_is_there(con: duckdb.DuckDBPyConnection, names: list[str] | None = None) -> str:
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    shown = sorted(views | set(names or []))
    return f"views: {', '.join(shown) or '(none)'}; functions: {', '.join(f + '(…, k)' for f in FUNCTIONS)}, published_run()"


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None, names: list[str] | None = None) -> pa.Table:
    try:
        rel = con.sql(sql, params=params)
        if rel is None:
            return pa.table({})
        return rel.to_arrow_table()
    except duckdb.Error as exc:
        # A store file that failed its check inside a vector function: its own message, not DuckDB's wrapper.
        inner = str(exc).partition(f"{StoreError.__name__}: ")[2]
        if inner:
            raise StoreError(None, inner) from exc
        raise QueryError(None, f"query failed: {exc}", _what_is_there(con, names)) from exc


def run_query(
    paths: DatasetPaths,
    sql: str,
    run_id: str | None = None,
    output: str | Path | None = None,
    fmt: str = "table",
    *,
    database: str | Path | None = None,
    read_only: bool = True,
) -> pa.Table:
    """Run `sql` and return its result; with fmt 'parquet'/'csv' also write it to `output`.

    The file is written by Python (atomically), not by DuckDB, so a read-only connection can
    still export results.
    """
    check_format(output, fmt)
    con, functions = _connect(paths, run_id, database=database, read_only=read_only, tables=referenced_tables(sql))
    try:
        table = _execute(con, sql, names=list(table_sources(paths, functions.serving)))
    finally:
        con.close()
    if output is None:  # check_format refused a file format without --output
        return table
    if fmt == "parquet":
        write_table(table, output)
    elif fmt == "csv":
        with atomic_path(output) as tmp:
            pacsv.write_csv(_flat_for_csv(table), tmp)
    return table


def check_format(output: str | Path | None, fmt: str) -> None:
    """Refuse a format the writer does not have, naming `--output` and the suffixes it takes."""
    writable = [f for f in FORMATS if f != "table"]
    if output is not None and fmt not in writable:
        raise ValueError(
            f"--output {output}: unsupported format {fmt!r} (from its suffix); "
            f"--output writes {' or '.join('.' + f for f in writable)} files"
        )
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt != "table" and output is None:
        raise ValueError(f"fmt {fmt!r} needs an output path (--output FILE.{fmt})")


def check_output(output: str | Path, home: str | Path) -> Path:
    """Refuse an --output inside the home in use (symlinks resolved): a query result written
    there could replace a store table (items.parquet, a run's vectors) with anything."""
    target, root = Path(output).expanduser().resolve(), Path(home).expanduser().resolve()
    if target == root or root in target.parents:
        raise ValueError(
            f"--output {output}: is inside the store ({root}); write query results elsewhere, outside $ANCHORREC_HOME"
        )
    return target


def _flat_for_csv(table: pa.Table) -> pa.Table:
    """CSV has no nested values: lists/structs/arrays become JSON strings."""
    columns = []
    for col in table.columns:
        if pa.types.is_nested(col.type):
            col = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
        columns.append(col)
    return pa.Table.from_arrays(columns, names=table.column_names)


_RANKED = """
SELECT r.item_id, i.asin, i.title, r.score
FROM (SELECT unnest({fn}($id, $k), recursive := true)) r
LEFT JOIN items i USING (item_id)
ORDER BY r.score DESC, r.item_id
"""


def _ranked(paths: DatasetPaths, fn: str, id_: int, k: int, run_id: str | None) -> pa.Table:
    require_dataset(paths)
    if not paths.items.exists():
        raise StoreError(paths.items, "does not exist: titles cannot be joined", fixes.repair(paths.items))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
    con, functions = _connect(paths, run_id, tables={"items"})
    run = functions.run_id
    try:
        # Load and verify up front: a bad index or vectors file is a StoreError naming it,
        # not an error from inside DuckDB.
        functions.index
        if fn == "similar":
            functions.items
        else:
            _require_user(paths, functions, id_)
        table = _execute(con, _RANKED.format(fn=fn), {"id": int(id_), "k": int(k)})
    finally:
        con.close()
    rank = pa.array(np.arange(1, table.num_rows + 1, dtype=np.int32))
    table = table.add_column(0, "rank", rank)
    version = functions.version or ""
    return table.replace_schema_metadata({RUN_KEY: (run or "").encode(), VERSION_KEY: version.encode()})


def _require_user(paths: DatasetPaths, functions: VectorFunctions, user_id: int) -> None:
    """One line for an unknown user (the valid range, how to list them), like `similar`'s for items,
    instead of DuckDB's wrapping of the vector function's error."""
    lookup, _ = functions.users
    if len(lookup.missing(np.array([user_id]))):
        ids = lookup.sorted
        known = f"user_ids {int(ids[0])}..{int(ids[-1])} ({len(ids)} users)" if len(ids) else "no users"
        raise ValueError(
            f"unknown user {int(user_id)}: run {functions.run_id} has {known}; list them: "
            f'anchorrec sql "SELECT user_id, reviewer_id FROM users" --dataset {paths.name}'
        )


def answered_by(table: pa.Table) -> str | None:
    """The run id whose index produced a recommend_for/similar_to result."""
    run = (table.schema.metadata or {}).get(RUN_KEY)
    return run.decode() if run else None


def answered_version(table: pa.Table) -> str | None:
    """The index version of that run (None: an index written before versions)."""
    version = (table.schema.metadata or {}).get(VERSION_KEY)
    return version.decode() if version else None


def recommend_for(
    paths: DatasetPaths, user_id: int, k: int = 10, run_id: str | None = None, *, include_seen: bool = False
) -> pa.Table:
    """A user's top-k (rank, item_id, asin, title, score); training items excluded unless include_seen.

    The run that answered is in the schema metadata (`answered_by(table)`).
    """
    return _ranked(paths, "recommend_all" if include_seen else "recommend", int(user_id), k, run_id)


def resolve_item(paths: DatasetPaths, item_id: int | None = None, asin: str | None = None) -> int:
    """The item_id of exactly one of `item_id` or `asin`.

    Separate arguments because real catalogs have all-digit ASINs ('0000000098' is an ASIN, not
    item 98); an item_id must be in the items table.
    """
    if (item_id is None) == (asin is None):
        raise ValueError("give exactly one of item_id (--item) or asin (--asin)")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer))):
        raise ValueError(f"item_id must be an integer, got {item_id!r}; pass an ASIN as asin= (--asin)")
    items = read_table(paths.items, columns=["item_id", "asin"])
    if asin is not None:
        hit = items.filter(pc.equal(items.column("asin"), str(asin)))
        if not hit.num_rows:
            raise ValueError(f"unknown asin {asin!r}: not in {paths.items}")
        return int(hit.column("item_id")[0].as_py())
    assert item_id is not None  # exactly one of the two was given
    if not pc.any(pc.equal(items.column("item_id"), int(item_id))).as_py():
        raise ValueError(f"unknown item_id {int(item_id)}: not in {paths.items} (for an ASIN use --asin)")
    return int(item_id)


def similar_to(
    paths: DatasetPaths, item_id: int | None = None, k: int = 10, run_id: str | None = None, *, asin: str | None = None
) -> pa.Table:
    """Items most similar to one item (rank, item_id, asin, title, score), the item itself excluded.

    Give `item_id` or `asin`; the run that answered is in the schema metadata (`answered_by`).
    """
    require_dataset(paths)
    return _ranked(paths, "similar", resolve_item(paths, item_id, asin), k, run_id)
