"""Prefect flows: wiring only, no domain logic.

Each stage is one Prefect task that calls one room's function. A task's cache key is a hash of
its real inputs (input file contents, its config and the source of the modules it runs, see
stage_keys), so a rerun with nothing changed recomputes nothing, and changing one input reruns
exactly the stages downstream of it. A stage whose outputs are missing or fail their check
(store.verify) is recomputed even when its key is cached. The command line lives in cli.py.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls (offline machines)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PREFECT_HOME"):  # Prefect makes only the last level, then fails with pages of traceback
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline_config import FLOW_DOCS, FLOW_GROUPS, NO_IMAGES, RELEASES, PipelineConfig  # noqa: F401 (re-exported)
from pipelines.catalog_only import is_catalog_request, refuse_catalog_pipeline, require_interactions
from pipelines.local_images import fingerprint as images_fingerprint
from stage_keys import stage_key
from store import DatasetPaths, dataset_paths, records  # noqa: F401
from store.errors import USER_ERRORS
from store.layout import source_name
from store.lock import dataset_lock
from store.verify import problem, problems

log = logging.getLogger("anchorrec")


# --------------------------------------------------------------------------- stages
def run_stage(name: str, fn: Any, key: str, outputs: list[Path], *args: Any, **kwargs: Any) -> dict:
    """Call a stage task under `key`; recompute when an output is missing or fails its check.

    Prints one line per stage on the `anchorrec` logger: the stage's own summary, or 'cached'.
    """
    found = problems(outputs)  # includes the stage records: a valid but replaced output reruns too
    if found:
        log.debug("%s: recomputing (%s)", name, found[0])
    saved = records.withdraw(outputs)  # the stage's read-back of its own outputs must not meet old records
    try:
        state = fn.with_options(cache_key_fn=lambda *_: key, refresh_cache=bool(found))(
            *args, return_state=True, **kwargs
        )
        result = state.result()  # raises the stage's own exception
    except BaseException:
        records.restore(saved)  # outputs still the old files match them; half-replaced ones do not
        raise
    cached = state.name == "Cached"  # then the outputs are the ones just checked, unchanged
    still = [] if cached else problems(outputs, record=False)
    if still:
        records.restore(saved)
        raise RuntimeError(f"{name}: output failed its check after the stage ran: {still[0]}")
    if cached:
        records.restore(saved)
    else:
        records.discard(saved)
    for out in outputs:  # rows + content hash of what this stage left: readers compare with it
        if not cached or records.read(out) is None:
            records.write(out, name)
    log.info("%s: %s", name, "cached" if cached else stage_line(name, result))
    return result


def stage_line(name: str, s: dict) -> str:
    """One human line per stage: the stage's own 'line' when it gives one, else its main numbers."""
    if s.get("line"):
        return str(s["line"]).removeprefix(f"{name}: ").removeprefix("images: ")
    took = f" ({s['seconds']} s)" if "seconds" in s else ""
    if name == "ingest" and isinstance(s.get("output"), dict):
        out, bad = s["output"], s.get("bad_records") or {}
        facts = "".join(f"\n  {fact}" for fact in s.get("facts") or [])  # one line each (prepare.data_facts)
        return (
            f"{out.get('items')} items, {out.get('users')} users, {out.get('interactions')} interactions; "
            f"{bad.get('dropped', 0)} bad records dropped (see prepare.json){took}{facts}"
        )
    if name.startswith("features") and "n_vectors" in s:
        return (
            f"{s.get('name')}: vectors for {s['n_vectors']} of {s.get('n_items')} items "
            f"({s.get('encoded', 0)} encoded, {s.get('resumed', 0)} resumed"
            f"{', ' + str(s['reused']) + ' reused' if s.get('reused') else ''}){took}"
        )
    if name.startswith("tokens") and "n_with_tokens" in s:
        return (
            f"{s.get('name')}: tokens for {s['n_with_tokens']} of {s.get('n_items')} items, {s.get('mean_tokens', 0):.1f} "
            f"per item, {s.get('bytes_per_item', 0) / 1024:.1f} KB/item ({s.get('encoded', 0)} encoded){took}"
        )
    if name == "apply ica" and "name" in s:
        return f"{s['name']}: mm encoded by {s.get('run')}{took}"
    if name == "train" and "run_id" in s:
        valid = round((s.get("valid") or {}).get("recall@20", float("nan")), 4)
        line = (
            f"{s['run_id']}: best epoch {s.get('best_epoch')} of {s.get('epochs_run')}, valid recall@20 {valid}{took}"
        )
        if s.get("test_divisions"):  # the item-cold protocol (models.evaluation.cold)
            from models.evaluation.cold import division_line

            line += "\n  " + division_line(s)
        return line
    if name == "publish" and s.get("content_feature"):
        return (
            f"{s.get('run')}: content vectors of {s['content_feature']} for {s.get('count')} items "
            f"({s.get('without_vector', 0)} without a vector) in a {s.get('kind')} index{took}"
        )
    if name == "publish" and "count" in s:
        version = f", version {s['version']}" if s.get("version") else ""
        return f"{s.get('run')}: {s['count']} items in a {s.get('kind')} index{version}{took}"
    if name == "pretrain" and "feature" in s:
        return f"{s['feature']}: {s.get('n_both')} of {s.get('n_items')} items with image and text{took}"
    keep = {k: v for k, v in s.items() if isinstance(v, (int, float, str)) and len(str(v)) < 40}
    return ", ".join(f"{k} {v}" for k, v in list(keep.items())[:8])


