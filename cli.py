"""The `anchorrec` command line: options, checks before any work, one-line errors, clean stops.

Every flow is a command whose options are exactly the PipelineConfig fields of the option groups
it uses (pipeline_config.FLOW_GROUPS), with help text and choices from the fields' metadata. Everything a
user can get wrong is checked before Prefect starts (preflight), and every user error, here or
deep in a stage, ends as one red `error:` line and exit code 2. Ctrl-C / SIGTERM stop within a
second: every file in the store is written atomically and training checkpoints each epoch, so
the same command afterwards resumes.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
import typing
import zlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from pipeline_config import FLOW_DOCS, FLOW_GROUPS, NO_IMAGES, PipelineConfig
from pipelines.catalog_only import NEEDS_INTERACTIONS, refuse_catalog_pipeline, require_interactions
from pipelines.sources import is_local, local_path
from prefect_server import configured_api_url
from store import dataset_paths

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="AnchorRec: multimodal recommendation on Amazon data — ingest, features, pretrain, train, publish, query.",
)
EXIT_USER_ERROR = 2
DEFAULT_MAX_ROWS = 40


# --------------------------------------------------------------------------- options from the config
def _config_parameter(f: Any) -> inspect.Parameter:
    hints = typing.get_type_hints(PipelineConfig)
    choices = f.metadata.get("choices")
    annotation = Literal[choices] if choices else hints[f.name]
    option = typer.Option(f.default, f"--{f.name.replace('_', '-')}", help=f.metadata["help"])
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _field_help(name: str) -> str:
    """A config field's help, for a command that takes the option without the whole config."""
    return next(f.metadata["help"] for f in fields(PipelineConfig) if f.name == name)


def config_parameters(groups: tuple[str, ...]) -> list[inspect.Parameter]:
    return [_config_parameter(f) for f in fields(PipelineConfig) if f.metadata["group"] in groups]


def _flow_command(name: str) -> None:
    """Expose a flow as a command with the options of its groups; the rest keep their defaults.

    Prefect (and torch) are imported only once the options passed their checks.
    """

    def command(**params: Any) -> None:
        cfg = PipelineConfig(**params)
        preflight(cfg, name)
        from store.lock import dataset_lock

        # the flow takes it too (scheduled runs); taken here first, a refusal or wait comes before Prefect starts
        with dataset_lock(cfg.paths, f"anchorrec {name}", wait=not cfg.no_wait):
            from prefect_server import ensure_api

            ensure_api()  # the home's shared Prefect server, set before Prefect reads its settings
            import flows

            _quiet_logging()  # importing Prefect re-applied its logging config: a stage's user error is our one line
            result = flows.with_runner(flows.FLOWS[name], cfg)(**asdict(cfg))
            print_result(name, cfg, result)

    command.__signature__ = inspect.Signature(config_parameters(FLOW_GROUPS[name]))  # type: ignore[attr-defined]
    command.__doc__ = FLOW_DOCS[name]
    app.command(name)(command)


for _name in FLOW_GROUPS:
    _flow_command(_name)


