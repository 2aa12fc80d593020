"""Leaderboard: the studies' choices rerun on seeds, one report; selection never reads test."""

from __future__ import annotations

import json
import shutil

import pytest
from models_fixtures import planted
from test_models_train import write_tiny_dataset

from models.evaluation import leaderboard as lb
from models.training import tune as tune_mod
from models.training.trainer import TrainConfig
from store.layout import dataset_paths

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATS = {"t": "text-tiny", "v": "text-tiny", "mm": "text-tiny"}
BASES = {
    "lightgcn": TrainConfig(model="lightgcn", model_args={"dim": 8}, epochs=2, patience=2, batch_size=64, knn_k=4),
    "anchorrec": TrainConfig(
        model="anchorrec", model_args={"embedding_dim": 8}, features=FEATS, epochs=2, patience=2, batch_size=64, knn_k=4
    ),
}
SPACES = {"lightgcn": {"lr": (1e-2, 5e-3), "n_layers": (1, 2)}, "anchorrec": {"lr": (1e-2, 5e-3), "n_layers": (1, 2)}}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    home = tmp_path_factory.mktemp("lb")
    paths, _, _ = write_tiny_dataset(home, planted(n_users=40, n_items=30, n_groups=2, per_user=8))
    for model, base in BASES.items():
        tune_mod.tune(paths, base, 2, space=SPACES[model], pruner="none")
    return paths


def test_missing_study_names_the_command(tuned):
    with pytest.raises(FileNotFoundError, match="anchorrec tune --dataset tiny --model vbpr"):
        lb.best_config(tuned, "vbpr")


def test_leaderboard_reruns_the_chosen_configuration_on_every_seed(tuned):
    assert lb.tuned_models(tuned) == ["lightgcn", "anchorrec"]
    with pytest.raises(ValueError, match="seed 0 is the seed lightgcn's study tuned on"):
        lb.run_leaderboard(tuned, seeds=(0, 1), progress=False, log=lambda _: None)  # the chosen trial itself
    out = lb.run_leaderboard(tuned, seeds=(1, 2), progress=False, log=lambda _: None, projection_sample=40)
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["models"]) == {"lightgcn", "anchorrec"} and result["seeds"] == [1, 2]
    for model in BASES:
        best = json.loads((tune_mod.study_dir(tuned, model) / "best.json").read_text())
        chosen = json.loads((tuned.run(best["best_run_id"]) / "config.json").read_text())
        tests = []
        for seed in (1, 2):
            cfg = json.loads((tuned.run(f"lb-{model}-s{seed}") / "config.json").read_text())
            assert cfg["seed"] == seed
            assert {k: v for k, v in cfg.items() if k not in ("seed", "run_id")} == {
                k: v for k, v in chosen.items() if k not in ("seed", "run_id")
            }
            tests.append(json.loads(tuned.metrics(f"lb-{model}-s{seed}").read_text())["test"]["recall@20"])
        row = result["models"][model]
        assert row["params"] == best["best_params"]
        assert row["test_mean"]["recall@20"] == pytest.approx(sum(tests) / 2)
        assert row["tuning"]["trials"] == 2 and row["tuning"]["epochs"] == 2
        assert row["tuning"]["distinct"] == best["done"] == 2 and row["tuning"]["grid_size"] == best["grid_size"]
        # the tiny study's cap (2 epochs, patience 2) binds every rerun: each is flagged
        assert len(row["near_cap"]) == 2 and all("of cap 2" in c for c in row["near_cap"])
    # one baseline besides AnchorRec: it is the one tested against, and the verdict names it
    assert result["baseline"] == "lightgcn"
    assert any("anchorrec vs lightgcn" in v for v in result["verdict"])
    text = out.read_text()
    assert "## Verdict" in text and "## Chosen hyperparameters" in text and "## Search and cost" in text
    assert "## What binds" in text and any(
        "cap, not early stopping, ended 2 of 2 reruns" in v for v in result["verdict"]
    )
    assert (out.parent / "report.md").exists()
    # ranked by test Recall@20 in the table, best first
    ranked = sorted(result["models"].values(), key=lambda r: r["rank"])
    r20 = [r["test_mean"]["recall@20"] for r in ranked]
    assert r20 == sorted(r20, reverse=True) and [r["rank"] for r in ranked] == [1, 2]
    first = next(m for m, r in result["models"].items() if r["rank"] == 1)
    assert text.index(f"| {first}") < text.index(f"| {next(m for m in BASES if m != first)}")