# --------------------------------------------------------------------------- tasks
def _retry_transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry network hiccups, never a user error (a bad file stays bad: say so at once). A failed
    download is one (store.errors.SourceUnavailable): its per-URL retries already ran."""
    try:
        state.result()
    except USER_ERRORS:
        return False
    except Exception:  # noqa: BLE001 - the state's own exception: a network hiccup, say
        return True
    return False


def _timed(fn: Callable[..., dict]) -> Callable[..., dict]:
    """Each stage's summary carries its wall time."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict:
        t0 = time.perf_counter()
        out = dict(fn(*args, **kwargs) or {})
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out

    return wrapper


@task(name="ingest", persist_result=True, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_transient)
@_timed
def ingest_task(cfg: PipelineConfig) -> dict:
    if cfg.release == "mmrec":
        from pipelines.mmrec import import_mmrec

        assert cfg.source is not None  # PipelineConfig refuses --release mmrec without --source
        return import_mmrec(Path(cfg.source), cfg.dataset, home=cfg.home, cold_items=cfg.cold_items, seed=cfg.seed)
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
        **ingest_extras(cfg),
    )


def ingest_extras(cfg: PipelineConfig) -> dict[str, Any]:
    """Options only the real-data releases take."""
    extras: dict[str, Any] = {
        "min_meta_match": cfg.min_meta_match,
        "allow_missing_meta": cfg.allow_missing_meta,
        "cold_items": cfg.cold_items,
    }
    if cfg.release == "csv":
        extras.update(
            columns=cfg.columns,
            meta_release=cfg.meta_release,
            no_header=cfg.no_header,
            meta_columns=cfg.meta_columns,
            train=cfg.train,
            valid=cfg.valid,
            test=cfg.test,
        )
    return extras


@task(
    name="fetch-images",
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_retry_transient,
)
@_timed
def images_task(cfg: PipelineConfig, shard: Optional[tuple[int, int]] = None) -> dict:
    from pipelines.images import fetch_images

    return fetch_images(
        cfg.paths, workers=cfg.image_workers, shard=shard, progress=shard is None, images_dir=cfg.images
    )


@task(name="merge-image-audits", persist_result=True)
@_timed
def merge_images_task(cfg: PipelineConfig, shard_summaries: list[dict]) -> dict:
    from pipelines.images import merge_audits

    return merge_audits(cfg.paths, len(shard_summaries))