# --------------------------------------------------------------------------- checks before any work
def check_readable(option: str, source: str | None, want: str = "file") -> None:
    """A local input exists and can be read; URLs are left to the download (retries, mirrors)."""
    if not source or not is_local(source):
        return
    path = local_path(source)
    if want == "file" and not path.is_file():
        raise ValueError(
            f"--{option} {source}: {_not_a_file(path)}; give the path of a regular file (or an http(s) URL)"
        )
    if want == "dir" and not path.is_dir():
        raise ValueError(f"--{option} {source}: no such directory")
    if want == "any" and not path.exists():
        raise ValueError(f"--{option} {source}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise ValueError(f"--{option} {source}: not readable (check its permissions)")


def _not_a_file(path: Path) -> str:
    """What a path that is not a regular file is: a device read as data never ends (/dev/zero)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), None)
    return f"is {kind}, not a regular file" if kind else "is not a regular file"


def check_device(device: str | None) -> None:
    """cpu, cuda, cuda:N or mps, and a CUDA device only where one exists."""
    if device is None:
        return
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise ValueError(f"--device {device}: use cpu, cuda, cuda:N or mps (or leave it out: cuda when present)")
    if kind == "cuda":
        count = _cuda_devices()
        if int(index or 0) >= count:
            raise ValueError(
                f"--device {device}: this machine has {count} CUDA device(s); use --device cpu or leave it out"
            )


def _cuda_devices() -> int:
    """How many CUDA devices torch sees; without an NVIDIA driver it is 0, known without importing torch."""
    if not (Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_encoders(cfg: PipelineConfig) -> None:
    from features.base import parse_spec

    for option, spec, modality in (
        ("text-encoder", cfg.text_encoder, "text"),
        ("image-encoder", cfg.image_encoder, "image"),
    ):
        if modality == "image" and spec == NO_IMAGES:
            continue
        try:
            parsed = parse_spec(spec)
        except ValueError as exc:
            raise ValueError(f"--{option}: {exc}") from None
        if parsed.modality != modality:
            raise ValueError(
                f"--{option} {spec}: that is a{'n' if parsed.modality == 'image' else ''} "
                f"{parsed.modality} encoder; give a{'n' if modality == 'image' else ''} {modality} encoder"
            )


def check_text_file(option: str, source: str | None) -> None:
    """The first 64 KiB of a local input are text (JSON lines, CSV), gzip of text, or Parquet.

    Catches the wrong file passed by mistake in a second, instead of a parse failure after the
    Prefect server has started; records that are bad further in are the parser's to count.
    """
    if not source or not is_local(source):
        return
    path = local_path(source)
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
        whole = not fh.read(1)  # the head is the whole file
    if head[:4] == b"PAR1":
        return
    if head[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(wbits=31)
        try:
            head = inflate.decompress(head, 1 << 16)
        except zlib.error as exc:
            raise ValueError(
                f"--{option} {source}: gzip header but the data does not decompress ({exc}); download the file again"
            ) from None
        if inflate.eof and not head.strip():
            raise ValueError(
                f"--{option} {source}: empty gzip (no data once decompressed); "
                "download the file again or give the file you meant"
            )
    elif whole and not head.strip():
        what = "empty file (0 bytes)" if not head else "holds only blank lines"
        raise ValueError(f"--{option} {source}: {what}; give the file you meant")
    if b"\x00" in head[:4096]:
        raise ValueError(
            f"--{option} {source}: binary data, not JSON lines, CSV/TSV (plain or gzip) or Parquet; "
            "check that this is the file you meant"
        )


def check_ingest(cfg: PipelineConfig) -> None:
    for option, source in (
        ("meta", cfg.meta),
        ("reviews", cfg.reviews),
        ("train", cfg.train),
        ("valid", cfg.valid),
        ("test", cfg.test),
    ):
        check_readable(option, source)
        check_text_file(option, source)
    check_own_files(cfg)
    if cfg.release == "mmrec":
        check_readable("source", cfg.source, "dir")
        if not any(Path(cfg.source).glob("*.inter")):  # type: ignore[arg-type]
            raise ValueError(f"--source {cfg.source}: no <name>.inter file in it (MMRec format)")
    if cfg.release in ("2014", "2018", "2023"):
        from pipelines import catalog

        if cfg.category:
            catalog.canonical_category(cfg.release, cfg.category)  # ValueError naming the known ones
            check_reachable(cfg)
        elif not cfg.reviews:
            raise ValueError(
                f"--release {cfg.release} needs --category (e.g. {', '.join(catalog.categories(cfg.release)[:3])}, …) "
                "or --reviews (with --meta, or alone for an ID-only dataset); metadata without reviews is a "
                f"catalog-only dataset: --release csv --meta {cfg.meta or 'FILE'} (docs/your-own-data.md: Catalog-only datasets)"
            )


def check_own_files(cfg: PipelineConfig) -> None:
    """--release csv's options: a given split as files, column names, and each local table's header."""
    own = {
        "columns": cfg.columns,
        "meta-columns": cfg.meta_columns,
        "no-header": cfg.no_header,
        "train": cfg.train,
        "valid": cfg.valid,
        "test": cfg.test,
    }
    given = [k for k, v in own.items() if v]
    if cfg.release != "csv":
        if given:
            raise ValueError(f"--{given[0]} applies to --release csv (your own files), not --release {cfg.release}")
        return
    if cfg.meta and not (cfg.reviews or cfg.train) and cfg.columns:
        raise ValueError(
            "--columns names interaction columns; a catalog-only ingest (--meta without --reviews) has none: "
            'name the metadata table\'s columns with --meta-columns "asin=COL,title=COL,image=COL"'
        )
    splits = [k for k in ("train", "valid", "test") if own[k]]
    if splits and (cfg.reviews or "train" not in splits or "test" not in splits):
        raise ValueError(
            "a given split is --train FILE --test FILE (and --valid FILE) instead of --reviews; got "
            + ", ".join(f"--{k}" for k in (["reviews"] if cfg.reviews else []) + splits)
        )
    from pipelines import tabular

    for option, source in (
        ("reviews", cfg.reviews),
        ("train", cfg.train),
        ("valid", cfg.valid),
        ("test", cfg.test),
        ("meta", cfg.meta),
    ):
        if not source or not is_local(source):
            continue
        path = local_path(source)
        if not (tabular.is_table_file(path) or tabular.is_parquet(path)):
            continue
        tabular.check_columns(
            path, cfg.meta_columns if option == "meta" else cfg.columns, no_header=cfg.no_header, meta=option == "meta"
        )


def check_reachable(cfg: PipelineConfig) -> None:
    """A catalog file to download whose every location is unreachable (no network) is refused now,
    in one line, not after Prefect started (pipelines.download would say the same, later)."""
    from pipelines import catalog
    from store.errors import SourceUnavailable

    given = {"meta": cfg.meta, "reviews": cfg.reviews}
    for remote in catalog.resolve(cfg.release, cfg.category):  # type: ignore[arg-type]
        if given[remote.kind] or (cfg.paths.raw_dir / remote.filename).is_file():
            continue  # a local file, or downloaded before (the download verifies it)
        failed = catalog.unreachable(remote.urls)
        if failed:
            detail = "; ".join(f"{url} → {why}" for url, why in failed)
            raise SourceUnavailable(
                None,
                f"{remote.url}: could not fetch {remote.filename} from {len(failed)} location(s): {detail}",
                f"unreachable: check the network or {catalog.LOCAL_FIX}",
            )


def check_dataset_exists(cfg: PipelineConfig) -> None:
    p = cfg.paths
    if not p.items.exists():
        raise ValueError(
            f"dataset {cfg.dataset!r} has no items.parquet under {p.root.parent.resolve()}; create it first: "
            f"anchorrec ingest --dataset {cfg.dataset} (or anchorrec pipeline --dataset {cfg.dataset})"
        )


def preflight(cfg: PipelineConfig, command: str) -> None:
    """Every check that can fail before work starts, in the order a user would fix them."""
    from store.layout import check_name

    check_name("dataset", cfg.dataset)
    groups = FLOW_GROUPS.get(command, FLOW_GROUPS["pipeline"])
    if "ingest" in groups:
        check_ingest(cfg)
    if "ingest" not in groups or command == "update":  # update merges into an existing dataset
        check_dataset_exists(cfg)
    if command in NEEDS_INTERACTIONS and "ingest" in groups:  # catalog-only datasets: features and pretrain only
        refuse_catalog_pipeline(cfg.dataset, cfg.release, cfg.reviews or cfg.train, cfg.meta)
    elif command in NEEDS_INTERACTIONS:
        require_interactions(cfg.paths, command)
    if "features" in groups:
        check_readable("images", cfg.images, "any")
        check_encoders(cfg)
        check_device(cfg.device)
    if "pretrain" in groups and cfg.ica_from:
        cfg.ica_run()  # the run exists and has a checkpoint, before Prefect starts


# --------------------------------------------------------------------------- results
def show(table: Any, rows: int = DEFAULT_MAX_ROWS) -> str:
    """An Arrow table as DuckDB's box table, every shown row rendered, and the total when cut."""
    import duckdb

    if not table.num_rows:
        return "(no rows)"
    text = _render(duckdb.from_arrow(table.slice(0, rows)), rows)
    if table.num_rows > rows:
        text += (
            f"\n{table.num_rows} rows in all, first {rows} shown: use --max-rows {table.num_rows} or --output FILE.csv"
        )
    return text


def _render(rel: Any, rows: int) -> str:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rel.show(max_rows=rows + 1, max_width=shutil.get_terminal_size((160, 40)).columns)
    return buf.getvalue().rstrip("\n")


def _metrics_line(metrics: dict, split: str) -> str:
    vals = metrics.get(split) or {}
    shown = {k: round(v, 4) for k, v in vals.items() if k.endswith(("@10", "@20")) and not k.startswith("map")}
    return f"  {split}: {shown}"


SMALL_EVAL = 100


def small_eval_note(p: Any) -> str | None:
    """One line when the test split or the catalog is too small for its metrics to mean much
    (recall@20 = 1.0 on a 24-item catalog is what a random top-20 list scores)."""
    import pyarrow.compute as pc

    from store.tables import read_table

    inter = read_table(p.interactions, columns=["user_id", "item_id", "split"])
    test = inter.filter(pc.equal(inter.column("split"), "test"))
    counts = {
        "test users": len(pc.unique(test.column("user_id"))),
        "test items": len(pc.unique(test.column("item_id"))),
        "catalog items": read_table(p.items, columns=["item_id"]).num_rows,
    }
    small = {k: v for k, v in counts.items() if v < SMALL_EVAL}
    if not small:
        return None
    shown = ", ".join(f"{v} {k}" for k, v in small.items())
    return (
        f"note: only {shown} (fewer than {SMALL_EVAL}): these metrics are noisy and near their ceiling "
        f"(a top-20 list covers {min(1.0, 20 / max(counts['catalog items'], 1)):.0%} of the catalog); "
        "judge models on a larger dataset"
    )


def _pretrain_summary(cfg: PipelineConfig, result: dict) -> str:
    """The recommender's inputs and the held-out retrieval the pretraining measured (its metrics.json)."""
    features = result.get("features") or {}
    lines = ["recommender inputs: " + ", ".join(f"{k}={v}" for k, v in features.items())]
    mm = features.get("mm")
    if not mm:
        return "\n".join(lines + [f"no ICA pretraining: {result.get('note') or 'skipped'}"])
    run_dir = cfg.ica_run()[0] if cfg.ica_from else cfg.paths.runs_dir / mm
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return "\n".join(lines + [f"{mm}: no metrics.json in {run_dir}"])
    m = json.loads(metrics_path.read_text())
    final, chance = m.get("final") or {}, (m.get("baselines") or {}).get("chance") or {}
    if "retrieval/i2t_recall@10" not in final:
        why = "; ".join(f"{k}: {v}" for k, v in (m.get("skipped") or {}).items()) or "not measured"
        return "\n".join(lines + [f"held-out retrieval: {why}"])
    lines.append(
        f"held-out retrieval on {m.get('n_holdout_items')} items (epoch {m.get('best_epoch')} of "
        f"{m.get('epochs_run')}): image→text R@10 {final['retrieval/i2t_recall@10']:.3f}, text→image R@10 "
        f"{final['retrieval/t2i_recall@10']:.3f} (chance {chance.get('retrieval/mean_recall@10', float('nan')):.3f})"
    )
    return "\n".join(lines + [f"all metrics: {metrics_path}"])


def print_result(name: str, cfg: PipelineConfig, result: dict) -> None:
    """What each command leaves on the screen after its stage lines."""
    p = cfg.paths
    if name == "features":
        for modality, s in result.items():
            typer.echo(
                f"{modality} feature {s.get('name')}: vectors for {s.get('n_vectors')} of {s.get('n_items')} items "
                f"({p.feature(str(s.get('name')))})"
            )
        return
    if name == "pretrain":
        typer.echo(_pretrain_summary(cfg, result))
        return
    if name == "ingest":
        brief = {k: v for k, v in result.items() if isinstance(v, (str, int, float))}
        typer.echo(json.dumps(brief, default=str)[:800])
        return
    if name == "update":
        typer.echo(update_summary(cfg, result))
        return
    if name == "tune":
        typer.echo(
            f"\nbest of {result['model']} on {cfg.dataset}: valid recall@20 {result['best_value']:.4f}, "
            f"run {result['best_run_id']}, params {json.dumps(result['best_params'])}"
        )
        typer.echo(
            f"study: {p.root / 'tuning' / cfg.model}/best.json; the trials' runs: anchorrec runs --dataset {cfg.dataset}"
        )
        return
    run_id = result["run_id"]
    if result.get("content_feature"):  # a catalog-only dataset: no model, no metrics
        typer.echo(
            f"published {run_id}: content vectors {result['content_feature']} answer similar(); "
            f"anchorrec similar --dataset {cfg.dataset} --item 0"
        )
        return
    metrics = json.loads(p.metrics(run_id).read_text())
    typer.echo(f"\nrun {run_id} on {cfg.dataset} ({metrics.get('model', cfg.model)})")
    for split in ("valid", "test"):
        typer.echo(_metrics_line(metrics, split))
    note = small_eval_note(p)
    if note:
        typer.echo(note)
    if name == "pipeline":
        from flows import SAMPLE_QUERY
        from store.sql import run_query

        query = SAMPLE_QUERY.format(user=0, k=5)
        typer.echo(f"\n{query}")
        typer.echo(show(run_query(p, query, run_id=run_id)))
    if name in ("publish", "pipeline"):
        typer.echo(f"published {run_id}: anchorrec recommend --dataset {cfg.dataset} --user 0")


def update_summary(cfg: PipelineConfig, result: dict) -> str:
    """What an update did: the merge, then the new version or the retrain, and how to look."""
    lines = [f"\nupdate of {cfg.dataset}: {result['merged']['line']}"]
    if result.get("retrained"):
        lines.append(f"retrained ({result['why']}): published {result['run_id']}")
    else:
        lines.append(f"published {result['line']}")
    lines.append(f"versions: anchorrec versions --dataset {cfg.dataset} --run {result['run_id']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- store commands
def require_dataset_dir(dataset: str, home: str | None) -> Any:
    """The dataset's paths, or one line listing the datasets there (before DuckDB or FAISS load)."""
    paths = dataset_paths(dataset, home)
    if not paths.root.is_dir():
        root = paths.root.parent
        there = sorted(d.name for d in root.iterdir() if (d / "items.parquet").exists()) if root.is_dir() else []
        raise ValueError(
            f"dataset {dataset!r} not found under {root.resolve()} (datasets: {', '.join(there) or 'none'}); "
            f"create it: anchorrec pipeline --dataset {dataset}"
        )
    return paths


HomeOption = typer.Option(None, "--home", help="root of all datasets (default $ANCHORREC_HOME or ./data)")
DatasetOption = typer.Option("demo", "--dataset", help="dataset name")
RunOption = typer.Option(None, "--run-id", help="published run to query (default: the newest published run)")


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL over items, users, interactions, feature_<name>, user/item vectors"),
    dataset: str = DatasetOption,
    home: Optional[str] = HomeOption,
    run_id: Optional[str] = RunOption,
    output: Optional[Path] = typer.Option(None, "--output", help="write the whole result to a .parquet or .csv file"),
    max_rows: int = typer.Option(
        DEFAULT_MAX_ROWS, "--max-rows", min=1, help="rows to print (the total is always said)"
    ),
    write: bool = typer.Option(False, "--write", help="allow statements that modify the store"),
) -> None:
    """Run a SQL query against a dataset's store (read-only by default)."""
    paths = require_dataset_dir(dataset, home)
    from store.sql import check_format, check_output, run_query

    fmt = "table" if output is None else output.suffix.lstrip(".")
    if output is not None:  # before the query runs: a wrong --output is said at once
        check_format(output, fmt)
        check_output(output, paths.root.parent)
    table = run_query(paths, query, run_id=run_id, output=output, fmt=fmt, read_only=not write)
    typer.echo(show(table, max_rows) if output is None else f"wrote {table.num_rows} rows to {output}")


def _answered_by(paths: Any, table: Any) -> str:
    """The line that says which published run answered (a LightGCN run serves as quietly as any)."""
    from store.index import content_feature, published_runs
    from store.inventory import run_summary
    from store.sql import answered_by, answered_version, feature_view_name

    run_id = answered_by(table)
    version = answered_version(table)
    if not run_id:
        return "answered by: unknown run"
    feature = content_feature(dict(published_runs(paths)).get(run_id, {}))
    if feature:
        return f"answered by content vectors {feature_view_name(feature)} (no interactions: content similarity)"
    s = run_summary(paths, run_id)
    recall = s.get("test_recall@20")
    recall = "?" if recall is None else f"{recall:.4f}"
    return (
        f"answered by run {run_id}{f' version {version}' if version else ''} (model {s.get('model')}, seed {s.get('seed')}, "
        f"test recall@20 {recall}; --run-id picks another, anchorrec runs lists them)"
    )


@app.command()
def recommend(
    user: int = typer.Option(..., "--user", help='user_id (see: anchorrec sql "SELECT * FROM users")'),
    k: int = typer.Option(10, "-k", min=1, help="how many items"),
    dataset: str = DatasetOption,
    home: Optional[str] = HomeOption,
    run_id: Optional[str] = RunOption,
) -> None:
    """Top-k items for a user (training items excluded), with titles, from a published run."""
    paths = require_dataset_dir(dataset, home)
    require_interactions(paths, "recommend")
    from store.sql import recommend_for

    table = recommend_for(paths, user, k, run_id=run_id)
    typer.echo(_answered_by(paths, table))
    typer.echo(show(table))


@app.command()
def similar(
    item: Optional[int] = typer.Option(None, "--item", help="item_id (0..n-1)"),
    asin: Optional[str] = typer.Option(None, "--asin", help="the item's ASIN (numeric ASINs are ASINs here)"),
    k: int = typer.Option(10, "-k", min=1, help="how many items"),
    dataset: str = DatasetOption,
    home: Optional[str] = HomeOption,
    run_id: Optional[str] = RunOption,
) -> None:
    """Items nearest to an item in the published run's item space."""
    if (item is None) == (asin is None):
        raise ValueError("give exactly one of --item ITEM_ID or --asin ASIN")
    paths = require_dataset_dir(dataset, home)
    from store.sql import similar_to

    table = similar_to(paths, item_id=item, asin=asin, k=k, run_id=run_id)
    typer.echo(_answered_by(paths, table))
    typer.echo(show(table))


def _print_rows(rows: list[dict], schema: Any, empty: str) -> None:
    """A listing as a table (typed by `schema`, so all-null columns still print), or what to do."""
    import pyarrow as pa

    typer.echo(show(pa.Table.from_pylist(rows, schema=schema), len(rows)) if rows else empty)


@app.command("ls")
def list_datasets(home: Optional[str] = HomeOption) -> None:
    """The datasets under the home directory, with their sizes, features and runs."""
    from store.inventory import DATASETS_SCHEMA
    from store.inventory import list_datasets as datasets
    from store.layout import anchorrec_home

    empty = f"no datasets under {home or anchorrec_home()}; create one: anchorrec pipeline --dataset demo"
    _print_rows(datasets(home), DATASETS_SCHEMA, empty)


@app.command()
def runs(dataset: str = DatasetOption, home: Optional[str] = HomeOption) -> None:
    """A dataset's training runs: model, seed, status (as its trainer recorded it), validation / test
    Recall@20, published or not, and a note (why it failed, which files are missing)."""
    from store.inventory import RUNS_SCHEMA, list_runs

    check_dataset_exists(PipelineConfig(dataset=dataset, home=home))
    empty = f"{dataset}: no runs yet; train one: anchorrec train --dataset {dataset}"
    _print_rows(list_runs(dataset_paths(dataset, home)), RUNS_SCHEMA, empty)


PublishedRunOption = typer.Option(None, "--run", "--run-id", help="a published run (default: the newest published run)")


def published_run(paths: Any, run: str | None) -> str:
    """The run `versions`/`rollback` act on: the one given, which must have an index, or the newest."""
    from store.index import latest_run, published_runs
    from store.layout import check_name
    from store.versions import current_file

    if run is None:
        found = latest_run(paths)
        if found is None:
            raise ValueError(
                f"dataset {paths.name} has no published run; publish one: anchorrec publish --dataset {paths.name}"
            )
        return found
    check_name("run", run)
    if current_file(paths, run).exists() or (paths.index_dir(run) / "manifest.json").exists():
        return run
    published = ", ".join(r for r, _ in published_runs(paths)) or "none"
    raise ValueError(
        f"--run {run}: dataset {paths.name} has no published run {run}; published runs: {published} "
        f"(anchorrec runs --dataset {paths.name} lists all runs)"
    )


@app.command()
def versions(
    dataset: str = DatasetOption, home: Optional[str] = HomeOption, run: Optional[str] = PublishedRunOption
) -> None:
    """A published run's index versions: items and users each serves, what changed, which one is served."""
    from store.versions import VERSIONS_SCHEMA, list_versions

    paths = require_dataset_dir(dataset, home)
    run_id = published_run(paths, run)
    typer.echo(f"run {run_id} of {dataset}:")
    empty = f"run {run_id}: an index from before versions (no versions yet); the next publish makes it version 0001"
    _print_rows(list_versions(paths, run_id), VERSIONS_SCHEMA, empty)


@app.command()
def rollback(
    dataset: str = DatasetOption, home: Optional[str] = HomeOption, run: Optional[str] = PublishedRunOption
) -> None:
    """Serve the index version the current one replaced (one atomic switch; again: one more step back)."""
    from store.index import rollback as roll_back
    from store.lock import dataset_lock
    from store.versions import current_version, list_versions

    paths = require_dataset_dir(dataset, home)
    run_id = published_run(paths, run)
    with dataset_lock(paths, "anchorrec rollback"):
        was = current_version(paths, run_id)
        now = roll_back(paths, run_id)
    row = next(r for r in list_versions(paths, run_id) if r["version"] == now)
    typer.echo(
        f"run {run_id} of {dataset}: now serving version {now} (was {was}): {row['items']} items, "
        f"{row['users']} users; anchorrec versions --dataset {dataset} --run {run_id} lists them"
    )


@app.command()
def report(
    runs: Optional[list[str]] = typer.Argument(None, help="run ids (default: every trained recommender run)"),
    dataset: str = DatasetOption,
    home: Optional[str] = HomeOption,
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="model to test the others against (default lightgcn)"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="report.md path (default <dataset>/reports/report-<time>/)"),
) -> None:
    """Compare runs (models × seeds): accuracy ± std, significance, collapse diagnostics, pictures."""
    from models.evaluation.report import compare_runs

    paths = dataset_paths(dataset, home)
    run_ids = runs or [r for r in paths.run_ids() if paths.metrics(r).exists() and not r.startswith("ica-")]
    if not run_ids:
        raise ValueError(
            f"{paths.runs_dir}: no trained runs to compare; train one: anchorrec train --dataset {dataset}"
        )
    out = out or paths.root / "reports" / f"report-{time.strftime('%Y%m%d-%H%M%S')}" / "report.md"
    typer.echo(f"wrote {compare_runs(paths, run_ids, baseline=baseline, out=out)}")


