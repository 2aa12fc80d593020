"""Training loop shared by every model: BPR sampling, Adam, lr decay, early stopping, checkpoints.

Honest protocol: the epoch kept is the one with the best VALIDATION Recall@20; test metrics are
computed once, at the end, for that checkpoint. Everything the loop needs (graphs, the training
pairs, the evaluator's masks) lives on the device; per epoch only the sampled triples move.

A run is a directory runs/<run_id>/ (config.json, checkpoint.pt, metrics.json,
user_vectors.parquet, item_vectors.parquet). The checkpoint is rewritten atomically after every
epoch; rerunning with the same run_id resumes from it and ends where an uninterrupted run would
(each epoch's randomness is derived from (seed, epoch), not from a stream a crash would cut).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, cast

import numpy as np
import torch

from models.evaluation.metrics import RankingEvaluator
from models.registry import MODELS, make_config, make_model, read_features
from models.training.data import (
    GraphData,
    InteractionData,
    build_graph_data,
    default_device,
    load_cold_modalities,
    load_interactions,
    load_modalities,
    warm_subset,
)
from models.training.progress import EpochProgress, log_to_stderr
from store.layout import DatasetPaths, check_name
from store.run_status import Tracker, final_status, tracked, write_status
from store.tables import atomic_path, read_json, write_json
from store.vectors import write_vectors

log = logging.getLogger(__name__)

SELECT_METRIC = "recall@20"


@dataclass
class TrainConfig:
    model: str = "anchorrec"
    model_args: dict[str, Any] = field(default_factory=dict)
    features: dict[str, str] = field(default_factory=dict)  # modality ('v','t','mm') → feature table
    lr: float = 1e-3
    lr_decay: float = 0.96  # lr · lr_decay ** (epoch / lr_decay_epochs)
    lr_decay_epochs: float = 50.0
    epochs: int = 100
    batch_size: int = 2048
    patience: int = 10  # epochs without a validation Recall@20 improvement before stopping
    eval_every: int = 1
    seed: int = 0
    device: str | None = None
    knn_k: int = 10
    knn_self: bool = True
    ks: tuple[int, ...] = (10, 20, 50)
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: unknown {self.model!r}; known: {sorted(MODELS)}")
        positive = {"lr": self.lr, "lr_decay": self.lr_decay, "lr_decay_epochs": self.lr_decay_epochs}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("epochs", "batch_size", "patience", "eval_every", "knn_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.eval_every > self.patience:
            raise ValueError(
                f"eval_every ({self.eval_every}) must be ≤ patience ({self.patience}) or no evaluation can stop a run"
            )
        self.ks = tuple(int(k) for k in self.ks)
        if 20 not in self.ks:
            raise ValueError(f"ks must contain 20 (model selection uses {SELECT_METRIC}), got {self.ks}")
        for modality in self.features:
            if modality not in FEATURE_MODALITIES:
                raise ValueError(f"features: modality must be 'v', 't' or 'mm', got {modality!r}")
        self.features = read_features(self.model, self.features)  # a table the model never reads is not its input
        if self.run_id is not None:
            check_name("run", self.run_id)
        if not isinstance(self.model_args, dict):
            raise ValueError(f"model_args must be a dict, got {type(self.model_args).__name__}")

    def resolved_run_id(self) -> str:
        return self.run_id or f"{self.model}-{time.strftime('%Y%m%d-%H%M%S')}-s{self.seed}"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ks"] = list(self.ks)
        return out


# ---------------------------------------------------------------- sampling


class BPRSampler:
    """(user, positive, negative) triples: every training pair once per epoch, 1 uniform negative.

    Negatives that are training positives of the user are redrawn (vectorized: membership by
    binary search in the sorted user·n_items + item keys) until none is left.
    """

    def __init__(self, data: InteractionData) -> None:
        self.n_items = data.n_items
        self.pairs = data.train
        self.keys = np.sort(self.pairs[:, 0] * data.n_items + self.pairs[:, 1])
        if data.train_csr.getnnz(axis=1).max() >= data.n_items:
            raise ValueError("a user has interacted with every item: no negative can be sampled")

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users * self.n_items + items
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == q

    def epoch(self, seed: int, epoch: int) -> np.ndarray:
        """(m, 3) int64 [user, pos, neg] in a random order determined by (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        pairs = self.pairs[rng.permutation(len(self.pairs))]
        users = pairs[:, 0]
        neg = rng.integers(0, self.n_items, len(pairs))
        bad = np.flatnonzero(self._is_positive(users, neg))
        while len(bad):
            neg[bad] = rng.integers(0, self.n_items, len(bad))
            bad = bad[self._is_positive(users[bad], neg[bad])]
        return np.stack([users, pairs[:, 1], neg], axis=1)


# ---------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _run_checkpoint(run_dir: Path, action: str) -> tuple[Path, dict[str, Any]]:
    """(path, state) of a run's checkpoint, for `stop_run` and `resume_run`; a clear error if none."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to {action} (the run has not finished an epoch)")
    return path, load_checkpoint(path)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- training


def done_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's checkpoint ([] before its first epoch)."""
    ckpt = Path(run_dir) / "checkpoint.pt"
    return load_checkpoint(ckpt)["history"] if ckpt.exists() else []


def cpu_seconds() -> float:
    """CPU time of this run: its own thread's when torch computes on one thread (trials run side by
    side in threads of one process, whose CPU time would add up theirs), the process's otherwise."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.process_time()


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


class _Embedder(Protocol):
    """What every registered model adds to nn.Module (torch types a Module's other attributes as Tensor | Module)."""

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]: ...


class _ColdKitter(Protocol):
    """A model with a cold path (models/cold.py)."""

    def cold_kit(self) -> dict[str, Any] | None: ...


def _final_embeddings(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return cast(_Embedder, model).final_embeddings()


def _run_id(cfg: TrainConfig) -> str:
    """The run id of a config that names its run (seed_configs sets one for every seed)."""
    if cfg.run_id is None:
        raise ValueError(f"{cfg.model}: this config has no run_id; name its run (seed_configs does)")
    return cfg.run_id


def _epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    return cfg.lr * cfg.lr_decay ** (epoch / cfg.lr_decay_epochs)


def evaluate_model(model: torch.nn.Module, evaluator: RankingEvaluator) -> dict[str, float]:
    """Metrics of the model's final embeddings, in eval mode (dropout off), back in train mode after."""
    model.eval()
    with torch.no_grad():
        user, item = _final_embeddings(model)
        out = evaluator.evaluate(user, item)
    model.train()
    return out


FEATURE_MODALITIES = ("v", "t", "mm")  # the keys of TrainConfig.features


# what the data writes into a run's config.json beside the configuration (the sizes of the catalogue
# it ran on, and of its item-cold hold-out): a kept run is compared with a configuration without them
DATA_FIELDS = ("n_users", "n_items", "cold_items")


def config_changes(stored: dict[str, Any], config_json: dict[str, Any]) -> list[str]:
    """Fields in which a run's config.json differs from a config about to continue it (device and
    run id may differ: a run moves between machines)."""
    features = read_features(config_json["model"], stored.get("features") or {})  # runs written before READS kept all
    stored = {**stored, "features": features}
    return sorted(
        k
        for k in set(stored) | set(config_json)
        if k not in ("device", "run_id") and stored.get(k) != config_json.get(k)
    )


def fit(
    data: InteractionData,
    graph: GraphData,
    cfg: TrainConfig,
    run_dir: Path,
    progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `cfg.model` on `graph`, select by validation, write the run's outputs to `run_dir`.

    `callback(epoch, record)` runs after each epoch's checkpoint (logging, or a test's crash).
    The run's status.json says running / finished / stopped / diverged / failed as it goes
    (store.run_status), and a second `fit` of the same run waits for the first.
    """
    with tracked(Path(run_dir)) as status:
        metrics = _fit(data, graph, cfg, run_dir, progress, callback, status)
        status.end(final_status(metrics), metrics.get("epochs_run"))
        return metrics


def _fit(
    data: InteractionData,
    graph: GraphData,
    cfg: TrainConfig,
    run_dir: Path,
    progress: bool,
    callback: Callable[[int, dict[str, Any]], None] | None,
    status: Tracker,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    config_json = {**cfg.to_json(), "n_users": data.n_users, "n_items": data.n_items}
    if data.holdout is not None:  # n_items above is the warm sub-catalog's
        config_json["cold_items"] = int(len(data.holdout.full.cold_items))
    config_path = run_dir / "config.json"
    if ckpt_path.exists() and config_path.exists():
        changed = config_changes(read_json(config_path), config_json)
        if changed:
            raise ValueError(
                f"{run_dir}: a run with a different configuration exists (fields {changed}); "
                "use another run_id or delete the directory"
            )
    write_json(config_json, config_path)
    status.running()  # the configuration is this run's: from here an error marks it failed

    device = graph.device
    _seed_everything(cfg.seed)
    model = make_model(cfg.model, graph, **cfg.model_args)
    valid_eval = RankingEvaluator(data.train_csr, data.valid_csr, cfg.ks, device=device)
    if getattr(type(model), "fixed", False) is True:  # class attribute (LATTICE has a `fixed` dict of graphs)
        return _fit_fixed(data, graph, cfg, model, valid_eval, run_dir)
    # fused Adam: one kernel over all parameters instead of a Python loop of small ops (5x on CPU)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    sampler = BPRSampler(data)

    start_epoch, history, stopped_by_hand, diverged_at = 0, [], False, None
    best: dict[str, Any] = {"metric": -math.inf, "epoch": -1, "state": None, "valid": {}}
    timings = {"train_s": 0.0, "eval_s": 0.0}
    finished = False
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history, best, timings = ckpt["epoch"], ckpt["history"], ckpt["best"], ckpt["timings"]
        finished = ckpt.get("finished", False)
        stopped_by_hand = ckpt.get("stopped_by_hand", False)
        diverged_at = ckpt.get("diverged_at")
        _set_rng_state(ckpt["rng"])
        log.info("resuming %s at epoch %d", run_dir.name, start_epoch)

    epochs = range(start_epoch, cfg.epochs)
    bar = None
    if progress and not finished:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"{cfg.model} {run_dir.name}", unit="ep")
    model.train()
    for epoch in epochs:
        if finished:
            break
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        lr = _epoch_lr(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0, c0 = time.perf_counter(), cpu_seconds()
        triples = torch.as_tensor(sampler.epoch(cfg.seed, epoch), device=device)
        sums: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per batch
        n_batches = 0
        for start in range(0, len(triples), cfg.batch_size):
            b = triples[start : start + cfg.batch_size]
            terms = model.batch_loss(b[:, 0], b[:, 1], b[:, 2])
            loss = terms["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
            n_batches += 1
        if hasattr(model, "on_epoch_end"):
            model.on_epoch_end(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s, train_cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
        # CPU seconds beside wall seconds: on a shared machine wall time mostly measures the neighbours
        record: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_s": train_s, "train_cpu_s": train_cpu_s}
        record.update({k: float(v) / max(n_batches, 1) for k, v in sums.items()})
        if not math.isfinite(record.get("loss", 0.0)):
            if best["state"] is None:
                raise FloatingPointError(
                    f"{run_dir.name}: loss is {record['loss']} at epoch {epoch}; lower lr or check features"
                )
            # as MMRec's trainer: a diverged run stops and keeps its best validation epoch so far (a seed
            # of a leaderboard is a result, not a crash); metrics.json says where it diverged
            log.warning(
                "%s: loss is %s at epoch %d; stopped there, testing the best epoch so far (%d)",
                run_dir.name,
                record["loss"],
                epoch,
                best["epoch"],
            )
            diverged_at = epoch
            save_checkpoint(ckpt_path, {**load_checkpoint(ckpt_path), "finished": True, "diverged_at": epoch})
            break
        timings["train_s"] += train_s
        timings["train_cpu_s"] = timings.get("train_cpu_s", 0.0) + train_cpu_s

        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            t1, c1 = time.perf_counter(), cpu_seconds()
            valid = evaluate_model(model, valid_eval)
            eval_s, eval_cpu_s = time.perf_counter() - t1, cpu_seconds() - c1
            timings["eval_s"] += eval_s
            timings["eval_cpu_s"] = timings.get("eval_cpu_s", 0.0) + eval_cpu_s
            record.update({"eval_s": eval_s, "eval_cpu_s": eval_cpu_s, "valid": valid})
            if valid[SELECT_METRIC] > best["metric"]:
                best = {"metric": valid[SELECT_METRIC], "epoch": epoch, "state": _cpu_state(model), "valid": valid}
        history.append(record)
        stop = epoch - best["epoch"] >= cfg.patience or epoch + 1 == cfg.epochs
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "best": best,
                "timings": timings,
                "rng": _rng_state(),
                "finished": stop,
            },
        )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", ep_s=f"{train_s:.1f}", val_r20=f"{best['metric']:.4f}")
        if callback is not None:
            callback(epoch, record)
        if stop:
            break
    if bar is not None:
        bar.close()
    return finalize(
        data,
        graph,
        cfg,
        model,
        best,
        history,
        timings,
        run_dir,
        resumed_from=start_epoch,
        stopped_by_hand=stopped_by_hand,
        diverged_at=diverged_at,
    )


def _fit_fixed(
    data: InteractionData,
    graph: GraphData,
    cfg: TrainConfig,
    model: torch.nn.Module,
    valid_eval: RankingEvaluator,
    run_dir: Path,
) -> dict[str, Any]:
    """A model with no trainable weights (class attribute `fixed = True`: popularity, content kNN):
    no epochs, no optimizer; one validation evaluation, `best_epoch` 0, then the usual outputs."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    valid = evaluate_model(model, valid_eval)
    eval_s, eval_cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
    best = {"metric": valid[SELECT_METRIC], "epoch": 0, "state": _cpu_state(model), "valid": valid}
    timings = {"train_s": 0.0, "train_cpu_s": 0.0, "eval_s": eval_s, "eval_cpu_s": eval_cpu_s}
    return finalize(data, graph, cfg, model, best, [], timings, run_dir)


def finalize(
    data: InteractionData,
    graph: GraphData,
    cfg: TrainConfig,
    model: torch.nn.Module,
    best: dict[str, Any],
    history: list[dict[str, Any]],
    timings: dict[str, float],
    run_dir: Path,
    resumed_from: int = 0,
    stopped_by_hand: bool = False,
    diverged_at: int | None = None,
) -> dict[str, Any]:
    """Restore the best-validation weights, test them once, write vectors and metrics.json."""
    if best["state"] is None:
        raise RuntimeError(f"{run_dir}: no evaluation happened; check epochs/eval_every")
    model.load_state_dict(best["state"])
    model.eval()
    with torch.no_grad():
        user, item = _final_embeddings(model)
    t0 = time.perf_counter()
    test = RankingEvaluator(data.train_csr, data.test_csr, cfg.ks, device=graph.device).evaluate(user, item)
    test_eval_s = time.perf_counter() - t0
    user_np, item_np = user.float().cpu().numpy(), item.float().cpu().numpy()
    meta = {"run_id": run_dir.name, "model": cfg.model, "best_epoch": str(best["epoch"])}
    cold = _cold_outputs(data, cfg, model, user_np, item_np, run_dir, graph.device)
    item_ids = np.arange(data.n_items) if data.holdout is None else data.holdout.warm_ids
    if cold.get("item_vectors") is not None:  # every item: warm from training, cold from the cold path
        assert data.holdout is not None, "_cold_outputs gives item vectors only with cold items"
        item_ids, item_np = np.arange(data.holdout.full.n_items), cold["item_vectors"]
    write_vectors(run_dir / "user_vectors.parquet", "user_id", np.arange(data.n_users), user_np, meta)
    write_vectors(run_dir / "item_vectors.parquet", "item_id", item_ids, item_np, meta)
    id_items = id_item_embeddings(model, data.n_users)
    if id_items is not None:  # the ID (LightGCN) view, for collapse diagnostics: final vs ID space
        warm_ids = np.arange(data.n_items) if data.holdout is None else data.holdout.warm_ids
        write_vectors(run_dir / "id_item_vectors.parquet", "item_id", warm_ids, id_items, meta)
    epochs_run = len(history)
    n_evals = max(sum("valid" in h for h in history), 1)
    metrics = {
        "run_id": run_dir.name,
        "model": cfg.model,
        "seed": cfg.seed,
        "device": str(graph.device),
        "best_epoch": best["epoch"],
        "select_metric": SELECT_METRIC,
        "valid": best["valid"],
        "test": test,  # the warm division when the dataset has cold items: old readers keep working
        **cold.get("metrics", {}),
        "epochs_run": epochs_run,
        "resumed_from_epoch": resumed_from,
        "stopped_by_hand": stopped_by_hand,  # ended by `stop_run` (a time budget), not by early stopping
        "diverged_at_epoch": diverged_at,  # the epoch whose loss was not finite (training ended there), or None
        "history": history,
        "timings": {
            **timings,
            "train_s_per_epoch": timings["train_s"] / max(epochs_run, 1),
            "train_cpu_s_per_epoch": timings.get("train_cpu_s", 0.0) / max(epochs_run, 1),
            "eval_s_per_eval": timings["eval_s"] / n_evals,
            "eval_cpu_s_per_eval": timings.get("eval_cpu_s", 0.0) / n_evals,
            "test_eval_s": test_eval_s,
        },
    }
    write_json(metrics, run_dir / "metrics.json")
    return metrics


def _cold_outputs(
    data: InteractionData,
    cfg: TrainConfig,
    model: torch.nn.Module,
    user: np.ndarray,
    warm_items: np.ndarray,
    run_dir: Path,
    device: torch.device,
) -> dict[str, Any]:
    """Save the run's cold kit; with cold items, embed them by the model's cold path and test the
    three divisions. Returns {'item_vectors': all items or None, 'metrics': metrics.json keys}."""
    from models import cold as cold_paths

    # one call: LGMRec's vectors carry fresh noise
    kit = cast(_ColdKitter, model).cold_kit() if hasattr(model, "cold_kit") else None
    if kit is not None:  # (a model with no cold path has no kit: nothing to write, nothing to call again)
        cold_paths.save_kit(run_dir, model, kit)  # what `anchorrec update` embeds new items with
    if data.holdout is None:
        return {}
    from models.evaluation.cold import evaluate_divisions, write_per_user_cold

    hold = data.holdout
    full = hold.full
    vectors = cold_paths.cold_vectors(cfg.model, kit, hold.cold_features, n_items=len(full.cold_items))
    items = None
    if vectors is not None and vectors.shape != (len(full.cold_items), warm_items.shape[1]):
        raise ValueError(
            f"cold path of {cfg.model}: {vectors.shape} vectors for {len(full.cold_items)} cold items of "
            f"{warm_items.shape[1]} dims (models/cold.py, the model's cold_item_vectors)"
        )
    if vectors is not None:
        items = np.zeros((full.n_items, warm_items.shape[1]), np.float32)
        items[hold.warm_ids] = warm_items
        items[full.cold_items] = np.asarray(vectors, np.float32)
    else:
        log.info("%s: %s has no cold path; cold and all divisions are reported as null", run_dir.name, cfg.model)
    divisions, per_user = evaluate_divisions(user, items, warm_items, full, cfg.ks, device)
    if per_user is not None:
        write_per_user_cold(run_dir, per_user)
    return {
        "item_vectors": items,
        "metrics": {
            "test_divisions": divisions,
            "cold_path": cold_paths.cold_path(cfg.model) if items is not None else None,
        },
    }


def stop_run(run_dir: Path) -> int:
    """End a run at its last checkpoint; the next `fit` of it tests the best epoch so far.

    For a run that must end before early stopping ends it (a session's time budget): nothing is
    retrained, the selection stays on validation, and metrics.json says `stopped_by_hand` so a
    report can tell such runs from converged ones. Stop the training process first. Returns the
    number of epochs the run had done.
    """
    ckpt_path, ckpt = _run_checkpoint(run_dir, "stop")
    if not ckpt.get("finished", False):
        ckpt["finished"], ckpt["stopped_by_hand"] = True, True
        save_checkpoint(ckpt_path, ckpt)
        write_status(
            run_dir, "stopped", int(ckpt["epoch"]), "stopped by hand; the next fit tests its best epoch so far"
        )
    return int(ckpt["epoch"])


def resume_run(run_dir: Path) -> int | None:
    """Undo `stop_run`: the next `fit` trains on from the checkpoint as if never stopped.

    The checkpoint holds the optimizer and RNG state, so the continued run is the run that early
    stopping would have made in one go. Returns the epoch the run continues from, or None for a
    run that was not stopped by hand (early stopping, its epoch cap or nothing yet): left alone.
    """
    ckpt_path, ckpt = _run_checkpoint(run_dir, "resume")
    if not ckpt.get("stopped_by_hand", False):
        return None
    ckpt["finished"], ckpt["stopped_by_hand"] = False, False
    save_checkpoint(ckpt_path, ckpt)
    (Path(run_dir) / "metrics.json").unlink(missing_ok=True)  # no longer this run's result
    write_status(run_dir, "interrupted", int(ckpt["epoch"]), "resumed by hand: the next fit trains on")
    return int(ckpt["epoch"])


def check_shorter_run(src_dir: Path, stored: dict[str, Any], dst_name: str, cfg: TrainConfig) -> None:
    """`stored` (src_dir's config.json) is `cfg` with a cap no higher: else one error line."""
    changed = [k for k in config_changes(stored, cfg.to_json()) if k not in ("epochs", *DATA_FIELDS)]
    if changed or stored["epochs"] > cfg.epochs:
        raise ValueError(
            f"{src_dir}: not a shorter run of {dst_name} (fields {changed or ['epochs']} differ); "
            "only the epoch cap may be lower"
        )


def ended_early(epochs_run: int, best_epoch: int, patience: int) -> bool:
    """Early stopping ended a run of `epochs_run` epochs whose best was `best_epoch` (fit's rule)."""
    return epochs_run - 1 - best_epoch >= patience


def start_from_shorter_run(src_dir: Path, dst_dir: Path, cfg: TrainConfig) -> int | None:
    """Start run `dst_dir` (config `cfg`) from the checkpoint of `src_dir`, a run whose config
    differs only in a lower epoch cap: the first epochs of the longer run are the shorter one's
    (same seed, same batches, same lr schedule), so only the epochs past the old cap are trained.

    For "does a longer budget close the gap" without paying again for the epochs already run. A
    source run that early stopping (or divergence) ended is copied as ended: the longer run would
    have ended there too. Returns the epoch the new run continues from, or None where `dst_dir`
    already has a checkpoint or `src_dir` has none (then `fit` trains it as usual).
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    src_ckpt, dst_ckpt = src_dir / "checkpoint.pt", dst_dir / "checkpoint.pt"
    if dst_ckpt.exists() or not src_ckpt.exists():
        return None
    stored = read_json(src_dir / "config.json")
    check_shorter_run(src_dir, stored, dst_dir.name, cfg)
    wanted = {**cfg.to_json(), **{k: stored[k] for k in DATA_FIELDS if k in stored}}
    if stored["epochs"] % cfg.eval_every:  # the old cap was validated off the eval_every grid
        raise ValueError(
            f"{src_dir}: its cap {stored['epochs']} is not a multiple of eval_every {cfg.eval_every}, "
            "so its last validation is not the longer run's; train it from the start"
        )
    ckpt = load_checkpoint(src_ckpt)
    early_stopped = ended_early(ckpt["epoch"], ckpt["best"]["epoch"], cfg.patience)
    ckpt["finished"] = early_stopped or ckpt.get("diverged_at") is not None
    ckpt["stopped_by_hand"] = False
    dst_dir.mkdir(parents=True, exist_ok=True)
    write_json({**wanted, "run_id": cfg.run_id}, dst_dir / "config.json")
    save_checkpoint(dst_ckpt, ckpt)
    return int(ckpt["epoch"])


def id_item_embeddings(model: torch.nn.Module, n_users: int) -> np.ndarray | None:
    """Items in the model's ID-only (LightGCN) space, when it has one apart from the final space."""
    lightgcn = getattr(model, "lightgcn", None)
    if lightgcn is None or not callable(lightgcn):
        return None
    with torch.no_grad():
        both = lightgcn()
    return both[n_users:].float().cpu().numpy()


def prepare(paths: DatasetPaths, cfg: TrainConfig) -> tuple[InteractionData, GraphData]:
    """Read the dataset's tables and feature tables and build the graphs on the device.

    With cold items (ingest --cold-items) the data and graphs are those of the warm sub-catalog
    (models.training.data.warm_subset): training never sees a cold item; the cold items' feature
    rows wait in `data.holdout` for the model's cold path at the end."""
    data = load_interactions(paths)
    if len(data.cold_items):
        full, data = data, warm_subset(data)
        holdout = data.holdout
        assert holdout is not None, "warm_subset sets the holdout"
        features, cold_features = (
            load_cold_modalities(paths, cfg.features, full.asins, holdout.warm_ids) if cfg.features else ({}, {})
        )
        holdout.cold_features = cold_features
    else:
        features = load_modalities(paths, cfg.features, asins=data.asins) if cfg.features else {}
    graph = build_graph_data(
        data,
        features,
        knn_k=cfg.knn_k,
        device=default_device(cfg.device),
        cache_dir=paths.cache_dir,
        knn_self=cfg.knn_self,
    )
    return data, graph


def prepare_key(cfg: TrainConfig) -> tuple:
    """What `prepare` reads from a config: configs with equal keys can share its data and graphs."""
    return json.dumps(cfg.features, sort_keys=True), cfg.knn_k, cfg.knn_self, cfg.device


def train(paths: DatasetPaths, cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train one model on one dataset; outputs in runs/<run_id>/ (resumes an existing run_id)."""
    make_config(cfg.model, **cfg.model_args)  # fail on a bad model argument before loading data
    run_id = cfg.resolved_run_id()
    cfg = dataclasses.replace(cfg, run_id=run_id)
    data, graph = prepare(paths, cfg)
    return fit(data, graph, cfg, paths.run(run_id), progress=progress)


def summarize_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (sample std, ddof=1 when n > 1) of valid and test metrics over runs."""
    out: dict[str, Any] = {"runs": [r["run_id"] for r in results], "n": len(results)}
    for split in ("valid", "test"):
        keys = results[0][split].keys()
        vals = {k: np.array([r[split][k] for r in results]) for k in keys}
        out[f"{split}_mean"] = {k: float(v.mean()) for k, v in vals.items()}
        out[f"{split}_std"] = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()}
    out["best_epochs"] = [r["best_epoch"] for r in results]
    from models.evaluation.cold import division_summary

    divisions = division_summary(results)
    if divisions is not None:  # the item-cold protocol: cold / warm / all, null where no cold path
        out["test_divisions"] = divisions
    return out


def seed_configs(cfg: TrainConfig, base: str, seeds: Sequence[int]) -> list[TrainConfig]:
    """One config per seed, run ids <base>-s<seed>."""
    if not seeds:
        raise ValueError("seeds must not be empty")
    make_config(cfg.model, **cfg.model_args)  # a bad model argument fails before any data is read
    return [dataclasses.replace(cfg, seed=int(seed), run_id=f"{base}-s{seed}") for seed in seeds]


def fit_runs(
    paths: DatasetPaths,
    configs: Sequence[TrainConfig],
    progress: bool = True,
    jobs: int = 1,
    after: Callable[[DatasetPaths, str], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train every config (resuming finished or started runs); metrics in the configs' order.

    jobs = 1: one after another in this process, the data prepared again only when `prepare_key`
    changes. jobs > 1: that many worker processes with one torch thread each, a progress line a
    minute per run; this keeps every core busy to the last run and, unlike threads, keeps each
    run's random stream its own: on CPU a run is the one `--jobs 1` gives at one torch thread.
    The gain over one run on J threads depends on how well the model's ops scale: Sports LightGCN
    on 2 cores does 1.2× the epochs per hour (benchmarks/speed/bench_parallel_runs.py). The first
    failing run stops the others (their last epoch is checkpointed: a rerun continues them).
    `after(paths, run_id)` runs as each run ends, where it ran (picklable for jobs > 1): work on the
    run's outputs that should not wait for the last run, such as a report's per-run summary.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(configs) == 1:
        results: list[dict[str, Any]] = []
        key: tuple | None = None
        prepared: tuple[InteractionData, GraphData] | None = None
        for c in configs:
            if prepare_key(c) != key:
                key, prepared = prepare_key(c), prepare(paths, c)
            assert prepared is not None, "the first config's key differs from None: it prepares"
            results.append(fit(*prepared, c, paths.run(_run_id(c)), progress=progress))
            if after is not None:
                after(paths, _run_id(c))
        return results
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    with ProcessPoolExecutor(max_workers=min(jobs, len(configs)), mp_context=spawn, initializer=_worker_init) as pool:
        futures = [pool.submit(_train_in_worker, paths, c, after) for c in configs]
        try:
            for future in as_completed(futures):
                future.result()  # the first error is raised now, not after the runs before it
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [f.result() for f in futures]


def _worker_init() -> None:
    """A worker trains on one thread, prints progress lines, leaves Ctrl-C to the parent (which
    stops it: cli._stop) and ends with the parent even when that is killed outright, so a rerun
    never finds a stray worker writing the same checkpoint."""
    torch.set_num_threads(1)
    log_to_stderr()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def write_seeds_summary(paths: DatasetPaths, base: str, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of one model's seed runs, written to runs/<base>-seeds.json."""
    summary = summarize_seeds(results)
    summary["base_run_id"] = base
    write_json(summary, paths.runs_dir / f"{check_name('run', base)}-seeds.json")
    return summary


def train_seeds(
    paths: DatasetPaths, cfg: TrainConfig, seeds: Sequence[int], progress: bool = True, jobs: int = 1
) -> dict[str, Any]:
    """One run per seed (run ids <base>-s<seed>), `jobs` at once; mean ± std written to
    runs/<base>-seeds.json."""
    base = cfg.run_id or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    configs = seed_configs(cfg, base, seeds)
    return write_seeds_summary(paths, base, fit_runs(paths, configs, progress, jobs))


def _train_in_worker(
    paths: DatasetPaths, cfg: TrainConfig, after: Callable[[DatasetPaths, str], Any] | None = None
) -> dict[str, Any]:
    """One run in a worker process (`_worker_init`): its own data, a progress line a minute."""
    progress = EpochProgress(f"{cfg.model} {cfg.run_id}", cfg.epochs, SELECT_METRIC)
    run_id = _run_id(cfg)
    progress.replay(done_epochs(paths.run(run_id)))
    data, graph = prepare(paths, cfg)
    metrics = fit(data, graph, cfg, paths.run(run_id), progress=False, callback=progress)
    progress.done(metrics)
    if after is not None:
        after(paths, run_id)
    return metrics


def format_summary(summary: dict[str, Any], keys: Sequence[str] = ("recall@20", "ndcg@20")) -> str:
    """'recall@20 0.0871 ± 0.0007, ndcg@20 …' for logs and reports."""
    return ", ".join(f"{k} {summary['test_mean'][k]:.4f} ± {summary['test_std'][k]:.4f}" for k in keys)


def load_metrics(paths: DatasetPaths, run_id: str) -> dict[str, Any]:
    return json.loads(paths.metrics(run_id).read_text())


__all__ = [
    "TrainConfig",
    "BPRSampler",
    "fit",
    "train",
    "train_seeds",
    "seed_configs",
    "fit_runs",
    "done_epochs",
    "prepare_key",
    "config_changes",
    "write_seeds_summary",
    "prepare",
    "summarize_seeds",
    "format_summary",
    "load_metrics",
    "resume_run",
    "start_from_shorter_run",
    "stop_run",
]
