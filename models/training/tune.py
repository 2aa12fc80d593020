"""Equal-budget hyperparameter search on validation only, resumable across sessions (Optuna).

Why it exists: comparing models at one hand-picked setting each is unfair (issue #17). Here every
model gets the same number of trials, the same epoch cap and patience, its original grid (the
`SEARCH_SPACE` beside its config), a TPE sampler and median (or successive-halving) pruning on
the per-epoch validation Recall@20. The objective is the best validation Recall@20 of the trial's
run; test metrics are recorded on the trial (user attrs) for the report, never read by the search.

A study lives in `<dataset>/tuning/<model>/study.db` (SQLite through Optuna's RDBStorage) with
`best.json` beside it. `trials` is the study's total: a rerun runs only the missing trials, so a
killed or time-limited study continues. A trial the dead process left RUNNING is marked FAIL and
its parameters are re-enqueued; the new trial trains on in the dead trial's run directory (its
checkpoint), so no finished epoch is redone. Each trial is an ordinary run,
`runs/tune-<study>-t<NNN>/` (listed by `anchorrec runs`); a pruned trial's run is ended at its
checkpoint like `stop_run` (metrics.json of its best epoch so far, status "stopped").

The sampler is TPE with a seed (its first 5 trials random); a setting it proposes again is not
retrained: the trial takes the earlier trial's value and run (`duplicate_of`), as grids are small,
and it does not count against the budget: `trials` is the number of DISTINCT settings trained
(complete, pruned or failed), so every model gets the same search, not the same number of
proposals. The search stops early only when the grid is exhausted or the sampler has proposed
MAX_PROPOSALS × trials settings.

Trials fan out over `n_jobs` threads of this process with one torch thread each (the data and
graphs are built once and shared read-only); the study's lock file keeps a second process off
the same study. Spreading trials over Dask workers (one study, many processes on the shared
storage) can come later. With n_jobs > 1 the order of trials, hence the study, is not
reproducible; with n_jobs = 1 the same seed gives the same study (when it is not interrupted:
a resumed study keeps its trials, but the sampler's random stream starts again).
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import json
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from models.registry import MODELS, is_fixed, make_config, read_features
from models.training.progress import EpochProgress
from models.training.trainer import (
    SELECT_METRIC,
    TrainConfig,
    done_epochs,
    fit,
    prepare,
    stop_run,
)
from store.layout import DatasetPaths, check_name
from store.tables import write_json

log = logging.getLogger(__name__)

PRUNERS = ("median", "halving", "none")
TRAIN_KEYS = ("lr",)  # search-space names that are TrainConfig fields; the rest are model config fields
BUDGET_KEYS = (
    "model",
    "features",
    "epochs",
    "patience",
    "eval_every",
    "batch_size",
    "lr_decay",
    "lr_decay_epochs",
    "seed",
    "knn_k",
    "knn_self",
    "ks",
)  # what every trial of a study shares: changing it is a new study
RECOVERED = "recovered_trials"  # study user attr: trial numbers that died and were re-enqueued
TEST_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
TPE_STARTUP = 5  # random trials before TPE models the results (Optuna's 10 would make a 10-trial budget random search)


# ---------------------------------------------------------------- search spaces


LR_GRID = (1e-2, 5e-3, 1e-3, 5e-4, 1e-4)  # one lr grid for every model (an equal budget); a model's own "lr" wins
# 1e-2 joined when 9 of 10 models chose 5e-3, the old top, on Gift Cards (issue 34): a choice on an edge is flagged
MAX_PROPOSALS = 10  # sampler proposals per distinct setting before a study gives up on finding new ones


def search_space(model: str) -> dict[str, tuple]:
    """The grid `SEARCH_SPACE` written beside the model's config, with the shared lr grid; a clear
    error when there is none."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; use anchorrec tune --model with one of {sorted(MODELS)}")
    module = MODELS[model][0]
    if is_fixed(model):
        raise ValueError(
            f"model {model!r} has no trainable weight (a fixed baseline): nothing to tune; "
            f"run it with anchorrec train --model {model}"
        )
    space = getattr(importlib.import_module(module), "SEARCH_SPACE", None)
    if not space:
        raise ValueError(
            f"model {model!r} has no SEARCH_SPACE in {module}; add the grid beside its config "
            "(name → tuple of values, 'lr' for the learning rate) to tune it"
        )
    return check_space(model, {"lr": LR_GRID, **space})