def test_reruns_in_worker_processes_give_the_same_leaderboard(tuned, tmp_path):
    """Two copies of the tuned home without reruns: one trains them in workers, one in this process."""
    homes = {}
    for jobs in (2, 1):
        home = tmp_path / f"jobs{jobs}"
        shutil.copytree(tuned.root.parent, home)
        homes[jobs] = dataset_paths(tuned.name, home)
        for run in homes[jobs].runs_dir.glob("lb-*"):
            shutil.rmtree(run) if run.is_dir() else run.unlink()
    outs = {
        jobs: lb.run_leaderboard(
            paths, jobs=jobs, seeds=(1, 2), progress=False, log=lambda _: None, projection_sample=40
        )
        for jobs, paths in homes.items()
    }
    a, b = (json.loads(outs[j].with_suffix(".json").read_text()) for j in (2, 1))
    assert a["models"] == b["models"] and a["verdict"] == b["verdict"] and (a["jobs"], b["jobs"]) == (2, 1)
    for model in BASES:
        for seed in (1, 2):
            history = [json.loads(homes[j].metrics(f"lb-{model}-s{seed}").read_text())["history"] for j in (2, 1)]
            assert len(history[0]) == 2 and [h["loss"] for h in history[0]] == [h["loss"] for h in history[1]]
            for j in (2, 1):  # each run's report summary was made as it ended, in the worker that trained it
                assert (homes[j].run(f"lb-{model}-s{seed}") / "per_user.npz").exists()
    assert "reruns 2 at once, one torch thread each" in outs[2].read_text()


def test_baseline_is_chosen_on_validation_not_test():
    reruns = {
        "lightgcn": {"valid_mean": {"recall@20": 0.30}, "test_mean": {"recall@20": 0.10}},
        "vbpr": {"valid_mean": {"recall@20": 0.20}, "test_mean": {"recall@20": 0.90}},
        "anchorrec": {"valid_mean": {"recall@20": 0.99}, "test_mean": {"recall@20": 0.99}},
    }
    assert lb.pick_baseline(reruns) == "lightgcn"
    assert lb.pick_baseline({"anchorrec": reruns["anchorrec"]}) == "anchorrec"