@app.command()
def leaderboard(
    dataset: str = DatasetOption,
    home: Optional[str] = HomeOption,
    models: Optional[list[str]] = typer.Option(
        None, "--model", help="a tuned model to include (repeat; default: every tuned model)"
    ),
    seeds: int = typer.Option(
        5,
        "--seeds",
        min=1,
        max=20,
        help="seeds each tuned configuration is rerun on (1..N; tuning trains on seed 0, which the reruns exclude)",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="leaderboard.md path (default <dataset>/reports/leaderboard/)"
    ),
    jobs: int = typer.Option(
        1, "--jobs", min=1, help="reruns at once (worker processes, one torch thread each; up to the number of cores)"
    ),
    epochs: Optional[int] = typer.Option(
        None,
        "--epochs",
        min=1,
        help="the converged table: continue every rerun to this epoch cap (e.g. 1000, MMRec's; patience as tuned) "
        "from the capped reruns' checkpoints, written beside the capped table",
    ),
    configs_from: Optional[str] = typer.Option(
        None,
        "--configs-from",
        metavar="DATASET",
        help="take each model's configuration from this dataset's studies (e.g. the item-cold leaderboard: "
        "`--dataset gift-cold --configs-from gift`); pop and content_knn need none",
    ),
    table: Optional[list[str]] = typer.Option(
        None,
        "--table",
        metavar="MOD=TABLE",
        help="rerun the studies' choices on this feature table for modality v, t or mm (repeat), e.g. "
        "mm=ica-1a2b3c when the table a study chose on is gone with its machine; the table says so",
    ),
    untuned_defaults: bool = typer.Option(
        False,
        "--untuned-defaults",
        help="with --configs-from: a model with no study there trains at its own defaults under the studies' "
        "budget (the table says so) instead of stopping with the tune command to run",
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help=_field_help("no_wait")),
) -> None:
    """Rerun every tuned model's best configuration on N seeds; one table of accuracy, collapse and cost."""
    paths = require_dataset_dir(dataset, home)
    require_interactions(paths, "leaderboard")
    from models.registry import MODELS

    unknown = sorted(set(models or []) - set(MODELS))
    if unknown:
        raise ValueError(f"--model: unknown {unknown}; known models: {', '.join(MODELS)}")
    from models.evaluation.leaderboard import parse_tables, run_leaderboard
    from store.lock import dataset_lock

    source = require_dataset_dir(configs_from, home) if configs_from else paths
    if untuned_defaults and not configs_from:
        raise ValueError("--untuned-defaults goes with --configs-from DATASET (the studies it borrows from)")
    tables = parse_tables(table or [])
    for name in tables.values():  # tables of the dataset whose studies are read
        if not source.feature(name).exists():
            raise FileNotFoundError(
                f"--table {name}: no such feature table in {source.features_dir}; the ICA ones are the "
                f"runs listed by `anchorrec runs --dataset {source.name}`"
            )

    with dataset_lock(paths, "anchorrec leaderboard", wait=not no_wait):  # workers run under the parent's lock
        path = run_leaderboard(
            paths,
            models,
            seeds=range(1, seeds + 1),
            out=out,
            progress=sys.stderr.isatty(),
            log=typer.echo,
            jobs=jobs,
            cap=epochs,
            configs_from=source if configs_from else None,
            tables=tables,
            untuned_defaults=untuned_defaults,
        )
    typer.echo(f"wrote {path}")