@task(name="extract-features", persist_result=True)
@_timed
def extract_task(cfg: PipelineConfig, spec: str, name: str, shard: Optional[tuple[int, int]] = None) -> dict:
    from features.extract import extract
    from features.tokens import extract_with_tokens, shares_pass

    kwargs: dict[str, Any] = dict(
        name=name, batch_size=cfg.batch_size, device=cfg.device, shard=shard, progress=shard is None
    )
    if cfg.tokens and shares_pass(spec):  # one backbone pass per photo for pooled and token features
        return extract_with_tokens(cfg.paths, spec, grid=cfg.token_grid, **kwargs)
    return extract(cfg.paths, spec, **kwargs)


@task(name="extract-tokens", persist_result=True)
@_timed
def tokens_task(cfg: PipelineConfig, spec: str, modality: str, name: str) -> dict:
    from features.tokens import extract_tokens

    return extract_tokens(
        cfg.paths,
        spec,
        modality,
        name=name,
        grid=cfg.token_grid,
        max_length=cfg.max_text_tokens,
        batch_size=cfg.batch_size,
        device=cfg.device,
    )


@task(name="pretrain-ica", persist_result=True)
@_timed
def pretrain_task(
    cfg: PipelineConfig, image_feature: str, text_feature: str, run_id: str, tokens: dict[str, str] | None = None
) -> dict:
    from models.pretraining.ica import ICAConfig
    from models.pretraining.pretrain import pretrain_ica

    ica = ICAConfig(epochs=cfg.pretrain_epochs, seed=cfg.seed)
    tokens = tokens or {}
    return pretrain_ica(
        cfg.paths,
        image_feature,
        text_feature,
        ica,
        run_id=run_id,
        image_tokens=tokens.get("image"),
        text_tokens=tokens.get("text"),
    )


@task(name="apply-ica", persist_result=True)
@_timed
def apply_ica_task(
    cfg: PipelineConfig,
    run_dir: str,
    image_feature: str,
    text_feature: str,
    name: str,
    tokens: dict[str, str] | None = None,
) -> dict:
    from models.pretraining.apply import write_applied_feature

    tokens = tokens or {}
    path = write_applied_feature(
        cfg.paths, Path(run_dir), image_feature, text_feature, tokens.get("image"), tokens.get("text"), name=name
    )
    return {"name": path.stem, "path": str(path), "run": run_dir}


@task(name="train", persist_result=True)
@_timed
def train_task(cfg: PipelineConfig, features: dict[str, str], run_id: str) -> dict:
    from models.training.trainer import TrainConfig, train

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


@task(name="tune", persist_result=True)
@_timed
def tune_task(cfg: PipelineConfig, features: dict[str, str]) -> dict:
    from models.training.trainer import TrainConfig
    from models.training.tune import tune

    base = TrainConfig(
        model=cfg.model, features=features, epochs=cfg.epochs, patience=cfg.patience, seed=cfg.seed, device=cfg.device
    )
    return tune(cfg.paths, base, cfg.trials, pruner=cfg.pruner, seed=cfg.seed, n_jobs=cfg.jobs)


@task(name="publish", persist_result=True)
@_timed
def publish_task(cfg: PipelineConfig, run_id: str) -> dict:
    from store.index import publish

    return publish(cfg.paths, run_id, keep=cfg.keep)


@task(name="publish-content", persist_result=True)
@_timed
def publish_content_task(cfg: PipelineConfig, feature: str) -> dict:
    from store.index import publish_content

    return publish_content(cfg.paths, feature, keep=cfg.keep)


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


INGEST_KEYS = (
    "release",
    "category",
    "meta",
    "reviews",
    "source",
    "columns",
    "meta_release",
    "kcore",
    "cold_items",
    "seed",
    "demo_items",
    "demo_users",
    "min_meta_match",
    "allow_missing_meta",
    "no_header",
    "meta_columns",
    "train",
    "valid",
    "test",
)


