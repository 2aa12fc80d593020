"""Prefect flows and the command line: wiring only, no domain logic.

Each stage is one Prefect task that calls one room's function. A task's cache key is a hash of
its real inputs (input file contents, its config and the source of the rooms it runs), so a rerun
with nothing changed recomputes nothing, and changing one input reruns exactly the stages
downstream of it. A stage whose outputs were deleted is recomputed even when its key is cached.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact

from store import DatasetPaths, dataset_paths
from store.hashing import file_sha256

REPO = Path(__file__).resolve().parent
RELEASES = ("demo", "2014", "2018", "2023", "mmrec")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class PipelineConfig:
    """Every parameter of the pipeline; the CLI options and flow parameters are these names."""

    dataset: str = "demo"
    release: str = "demo"
    category: Optional[str] = None
    meta: Optional[str] = None
    reviews: Optional[str] = None
    source: Optional[str] = None
    home: Optional[str] = None
    kcore: int = 5
    seed: int = 0
    demo_items: int = 300
    demo_users: int = 400
    image_workers: int = 8
    shards: int = 1
    text_encoder: str = "minilm"
    image_encoder: str = "efficientnet-lite0"
    batch_size: int = 64
    pretrain_epochs: int = 30
    model: str = "anchorrec"
    epochs: int = 60
    patience: int = 10
    lr: float = 1e-3
    device: Optional[str] = None
    task_runner: str = "thread"

    def __post_init__(self) -> None:
        if self.release not in RELEASES:
            raise ValueError(f"release must be one of {RELEASES}, got {self.release!r}")
        if self.release == "mmrec" and not self.source:
            raise ValueError("release 'mmrec' needs --source: the directory holding <name>.inter")
        for name in ("kcore", "image_workers", "shards", "batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.pretrain_epochs < 0:
            raise ValueError("pretrain_epochs must be ≥ 0 (0 skips pretraining)")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.task_runner not in ("thread", "dask"):
            raise ValueError("task_runner must be 'thread' or 'dask'")

    @property
    def paths(self) -> DatasetPaths:
        return dataset_paths(self.dataset, self.home)


# --------------------------------------------------------------------------- cache keys
@functools.lru_cache(maxsize=None)
def code_version(*rooms: str) -> str:
    """Hash of the Python source of the rooms a stage runs: editing them invalidates its cache."""
    h = hashlib.sha256()
    for room in sorted(rooms):
        base = REPO / room
        files = sorted(base.rglob("*.py")) if base.is_dir() else [REPO / f"{room}.py"]
        for f in files:
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, config: dict[str, Any], inputs: list[Path], rooms: tuple[str, ...]) -> str:
    """Cache key of a stage: its config, the content of its input files and its code."""
    h = hashlib.sha256(stage.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for p in inputs:
        h.update(str(p.name).encode())
        h.update(file_sha256(p).encode() if p.exists() else b"<missing>")
    h.update(code_version(*rooms).encode())
    return f"{stage}-{h.hexdigest()[:20]}"


def run_stage(fn: Callable[..., dict], key: str, outputs: list[Path], *args: Any, **kwargs: Any) -> dict:
    """Call a stage task under `key`; refresh the cache if any output is gone from disk."""
    refresh = not all(p.exists() for p in outputs)
    return fn.with_options(cache_key_fn=lambda *_: key, refresh_cache=refresh)(*args, **kwargs)


# --------------------------------------------------------------------------- tasks
def _timed(fn: Callable[..., dict]) -> Callable[..., dict]:
    """Log each stage's summary and wall time through Prefect's run logger."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        out = dict(out or {})
        out["seconds"] = round(time.perf_counter() - t0, 2)
        get_run_logger().info("%s done in %.1fs: %s", fn.__name__, out["seconds"], _brief(out))
        return out

    return wrapper


def _brief(summary: dict) -> str:
    keep = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and len(str(v)) < 80}
    return json.dumps(keep, default=str)[:600]


@task(name="ingest", persist_result=True, retries=2, retry_delay_seconds=[2, 10])
@_timed
def ingest_task(cfg: PipelineConfig) -> dict:
    if cfg.release == "mmrec":
        from pipelines.mmrec import import_mmrec

        return import_mmrec(Path(cfg.source), cfg.dataset, home=cfg.home)
    from pipelines.ingest import ingest

    return ingest(
        cfg.dataset,
        release=cfg.release,
        category=cfg.category,
        meta=cfg.meta,
        reviews=cfg.reviews,
        home=cfg.home,
        kcore=cfg.kcore,
        seed=cfg.seed,
        demo_items=cfg.demo_items,
        demo_users=cfg.demo_users,
    )