# --------------------------------------------------------------------------- scheduling
def check_prefect_api() -> str:
    """serve registers a deployment and polls a server for its runs: without one it would poll forever."""
    import httpx

    url = configured_api_url()
    start = "start one with `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api"
    if not url:
        raise ValueError(f"serve needs a Prefect server and PREFECT_API_URL is not set: {start}")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise ValueError(f"no Prefect API answers at PREFECT_API_URL={url} ({type(exc).__name__}): {start}") from None
    return url


def check_cron(cron: str, option: str = "cron") -> None:
    """Standard five-field cron, checked with cronsim (Prefect's own check needs Prefect imported)."""
    from datetime import datetime

    from cronsim import CronSim, CronSimError

    try:
        CronSim(cron, datetime.now())
    except CronSimError as exc:
        raise ValueError(
            f"--{option} {cron!r} is not a cron expression ({exc}), e.g. '0 3 * * *' (03:00 every day)"
        ) from None


def serve_plan(
    cfg: PipelineConfig, cron: str, name: str, update_cron: str | None, retrain_cron: str
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(flow, deployment name, cron, parameters) of each schedule `serve` registers.

    Without --update-cron: the whole pipeline at --cron, as always. With it, a catalog that
    changes: a frequent `update` (new items through the cold path, a retrain only past
    --retrain-after) and a rarer forced retrain (`update --retrain`): the pipeline's fresh ingest
    would renumber items, the retrain keeps their ids.
    """
    params = asdict(cfg)
    if not update_cron:
        return [("pipeline", name, cron, params)]
    return [
        ("update", f"{name}-update", update_cron, {**params, "retrain": False}),
        ("update", f"{name}-retrain", retrain_cron, {**params, "retrain": True}),
    ]


def _serve_command(cron: str, name: str, update_cron: str | None, retrain_cron: str, **params: Any) -> None:
    """Serve `pipeline` (or, with --update-cron, a frequent `update` and a rarer retrain) as
    cron-scheduled deployments on the Prefect server at PREFECT_API_URL.

    Every other option becomes a default parameter of the scheduled runs.
    """
    check_cron(cron)
    if update_cron:
        check_cron(update_cron, "update-cron")
        check_cron(retrain_cron, "retrain-cron")
    cfg = PipelineConfig(**params)
    plan = serve_plan(cfg, cron, name, update_cron, retrain_cron)
    preflight(cfg, plan[0][0])
    url = check_prefect_api()
    import flows  # sets Prefect's defaults (telemetry off, …) before Prefect reads its settings

    hooks = {
        "on_running": [_run_started],
        "on_completion": [_run_ended],
        "on_failure": [_run_ended],
        "on_crashed": [_run_ended],
        "on_cancellation": [_run_ended],
    }
    runner = _serve_runner()(name=name, limit=1)  # a dataset has one writer: a second run would only wait
    for flow_name, deployment, when, parameters in plan:
        served = flows.with_runner(flows.FLOWS[flow_name], cfg).with_options(**hooks)
        runner.add_flow(served, name=deployment, cron=when, parameters=parameters)
        typer.echo(
            f"serving {flow_name}/{deployment} ({when}) on {url}; a run now: "
            f"prefect deployment run '{flow_name}/{deployment}'"
        )
    typer.echo("Ctrl-C stops")
    import asyncio

    asyncio.run(runner.start())


def _serve_runner() -> type:
    """Prefect's Runner, stopped by SIGTERM (systemctl stop) as by Ctrl-C: Prefect's own handler calls
    sys.exit inside its event loop, which logs asyncio tracebacks and never awaits its shutdown."""
    from prefect.runner import Runner

    class ServeRunner(Runner):
        def handle_sigterm(self, *_args: Any, **_kwargs: Any) -> None:
            _stop(signal.SIGTERM, None)

    return ServeRunner


_run_clock: dict[str, float] = {}  # flow run id -> monotonic start, in the process that runs the flow


def _run_kind(flow_run: Any) -> str:
    return "scheduled run" if getattr(flow_run, "auto_scheduled", False) else "run"


def _run_started(_flow: Any, flow_run: Any, _state: Any) -> None:
    """Prefect runs each served flow run in a spawned process (run_flow_in_subprocess), which inherits
    stderr but not the CLI's logging set-up: without this the stage lines of scheduled runs went nowhere."""
    _quiet_logging()
    _run_clock[str(flow_run.id)] = time.monotonic()
    logging.getLogger("anchorrec").info("%s %s started (%s)", _run_kind(flow_run), flow_run.name, flow_run.id)


def _run_ended(_flow: Any, flow_run: Any, state: Any) -> None:
    """One line per run's end, a failure's message included (Prefect's own traceback is quieted)."""
    _quiet_logging()
    started = _run_clock.pop(str(flow_run.id), None)
    took = f" after {time.monotonic() - started:.0f} s" if started is not None else ""
    why = f": {' '.join(str(state.message).split())}" if not state.is_completed() and state.message else ""
    logging.getLogger("anchorrec").info(
        "%s %s %s%s%s", _run_kind(flow_run), flow_run.name, state.name.lower(), took, why
    )


_serve_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(
            "cron",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str,
            default=typer.Option("0 3 * * *", "--cron", help="when to run, as a cron expression"),
        ),
        inspect.Parameter(
            "name",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str,
            default=typer.Option("nightly", "--name", help="deployment name (pipeline/<name>)"),
        ),
        inspect.Parameter(
            "update_cron",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[str],
            default=typer.Option(
                None,
                "--update-cron",
                help="a changing catalog: run `update` at this cron (update/<name>-update) instead of the pipeline",
            ),
        ),
        inspect.Parameter(
            "retrain_cron",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str,
            default=typer.Option(
                "0 4 * * 0",
                "--retrain-cron",
                help="with --update-cron: the full retrain (update --retrain, update/<name>-retrain) at this cron",
            ),
        ),
        *config_parameters(FLOW_GROUPS["update"]),
    ]
)
app.command("serve")(_serve_command)