def stage_ingest(cfg: PipelineConfig) -> dict:
    p = cfg.paths
    conf = {k: getattr(cfg, k) for k in INGEST_KEYS}
    for k in (
        "meta",
        "reviews",
        "source",
        "train",
        "valid",
        "test",
    ):  # user paths: by name (contents are hashed as inputs)
        conf[k] = source_name(conf[k]) if conf[k] else conf[k]
    inputs = [Path(x) for x in (cfg.meta, cfg.reviews, cfg.train, cfg.valid, cfg.test) if x and Path(x).is_file()]
    if cfg.source:
        inputs += sorted(f for f in Path(cfg.source).glob("*") if f.is_file())
    key = stage_key("ingest", conf, inputs, ("pipelines.ingest", "pipelines.mmrec"))
    catalog = is_catalog_request(cfg.release, cfg.reviews or cfg.train, cfg.meta)  # items only (pipelines.catalog_only)
    outputs = [p.items] if catalog else [p.items, p.users, p.interactions]
    if cfg.cold_items and not catalog:
        outputs.append(p.cold_items)  # recorded like the other tables (store.records)
    return run_stage("ingest", ingest_task, key, outputs, cfg)


def stage_images(cfg: PipelineConfig) -> dict:
    """One task, or `shards` mapped tasks (spread over the task runner's workers) and a merge."""
    p = cfg.paths
    key = stage_key("images", {"images": images_fingerprint(cfg.images)}, [p.items], ("pipelines.images",))
    if cfg.shards == 1:
        return run_stage("images", images_task, key, [p.image_audit], cfg)
    shards = map_shards(images_task, key, cfg, bool(problem(p.image_audit)))
    return run_stage("images", merge_images_task, f"{key}-merge-{cfg.shards}", [p.image_audit], cfg, shards)


def keep_stop_handler_for_sigterm() -> None:
    """Prefect's flow engine swaps in a SIGTERM handler that reports a crash to the server before
    anything stops (minutes when the same signal took that server down); the command line's own
    handler (cli._stop, marked `also_for_sigterm`) saves the encoded rows and ends in seconds, so
    SIGTERM gets it back for the extraction. Prefect restores it when the flow ends."""
    import signal
    import threading

    handler = signal.getsignal(signal.SIGINT)
    if getattr(handler, "also_for_sigterm", False) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def stage_features(cfg: PipelineConfig) -> dict[str, dict]:
    """Extract text (and image) features; returns modality → the extraction's summary."""
    keep_stop_handler_for_sigterm()
    p = cfg.paths
    specs = {"text": cfg.text_encoder}
    if cfg.with_images:
        specs["image"] = cfg.image_encoder
    out = {}
    for modality, spec in specs.items():
        name = feature_name(spec)
        inputs = [p.items] + ([p.image_audit] if modality == "image" else [])
        key = stage_key(f"features-{name}", {"spec": spec, "batch": cfg.batch_size}, inputs, ("features.extract",))
        if cfg.shards > 1:  # encode shards on the task runner's workers; the final call assembles
            map_shards(extract_task, key, cfg, bool(problem(p.feature(name))), spec, name)
        summary = run_stage(f"features {modality}", extract_task, key, [p.feature(name)], cfg, spec, name)
        out[modality] = {**summary, "name": name}
        if cfg.tokens:
            out[modality]["tokens"] = stage_tokens(cfg, modality, spec, inputs)
    return out


def stage_tokens(cfg: PipelineConfig, modality: str, spec: str, inputs: list[Path]) -> str:
    """Token-level features of one modality (tokens/<name>.parquet) for the token encoder."""
    from features.tokens import default_token_name

    name = default_token_name(spec)
    conf = {"spec": spec, "grid": cfg.token_grid, "max_length": cfg.max_text_tokens}
    key = stage_key(f"tokens-{name}", conf, inputs, ("features.tokens",))
    run_stage(f"tokens {modality}", tokens_task, key, [cfg.paths.token_feature(name)], cfg, spec, modality, name)
    return name


def pretrain_inputs(p: DatasetPaths, image: str, text: str, tokens: dict[str, str]) -> list[Path]:
    """The files an ICA run depends on. The item-cold hold-out is one of them: the encoder never
    trains on a cold item, so another hold-out (a re-ingest with another --cold-items) is another
    run, never the stale one that trained on items now cold."""
    inputs = [p.feature(image), p.feature(text), p.items] + [p.token_feature(n) for n in tokens.values()]
    return inputs + ([p.cold_items] if p.cold_items.exists() else [])