@task(name="fetch-images", persist_result=True, retries=2, retry_delay_seconds=[2, 10])
@_timed
def images_task(cfg: PipelineConfig, shard: Optional[tuple[int, int]] = None) -> dict:
    from pipelines.images import fetch_images

    return fetch_images(cfg.paths, workers=cfg.image_workers, shard=shard, progress=shard is None)


@task(name="merge-image-audits", persist_result=True)
@_timed
def merge_images_task(cfg: PipelineConfig, shard_summaries: list[dict]) -> dict:
    from pipelines.images import merge_audits

    return merge_audits(cfg.paths, len(shard_summaries))


@task(name="extract-features", persist_result=True)
@_timed
def extract_task(cfg: PipelineConfig, spec: str, name: str, shard: Optional[tuple[int, int]] = None) -> dict:
    from features.extract import extract

    return extract(
        cfg.paths, spec, name=name, batch_size=cfg.batch_size, device=cfg.device, shard=shard, progress=shard is None
    )


@task(name="pretrain-ica", persist_result=True)
@_timed
def pretrain_task(cfg: PipelineConfig, image_feature: str, text_feature: str, run_id: str) -> dict:
    from models.ica import ICAConfig
    from models.pretrain import pretrain_ica

    ica = ICAConfig(epochs=cfg.pretrain_epochs, seed=cfg.seed)
    return pretrain_ica(cfg.paths, image_feature, text_feature, ica, run_id=run_id)


@task(name="train", persist_result=True)
@_timed
def train_task(cfg: PipelineConfig, features: dict[str, str], run_id: str) -> dict:
    from models.train import TrainConfig, train

    tc = TrainConfig(
        model=cfg.model,
        features=features,
        lr=cfg.lr,
        epochs=cfg.epochs,
        patience=cfg.patience,
        seed=cfg.seed,
        device=cfg.device,
        run_id=run_id,
    )
    return train(cfg.paths, tc)


@task(name="publish", persist_result=True)
@_timed
def publish_task(cfg: PipelineConfig, run_id: str) -> dict:
    from store.index import publish

    return publish(cfg.paths, run_id)


# --------------------------------------------------------------------------- stages
def feature_name(spec: str) -> str:
    """The feature table a spec writes (features.base's rule, so cache keys and files agree)."""
    from features.base import default_feature_name

    return default_feature_name(spec)


def map_shards(fn: Any, key: str, cfg: PipelineConfig, refresh: bool, *args: Any) -> list[dict]:
    """`fn(cfg, *args, shard=(i, n))` for every shard, spread over the task runner, cached per shard."""
    n = cfg.shards
    futures = fn.with_options(
        cache_key_fn=lambda _ctx, params: f"{key}-shard-{params['shard'][0]}-of-{n}", refresh_cache=refresh
    ).map(unmapped(cfg), *(unmapped(a) for a in args), shard=[(i, n) for i in range(n)])
    return futures.result()  # raises if a shard failed


def stage_ingest(cfg: PipelineConfig) -> dict:
    p = cfg.paths
    conf = {k: getattr(cfg, k) for k in ("release", "category", "meta", "reviews", "source", "kcore", "seed", "demo_items", "demo_users")}
    inputs = [Path(x) for x in (cfg.meta, cfg.reviews) if x and Path(x).exists()]
    if cfg.source:
        inputs += sorted(Path(cfg.source).glob("*"))
    key = stage_key("ingest", conf, inputs, ("pipelines", "store"))
    return run_stage(ingest_task, key, [p.items, p.users, p.interactions], cfg)


def stage_images(cfg: PipelineConfig) -> dict:
    """One task, or `shards` mapped tasks (spread over the task runner's workers) and a merge."""
    p = cfg.paths
    key = stage_key("images", {}, [p.items], ("pipelines", "store"))
    if cfg.shards == 1:
        return run_stage(images_task, key, [p.image_audit], cfg)
    shards = map_shards(images_task, key, cfg, not p.image_audit.exists())
    return run_stage(merge_images_task, f"{key}-merge-{cfg.shards}", [p.image_audit], cfg, shards)