def test_cli_leaderboard_checks_models_before_work(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["leaderboard", "--dataset", "nope", "--home", str(tmp_path)])
    assert result.exit_code != 0 and "not found" in str(result.exception or result.output)
    result = CliRunner().invoke(app, ["leaderboard", "--dataset", "nope", "--home", str(tmp_path), "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs" in result.output and "greater than or equal to 1" in result.output
    assert "reruns at once" in CliRunner().invoke(app, ["leaderboard", "--help"]).output


def test_a_diverged_seed_is_named_in_the_verdict(tmp_path):
    from store import dataset_paths
    from store.tables import write_json

    paths = dataset_paths("tiny", tmp_path)
    for rid, epoch in (("lb-lattice-s0", None), ("lb-lattice-s1", 25)):
        paths.run(rid).mkdir(parents=True)
        write_json({"test": {"recall@20": 0.5}, "diverged_at_epoch": epoch}, paths.metrics(rid))
    diverged = lb.diverged_runs(paths, ["lb-lattice-s0", "lb-lattice-s1"])
    assert diverged == {"lb-lattice-s1": 25}
    rows = {
        "lattice": {"test_mean": {"recall@20": 0.5}, "best_epochs": [30, 19], "diverged": diverged},
        "lightgcn": {"test_mean": {"recall@20": 0.4}, "best_epochs": [40, 41], "diverged": {}},
    }
    lines = lb.verdict_lines(rows, {"significance": []}, "lightgcn")
    assert [x for x in lines if "diverged" in x] == [
        "lattice: 1 of 2 seeds diverged (loss not finite: lb-lattice-s1 at epoch 25); each is tested at its best "
        "validation epoch before that, which its mean ± std includes."
    ]


def _report(values: dict[str, list[tuple[float, float, float]]]) -> dict:
    """A report.json with per-run (id_overlap@3, id_dominance, tail recall@20) for each model's seeds."""
    runs, diags = {}, {}
    for model, per_seed in values.items():
        for seed, (overlap, dominance, tail) in enumerate(per_seed):
            rid = f"lb-{model}-s{seed}"
            runs[rid] = {"model": model, "seed": seed}
            diags[rid] = {
                "id_overlap@3": overlap,
                "id_dominance": dominance,
                "long_tail": {"tail": {"recall@20": tail}},
            }
    return {"runs": runs, "diagnostics": diags}


def test_advantages_are_paired_by_seed_and_say_when_seed_noise_hides_them():
    report = _report(
        {
            "anchorrec": [(0.3, 100.0, 0.0082), (0.4, 104.0, 0.0070), (0.35, 101.0, 0.0095)],
            "alignrec": [(0.6, 150.0, 0.0078), (0.58, 140.0, 0.0080), (0.59, 149.0, 0.0076)],
        }
    )
    lines = lb._advantages(report, "alignrec")
    assert lines[0].startswith(
        "anchorrec ID overlap@3 0.3500 vs alignrec 0.5900 (lower is better): keeps its advantage"
    )
    assert "better on 3/3 seeds" in lines[0]
    assert "ID dominance 101.6667 vs alignrec 146.3333" in lines[1] and "keeps its advantage" in lines[1]
    # tail: ahead in the mean (0.00823 vs 0.00780) but behind on one seed of three: not a kept advantage
    assert "tail Recall@20 0.0082 vs alignrec 0.0078" in lines[2]
    assert "ahead in the mean, not resolved over seeds" in lines[2] and "better on 2/3 seeds" in lines[2]
    behind = lb._advantages(
        _report({"anchorrec": [(0.9, 1.0, 0.1)] * 2, "alignrec": [(0.5, 2.0, 0.2)] * 2}), "alignrec"
    )
    assert "no advantage" in behind[0] and "keeps its advantage" in behind[1] and "no advantage" in behind[2]
    # a constant per-seed edge has no t (p nan) but holds on every seed
    assert "better on 2/2 seeds, paired t over seeds p = nan" in behind[1]


def test_advantages_pair_only_common_seeds():
    report = _report({"anchorrec": [(0.3, 1.0, 0.2)] * 3, "lightgcn": [(1.0, 2.0, 0.1)]})
    lines = lb._advantages(report, "lightgcn")
    assert all("1/1 seeds" in x and "ahead in the mean, not resolved" in x for x in lines)


def test_the_verdict_places_the_gap_by_item_popularity():
    report = _report(
        {"anchorrec": [(0.3, 1.0, 0.0090), (0.3, 1.0, 0.0080)], "alignrec": [(0.6, 2.0, 0.0070), (0.6, 2.0, 0.0076)]}
    )
    heads = {"anchorrec": (0.15, 0.16), "alignrec": (0.18, 0.185)}
    for rid, run in report["runs"].items():
        report["diagnostics"][rid]["long_tail"]["head"] = {"recall@20": heads[run["model"]][run["seed"]]}
    (line,) = lb._by_popularity(report, "alignrec")
    assert line.startswith("anchorrec vs alignrec, test Recall@20 by item popularity")
    assert "head 0.1550 vs 0.1825 (-0.0275, better on 0/2 seeds, p = " in line
    assert "tail 0.0085 vs 0.0073 (+0.0012, better on 2/2 seeds" in line and "; mid " not in line  # no mid bucket given
    rows = {"alignrec": {"test_mean": {"recall@20": 0.2}}, "anchorrec": {"test_mean": {"recall@20": 0.1}}}
    assert line in lb.verdict_lines(rows, {**report, "significance": []}, "alignrec")


def test_chosen_values_on_a_grid_edge_and_runs_at_the_cap_are_flagged():
    space = {"lr": (1e-2, 5e-3, 1e-3), "n_layers": (1, 2, 3), "dropout": (True, False)}
    edges = lb.grid_edges({"lr": 1e-2, "n_layers": 2, "dropout": True}, space)
    assert edges == {"lr": "0.01 = top of [0.001, 0.005, 0.01]"}  # n_layers inside; booleans have no edge
    assert lb.grid_edges({"lr": 1e-3}, space) == {"lr": "0.001 = bottom of [0.001, 0.005, 0.01]"}
    # cap 100, patience 20: a best epoch of 80 or later could not have been stopped by patience
    assert lb.near_cap([79, 80, 99], ["a", "b", "c"], 100, 20) == [
        "b (best epoch 80 of cap 100)",
        "c (best epoch 99 of cap 100)",
    ]


def test_a_model_with_nothing_to_train_shows_no_epoch_cap(tmp_path):
    """pop runs no epoch: its row says so instead of the studies' cap and patience."""
    metrics = {k: 0.1 for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
    tuning = {"trials": 0, "pruned": None, "wall_s": None, "epochs": 100, "patience": 20}
    row = {"test_mean": metrics, "test_std": metrics, "valid_recall@20": 0.1, "params": {}, "best_epochs": [0]}
    rows = {
        "lightgcn": {**row, "best_epochs": [97, 99], "epochs_to_best": 98.0, "tuning": tuning},
        "pop": {**row, "epochs_to_best": 0.0, "tuning": tuning},
    }
    text = "\n".join(lb.render(dataset_paths("d", tmp_path), rows, [], "lightgcn", [1, 2], "report.md"))
    lines = {m: next(x for x in text.splitlines() if x.startswith(f"| {m} |") and "/ 0" in x) for m in rows}
    assert lines["lightgcn"].endswith("| 98.0 | 100 / 20 |")
    assert lines["pop"].endswith("| – | not trained (no weights) |")
    assert "- pop: nothing to tune or train." in text and "- lightgcn: on a grid edge: none." in text


def test_converged_table_continues_the_capped_reruns_and_sits_beside_them(tuned):
    quiet = {"progress": False, "log": lambda _: None, "projection_sample": 40}
    capped = json.loads(lb.run_leaderboard(tuned, seeds=(1, 2), **quiet).with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="below the studies' cap 2"):
        lb.run_leaderboard(tuned, seeds=(1, 2), cap=1, **quiet)
    out = lb.run_leaderboard(tuned, seeds=(1, 2), cap=4, **quiet)
    assert out.parent.name == "leaderboard-cap4"
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["cap"] == 4
    for model in BASES:
        for seed in (1, 2):
            short = json.loads(tuned.metrics(f"lb-{model}-s{seed}").read_text())
            long = json.loads(tuned.metrics(f"lb-{model}-cap4-s{seed}").read_text())
            cfg = json.loads((tuned.run(f"lb-{model}-cap4-s{seed}") / "config.json").read_text())
            assert cfg["epochs"] == 4 and cfg["seed"] == seed
            # the first two epochs are the capped run's own, not trained again
            assert long["resumed_from_epoch"] == 2
            assert [h["loss"] for h in long["history"][:2]] == [h["loss"] for h in short["history"][:2]]
        row = result["models"][model]
        assert row["tuning"]["epochs"] == 4
    text = out.read_text()
    assert "continued to an epoch cap of 4" in text and "## Capped (2 epochs) and converged, side by side" in text
    for model, row in result["models"].items():
        r0, r1 = capped["models"][model]["test_mean"]["recall@20"], row["test_mean"]["recall@20"]
        assert f"| {model} | {r0:.4f} | {r1:.4f} | {r1 - r0:+.4f} |" in text
    assert any(v.startswith("Against the capped table: the ranking") for v in result["verdict"])
    assert any(v.startswith("AnchorRec against lightgcn") for v in result["verdict"])


@pytest.mark.parametrize(
    "gap0, gap1, words",
    [
        (-0.04, -0.01, "closes 75% of the gap"),
        (-0.04, 0.01, "closes the whole gap"),
        (-0.04, -0.05, "the gap widens"),
        (0.02, 0.01, "ahead capped"),
        (0.02, -0.01, "ahead capped, behind converged"),
        (-0.025, -0.025, "unchanged"),
    ],
)
def test_gap_words(gap0, gap1, words):
    assert lb._gap_words(gap0, gap1).endswith(words)


def test_borrowed_configurations_are_the_source_studies_choices_on_the_target_tables(tuned, tmp_path):
    target = dataset_paths("tiny-cold", tmp_path)
    shutil.copytree(tuned.root / "features", target.root / "features")
    chosen = lb.borrowed_configs(target, tuned, ["anchorrec", "pop", "content_knn"])
    cfg, best = lb.best_config(tuned, "anchorrec")
    assert chosen["anchorrec"][0] == cfg and chosen["anchorrec"][1] == best
    pop, knn = chosen["pop"][0], chosen["content_knn"][0]
    assert pop.model == "pop" and pop.features == {} and knn.features == FEATS
    shutil.rmtree(target.root / "features")
    with pytest.raises(FileNotFoundError, match="lacks the feature table 'text-tiny'.*anchorrec features --dataset"):
        lb.borrowed_configs(target, tuned, ["anchorrec"])


def test_an_ica_table_is_matched_by_its_runs_configuration(tmp_path):
    source, target = dataset_paths("src", tmp_path), dataset_paths("dst", tmp_path)
    run_config = {"config": {"epochs": 15, "seed": 0}, "image_feature": "img", "text_feature": "txt"}
    for paths, run, config in (
        (source, "ica-aaa", run_config),
        (target, "ica-bbb", run_config),
        (target, "ica-ccc", {**run_config, "config": {"epochs": 30, "seed": 0}}),
    ):
        paths.run(run).mkdir(parents=True)
        (paths.run(run) / "config.json").write_text(json.dumps(config))
        paths.features_dir.mkdir(parents=True, exist_ok=True)
        paths.feature(run).write_bytes(b"")
    assert lb.matching_table(target, source, "ica-aaa") == "ica-bbb"
    with pytest.raises(
        FileNotFoundError, match="chose on ica-gone, which this home lacks.*ICA runs: ica-aaa.*--table mm=RUN"
    ):
        lb.matching_table(target, source, "ica-gone")
    (target.run("ica-ccc") / "config.json").write_text(json.dumps(run_config))  # two runs now match
    with pytest.raises(FileNotFoundError, match="2 ICA runs with the configuration of src/ica-aaa"):
        lb.matching_table(target, source, "ica-aaa")


def test_the_cold_verdict_names_the_best_on_cold_items_and_pairs_anchorrec_by_seed(tmp_path):
    paths = dataset_paths("cold", tmp_path)
    cold = {"anchorrec": [0.50, 0.52, 0.51], "freedom": [0.40, 0.43, 0.41], "lightgcn": None}
    reruns = {}
    for model, values in cold.items():
        reruns[model] = {"runs": [f"lb-{model}-s{s}" for s in (1, 2, 3)]}
        for i, seed in enumerate((1, 2, 3)):
            paths.run(f"lb-{model}-s{seed}").mkdir(parents=True)
            division = None if values is None else {"ndcg@20": values[i], "recall@20": 1.0 - values[i]}
            metrics = {"seed": seed, "test_divisions": {"cold": division, "all": division, "warm": {"recall@20": 0.1}}}
            paths.metrics(f"lb-{model}-s{seed}").write_text(json.dumps(metrics))
    lines = lb.cold_verdict(paths, reruns)
    assert lines[0] == (
        "Item-cold protocol, cold division (ranked among the cold test items), test ndcg@20: best **anchorrec** "
        "0.5100; freedom 0.4133. No honest cold path, left out: lightgcn."
    )
    assert lines[1].startswith("anchorrec vs freedom (best other, cold division) on ndcg@20: +0.0967")
    assert "better on 3/3 seeds" in lines[1] and lines[1].endswith("helps on new items.")
    # the all division by Recall@20: here freedom leads, and AnchorRec's deficit is resolved
    assert lines[2].startswith(
        "Item-cold protocol, all division (ranked among all items), test recall@20: best **freedom** 0.5867"
    )
    assert lines[3].endswith("does not help on new items.") and "better on 0/3 seeds" in lines[3]
    assert lb.cold_verdict(paths, {"lightgcn": reruns["lightgcn"]}) == []


def _kept_run(run_dir, *, epochs, patience, epochs_run, best_epoch, **extra):
    """A capped rerun as a snapshot keeps it: summary files, no checkpoint; the data's sizes in its
    config, as the trainer writes them on an item-cold dataset."""
    run_dir.mkdir(parents=True)
    cfg = {**BASES["lightgcn"].to_json(), "epochs": epochs, "patience": patience, "seed": 1, "run_id": run_dir.name}
    cfg |= {"n_users": 40, "n_items": 24, "cold_items": 6}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    metrics = {"run_id": run_dir.name, "epochs_run": epochs_run, "best_epoch": best_epoch, "test": {"recall@20": 0.5}}
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, **extra}))
    (run_dir / "per_user.npz").write_bytes(b"per-user")
    return cfg