def stage_pretrain(cfg: PipelineConfig, image: str, text: str, tokens: dict[str, str]) -> str:
    p = cfg.paths
    conf = {"epochs": cfg.pretrain_epochs, "seed": cfg.seed, "tokens": tokens}
    inputs = pretrain_inputs(p, image, text, tokens)
    key = stage_key("pretrain", conf, inputs, ("models.pretraining.pretrain",))
    run_id = key.split("-", 1)[1][:10]
    run_stage("pretrain", pretrain_task, key, [p.feature(f"ica-{run_id}")], cfg, image, text, run_id, tokens)
    return f"ica-{run_id}"


def stage_apply_ica(cfg: PipelineConfig, image: str, text: str, tokens: dict[str, str]) -> str:
    """mm from an encoder pretrained elsewhere (typically a large catalog) instead of pretraining here."""
    p = cfg.paths
    run_dir, name = cfg.ica_run()
    inputs = [p.feature(image), p.feature(text), p.items, run_dir / "checkpoint.pt", run_dir / "config.json"]
    inputs += [p.token_feature(n) for n in tokens.values()]
    conf = {
        "run": run_dir.name,
        "tokens": tokens,
        "name": name,
    }  # the run by name; its checkpoint and config by content
    key = stage_key("apply-ica", conf, inputs, ("models.pretraining.apply",))
    run_stage("apply ica", apply_ica_task, key, [p.feature(name)], cfg, str(run_dir), image, text, name, tokens)
    return name


def stage_train(cfg: PipelineConfig, features: dict[str, str]) -> dict:
    from models.registry import model_module, read_features

    features = read_features(cfg.model, features)  # a new table it never reads changes nothing
    p = cfg.paths
    conf = {k: getattr(cfg, k) for k in ("model", "lr", "epochs", "patience", "seed")}
    conf["features"] = features
    inputs = [p.items, p.interactions] + [p.feature(n) for n in sorted(set(features.values()))]
    inputs += [p.cold_items] if p.cold_items.exists() else []  # the item-cold protocol's held-out items
    key = stage_key("train", conf, inputs, ("models.training.trainer", model_module(cfg.model)))
    run_id = f"{cfg.model}-{key.split('-', 1)[1][:10]}"
    out = run_stage(
        "train",
        train_task,
        key,
        [p.item_vectors(run_id), p.user_vectors(run_id), p.metrics(run_id)],
        cfg,
        features,
        run_id,
    )
    out.setdefault("run_id", run_id)
    return out


def stage_tune(cfg: PipelineConfig, features: dict[str, str]) -> dict:
    """The key holds `trials`: asking for more continues the stored study (models.training.tune resumes it)."""
    from models.registry import model_module, read_features

    features = read_features(cfg.model, features)  # a new table it never reads changes nothing
    p = cfg.paths
    conf = {k: getattr(cfg, k) for k in ("model", "epochs", "patience", "seed", "trials", "pruner")}
    conf["features"] = features
    inputs = [p.items, p.interactions] + [p.feature(n) for n in sorted(set(features.values()))]
    key = stage_key("tune", conf, inputs, ("models.training.tune", model_module(cfg.model)))
    return run_stage("tune", tune_task, key, [p.root / "tuning" / cfg.model / "best.json"], cfg, features)


def stage_publish(cfg: PipelineConfig, run_id: str) -> dict:
    p = cfg.paths
    key = stage_key("publish", {"run": run_id}, [p.item_vectors(run_id)], ("store.index",))
    return run_stage("publish", publish_task, key, [p.index_dir(run_id) / "manifest.json"], cfg, run_id)