def stage_features(cfg: PipelineConfig, with_images: bool) -> dict[str, str]:
    """Extract text (and image) features; returns modality → feature table name."""
    p = cfg.paths
    specs = {"text": cfg.text_encoder}
    if with_images:
        specs["image"] = cfg.image_encoder
    names = {}
    for modality, spec in specs.items():
        name = feature_name(spec)
        inputs = [p.items] + ([p.image_audit] if modality == "image" else [])
        key = stage_key(f"features-{name}", {"spec": spec, "batch": cfg.batch_size}, inputs, ("features", "store"))
        if cfg.shards > 1:  # encode shards on the task runner's workers; the final call assembles
            map_shards(extract_task, key, cfg, not p.feature(name).exists(), spec, name)
        run_stage(extract_task, key, [p.feature(name)], cfg, spec, name)
        names[modality] = name
    return names


def stage_pretrain(cfg: PipelineConfig, image: str, text: str) -> str:
    p = cfg.paths
    conf = {"epochs": cfg.pretrain_epochs, "seed": cfg.seed}
    key = stage_key("pretrain", conf, [p.feature(image), p.feature(text), p.items], ("models", "store"))
    run_id = key.split("-", 1)[1][:10]
    run_stage(pretrain_task, key, [p.feature(f"ica-{run_id}")], cfg, image, text, run_id)
    return f"ica-{run_id}"


def modality_map(names: dict[str, str], mm: str | None) -> dict[str, str]:
    """AnchorRec's v/t/mm inputs; a missing modality falls back to the one we have."""
    text = names["text"]
    image = names.get("image", text)
    return {"v": image, "t": text, "mm": mm or text}


def stage_train(cfg: PipelineConfig, features: dict[str, str]) -> dict:
    p = cfg.paths
    conf = {k: getattr(cfg, k) for k in ("model", "lr", "epochs", "patience", "seed")}
    conf["features"] = features
    inputs = [p.items, p.interactions] + [p.feature(n) for n in sorted(set(features.values()))]
    key = stage_key("train", conf, inputs, ("models", "store"))
    run_id = f"{cfg.model}-{key.split('-', 1)[1][:10]}"
    out = run_stage(train_task, key, [p.item_vectors(run_id), p.metrics(run_id)], cfg, features, run_id)
    out.setdefault("run_id", run_id)
    return out


def stage_publish(cfg: PipelineConfig, run_id: str) -> dict:
    p = cfg.paths
    key = stage_key("publish", {"run": run_id}, [p.item_vectors(run_id)], ("store",))
    return run_stage(publish_task, key, [p.index_dir(run_id) / "manifest.json"], cfg, run_id)


# --------------------------------------------------------------------------- flows


def _signature() -> Any:
    import dataclasses
    import inspect

    hints = typing.get_type_hints(PipelineConfig)  # real types, not the strings of `annotations`
    params = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in dataclasses.fields(PipelineConfig)
    ]
    return inspect.Signature(params)


def _make_flow(name: str, body: Callable[[PipelineConfig], dict], doc: str) -> Any:
    """A Prefect flow whose parameters are PipelineConfig's fields (validated by Prefect)."""

    def fn(**params: Any) -> dict:
        return body(PipelineConfig(**params))

    fn.__name__ = fn.__qualname__ = name.replace("-", "_")
    fn.__doc__ = doc
    fn.__signature__ = _signature()  # type: ignore[attr-defined]
    fn.__annotations__ = typing.get_type_hints(PipelineConfig)
    return flow(name=name, description=doc, log_prints=True)(fn)


def _with_images(cfg: PipelineConfig) -> bool:
    return cfg.release != "mmrec"


def _features_body(cfg: PipelineConfig) -> dict:
    if _with_images(cfg):
        stage_images(cfg)
    return stage_features(cfg, _with_images(cfg))


def _pretrain_body(cfg: PipelineConfig) -> dict:
    names = _features_body(cfg)
    mm = None
    if "image" in names and cfg.pretrain_epochs > 0:
        mm = stage_pretrain(cfg, names["image"], names["text"])
    return modality_map(names, mm)


def _train_body(cfg: PipelineConfig) -> dict:
    return stage_train(cfg, _pretrain_body(cfg))