def test_a_kept_run_that_stopped_early_is_its_own_converged_run(tmp_path):
    import dataclasses

    paths = dataset_paths("tiny", tmp_path)
    long_cfg = dataclasses.replace(BASES["lightgcn"], epochs=1000, patience=3, seed=1, run_id="lb-lightgcn-cap1000-s1")
    _kept_run(paths.run("lb-lightgcn-s1"), epochs=100, patience=3, epochs_run=40, best_epoch=36)  # 40-1-36 = 3
    assert lb.copy_ended_summary(paths.run("lb-lightgcn-s1"), paths.run("lb-lightgcn-cap1000-s1"), long_cfg)
    copied = paths.run("lb-lightgcn-cap1000-s1")
    assert json.loads((copied / "config.json").read_text())["epochs"] == 1000
    short_cfg = dataclasses.replace(long_cfg, epochs=100, run_id="lb-lightgcn-s1")
    assert lb.kept_metrics(paths, short_cfg)["epochs_run"] == 40  # a kept item-cold run is read as kept
    metrics = json.loads((copied / "metrics.json").read_text())
    assert metrics["run_id"] == copied.name and metrics["copied_from"] == "lb-lightgcn-s1"
    assert metrics["resumed_from_epoch"] == 40 and metrics["test"] == {"recall@20": 0.5}
    assert (copied / "per_user.npz").read_bytes() == b"per-user" and not (copied / "checkpoint.pt").exists()
    assert lb.kept_metrics(paths, long_cfg)["copied_from"] == "lb-lightgcn-s1"  # the leaderboard reads it as kept

    for name, run in {
        "cap": {"epochs_run": 100, "best_epoch": 98},  # the cap ended it: it must train on
        "hand": {"epochs_run": 40, "best_epoch": 36, "stopped_by_hand": True},
    }.items():
        short = paths.run(f"lb-{name}-s1")
        _kept_run(short, epochs=100, patience=3, **run)
        assert not lb.copy_ended_summary(short, paths.run(f"lb-{name}-cap1000-s1"), long_cfg)
        assert not paths.run(f"lb-{name}-cap1000-s1").exists()
    diverged = paths.run("lb-div-s1")
    _kept_run(diverged, epochs=100, patience=3, epochs_run=12, best_epoch=10, diverged_at_epoch=11)
    assert lb.copy_ended_summary(diverged, paths.run("lb-div-cap1000-s1"), long_cfg)
    other = paths.run("lb-other-s1")
    _kept_run(other, epochs=100, patience=3, epochs_run=40, best_epoch=36)
    with pytest.raises(ValueError, match="not a shorter run of lb-other-cap1000-s1.*'lr'"):
        lb.copy_ended_summary(other, paths.run("lb-other-cap1000-s1"), dataclasses.replace(long_cfg, lr=0.5))