def stage_publish_content(cfg: PipelineConfig) -> dict:
    """A catalog without interactions publishes content vectors (store.index.publish_content) for `similar`."""
    from store.index import choose_content_feature, content_run_id

    p = cfg.paths
    feature = choose_content_feature(p, cfg.vectors)
    run_id = content_run_id(feature)
    key = stage_key("publish-content", {"feature": feature}, [p.items, p.feature(feature)], ("store.index",))
    out = run_stage("publish", publish_content_task, key, [p.index_dir(run_id) / "manifest.json"], cfg, feature)
    return {**out, "run_id": run_id, "content_feature": feature}


# --------------------------------------------------------------------------- update (incremental runs)
@task(name="update-merge", persist_result=True)
@_timed
def update_merge_task(cfg: PipelineConfig) -> dict:
    """Ingest the newer files into a staging dataset, then merge them in with stable ids (pipelines.update)."""
    from dataclasses import replace

    from pipelines.update import merge_staged, remove_staging, staging_paths

    staged = staging_paths(cfg.paths)
    remove_staging(cfg.paths)
    try:
        ingest_task.fn(replace(cfg, home=str(staged.root.parent), cold_items=0.0))
        return merge_staged(cfg.paths, staged)
    finally:
        remove_staging(cfg.paths)


@task(name="update-publish", cache_policy=NO_CACHE)
@_timed
def update_publish_task(cfg: PipelineConfig, run_id: str, merged: dict) -> dict:
    from models.refresh import refresh
    from store.index import publish_version

    new = refresh(cfg.paths, run_id, merged["new_items"], merged["changed_items"])
    change = {
        "kind": "update",
        "items_added": new.items_added,
        "items_changed": new.items_changed,
        "users_updated": new.users_updated,
        "note": "; ".join(new.notes),
    }
    version = publish_version(
        cfg.paths,
        run_id,
        new.item_ids,
        new.item_vectors,
        new.user_ids,
        new.user_vectors,
        change,
        metadata=new.metadata,
        keep=getattr(cfg, "keep", 5),
    )
    line = (
        f"{run_id} version {version}: {new.items_added} new items from the cold path, {new.items_changed} changed, "
        f"{new.users_updated} users updated, {len(new.item_ids)} items served"
    )
    return {**change, "run": run_id, "version": version, "line": "; ".join([line, *new.notes])}


def stage_update_merge(cfg: PipelineConfig) -> dict:
    p = cfg.paths
    conf = {k: getattr(cfg, k) for k in INGEST_KEYS}
    for k in ("meta", "reviews", "source", "train", "valid", "test"):
        conf[k] = source_name(conf[k]) if conf[k] else conf[k]
    inputs = [Path(x) for x in (cfg.meta, cfg.reviews, cfg.train, cfg.valid, cfg.test) if x and Path(x).is_file()]
    if cfg.source:
        inputs += sorted(f for f in Path(cfg.source).glob("*") if f.is_file())
    inputs += [p.items, p.users, p.interactions]
    key = stage_key("update", conf, inputs, ("pipelines.update", "pipelines.ingest", "pipelines.mmrec"))
    # never a cache hit: a URL serves a newer dump under the same name (the merge is idempotent)
    key = f"{key}-{time.time_ns()}"
    return run_stage("update", update_merge_task, key, [p.items, p.users, p.interactions], cfg)


def updated_run(cfg: PipelineConfig) -> str:
    """The run an update extends: --run-id, else the newest published run."""
    from store.index import latest_run

    run_id = cfg.run_id or latest_run(cfg.paths)
    if run_id is None or not (cfg.paths.run(run_id) / "config.json").is_file():
        raise ValueError(
            f"dataset {cfg.dataset!r} has no published trained run {run_id or ''} to update; "
            f"run the pipeline first: anchorrec pipeline --dataset {cfg.dataset}"
        )
    return run_id


