"""A store that moves: nothing in a dataset names the machine, so a copied home is all cache hits.

Issue 30, item 6. A copied home used to retrain everything (run ids came from absolute paths), and
two fresh homes gave the same numbers in different bytes. These tests run the CLI as a user does,
on a small demo: copy a finished home elsewhere and rerun (every stage `cached`, every file
byte-identical, the old home's path in no file); build two fresh homes at different paths (the
same bytes, the same run ids). The only differences allowed are the clock times listed in
TIME_FIELDS, which the contract table in docs/store.md names too.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_helpers import run_cli, user_env

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--demo-items",
    "60",
    "--demo-users",
    "80",
    "--pretrain-epochs",
    "2",
    "--epochs",
    "2",
    "--patience",
    "2",
    "--image-workers",
    "2",
]
STAGES = ("ingest", "images", "features text", "features image", "pretrain", "train", "publish")
# The documented exceptions (docs/store.md, contract table): fields that hold a clock time, a process id
# or a measured duration, dropped (at any depth) before two fresh builds are compared; every other
# byte, and every value beside them, must match. A checkpoint is compared by its loaded content.
TIMINGS = (
    "seconds",
    "train_items_per_s",
    "train_s",
    "train_cpu_s",
    "eval_s",
    "eval_cpu_s",
    "test_eval_s",
    "train_s_per_epoch",
    "train_cpu_s_per_epoch",
    "eval_s_per_eval",
    "eval_cpu_s_per_eval",
)
TIME_FIELDS = {
    "prepare.json": ("created_at",),
    "features/*.json": ("created_at",),
    "tokens/*.json": ("created_at",),
    "index/*/manifest.json": ("created_at", "build_seconds"),  # an index written before versions
    "index/*/versions/*/manifest.json": ("created_at", "build_seconds"),
    "index/*/versions/*/change.json": ("created_at",),
    "raw/manifest.json": ("fetched_at",),
    "runs/*/status.json": ("pid", "updated_at"),
    "runs/*/metrics.json": TIMINGS,
    "runs/*/checkpoint.pt": TIMINGS,
    "runs/*/cold_kit.pt": (),  # compared by content: torch.save writes a fresh serialization id each time
}
SKIP = ("*.lock",)  # lock files: who held the dataset last (pid, time); not data


def anchorrec(home: Path, prefect: Path, *args: str) -> subprocess.CompletedProcess:
    proc = run_cli(user_env(home, prefect, COLUMNS="120"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def stage_lines(stderr: str) -> dict[str, str]:
    """stage → what its line says (a progress bar's redraws dropped)."""
    shown = [line.split("\r")[-1] for line in stderr.split("\n")]
    return {s: line.split(":", 1)[1].strip() for line in shown for s in STAGES if line.startswith(f"{s}: ")}


def files(root: Path) -> dict[str, Path]:
    """Every data file under `root` by its posix path relative to it."""
    out = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    return {k: v for k, v in out.items() if not any(Path(k).match(g) for g in SKIP)}


def comparable(rel: str, path: Path) -> str:
    """sha256 of the file, or of its content without the documented TIME_FIELDS."""
    drop = next(
        (
            keys
            for pattern, keys in TIME_FIELDS.items()
            if Path(rel).match(pattern) and rel.count("/") == pattern.count("/")
        ),
        None,
    )
    if drop is None:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.suffix == ".pt":
        import torch

        data = torch.load(path, map_location="cpu", weights_only=False)
    else:
        data = json.loads(path.read_text())
    return hashlib.sha256(repr(_without(data, drop)).encode()).hexdigest()


def _without(value, drop: tuple[str, ...]):
    """`value` with the keys `drop` removed at any depth; tensors and arrays as their bytes."""
    if isinstance(value, dict):
        return sorted((str(k), _without(v, drop)) for k, v in value.items() if k not in drop)
    if isinstance(value, (list, tuple)):
        return [_without(v, drop) for v in value]
    if hasattr(value, "detach"):  # a tensor
        value = value.detach().cpu().numpy()
    if hasattr(value, "tobytes"):
        return (str(value.dtype), value.shape, hashlib.sha256(value.tobytes()).hexdigest())
    return value


def texts(path: Path) -> list[bytes]:
    """What a reader of the file sees: its bytes, a gzip's content, a Parquet table's values and metadata."""
    raw = path.read_bytes()
    out = [raw]
    if path.suffix == ".gz":
        out.append(gzip.decompress(raw))
    if path.suffix == ".parquet":
        f = pq.ParquetFile(path)
        out.append(repr(f.schema_arrow.metadata).encode())
        out.append(repr(f.read().to_pydict()).encode())
    return out


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A finished demo home: (home, PREFECT_HOME, the run)."""
    root = tmp_path_factory.mktemp("first")
    home, prefect = root / "home", root / "prefect"
    return home, prefect, anchorrec(home, prefect, "pipeline", *SMALL)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A second fresh home at another path, with its own Prefect cache."""
    root = tmp_path_factory.mktemp("another-place")
    home = root / "deeper" / "home2"
    return home, anchorrec(home, root / "prefect", "pipeline", *SMALL)


@pytest.mark.slow
def test_a_copied_home_is_all_cache_hits_byte_identical_and_names_no_old_path(first, tmp_path):
    home, prefect, run = first
    assert set(stage_lines(run.stderr)) == set(STAGES), run.stderr
    copy = tmp_path / "moved" / "elsewhere"
    shutil.copytree(home, copy)

    again = anchorrec(copy, prefect, "pipeline", *SMALL)

    assert stage_lines(again.stderr) == dict.fromkeys(STAGES, "cached"), again.stderr
    before, after = files(home / "demo"), files(copy / "demo")
    assert before.keys() == after.keys()
    changed = [k for k in before if before[k].read_bytes() != after[k].read_bytes()]
    assert changed == []
    old = str(home).encode()
    naming = [k for k, p in files(copy).items() if any(old in t for t in texts(p))]
    assert naming == []


@pytest.mark.slow
def test_two_fresh_homes_give_the_same_files(first, fresh):
    (home, _, _), (home2, _) = first, fresh
    a, b = files(home / "demo"), files(home2 / "demo")
    assert a.keys() == b.keys()
    assert len([k for k in a if k.startswith("runs/")]) >= 6  # an ICA run and a recommender run were compared
    differ = [k for k in a if comparable(k, a[k]) != comparable(k, b[k])]
    assert differ == []
    for home_, files_ in ((home, a), (home2, b)):  # neither names its own home
        assert [k for k, p in files_.items() if any(str(home_).encode() in t for t in texts(p))] == []


@pytest.mark.slow
def test_run_ids_do_not_depend_on_where_the_home_is(first, fresh):
    (home, _, run), (home2, run2) = first, fresh
    runs = sorted(p.name for p in (home / "demo" / "runs").iterdir())
    assert runs == sorted(p.name for p in (home2 / "demo" / "runs").iterdir())
    assert [r.split("-")[0] for r in runs] == ["anchorrec", "ica"]
    assert sorted(p.name for p in (home / "demo" / "features").glob("ica-*.parquet")) == [f"{runs[1]}.parquet"]
    published = [line for line in run.stdout.split("\n") if line.startswith("published ")]
    assert published and published == [line for line in run2.stdout.split("\n") if line.startswith("published ")]
    assert runs[0] in published[0]


# --------------------------------------------------------------------------- the writers' helpers
def test_paths_are_recorded_relative_to_the_dataset_and_resolved_back(tmp_path):
    from store.layout import dataset_paths

    paths = dataset_paths("demo", tmp_path / "home")
    assert paths.relative(paths.item_vectors("r1")) == "runs/r1/item_vectors.parquet"
    assert paths.located("raw/images/D1.jpg") == paths.root / "raw" / "images" / "D1.jpg"
    assert paths.located(tmp_path / "x.jpg") == tmp_path / "x.jpg"
    with pytest.raises(ValueError, match="outside the dataset directory"):
        paths.relative(tmp_path / "elsewhere.csv")


def test_sources_by_name_urls_as_given_and_no_machine_path_in_weights():
    from store.layout import portable, source_name

    assert source_name("/home/me/data/meta_Gift_Cards.json.gz") == "meta_Gift_Cards.json.gz"
    assert source_name("file:///home/me/my%20data/r.csv") == "r.csv"
    assert source_name("https://host/x/reviews.json.gz") == "https://host/x/reviews.json.gz"
    venv = "minilm package (/home/me/.venv/lib/python3.11/site-packages/gt_minilm/model)"
    assert portable(venv) == "minilm package (gt_minilm/model)"
    assert portable("/home/me/w/effnet.pth") == "effnet.pth"
    assert portable("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_an_applied_encoder_is_named_by_dataset_run_and_hash_not_path(tmp_path):
    from models.pretraining.apply import checkpoint_record
    from store.layout import dataset_paths

    source = dataset_paths("big", tmp_path / "a")
    ckpt = source.run("ica-1") / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()[:16]
    assert (
        checkpoint_record(dataset_paths("small", tmp_path / "b"), ckpt)
        == f"big/runs/ica-1/checkpoint.pt sha256:{digest}"
    )
    assert checkpoint_record(source, ckpt) == "runs/ica-1/checkpoint.pt"


def test_a_csv_catalog_with_relative_image_paths_gives_the_same_items_in_two_homes(tmp_path):
    """A user's catalog in their folder, images beside it: copied into raw/images/, recorded relative."""
    from pipelines.ingest import ingest
    from store.layout import dataset_paths

    src = tmp_path / "my catalog"
    (src / "img").mkdir(parents=True)
    (src / "img" / "A1.jpg").write_bytes(b"\xff\xd8 not decoded here")
    (src / "items.csv").write_text("asin,title,image_path\nA1,Hat,img/A1.jpg\nB2,Cap,img/missing.jpg\nC3,Scarf,\n")
    tables = []
    for home in (tmp_path / "one", tmp_path / "two" / "deeper"):
        ingest("cat", "csv", meta=str(src / "items.csv"), home=home, progress=False)
        paths = dataset_paths("cat", home)
        urls = pq.read_table(paths.items, columns=["asin", "image_url"]).to_pydict()
        assert urls == {"asin": ["A1", "B2", "C3"], "image_url": ["raw/images/A1.jpg", "raw/images/B2.jpg", None]}
        assert (paths.root / "raw/images/A1.jpg").read_bytes() == (src / "img" / "A1.jpg").read_bytes()
        report = json.loads(paths.prepare_report.read_text())
        assert (
            report["sources"]["meta"]["file"] == "raw/items.csv" and report["sources"]["meta"]["source"] == "items.csv"
        )
        assert not [k for k, p in files(paths.root).items() if any(str(tmp_path).encode() in t for t in texts(p))]
        tables.append(paths.items.read_bytes())
    assert tables[0] == tables[1]