def _pipeline_body(cfg: PipelineConfig) -> dict:
    t0 = time.perf_counter()
    ingest_summary = stage_ingest(cfg)
    features = _pretrain_body(cfg)
    trained = stage_train(cfg, features)
    published = stage_publish(cfg, trained["run_id"])
    result = {
        "dataset": cfg.dataset,
        "run_id": trained["run_id"],
        "features": features,
        "ingest": ingest_summary,
        "train": trained,
        "publish": published,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _pipeline_artifact(cfg, result)
    return result


def _pipeline_artifact(cfg: PipelineConfig, result: dict) -> None:
    """A markdown artifact per run: data quality and metrics, readable in the Prefect UI."""
    p = cfg.paths
    quality = p.prepare_report.read_text() if p.prepare_report.exists() else "{}"
    metrics = p.metrics(result["run_id"]).read_text() if p.metrics(result["run_id"]).exists() else "{}"
    md = (
        f"# Pipeline run: {cfg.dataset} → {result['run_id']}\n\n"
        f"Total {result['seconds']} s.\n\n## Data quality\n```json\n{quality[:6000]}\n```\n\n"
        f"## Metrics\n```json\n{_metrics_brief(metrics)}\n```\n"
    )
    key = "pipeline-" + "".join(c if c.isalnum() else "-" for c in cfg.dataset.lower())
    create_markdown_artifact(md, key=key, description=f"pipeline run on {cfg.dataset}")


def _metrics_brief(metrics_json: str) -> str:
    try:
        m = json.loads(metrics_json)
    except json.JSONDecodeError:
        return metrics_json[:2000]
    m.pop("history", None)
    return json.dumps(m, indent=2, default=str)[:4000]


ingest_flow = _make_flow("ingest", stage_ingest, "Download, parse, filter and split a dataset.")
features_flow = _make_flow("features", _features_body, "Fetch images and extract features.")
pretrain_flow = _make_flow("pretrain", _pretrain_body, "Pretrain the inter-content encoder (ICA).")
train_flow = _make_flow("train", _train_body, "Train the recommender on the dataset's features.")
publish_flow = _make_flow(
    "publish", lambda c: stage_publish(c, _train_body(c)["run_id"]), "Publish a run's item vectors to FAISS."
)
pipeline = _make_flow("pipeline", _pipeline_body, "The whole pipeline: ingest → features → pretrain → train → publish.")


def with_runner(the_flow: Any, cfg: PipelineConfig) -> Any:
    """The flow on the task runner `cfg.task_runner` names: threads here, or a Dask cluster.

    With task_runner='dask', ANCHORREC_DASK_ADDRESS (e.g. tcp://scheduler:8786) selects an existing
    cluster; without it a local cluster of worker processes is started for the run.
    """
    if cfg.task_runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return the_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max(2, cfg.shards)))
    from prefect_dask import DaskTaskRunner

    address = os.environ.get("ANCHORREC_DASK_ADDRESS")
    if address:
        return the_flow.with_options(task_runner=DaskTaskRunner(address=address))
    workers = max(1, min(cfg.shards, os.cpu_count() or 1))
    kwargs = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    return the_flow.with_options(task_runner=DaskTaskRunner(cluster_kwargs=kwargs))


FLOWS = {
    "ingest": ingest_flow,
    "features": features_flow,
    "pretrain": pretrain_flow,
    "train": train_flow,
    "publish": publish_flow,
    "pipeline": pipeline,
}


# --------------------------------------------------------------------------- command line
app = typer.Typer(add_completion=False, no_args_is_help=True, help="AnchorRec: multimodal recommendation on Amazon data.")


def _cli_for(name: str, the_flow: Any) -> None:
    """Expose a flow as a CLI command with exactly the flow's parameters."""

    def command(**params: Any) -> None:
        cfg = PipelineConfig(**params)  # validate at the edge, before Prefect starts
        result = with_runner(the_flow, cfg)(**asdict(cfg))
        if name == "pipeline":
            _print_pipeline_result(cfg, result)
        else:
            typer.echo(json.dumps(result, indent=2, default=str)[:4000])

    command.__signature__ = _signature()  # type: ignore[attr-defined]
    command.__doc__ = the_flow.description
    app.command(name)(command)


for _name, _flow in FLOWS.items():
    _cli_for(_name, _flow)


def _print_pipeline_result(cfg: PipelineConfig, result: dict) -> None:
    from store.sql import run_query

    m = json.loads(cfg.paths.metrics(result["run_id"]).read_text())
    typer.echo(f"\nrun {result['run_id']} on {cfg.dataset} ({result['seconds']} s)")
    for split in ("valid", "test"):
        vals = m.get(split) or {}
        shown = {k: round(v, 4) for k, v in vals.items() if k.endswith(("@10", "@20")) and not k.startswith("map")}
        typer.echo(f"  {split}: {shown}")
    query = SAMPLE_QUERY.format(user=0, k=5)
    typer.echo(f"\n{query}")
    typer.echo(show(run_query(cfg.paths, query, run_id=result["run_id"])))