def _table_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _update_body(cfg: PipelineConfig) -> dict:
    """Merge the newer files; then either a full retrain (threshold passed, or --retrain) or the
    features of changed and new items and a new index version from the run's cold path."""
    from dataclasses import replace

    from models.refresh import run_model
    from pipelines.update import read_ledger, record_training, record_update, retrain_fraction

    require_interactions(cfg.paths, "update")
    p = cfg.paths
    run_id = updated_run(cfg)
    model, tables = run_model(p, run_id)
    ledger = read_ledger(p, run_id, _table_rows(p.items), _table_rows(p.interactions))
    merged = stage_update_merge(cfg)
    fraction = retrain_fraction(ledger, len(merged["new_items"]), merged["new_interactions"])
    if cfg.retrain or fraction > cfg.retrain_after:
        why = (
            "--retrain" if cfg.retrain else f"{fraction:.1%} new since training > --retrain-after {cfg.retrain_after:g}"
        )
        log.info("update: full retrain of %s (%s)", model, why)
        published = _publish_body(replace(cfg, model=model))
        record_training(p, published["run_id"], merged["items"], merged["interactions"])
        return {"merged": merged, "retrained": True, "why": why, **published}
    log.info(
        "update: %.1f%% new since %s was trained (retrain above %g%%)", 100 * fraction, run_id, 100 * cfg.retrain_after
    )
    extracted = _features_body(cfg)
    pretrained = {t for m, t in tables.items() if m == "mm" and (p.run(t) / "checkpoint.pt").is_file()}
    missing = sorted(set(tables.values()) - {s["name"] for s in extracted.values()} - pretrained)
    if missing:
        raise ValueError(
            f"run {run_id} reads feature table(s) {', '.join(missing)}, which this update did not refresh: "
            "pass the encoder options the pipeline used (--text-encoder, --image-encoder), or --retrain"
        )
    published = update_publish_task(cfg, run_id, merged)
    log.info("update: %s", published["line"])
    record_update(p, ledger, len(merged["new_items"]), merged["new_interactions"])
    return {"merged": merged, "retrained": False, "fraction": fraction, "run_id": run_id, **published}


# --------------------------------------------------------------------------- modalities
def _plan(cfg: PipelineConfig, extracted: dict[str, dict]) -> Any:
    from models.training.modalities import Coverage, plan_modalities

    coverage = {
        m: Coverage(s["name"], int(s.get("n_vectors", 0)), int(s.get("n_items", 0))) for m, s in extracted.items()
    }
    plan = plan_modalities(coverage, cfg.min_coverage, cfg.model, image_off=not cfg.with_images)
    if plan.note:
        log.warning("modalities: %s", plan.note)
    return plan


def _features_body(cfg: PipelineConfig) -> dict:
    if cfg.with_images:
        stage_images(cfg)
    return stage_features(cfg)


def _pretrain_body(cfg: PipelineConfig) -> dict:
    """The recommender's v/t/mm inputs: ICA's fused output when both modalities are usable."""
    extracted = _features_body(cfg)
    plan = _plan(cfg, extracted)
    tokens = {m: s["tokens"] for m, s in extracted.items() if s.get("tokens")} if plan.pretrain else {}
    mm = None
    if plan.pretrain and cfg.ica_from:
        mm = stage_apply_ica(cfg, plan.image, plan.text, tokens)
    elif plan.pretrain and cfg.pretrain_epochs > 0:
        mm = stage_pretrain(cfg, plan.image, plan.text, tokens)
    return {"features": plan.features(mm), "note": plan.note, "usable": plan.usable}


def _train_body(cfg: PipelineConfig) -> dict:
    require_interactions(cfg.paths, "train")  # before any stage runs
    inputs = _pretrain_body(cfg)
    return {**stage_train(cfg, inputs["features"]), "inputs": inputs}


def _tune_body(cfg: PipelineConfig) -> dict:
    require_interactions(cfg.paths, "tune")
    inputs = _pretrain_body(cfg)
    return {**stage_tune(cfg, inputs["features"]), "inputs": inputs}


def _publish_body(cfg: PipelineConfig) -> dict:
    if cfg.paths.catalog_only:  # nothing to train: content vectors answer similar()
        return stage_publish_content(cfg)
    require_interactions(cfg.paths, "publish")
    trained = _train_body(cfg)
    return {**stage_publish(cfg, trained["run_id"]), "run_id": trained["run_id"]}