def test_the_converged_table_copies_kept_runs_that_stopped_early_and_trains_none(tuned, tmp_path):
    """A snapshot's capped reruns without checkpoints: those early stopping ended need no training."""
    home = tmp_path / "home"
    shutil.copytree(tuned.root, home / "tiny")
    paths = dataset_paths("tiny", home)
    quiet = {"progress": False, "log": lambda _: None, "projection_sample": 40}
    lb.run_leaderboard(paths, ["lightgcn"], seeds=(1,), **quiet)
    run = paths.run("lb-lightgcn-s1")
    (run / "checkpoint.pt").unlink()  # as on a new machine: the summary only
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2  # the study's cap (2) ended it; with patience 1 early stopping would have
    config = json.loads((run / "config.json").read_text())
    stopped = {**metrics, "best_epoch": 0}  # 2 - 1 - 0 >= patience 1: early stopping ended it at the cap
    (run / "metrics.json").write_text(json.dumps(stopped))
    (run / "config.json").write_text(json.dumps({**config, "patience": 1}))
    best = tune_mod.study_dir(paths, "lightgcn") / "best.json"
    chosen = paths.run(json.loads(best.read_text())["best_run_id"]) / "config.json"
    chosen.write_text(json.dumps({**json.loads(chosen.read_text()), "patience": 1}))
    lines: list[str] = []
    out = lb.run_leaderboard(paths, ["lightgcn"], seeds=(1,), cap=50, **{**quiet, "log": lines.append})
    assert any("1 run(s) ended by early stopping before the cap" in line for line in lines)
    converged = paths.run("lb-lightgcn-cap50-s1")
    assert not (converged / "checkpoint.pt").exists()  # copied, not trained
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["models"]["lightgcn"]["test_mean"]["recall@20"] == pytest.approx(metrics["test"]["recall@20"])


