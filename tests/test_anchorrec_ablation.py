"""benchmarks/accuracy/anchorrec_ablation.py: rows on the tuned AnchorRec, kept as summaries, reported without vectors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from models_fixtures import planted
from test_models_train import write_tiny_dataset

from models.evaluation.leaderboard import run_leaderboard
from models.training import tune as tune_mod
from models.training.trainer import TrainConfig, load_metrics
from store.tables import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.accuracy import anchorrec_ablation as ablation  # noqa: E402
from benchmarks.common import run_snapshot  # noqa: E402


def test_row_args_change_one_thing_of_the_tuned_config():
    tuned = {"lambda_weight": 0.001, "tau": 0.5}
    assert ablation.row_args(tuned, ablation.ROWS["l2/10"]) == {"lambda_weight": pytest.approx(1e-4), "tau": 0.5}
    assert ablation.row_args({}, ablation.ROWS["l2/10"]) == {"lambda_weight": pytest.approx(1e-3)}  # the default ÷ 10
    assert ablation.row_args(tuned, ablation.ROWS["no-t"]) == {**tuned, "t_branch": False}
    assert ablation.row_args(tuned, ablation.ROWS["uia-grad"]) == {**tuned, "uia_detach": False}
    assert ablation.row_args({"amp_loss": 0.1}, ablation.ROWS["no-amp"]) == {"amp_loss": 0.0}
    assert ablation.row_args(tuned, ablation.ROWS["uia-x10"]) == {**tuned, "uia_weight": 0.1}


def test_every_row_is_a_valid_anchorrec_config():
    from models.anchorrec import AnchorRecConfig

    tuned = {"aal_loss": 0.0, "amp_loss": 0.1, "lambda_weight": 0.001, "n_layers": 2, "tau": 0.5}  # Sports' choice
    for name, change in ablation.ROWS.items():
        cfg = AnchorRecConfig(**ablation.row_args(tuned, change))  # an unknown or invalid field raises here
        assert cfg != AnchorRecConfig(**tuned), name  # and each row changes something
    base = TrainConfig(model="anchorrec", model_args=tuned, epochs=100, patience=20)
    for name in [*ablation.ROWS, *ablation.TRAIN_ROWS]:
        row = ablation.row_config(base, name)  # TrainConfig validates its own fields
        assert row != base and row.seed == base.seed, name


@pytest.mark.usefixtures("one_torch_thread")
def test_rows_are_kept_as_summaries_and_reported_again_without_vectors(tmp_path):
    paths, _, _ = write_tiny_dataset(tmp_path / "home", planted(n_users=40, n_items=30, n_groups=2, per_user=8))
    feats = {"t": "text-tiny", "v": "text-tiny", "mm": "text-tiny"}  # one table as mm, t and v, as on Sports
    base = TrainConfig(
        model="anchorrec",
        model_args={"embedding_dim": 8},
        features=feats,
        epochs=3,
        patience=3,
        batch_size=64,
        knn_k=4,
        seed=7,
    )  # tuned on seed 7: the leaderboard's seeds 0 and 1 exclude it
    tune_mod.tune(paths, base, 2, space={"lr": (1e-2, 5e-3)}, pruner="none")
    snapshot, out = tmp_path / "snapshot", tmp_path / "table"
    argv = [
        "--home",
        str(tmp_path / "home"),
        "--dataset",
        paths.name,
        "--seeds",
        "2",
        "--rows",
        "no-t",
        "uia-grad",
        "--snapshot",
        str(snapshot),
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit):  # no table before the leaderboard's reruns
        ablation.main(argv + ["--report-only"])
    with pytest.raises(SystemExit) as no_study:  # a dataset without an AnchorRec study: one line, exit 2
        ablation.main(["--home", str(tmp_path / "nohome"), "--dataset", paths.name])
    assert no_study.value.code == 2
    ablation.main(argv)  # the rows train on the study's choice while the leaderboard has not ended
    assert not out.with_suffix(".json").exists() and paths.metrics("abl-uia-grad-s1").exists()
    run_leaderboard(paths, seeds=(0, 1), progress=False, log=lambda _: None, projection_sample=40)
    ablation.main(argv)  # finished rows load: nothing trained again, the table written
    first = read_json(out.with_suffix(".json"))
    assert sorted(first["rows"]) == ["best: anchorrec", "no-t", "tuned", "uia-grad"]
    for row, run in (("no-t", "abl-no-t"), ("uia-grad", "abl-uia-grad")):
        got = [r["recall@20"] for r in first["rows"][row]]
        assert got == [load_metrics(paths, f"{run}-s{s}")["test"]["recall@20"] for s in (0, 1)]
        assert read_json(paths.run(f"{run}-s0") / "config.json")["model_args"] == ablation.row_args(
            first["tuned_args"], ablation.ROWS[row]
        )
        assert sorted(p.name for p in (snapshot / "runs" / f"{run}-s0").iterdir()) == sorted(run_snapshot.KEPT)
    assert first["rows"]["no-t"] != first["rows"]["tuned"]
    for rows in first["rows"].values():  # the collapse diagnostics are each run's own, as in its diagnostics.json
        for r in rows:
            diag = read_json(paths.run(r["run"]) / "diagnostics.json")
            assert (r["id_overlap@3"], r["id_dominance"]) == (diag["id_overlap@3"], diag["id_dominance"])
    assert '| no-t | `{"t_branch": false}` |' in out.with_suffix(".md").read_text()

    # a longer epoch cap goes on from the leaderboard's runs: their epochs are not trained again
    ablation.main([*argv[: argv.index("--rows")], "--rows", "epochs-200", *argv[argv.index("--snapshot") :]])
    for s in (0, 1):
        tuned, longer = load_metrics(paths, f"lb-anchorrec-s{s}"), load_metrics(paths, f"abl-epochs-200-s{s}")
        assert longer["resumed_from_epoch"] == 3 and longer["epochs_run"] > 3
        assert longer["history"][:3] == tuned["history"]
        assert read_json(paths.run(f"abl-epochs-200-s{s}") / "config.json")["epochs"] == 200
    assert '| epochs-200 | `{"epochs": 200}` |' in out.with_suffix(".md").read_text()

    # a row with a seed still running is left out, not reported on fewer seeds
    (paths.metrics("abl-uia-grad-s1")).rename(tmp_path / "running")
    ablation.main(argv + ["--report-only"])
    assert sorted(read_json(out.with_suffix(".json"))["rows"]) == ["best: anchorrec", "no-t", "tuned"]
    (tmp_path / "running").rename(paths.metrics("abl-uia-grad-s1"))

    # a new machine: the runs are gone, the snapshot has every summary (the leaderboard's kept by leaderboard_run)
    run_snapshot.save_runs(paths.runs_dir, snapshot, "lb-")
    shutil.rmtree(paths.runs_dir)
    out.with_suffix(".json").unlink()
    ablation.main(argv + ["--report-only"])
    assert read_json(out.with_suffix(".json"))["rows"] == first["rows"]
    command = out.with_suffix(".md").read_text().split("anchorrec_ablation.py ")[1].split("`")[0]
    assert command == " ".join(argv)  # the command that trains the rows, not the --report-only call that wrote it
    assert not list(paths.runs_dir.glob("*/checkpoint.pt"))  # nothing was trained
    assert not list(paths.runs_dir.glob("*/item_vectors.parquet"))


def test_a_table_on_fewer_seeds_than_the_leaderboard_says_so(tmp_path):
    stats = {"tuned": [{"run": "a", "valid": 0.2, "recall@20": 0.1, "ndcg@20": 0.05, "head": 0.3, "tail": 0.01}] * 2}
    stats["best: lightgcn"] = stats["tuned"]
    args = type("A", (), {"seeds": 2, "command": "x", "out": tmp_path / "t"})()
    ablation.write_results(type("P", (), {"name": "toy"})(), args, stats, "lightgcn", {})
    text = (tmp_path / "t.md").read_text()
    assert "| tuned |" in text and "| no-t |" not in text
    assert "Only 2 seeds a row" in text  # fewer seeds than the leaderboard's five: said in the table


def test_the_table_carries_the_collapse_diagnostics_and_marks_a_missing_one(tmp_path):
    run = {"run": "a", "valid": 0.2, "recall@20": 0.1, "ndcg@20": 0.05, "head": 0.3, "tail": 0.01}
    stats = {
        "tuned": [
            {**run, "id_overlap@3": 0.3, "id_dominance": 100.0},
            {**run, "id_overlap@3": 0.4, "id_dominance": 110.0},
        ],
        "best: lightgcn": [{**run, "id_overlap@3": 1.0, "id_dominance": 200.0}] * 2,
        "no-t": [run, run],
    }  # summaries without the figures
    args = type("A", (), {"seeds": 2, "command": "x", "out": tmp_path / "t"})()
    ablation.write_results(type("P", (), {"name": "toy"})(), args, stats, "lightgcn", {})
    cells = {
        line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")
        for line in (tmp_path / "t.md").read_text().splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert cells["tuned"][-2:] == ["0.35", "105.0"] and cells["best: lightgcn"][-2:] == ["1.00", "200.0"]
    assert cells["no-t"][-2:] == ["–", "–"]
    assert cells["tuned"][5] == "—" and cells["best: lightgcn"][6] == "—"  # no row is compared with itself
    assert cells["tuned"][6].startswith("+0.0000") and cells["tuned"][1] == "—"  # the tuned row changes nothing


def test_the_loss_terms_are_those_of_the_best_epoch_with_their_shares():
    history = [
        {"epoch": 1, "bpr": 0.5, "reg": 0.5, "loss": 1.0, "lr": 1e-3, "train_s": 3.0, "valid": {"recall@20": 0.1}},
        {
            "epoch": 2,
            "bpr": 0.6,
            "reg": 0.3,
            "uia": 0.001,
            "loss": 0.901,
            "lr": 1e-3,
            "train_s": 3.0,
            "valid": {"recall@20": 0.2},
        },
    ]
    terms = ablation.loss_terms({"best_epoch": 2, "history": history})
    assert terms == {"bpr": 0.6, "reg": 0.3, "uia": 0.001}  # the best epoch's terms: no total, lr, timing or metrics
    assert ablation.loss_terms({"best_epoch": 2, "history": []}) == {}
    stats = {
        "tuned": [{"loss_terms": terms}, {"loss_terms": {"bpr": 0.4, "reg": 0.5, "uia": 0.001}}],
        "best: alignrec": [{"loss_terms": {"bpr": 1.0, "cca": 3.0}}] * 2,
    }
    table = ablation.loss_table(stats)
    assert table[2] == "| row | bpr | cca | reg | uia |"
    assert table[4] == "| tuned | 0.5 (55%) |  | 0.4 (44%) | 0.001 (<1%) |"
    assert table[5] == "| best: alignrec | 1 (25%) | 3 (75%) |  |  |"
    assert ablation.loss_table({"tuned": [{"run": "a"}]}) == []  # summaries without terms: no table