# --------------------------------------------------------------------------- entry point
def _error(message: str) -> None:
    typer.secho(f"error: {' '.join(str(message).split())}", fg=typer.colors.RED, err=True)


STOP_GRACE_S = 5.0  # the longest a stop waits for encoders to save their finished rows
_stopping: list[int] = []


def _stop(signum: int, _frame: Any) -> None:
    """Stop within seconds, keeping what was finished.

    An extraction that is encoding saves its encoded rows first (a rerun then encodes only the
    rest): the main thread gets a KeyboardInterrupt, whose way out writes the partial rows, worker
    threads see features.extract.RUNNING.stop after their batch, and a watchdog thread ends the
    process once they all have, or after STOP_GRACE_S whatever happens. Nothing else is waited
    for: the store is written atomically, checkpoints are per epoch, and Prefect reporting states
    to a server that the same Ctrl-C stopped takes minutes of connection errors. A second signal
    ends at once."""
    import threading

    code, name = (130 if signum == signal.SIGINT else 143), signal.Signals(signum).name
    running = getattr(sys.modules.get("features.extract"), "RUNNING", None)
    if _stopping or running is None or running.idle.is_set():
        _exit_now(
            code, f"stopped ({name}): finished stages and checkpoints are kept; run the same command again to resume"
        )
    _stopping.append(signum)
    running.stop.set()
    threading.Thread(target=_exit_when_saved, args=(running, code, name), name="anchorrec-stop").start()
    raise KeyboardInterrupt  # not a daemon thread: an exit of the main thread waits for it