def _pipeline_body(cfg: PipelineConfig) -> dict:
    t0 = time.perf_counter()
    refuse_catalog_pipeline(cfg.dataset, cfg.release, cfg.reviews or cfg.train, cfg.meta)
    ingest_summary = stage_ingest(cfg)
    inputs = _pretrain_body(cfg)
    trained = stage_train(cfg, inputs["features"])
    published = stage_publish(cfg, trained["run_id"])
    result = {
        "dataset": cfg.dataset,
        "run_id": trained["run_id"],
        "features": inputs["features"],
        "modalities": {"usable": inputs["usable"], "note": inputs["note"]},
        "ingest": ingest_summary,
        "train": trained,
        "publish": published,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _pipeline_artifact(cfg, result)
    return result


def _pipeline_artifact(cfg: PipelineConfig, result: dict) -> None:
    """A markdown artifact per run: data quality, modalities used and metrics, readable in the UI."""
    p = cfg.paths
    quality = p.prepare_report.read_text() if p.prepare_report.exists() else "{}"
    metrics = p.metrics(result["run_id"]).read_text() if p.metrics(result["run_id"]).exists() else "{}"
    note = result["modalities"]["note"] or "image and text"
    md = (
        f"# Pipeline run: {cfg.dataset} → {result['run_id']}\n\n"
        f"Total {result['seconds']} s. Trained on: {note}; features {json.dumps(result['features'])}.\n\n"
        f"## Data quality\n```json\n{quality[:6000]}\n```\n\n"
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


# --------------------------------------------------------------------------- flows
def _signature(names: list[str] | None = None) -> Any:
    import inspect

    hints = typing.get_type_hints(PipelineConfig)  # real types, not the strings of `annotations`
    params = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields(PipelineConfig)
        if names is None or f.name in names
    ]
    return inspect.Signature(params)


def _make_flow(name: str, body: Callable[[PipelineConfig], dict], doc: str) -> Any:
    """A Prefect flow whose parameters are PipelineConfig's fields (validated by Prefect).

    The flow holds the dataset's writer lock (store.lock) for its whole run, here where the CLI and
    scheduled runs (serve) both pass: a second writer waits for it, or with no_wait fails at once.
    """

    def fn(**params: Any) -> dict:
        cfg = PipelineConfig(**params)
        with dataset_lock(cfg.paths, f"anchorrec {name}", wait=not cfg.no_wait):
            return body(cfg)

    fn.__name__ = fn.__qualname__ = name.replace("-", "_")
    fn.__doc__ = doc
    fn.__signature__ = _signature()  # type: ignore[attr-defined]
    fn.__annotations__ = typing.get_type_hints(PipelineConfig)
    return flow(name=name, description=doc, log_prints=True)(fn)


ingest_flow = _make_flow("ingest", stage_ingest, FLOW_DOCS["ingest"])
features_flow = _make_flow("features", _features_body, FLOW_DOCS["features"])
pretrain_flow = _make_flow("pretrain", _pretrain_body, FLOW_DOCS["pretrain"])
train_flow = _make_flow("train", _train_body, FLOW_DOCS["train"])
publish_flow = _make_flow("publish", _publish_body, FLOW_DOCS["publish"])
pipeline = _make_flow("pipeline", _pipeline_body, FLOW_DOCS["pipeline"])
tune_flow = _make_flow("tune", _tune_body, FLOW_DOCS["tune"])
update_flow = _make_flow("update", _update_body, FLOW_DOCS["update"])

FLOWS = {
    "ingest": ingest_flow,
    "features": features_flow,
    "pretrain": pretrain_flow,
    "train": train_flow,
    "publish": publish_flow,
    "pipeline": pipeline,
    "tune": tune_flow,
    "update": update_flow,
}


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


SAMPLE_QUERY = (
    "SELECT r.item_id, round(r.score, 3) AS score, i.title\n"
    "FROM (SELECT unnest(recommend({user}, {k}), recursive := true)) r JOIN items i USING (item_id)\n"
    "ORDER BY r.score DESC"
)