def test_table_option_reruns_the_choice_on_another_feature_table(tuned, tmp_path):
    assert lb.parse_tables(["mm=ica-abc", "t=text-x"]) == {"mm": "ica-abc", "t": "text-x"}
    for bad in ("mm", "img=x", "mm="):
        with pytest.raises(ValueError, match="give MODALITY=TABLE"):
            lb.parse_tables([bad])
    cfg, _ = lb.best_config(tuned, "anchorrec", {"mm": "text-other"})
    assert cfg.features == {**FEATS, "mm": "text-other"}
    assert lb.best_config(tuned, "lightgcn", {"mm": "text-other"})[0].features == {}  # no mm gained
    home = tmp_path / "home"
    shutil.copytree(tuned.root, home / "tiny")
    paths = dataset_paths("tiny", home)
    shutil.copy(paths.feature("text-tiny"), paths.feature("text-other"))
    for old in paths.runs_dir.glob("lb-*-s?"):  # reruns other tests made on the studies' own table
        shutil.rmtree(old)
    quiet = {"progress": False, "log": lambda _: None, "projection_sample": 40}
    out = lb.run_leaderboard(paths, ["anchorrec"], seeds=(1,), tables={"mm": "text-other"}, **quiet)
    assert json.loads((paths.run("lb-anchorrec-s1") / "config.json").read_text())["features"]["mm"] == "text-other"
    assert json.loads(out.with_suffix(".json").read_text())["tables"] == {"mm": "text-other"}
    assert (
        "Feature tables replaced for these reruns (`--table`): mm reads text-other (the studies chose on text-tiny)"
        in (out.read_text())
    )