def check_space(model: str, space: dict[str, tuple]) -> dict[str, tuple]:
    """Every name is 'lr' or a field of the model's config, with at least one value."""
    fields = {f.name for f in dataclasses.fields(make_config(model).__class__)}
    for name, values in space.items():
        if name not in TRAIN_KEYS and name not in fields:
            raise ValueError(
                f"SEARCH_SPACE of {model!r}: {name!r} is neither 'lr' nor a field of its config "
                f"({sorted(fields)}); fix the grid in {MODELS[model][0]}"
            )
        if not isinstance(values, (tuple, list)) or not values:
            raise ValueError(
                f"SEARCH_SPACE of {model!r}: {name!r} needs a non-empty tuple of values; fix the grid "
                f"in {MODELS[model][0]}"
            )
    return dict(space)


def trial_config(base: TrainConfig, params: dict[str, Any], run_id: str) -> TrainConfig:
    """The base config with a trial's parameters: 'lr' into TrainConfig, the rest into model_args."""
    train = {k: v for k, v in params.items() if k in TRAIN_KEYS}
    model_args = {**base.model_args, **{k: v for k, v in params.items() if k not in TRAIN_KEYS}}
    return dataclasses.replace(base, **train, model_args=model_args, run_id=run_id)


# ---------------------------------------------------------------- the study


def study_dir(paths: DatasetPaths, model: str) -> Path:
    return paths.root / "tuning" / model


def make_pruner(pruner: str | optuna.pruners.BasePruner, epochs: int) -> optuna.pruners.BasePruner:
    """Median: a trial is stopped when its validation Recall@20 is below the median of earlier
    trials at the same epoch (after 3 trials and a few warm-up epochs, so early noise prunes
    nothing); halving: successive halving from 1 epoch up; none: every trial runs to its end."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min(5, max(epochs // 4, 0)))
    if pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")


@contextmanager
def study_lock(directory: Path) -> Iterator[None]:
    """One process per study: its RUNNING trials are then known to be dead ones, never a neighbour's."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "study.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{directory}: another process is running this study; wait for it to end "
                "(or stop it: the same anchorrec tune command resumes the study)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class SerialStateStorage(optuna.storages.RDBStorage):
    """Optuna's SQLite storage with trial state changes made one at a time in this process.

    Optuna takes a WAITING trial (an enqueued one: a trial continued after a kill) by reading its
    state and writing RUNNING; on SQLite two threads can both read WAITING before either writes,
    and both get the same trial. With `--jobs 2` two workers then trained one run into one
    checkpoint while the other continued trial waited. Other processes are kept out by the study lock.
    """

    _lock = threading.Lock()

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        with self._lock:
            return super().set_trial_state_values(trial_id, state, values)


def open_study(
    directory: Path, name: str, base: TrainConfig, seed: int, pruner: optuna.pruners.BasePruner
) -> optuna.Study:
    """Create or load the study; a stored study with another budget (epochs, features, …) is refused."""
    storage = SerialStateStorage(f"sqlite:///{directory / 'study.db'}", engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP),
        pruner=pruner,
    )
    budget = {k: v for k, v in base.to_json().items() if k in BUDGET_KEYS}
    budget["model_args"] = base.model_args
    stored = study.user_attrs.get("budget")
    if stored is not None:  # studies from before READS stored every table of the dataset
        stored = {**stored, "features": read_features(base.model, stored.get("features") or {})}
    if stored is None:
        study.set_user_attr("budget", budget)
    elif stored != _jsonable(budget):
        changed = sorted(k for k in set(stored) | set(budget) if stored.get(k) != _jsonable(budget).get(k))
        raise ValueError(
            f"{directory}: study {name!r} was run with other settings ({', '.join(f'{k}={stored.get(k)}' for k in changed)}); "
            f"rerun anchorrec tune with those, or delete {directory} to start a new study"
        )
    return study


def _jsonable(obj: Any) -> Any:
    """What the storage gives back for `obj` (tuples become lists)."""
    import json

    return json.loads(json.dumps(obj))


