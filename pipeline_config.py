"""The pipeline's parameters: one typed, validated dataclass shared by the flows and the CLI.

Kept apart from flows.py so that the command line can build and check a configuration (and
print its help) without importing Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from store import DatasetPaths, dataset_paths

RELEASES = ("demo", "2014", "2018", "2023", "mmrec", "csv")
MODELS = (
    "anchorrec",
    "alignrec",
    "lightgcn",
    "vbpr",
    "freedom",
    "bm3",
    "lattice",
    "lgmrec",
    "damrs",
    "smore",
    "pop",
    "content_knn",
)  # models.registry.MODELS (checked in tests)
TASK_RUNNERS = ("thread", "dask")
PRUNERS = ("median", "halving", "none")  # models.training.tune.PRUNERS (checked in tests)
NO_IMAGES = "none"
META_RELEASES = ("auto", "2014", "2018", "2023", "table")


def _opt(default: Any, help: str, group: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with the help text and option group the CLI shows."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class PipelineConfig:
    """Every parameter of the pipeline; the CLI options and flow parameters are these names."""

    dataset: str = _opt("demo", "dataset name: the directory $ANCHORREC_HOME/<dataset>", "common")
    home: Optional[str] = _opt(None, "root of all datasets (default $ANCHORREC_HOME or ./data)", "common")
    seed: int = _opt(0, "seed of the split, pretraining and training", "common")
    task_runner: str = _opt("thread", "where tasks run: threads here, or a Dask cluster", "common", TASK_RUNNERS)
    no_wait: bool = _opt(
        False,
        "when another command is writing this dataset, fail at once (exit 2) instead of waiting for it to end",
        "common",
    )
    release: str = _opt(
        "demo", "data source: generated demo, an Amazon release, an MMRec set or your CSV", "ingest", RELEASES
    )
    category: Optional[str] = _opt(None, "Amazon category to download, e.g. Gift_Cards", "ingest")
    meta: Optional[str] = _opt(None, "metadata file (URL, file:// URL or path): Amazon release file or CSV", "ingest")
    reviews: Optional[str] = _opt(None, "reviews / interactions file (URL, file:// URL or path)", "ingest")
    source: Optional[str] = _opt(None, "directory of an MMRec set (<name>.inter) for --release mmrec", "ingest")
    columns: Optional[str] = _opt(None, "CSV column names, e.g. 'user=reviewerID,item=asin,rating=stars'", "ingest")
    meta_release: str = _opt(
        "auto", "what the --meta file is for --release csv (auto-detected by default)", "ingest", META_RELEASES
    )
    no_header: bool = _opt(
        False,
        "the CSV/TSV files start with data, no header row: name columns by position, "
        "--columns 'user=0,item=1,rating=2,time=3'",
        "ingest",
    )
    meta_columns: Optional[str] = _opt(
        None, "metadata table columns, e.g. 'asin=sku,title=name,brand=maker,image=photo' (or positions)", "ingest"
    )
    train: Optional[str] = _opt(
        None,
        "a given split: the train interactions file (with --test, and --valid), instead of --reviews; kept exactly",
        "ingest",
    )
    valid: Optional[str] = _opt(None, "a given split: the validation interactions file", "ingest")
    test: Optional[str] = _opt(None, "a given split: the test interactions file", "ingest")
    kcore: int = _opt(5, "keep users and items with at least this many interactions", "ingest")
    cold_items: float = _opt(
        0.0,
        "item-cold protocol: hold out this seeded fraction of items with all their interactions "
        "(half validation, half test); training never sees them",
        "ingest",
    )
    min_meta_match: float = _opt(0.5, "fail the ingest when fewer items than this share have metadata", "ingest")
    allow_missing_meta: bool = _opt(
        False, "ingest even when metadata matched fewer items than --min-meta-match", "ingest"
    )
    demo_items: int = _opt(300, "items of the generated demo catalog", "ingest")
    demo_users: int = _opt(400, "users of the generated demo catalog", "ingest")
    images: Optional[str] = _opt(
        None, "your images: a folder of <asin>.jpg|png|webp or a CSV asin,path; used before URLs", "features"
    )
    image_workers: int = _opt(8, "parallel image downloads", "features")
    shards: int = _opt(1, "split image fetching and extraction into this many tasks", "features")
    text_encoder: str = _opt(
        "minilm", "text encoder: minilm, bert:<name or dir>, clip-text:<model>:<weights>", "features"
    )
    image_encoder: str = _opt(
        "efficientnet-lite0",
        "image encoder: efficientnet-lite0, clip-image:<model>:<weights>, or none (text only)",
        "features",
    )
    min_coverage: float = _opt(0.2, "a modality with vectors for fewer items than this share is left out", "features")
    batch_size: int = _opt(64, "encoder batch size", "features")
    device: Optional[str] = _opt(None, "cpu, cuda or cuda:N (default: cuda when present)", "features")
    tokens: bool = _opt(
        False, "also extract token-level features (tokens/<name>.parquet) and pretrain the encoder on them", "features"
    )
    token_grid: int = _opt(
        4, "image tokens per side: grid² regions of the backbone's feature map (CLIP: patches)", "features"
    )
    max_text_tokens: int = _opt(
        32, "word pieces kept per item text for token features, [CLS] and [SEP] included", "features"
    )
    pretrain_epochs: int = _opt(30, "epochs of inter-content (ICA) pretraining; 0 skips it", "pretrain")
    ica_from: Optional[str] = _opt(
        None,
        "encode with a finished pretraining run instead of pretraining here: RUN "
        "(this dataset), DATASET/RUN, or a runs/ica-… folder",
        "pretrain",
    )
    model: str = _opt("anchorrec", "recommender to train", "train", MODELS)
    epochs: int = _opt(60, "most training epochs", "train")
    patience: int = _opt(10, "stop after this many epochs without a better validation Recall@20", "train")
    lr: float = _opt(1e-3, "learning rate (tune searches its own lr grid)", "train")
    trials: int = _opt(10, "trials of the study in all (a rerun runs only the missing ones)", "tune")
    jobs: int = _opt(1, "trials run at once, in threads of one torch thread each", "tune")
    pruner: str = _opt(
        "median", "stop trials early on validation Recall@20: median, successive halving or none", "tune", PRUNERS
    )
    vectors: Optional[str] = _opt(
        None,
        "catalog-only datasets: the feature table publish indexes for `similar` "
        "(default: the mm table, else text, else image)",
        "publish",
    )
    keep: int = _opt(5, "index versions kept per run (the newest N; the one served is never removed)", "publish")
    run_id: Optional[str] = _opt(
        None, "the published run an update extends (default: the newest published run)", "update"
    )
    retrain_after: float = _opt(
        0.1,
        "retrain in full instead when new items or new interactions since the last training pass this "
        "fraction of those at training",
        "update",
    )
    retrain: bool = _opt(False, "retrain in full now (merge → features → train → publish) whatever the count", "update")

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"--{_flag(f.name)} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}"
                )
        if self.release == "mmrec" and not self.source:
            raise ValueError("--release mmrec needs --source DIR: the directory holding <name>.inter")
        if self.release == "csv" and not self.reviews and not self.meta and not self.train:
            raise ValueError(
                "--release csv needs --reviews FILE: a CSV, TSV or Parquet of user,item interactions "
                "(or --meta FILE alone: a catalog-only dataset, for features and pretrain)"
            )
        for name in (
            "kcore",
            "image_workers",
            "shards",
            "batch_size",
            "epochs",
            "patience",
            "demo_items",
            "demo_users",
            "trials",
            "jobs",
            "keep",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be ≥ 1, got {getattr(self, name)}")
        if not 1 <= self.token_grid <= 16:
            raise ValueError(f"--token-grid must be in 1..16, got {self.token_grid}")
        if self.max_text_tokens < 3:
            raise ValueError(
                f"--max-text-tokens must be ≥ 3 ([CLS], one word piece, [SEP]), got {self.max_text_tokens}"
            )
        if self.pretrain_epochs < 0:
            raise ValueError("--pretrain-epochs must be ≥ 0 (0 skips pretraining)")
        if not 0 < self.lr < 1:
            raise ValueError(f"--lr must be in (0, 1), got {self.lr}")
        if not self.retrain_after >= 0:
            raise ValueError(f"--retrain-after must be ≥ 0 (a fraction, e.g. 0.1), got {self.retrain_after}")
        if not 0 <= self.cold_items < 1:
            raise ValueError(f"--cold-items must be in [0, 1), got {self.cold_items}")
        for name in ("min_meta_match", "min_coverage"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{_flag(name)} must be in [0, 1], got {getattr(self, name)}")

    @property
    def paths(self) -> DatasetPaths:
        return dataset_paths(self.dataset, self.home)

    def ica_run(self) -> tuple[Path, str]:
        """`--ica-from` as (run folder, name of the mm feature it writes here): RUN, DATASET/RUN or a folder."""
        given = str(self.ica_from)
        folder = Path(given).expanduser()
        if folder.is_dir():
            run_dir = folder.resolve()
            origin = run_dir.parent.parent.name  # <home>/<dataset>/runs/<run>
        elif given.count("/") == 1:
            origin, run = given.split("/")
            run_dir = dataset_paths(origin, self.home).run(run)
        else:
            run_dir, origin = self.paths.run(given), self.dataset
        if not (run_dir / "checkpoint.pt").is_file():
            raise FileNotFoundError(
                f"--ica-from {given}: no pretraining run at {run_dir} (no checkpoint.pt); list runs with "
                f"`anchorrec runs --dataset {origin}`, or pretrain one: anchorrec pretrain --dataset {origin}"
            )
        return run_dir, run_dir.name if origin == self.dataset else f"{run_dir.name}-from-{origin}"

    @property
    def with_images(self) -> bool:
        """MMRec sets carry no image URLs; `--image-encoder none` is text-only on purpose."""
        return self.release != "mmrec" and self.image_encoder != NO_IMAGES


def _flag(name: str) -> str:
    return name.replace("_", "-")


# The option groups each flow uses (the CLI shows only these) and what each flow does.
FLOW_GROUPS = {
    "ingest": ("common", "ingest"),
    "features": ("common", "features"),
    "pretrain": ("common", "features", "pretrain"),
    "train": ("common", "features", "pretrain", "train"),
    "publish": ("common", "features", "pretrain", "train", "publish"),
    "pipeline": ("common", "ingest", "features", "pretrain", "train"),
    "tune": ("common", "features", "pretrain", "train", "tune"),
    "update": ("common", "ingest", "features", "pretrain", "train", "publish", "update"),
}
FLOW_DOCS = {
    "ingest": "Download, parse, filter and split a dataset.",
    "features": "Fetch images and extract features of an ingested dataset.",
    "pretrain": "Extract features and pretrain the inter-content encoder (ICA).",
    "train": "Extract features, pretrain and train the recommender (finished stages are cached).",
    "publish": "Train (cached when done) and publish the run's item vectors to a FAISS index.",
    "pipeline": "The whole pipeline: ingest → features → pretrain → train → publish.",
    "tune": "Search a model's hyperparameters on validation Recall@20 (Optuna); the study resumes where it stopped.",
    "update": "Merge a newer dump or delta files with stable ids, encode only new and changed items and publish a "
    "new index version through the run's cold path; a full retrain past --retrain-after (docs/operations.md).",
}