def test_cli_table_option_names_a_missing_table_in_one_line(tuned, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    home = str(tuned.root.parent)
    result = CliRunner().invoke(app, ["leaderboard", "--dataset", "tiny", "--home", home, "--table", "mm=ica-gone"])
    assert result.exit_code != 0 and "--table ica-gone: no such feature table" in str(result.exception)
    result = CliRunner().invoke(app, ["leaderboard", "--dataset", "tiny", "--home", home, "--table", "mm"])
    assert "give MODALITY=TABLE" in str(result.exception)


def test_a_model_without_a_study_borrows_only_the_budget_when_asked(tuned, tmp_path):
    target = dataset_paths("tiny-cold", tmp_path)
    shutil.copytree(tuned.root / "features", target.root / "features")
    with pytest.raises(FileNotFoundError, match="anchorrec tune --dataset tiny --model vbpr"):
        lb.borrowed_configs(target, tuned, ["anchorrec", "vbpr"])
    chosen = lb.borrowed_configs(target, tuned, ["anchorrec", "vbpr"], untuned_defaults=True)
    vbpr, best = chosen["vbpr"]
    studied = chosen["anchorrec"][0]
    assert (vbpr.epochs, vbpr.patience, vbpr.batch_size, vbpr.knn_k) == (2, 2, 64, 4)  # the studies' budget
    assert (vbpr.epochs, vbpr.batch_size) != (TrainConfig().epochs, TrainConfig().batch_size)
    assert vbpr.lr == TrainConfig().lr and vbpr.model_args == {}  # the model's own defaults, nothing tuned
    assert vbpr.features == {"v": studied.features["v"], "t": studied.features["t"]}
    assert best["untuned"] == "no study on tiny: the model's defaults under the studies' budget"
    s = {"valid_mean": {"recall@20": 0.1}, "test_mean": {"recall@20": 0.2}, "test_std": {"recall@20": 0.0}}
    s |= {"best_epochs": [1], "runs": ["lb-vbpr-s1"]}
    rows = lb.leaderboard_rows({"vbpr": (vbpr, best)}, {"vbpr": s})
    assert rows["vbpr"]["untuned"] == best["untuned"] and rows["vbpr"]["tuning"]["trials"] == 0


def test_cli_untuned_defaults_needs_configs_from(tuned):
    from typer.testing import CliRunner

    from cli import app

    home = str(tuned.root.parent)
    result = CliRunner().invoke(app, ["leaderboard", "--dataset", "tiny", "--home", home, "--untuned-defaults"])
    assert result.exit_code != 0 and "--untuned-defaults goes with --configs-from" in str(result.exception)
