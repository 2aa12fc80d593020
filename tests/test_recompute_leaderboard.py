"""A leaderboard table recomputes from its snapshot alone: same numbers, nothing trained."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from models_fixtures import planted
from test_leaderboard import BASES, SPACES
from test_models_train import write_tiny_dataset

from models.evaluation.leaderboard import run_leaderboard
from models.training import tune as tune_mod

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.accuracy import recompute_leaderboard as rl  # noqa: E402
from benchmarks.common import run_snapshot  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_home(root: Path):
    paths, _, _ = write_tiny_dataset(root, planted(n_users=40, n_items=30, n_groups=2, per_user=8))
    return paths


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A tiny two-model leaderboard, kept the way leaderboard_run.py --snapshot keeps it."""
    paths = tiny_home(tmp_path_factory.mktemp("made"))
    for model, base in BASES.items():
        tune_mod.tune(paths, base, 2, space=SPACES[model], pruner="none")
    out = run_leaderboard(paths, seeds=(1, 2), progress=False, log=lambda _: None, projection_sample=40)
    snap = tmp_path_factory.mktemp("snapshot")
    run_snapshot.save_studies(paths.root / "tuning", snap, list(BASES))
    run_snapshot.save_runs(paths.runs_dir, snap, "lb-")
    shutil.copytree(out.parent, snap / "report")
    return snap


def test_the_kept_table_is_recomputed_exactly_without_training(snapshot, tmp_path, capsys):
    paths = tiny_home(tmp_path / "home")  # a new machine: the dataset rebuilt, no study, no run
    assert rl.main(["--dataset", paths.name, "--snapshot", str(snapshot), "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr().out
    assert "0 difference(s): the kept table is recomputed exactly" in out
    assert not list(paths.runs_dir.glob("*/checkpoint.pt"))  # every number came from the kept summaries
    kept = json.loads((snapshot / "report" / "leaderboard.json").read_text())
    r20 = kept["models"]["lightgcn"]["test_mean"]["recall@20"]
    assert f"| lightgcn | {r20:.4f}" in out


def test_a_home_without_the_dataset_is_refused_in_one_line(snapshot, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        rl.main(["--dataset", "sports", "--snapshot", str(snapshot), "--home", str(tmp_path / "empty")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"{tmp_path / 'empty'} holds no sports dataset: leave --home out to rebuild it in a fresh one")


def test_a_changed_kept_figure_is_caught(snapshot, tmp_path, capsys):
    changed = tmp_path / "snapshot"
    shutil.copytree(snapshot, changed)
    metrics = changed / "runs" / "lb-lightgcn-s1" / "metrics.json"
    m = json.loads(metrics.read_text())
    m["test"]["recall@20"] += 0.01  # a kept run says something other than the table built from it
    metrics.write_text(json.dumps(m))
    paths = tiny_home(tmp_path / "home")
    assert rl.main(["--dataset", paths.name, "--snapshot", str(changed), "--home", str(tmp_path / "home")]) == 1
    assert "models/lightgcn/test_mean/recall@20: kept" in capsys.readouterr().out


def test_differences_reads_floats_to_the_last_bits_and_structure():
    assert rl.differences({"a": [1.0, 2.0]}, {"a": [1.0, 2.0 + 1e-15]}) == []
    assert rl.differences({"a": 1.0}, {"a": 1.0 + 1e-9}) == ["/a: kept 1.0, recomputed 1.000000001"]
    assert rl.differences({"a": [1]}, {"a": [1, 2]}) == ["/a: 1 entries kept, 2 recomputed"]
    assert rl.differences({"a": 1}, {"b": 1}) == ["/a: only in kept", "/b: only in recomputed"]
    assert rl.differences(float("nan"), float("nan")) == []


def _cold_copy(paths, home: Path):
    """`paths`' dataset as the item-cold table's target (the same data: the recompute is what is
    tested here), with a second text table that `--table` points the studies' mm at."""
    from store.layout import dataset_paths

    shutil.copy(paths.feature("text-tiny"), paths.feature("text-other"))
    cold = dataset_paths(f"{paths.name}-cold", home)
    shutil.copytree(paths.root, cold.root, ignore=shutil.ignore_patterns("tuning", "runs", "reports"))
    return cold


@pytest.fixture(scope="module")
def cold_snapshots(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny item-cold table: configurations borrowed from the main studies, mm replaced by --table,
    a model without a study at its defaults; the main snapshot keeps the studies, the cold one the runs."""
    home = tmp_path_factory.mktemp("made")
    paths = tiny_home(home)
    tune_mod.tune(paths, BASES["anchorrec"], 2, space=SPACES["anchorrec"], pruner="none")
    cold = _cold_copy(paths, home)
    out = run_leaderboard(
        cold,
        ["anchorrec", "vbpr", "pop"],
        seeds=(1,),
        progress=False,
        log=lambda _: None,
        projection_sample=40,
        configs_from=paths,
        tables={"mm": "text-other"},
        untuned_defaults=True,
    )
    main, snap = tmp_path_factory.mktemp("main"), tmp_path_factory.mktemp("cold")
    run_snapshot.save_studies(paths.root / "tuning", main, ["anchorrec"])
    run_snapshot.save_runs(cold.runs_dir, snap, "lb-")
    shutil.copytree(out.parent, snap / "report")
    return main, snap


def test_an_item_cold_table_recomputes_from_its_runs_and_the_main_studies(cold_snapshots, tmp_path, capsys):
    main, snap = cold_snapshots
    kept = json.loads((snap / "report" / "leaderboard.json").read_text())
    assert kept["tables"] == {"mm": "text-other"} and kept["configs_from"] == "tiny" and kept["untuned_defaults"]
    home = tmp_path / "home"
    cold = _cold_copy(tiny_home(home), home)  # a new machine: both datasets rebuilt, no study, no run
    cold.feature("text-other").unlink()  # and a table the kept runs read is called otherwise now (an ICA run's
    # name follows the pretraining code): the kept runs say what they read, nothing is matched or trained
    argv = ["--dataset", "tiny", "--cold-items", "0.2", "--snapshot", str(snap), "--home", str(home)]
    with pytest.raises(SystemExit):
        rl.main(argv)  # the studies are in the main table's snapshot: it must be named
    assert "--cold-items needs --studies" in capsys.readouterr().err
    assert rl.main([*argv, "--studies", str(main)]) == 0
    assert "0 difference(s): the kept table is recomputed exactly" in capsys.readouterr().out
    assert not list(cold.runs_dir.glob("*/checkpoint.pt"))
    config = json.loads((cold.run("lb-anchorrec-s1") / "config.json").read_text())
    assert config["features"]["mm"] == "text-other"  # the kept table's --table, used again


def test_kept_tables_are_what_the_kept_reruns_read(tmp_path):
    for run, mm in (("lb-a-s1", "ica-1"), ("lb-b-s1", "ica-1"), ("abl-x-s1", "ica-2")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "config.json").write_text(json.dumps({"features": {"mm": mm, "t": "text"}}))
    assert rl.kept_tables(tmp_path) == {"mm": "ica-1", "t": "text"}  # an ablation's run is not the table's
    (tmp_path / "lb-b-s1" / "config.json").write_text(json.dumps({"features": {"mm": "ica-3"}}))
    with pytest.raises(ValueError, match="different tables for one modality: {'mm': \\['ica-1', 'ica-3'\\]}"):
        rl.kept_tables(tmp_path)