_stop.also_for_sigterm = True  # type: ignore[attr-defined]  # flows puts it back where Prefect swaps SIGTERM


def _exit_when_saved(running: Any, code: int, name: str) -> None:
    saved = running.idle.wait(STOP_GRACE_S)
    late = "" if saved else f" (gave up after {STOP_GRACE_S:g} s on rows not yet saved)"
    _exit_now(
        code,
        f"stopped ({name}): {running.kept} encoded items kept{late}; "
        "run the same command again to resume (it encodes only the rest)",
    )


def _exit_now(code: int, message: str) -> typing.NoReturn:
    sys.stderr.write(f"\n{message}\n")
    sys.stderr.flush()
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            child.terminate()
    except Exception:  # noqa: BLE001 - stopping must not fail
        pass
    os._exit(code)


PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.task_engine", "prefect.flow_engine")


def _quiet_logging() -> None:
    """One line per stage on stderr; Prefect's own tracebacks off (the error is reported once, here).

    Called before Prefect is imported and again after: importing it re-applies its logging config,
    and the PREFECT_LOGGING_* variables make that config (here and in worker processes) agree.
    """
    from models.training.progress import log_to_stderr

    log_to_stderr()
    for name in PREFECT_RUN_LOGGERS:
        env = "PREFECT_LOGGING_LOGGERS_" + name.upper().replace(".", "_") + "_LEVEL"
        if name in ("prefect.task_runs", "prefect.flow_runs"):  # the two Prefect's config names
            os.environ[env] = "CRITICAL"
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for name in ("urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors are one red line and exit 2; a bug is one line and exit 1, its
    traceback in a log file that line names."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
    from typer.exceptions import Abort, Exit

    from store.errors import USER_ERRORS

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    _quiet_logging()
    if not sys.stderr.isatty():  # a log file gets each bar's start and end, not every redraw
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    try:
        app(args=argv, standalone_mode=False)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except Abort:
        sys.exit(130)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "usage: anchorrec COMMAND --help")
        sys.exit(EXIT_USER_ERROR)
    except ClickException as exc:  # bad or unknown option, bad value: click's own message
        _error(_usage_message(exc))
        sys.exit(EXIT_USER_ERROR)
    except USER_ERRORS as exc:
        _error(str(exc))
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback in a file for the report
        _error(
            f"internal error ({type(exc).__name__}: {str(exc)[:300]}); please report it with the traceback in "
            f"{_crash_log(argv)}"
        )
        sys.exit(1)