def recover_dead_trials(study: optuna.Study, space: dict[str, tuple]) -> list[int]:
    """Trials a dead process left RUNNING (or that Ctrl-C failed): mark FAIL, re-enqueue their params.

    The re-enqueued trial carries `resumes_run`, so it trains on from the dead trial's checkpoint.
    Called under the study lock, so a RUNNING trial cannot belong to a live process.
    """
    recovered = list(study.user_attrs.get(RECOVERED, []))
    revived = []
    for t in study.get_trials(deepcopy=False):
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
        if t.number in recovered or not (t.state == TrialState.RUNNING or interrupted):
            continue
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
        recovered.append(t.number)
        study.set_user_attr(RECOVERED, recovered)  # before the enqueue: a crash here costs a fresh trial, not a double
        if set(t.params) == set(space):  # it died after sampling: continue it
            run_id = t.user_attrs.get("run_id")
            study.enqueue_trial(t.params, user_attrs={"resumes_run": run_id} if run_id else None)
        revived.append(t.number)
        log.warning(
            "study %s: trial %d did not finish (process killed or interrupted); continuing it",
            study.study_name,
            t.number,
        )
    return revived


def counts(study: optuna.Study) -> dict[str, int]:
    """Distinct settings trained (complete, pruned, failed: the budget), repeats, reruns after a crash."""
    recovered = set(study.user_attrs.get(RECOVERED, []))
    trials = study.get_trials(deepcopy=False)
    own = [t for t in trials if "duplicate_of" not in t.user_attrs]
    out = {
        "complete": sum(t.state == TrialState.COMPLETE for t in own),
        "pruned": sum(t.state == TrialState.PRUNED for t in own),
        "failed": sum(t.state == TrialState.FAIL and t.number not in recovered for t in own),
        "rerun_after_crash": len(recovered),
    }
    out["done"] = out["complete"] + out["pruned"] + out["failed"]
    out["duplicates"] = len(trials) - len(own)
    out["epochs_trained"] = sum(int(t.user_attrs.get("epochs_run") or 0) for t in own)
    return out


def grid_size(space: dict[str, tuple]) -> int:
    return int(np.prod([len(v) for v in space.values()]))


# ---------------------------------------------------------------- one trial