def show(table: Any, rows: int = 40) -> str:
    """Render an Arrow table as DuckDB's box table (what `anchorrec sql` prints)."""
    import duckdb

    return str(duckdb.from_arrow(table).limit(rows)) if table.num_rows else "(no rows)"


SAMPLE_QUERY = (
    "SELECT r.item_id, round(r.score, 3) AS score, i.title\n"
    "FROM (SELECT unnest(recommend({user}, {k}), recursive := true)) r JOIN items i USING (item_id)\n"
    "ORDER BY r.score DESC"
)


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL over items, users, interactions, features and vectors"),
    dataset: str = "demo",
    home: Optional[str] = None,
    run_id: Optional[str] = typer.Option(None, help="published run (default: latest)"),
    output: Optional[Path] = typer.Option(None, help="write the result to .parquet or .csv"),
    write: bool = typer.Option(False, help="allow statements that modify the store"),
) -> None:
    """Run a SQL query against a dataset's store (read-only by default)."""
    from store.sql import run_query

    fmt = "table" if output is None else output.suffix.lstrip(".")
    table = run_query(dataset_paths(dataset, home), query, run_id=run_id, output=output, fmt=fmt, read_only=not write)
    typer.echo(show(table) if output is None else f"wrote {table.num_rows} rows to {output}")


@app.command()
def recommend(
    user: int = typer.Option(..., "--user", help="user_id"),
    k: int = typer.Option(10, "-k", help="how many items"),
    dataset: str = "demo",
    home: Optional[str] = None,
    run_id: Optional[str] = None,
) -> None:
    """Top-k items for a user (training items excluded), with titles."""
    from store.sql import recommend_for

    typer.echo(show(recommend_for(dataset_paths(dataset, home), user, k, run_id=run_id)))


@app.command()
def similar(
    item: str = typer.Option(..., "--item", help="asin or item_id"),
    k: int = typer.Option(10, "-k"),
    dataset: str = "demo",
    home: Optional[str] = None,
    run_id: Optional[str] = None,
) -> None:
    """Items nearest to an item in the published run's item space."""
    from store.sql import similar_to

    key: int | str = int(item) if item.isdigit() else item
    typer.echo(show(similar_to(dataset_paths(dataset, home), key, k, run_id=run_id)))


@app.command()
def report(
    runs: Optional[list[str]] = typer.Argument(None, help="run ids (default: every trained recommender run)"),
    dataset: str = "demo",
    home: Optional[str] = None,
    baseline: Optional[str] = typer.Option(None, help="model to test the others against (default lightgcn)"),
    out: Optional[Path] = typer.Option(None, help="report.md path (default <dataset>/reports/report-<time>/)"),
) -> None:
    """Compare runs (models × seeds): accuracy ± std, significance, collapse diagnostics, pictures."""
    from models.report import compare_runs

    paths = dataset_paths(dataset, home)
    run_ids = runs or [r for r in paths.run_ids() if paths.metrics(r).exists() and not r.startswith("ica-")]
    if not run_ids:
        raise ValueError(f"{paths.runs_dir}: no trained runs to compare; run `anchorrec train` first")
    out = out or paths.root / "reports" / f"report-{time.strftime('%Y%m%d-%H%M%S')}" / "report.md"
    typer.echo(f"wrote {compare_runs(paths, run_ids, baseline=baseline, out=out)}")


def _serve_command(cron: str = "0 3 * * *", name: str = "nightly", **params: Any) -> None:
    """Serve `pipeline` as a cron-scheduled deployment on the configured Prefect server.

    Point PREFECT_API_URL at a server (`prefect server start`); every other option becomes a
    default parameter of the scheduled runs.
    """
    cfg = PipelineConfig(**params)
    with_runner(pipeline, cfg).serve(name=name, cron=cron, parameters=asdict(cfg))


def _serve_signature() -> Any:
    import inspect

    extra = [
        inspect.Parameter("cron", inspect.Parameter.KEYWORD_ONLY, default="0 3 * * *", annotation=str),
        inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default="nightly", annotation=str),
    ]
    return inspect.Signature(extra + list(_signature().parameters.values()))


_serve_command.__signature__ = _serve_signature()  # type: ignore[attr-defined]
app.command("serve")(_serve_command)


def main() -> None:
    """Console entry point: readable errors for bad input instead of tracebacks."""
    from store.errors import StoreError

    try:
        app()
    except (StoreError, ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