def _usage_message(exc: Any) -> str:
    """Click's message with where to look: the command list for an unknown command, else its --help."""
    import re

    ctx, message = getattr(exc, "ctx", None), exc.format_message()
    unknown = re.fullmatch(r"No such command '(.*)'\.", message)
    if ctx is not None and ctx.parent is None and unknown:
        names = ", ".join(sorted(ctx.command.list_commands(ctx)))
        return f"no such command '{unknown.group(1)}'; commands: {names} (see: anchorrec --help)"
    command = f"{ctx.info_name} " if ctx is not None and ctx.parent is not None else ""
    return f"{message} (see: anchorrec {command}--help)"


def _crash_log(argv: list[str] | None) -> Path:
    """Where a bug's traceback goes: $ANCHORREC_HOME/logs/ (or --home's), else the temp dir."""
    import tempfile

    from store.layout import anchorrec_home

    args = list(sys.argv[1:] if argv is None else argv)
    given = [b for a, b in zip(args, args[1:]) if a == "--home"] + [a[7:] for a in args if a.startswith("--home=")]
    home = given[0] if given else anchorrec_home()
    text = f"anchorrec {' '.join(args)}\n{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n\n{traceback.format_exc()}"
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (Path(home) / "logs", Path(tempfile.gettempdir()) / "anchorrec-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return (folder / name).resolve()
        except OSError:
            continue
    return Path("(no writable folder for the log)")


if __name__ == "__main__":
    main()