class Objective:
    """One trial = one ordinary training run; returns its best validation Recall@20 (never test)."""

    def __init__(
        self, paths: DatasetPaths, base: TrainConfig, space: dict[str, tuple], prefix: str, data: Any, graph: Any
    ):
        self.paths, self.base, self.space, self.prefix = paths, base, space, prefix
        self.data, self.graph = data, graph

    def __call__(self, trial: optuna.Trial) -> float:
        torch.set_num_threads(1)  # trials run in parallel threads: one torch thread each
        params = {name: trial.suggest_categorical(name, list(values)) for name, values in self.space.items()}
        twin = self._finished_twin(trial, params)
        if twin is not None:  # TPE proposed a setting already trained: same run, same value, no cost, no budget
            for key in ("run_id", "best_epoch", "valid", "test"):
                trial.set_user_attr(key, twin.user_attrs.get(key))
            trial.set_user_attr("duplicate_of", twin.number)
            if twin.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"the setting of trial {twin.number}, pruned")
            assert twin.value is not None, "a COMPLETE trial has its value"
            return float(twin.value)
        run_id = trial.user_attrs.get("resumes_run") or f"{self.prefix}-t{trial.number:03d}"
        trial.set_user_attr("run_id", run_id)
        cfg = trial_config(self.base, params, run_id)
        run_dir = self.paths.run(run_id)
        history = done_epochs(run_dir)
        for record in history:  # a continued run's earlier epochs, so the pruner sees the whole curve
            if "valid" in record:
                trial.report(record["valid"][SELECT_METRIC], record["epoch"])
        progress = EpochProgress(f"tune {self.base.model} trial {trial.number} ({run_id})", cfg.epochs, SELECT_METRIC)
        progress.replay(history)

        def report(epoch: int, record: dict[str, Any]) -> None:  # after the epoch's checkpoint is written
            progress(epoch, record)
            if "valid" in record:
                trial.report(record["valid"][SELECT_METRIC], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: validation {SELECT_METRIC} below the pruner's bar")

        try:
            metrics = fit(self.data, self.graph, cfg, run_dir, progress=False, callback=report)
        except optuna.TrialPruned as exc:
            stop_run(run_dir)  # the run ends at its checkpoint: tested once at its best epoch so far
            self._record(trial, fit(self.data, self.graph, cfg, run_dir, progress=False))
            progress.pruned(exc)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it FAIL; the next tune continues it
            raise
        except FloatingPointError as exc:  # a diverging setting (too high lr): a failed trial, not a failed study
            trial.set_user_attr("error", str(exc))
            raise
        self._record(trial, metrics)
        progress.done(metrics)
        return float(metrics["valid"][SELECT_METRIC])

    @staticmethod
    def _finished_twin(trial: optuna.Trial, params: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
        """An earlier complete or pruned trial with the same parameters (grids are small: TPE repeats itself)."""
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return next((t for t in done if t.params == params and "duplicate_of" not in t.user_attrs), None)

    @staticmethod
    def _record(trial: optuna.Trial, metrics: dict[str, Any]) -> None:
        """For the leaderboard and the report only: the search reads none of this."""
        trial.set_user_attr("best_epoch", int(metrics["best_epoch"]))
        trial.set_user_attr("epochs_run", int(metrics["epochs_run"]))
        trial.set_user_attr("train_s_per_epoch", float(metrics["timings"]["train_s_per_epoch"]))
        trial.set_user_attr("valid", {k: float(metrics["valid"][k]) for k in TEST_KEYS if k in metrics["valid"]})
        trial.set_user_attr("test", {k: float(metrics["test"][k]) for k in TEST_KEYS if k in metrics["test"]})


# ---------------------------------------------------------------- the search


class WallClock:
    """Adds the wall time since its last call to the study's `wall_s` after every trial, so the
    tuning cost survives a kill (at most one trial's time is lost) and sums over sessions."""

    def __init__(self, study: optuna.Study) -> None:
        self.last = time.perf_counter()
        self.lock = threading.Lock()

    def __call__(self, study: optuna.Study, _trial: Any) -> None:
        with self.lock:
            now = time.perf_counter()
            study.set_user_attr("wall_s", float(study.user_attrs.get("wall_s", 0.0)) + now - self.last)
            self.last = now


def check_tune_args(model: str, trials: int, n_jobs: int, pruner: Any) -> None:
    """One-line errors before any data is read."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; use anchorrec tune --model with one of {sorted(MODELS)}")
    if trials < 1:
        raise ValueError(f"trials must be ≥ 1 (the study's total), got {trials}; e.g. anchorrec tune --trials 10")
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be ≥ 1, got {n_jobs}; e.g. anchorrec tune --jobs 2")
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")


def tune(
    paths: DatasetPaths,
    base: TrainConfig,
    trials: int,
    *,
    study_name: str | None = None,
    pruner: str | optuna.pruners.BasePruner = "median",
    seed: int = 0,
    n_jobs: int = 1,
    space: dict[str, tuple] | None = None,
) -> dict[str, Any]:
    """Run the study of `base.model` on `paths` up to `trials` trials in all; write best.json.

    `base` fixes what every trial shares (features, epochs, patience, seed, …); the search space
    (default: the model's SEARCH_SPACE) sets lr and model arguments. Returns the best params, the
    best validation Recall@20, the trial counts and the wall time (this call's and the study's).
    """
    check_tune_args(base.model, trials, n_jobs, pruner)
    space = check_space(base.model, space) if space is not None else search_space(base.model)
    name = check_name("study", study_name or base.model)
    directory = study_dir(paths, name)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with study_lock(directory):
        study = open_study(directory, name, base, seed, make_pruner(pruner, base.epochs))
        revived = recover_dead_trials(study, space)
        budget = min(trials, grid_size(space))
        ran = 0
        if budget - counts(study)["done"] > 0:
            data, graph = prepare(paths, base)
            objective = Objective(paths, dataclasses.replace(base, run_id=None), space, f"tune-{name}", data, graph)
            clock = WallClock(study)
            try:
                ran = search(study, objective, budget, n_jobs, clock)
            finally:
                torch.set_num_threads(threads)
                clock(study, None)
        summary = summarize(study, paths, base, trials, pruner, seed, space)
        summary.update(ran_now=ran, revived=revived, wall_s=round(time.perf_counter() - t0, 2))
        if revived:
            summary["line"] += f"; continued unfinished trial(s) {revived}"
        if _changed(summary, directory / "best.json"):
            write_json(summary, directory / "best.json")
    return summary


def search(study: optuna.Study, objective: Objective, budget: int, n_jobs: int, clock: WallClock) -> int:
    """Propose settings until `budget` distinct ones are trained: a repeat costs a proposal, not a trial."""
    proposals = 0
    while (missing := budget - counts(study)["done"]) > 0 and proposals < MAX_PROPOSALS * budget:
        study.optimize(objective, n_trials=missing, n_jobs=n_jobs, catch=(FloatingPointError,), callbacks=[clock])
        proposals += missing
    return proposals


def _changed(summary: dict[str, Any], path: Path) -> bool:
    """Whether best.json would say something new: a call that ran nothing (a finished study asked
    again, as every `leaderboard_run.py` restart does) leaves it alone, so it keeps the wall time
    of the call that did the work and a committed snapshot is not dirtied by a timing."""
    volatile = ("wall_s", "ran_now")
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # missing or unreadable: write it anew
    new = json.loads(json.dumps(summary, default=str))  # as write_json stores it (tuples as lists)
    return {k: v for k, v in old.items() if k not in volatile} != {k: v for k, v in new.items() if k not in volatile}


def summarize(
    study: optuna.Study,
    paths: DatasetPaths,
    base: TrainConfig,
    trials: int,
    pruner: Any,
    seed: int,
    space: dict[str, tuple],
) -> dict[str, Any]:
    """best.json: the choice (validation only), the budget, the counts and the cost."""
    n = counts(study)
    recovered = set(study.user_attrs.get(RECOVERED, []))
    failures = [
        {"trial": t.number, "params": t.params, "error": t.user_attrs.get("error", "see the log of that session")}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number not in recovered
    ]
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        first = f"; first failure: trial {failures[0]['trial']}: {failures[0]['error']}" if failures else ""
        raise ValueError(
            f"study {study.study_name!r}: no trial completed ({n['pruned']} pruned, {n['failed']} failed{first}); "
            "rerun anchorrec tune with more --trials (or --pruner none)"
        )
    best = study.best_trial
    assert best.value is not None, "best_trial is a COMPLETE trial: it has its value"
    out: dict[str, Any] = {
        "study": study.study_name,
        "dataset": paths.name,
        "model": base.model,
        "select_metric": f"valid {SELECT_METRIC}",
        "best_value": float(best.value),
        "best_params": dict(best.params),
        "best_trial": best.number,
        "best_run_id": best.user_attrs.get("run_id"),
        "best_epoch": best.user_attrs.get("best_epoch"),
        "best_test": best.user_attrs.get("test"),  # recorded for the report; never used to choose
        "trials": trials,
        "grid_size": grid_size(space),
        "space": {k: list(v) for k, v in space.items()},
        **n,
        "failures": failures,
        "budget": study.user_attrs.get("budget"),
        "sampler": {"name": "tpe", "seed": seed, "random_startup_trials": TPE_STARTUP},
        "pruner": pruner if isinstance(pruner, str) else type(pruner).__name__,
        "wall_s_total": round(float(study.user_attrs.get("wall_s", 0.0)), 2),
    }
    params = ", ".join(f"{k}={v}" for k, v in out["best_params"].items())
    out["line"] = (
        f"{study.study_name}: best valid {SELECT_METRIC} {out['best_value']:.4f} (trial {best.number}: {params}); "
        f"{n['done']} of {trials} distinct settings: {n['complete']} complete, {n['pruned']} pruned, "
        f"{n['failed']} failed ({n['duplicates']} repeated proposals not retrained, {n['epochs_trained']} epochs)"
    )
    return out


__all__ = [
    "tune",
    "search_space",
    "check_space",
    "trial_config",
    "study_dir",
    "counts",
    "recover_dead_trials",
    "PRUNERS",
]
