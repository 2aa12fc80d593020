"""Training speed: our FREEDOM and LATTICE vs the same models computed MMRec's way, in one process.

Ours (models/freedom.py, models/lattice.py) compute only what a batch needs; the references
(benchmarks/common/reference_baselines.py) compute what MMRec computes: the full forward over every user
and item per batch, FREEDOM's pruned graph as a concatenated COO matrix, LATTICE's dense N × N item
graph (rebuilt densely in each epoch's first batch, multiplied densely in every batch). Both hold
the same parameters (one state_dict) and give the same loss (checked on the first batch; the
equality of loss and gradients is tests/test_reference_baselines.py).

Per model and thread count: the trainer's batches (BPRSampler epoch 0, batch 2048), each step a
trainer's (loss, zero_grad, backward, Adam step — ours with our trainer's fused Adam, the
reference with MMRec's plain torch.optim.Adam), ours and the reference alternating batch by batch
(who goes first alternates), so a loaded machine slows both alike. Per epoch, besides the batches:
FREEDOM's edge pruning (both draw the same edges: same seed, same probabilities), timed 3 times
each; LATTICE's graph rebuild, which both do in the epoch's first batch, timed as that batch.
s/epoch = median batch × batches per epoch (LATTICE: the first batch replaced by the rebuild
batch) + the per-epoch work.

MMRec normalizes LATTICE's learned graph with two dense diag(d)·A·diag(d) products (N³ each, four
more in the backward pass). At Sports' N = 18357 those take tens of minutes per epoch here, so the
reference's rebuild runs with the same normalization as row/column scaling (N², the same
numbers) and the extra cost of MMRec's products is measured on n × n matrices and extrapolated
by (N/n)³: reported apart, never mixed into the measured ratio.

    ANCHORREC_BENCH_WORK=/tmp/anchorrec_work .venv/bin/python benchmarks/speed/bench_baseline_speed.py --threads 1 2
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.reference_baselines import ReferenceFREEDOM, ReferenceLATTICE, dense_normalized  # noqa: E402
from benchmarks.common.sports_data import sports_graph  # noqa: E402
from benchmarks.parity.tiny import FREEDOM_NAMES  # noqa: E402
from models.freedom import FREEDOM, FREEDOMConfig  # noqa: E402
from models.lattice import LATTICE, LATTICEConfig  # noqa: E402
from models.training.trainer import BPRSampler  # noqa: E402
from store.tables import atomic_path  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "baseline_speed.md"
WORK_DIR = Path(os.environ.get("ANCHORREC_BENCH_WORK", "/tmp/anchorrec_work"))
BATCH = 2048
MODELS = {"freedom": (FREEDOM, ReferenceFREEDOM, FREEDOMConfig), "lattice": (LATTICE, ReferenceLATTICE, LATTICEConfig)}


def step(model, opt, b: torch.Tensor) -> tuple[float, float, dict[str, float]]:
    """One trainer step: (s for loss + backward, s for the whole step, loss terms)."""
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    terms = model.batch_loss(b[:, 0], b[:, 1], b[:, 2])
    terms["loss"].backward()
    t1 = time.perf_counter()
    opt.step()
    vals = {k: float(v.detach()) for k, v in terms.items()}
    return t1 - t0, time.perf_counter() - t0, vals


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def rel_diff(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in b)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_model(name: str, data, graph, triples: torch.Tensor, n_batches: int) -> dict:
    """Interleaved timing of one model: ours vs its reference, same weights and batches."""
    ours_cls, ref_cls, cfg_cls = MODELS[name]
    cfg = cfg_cls()
    torch.manual_seed(0)
    ours = ours_cls(graph, cfg)
    ref = ref_cls(graph, cfg, laplacian="scale") if name == "lattice" else ref_cls(graph, cfg)
    ref.load_state_dict(ours.state_dict())
    opts = {
        "ours": torch.optim.Adam(ours.parameters(), lr=1e-3, fused=True),
        "ref": torch.optim.Adam(ref.parameters(), lr=1e-3),
    }
    models = {"ours": ours, "ref": ref}
    extra: dict[str, list[float]] = {"ours": [], "ref": []}
    if name == "freedom":  # the per-epoch pruning, 3 draws each; the last seeds both to the same edges
        for r in range(3):
            for who in ("ours", "ref") if r % 2 == 0 else ("ref", "ours"):
                torch.manual_seed(100 + r)
                extra[who].append(timed(models[who].resample_edges))
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    model_times: dict[str, list[float]] = {"ours": [], "ref": []}
    first: dict[str, dict[str, float]] = {}
    for k in range(n_batches + 1):  # batch 0: warm-up (FREEDOM) / the rebuild batch (LATTICE)
        b = triples[k * BATCH : (k + 1) * BATCH]
        for who in ("ours", "ref") if k % 2 == 0 else ("ref", "ours"):
            t_model, t_step, vals = step(models[who], opts[who], b)
            if k == 0:
                first[who] = vals
                if name == "lattice":
                    extra[who].append(t_step)
            else:
                times[who].append(t_step)
                model_times[who].append(t_model)
        if k:
            print(f"  {name} batch {k}: ours {times['ours'][-1]:.3f}s ref {times['ref'][-1]:.3f}s", flush=True)
        else:
            print(
                f"  {name} first batch: loss ours {first['ours']['loss']:.6f} ref {first['ref']['loss']:.6f}",
                flush=True,
            )
    per_epoch = math.ceil(len(triples) / BATCH)
    med = {w: statistics.median(times[w]) for w in times}
    regular = per_epoch - 1 if name == "lattice" else per_epoch  # LATTICE: the first batch is the rebuild
    epoch = {w: med[w] * regular + statistics.median(extra[w]) for w in med}
    per_batch = [r / o for r, o in zip(times["ref"], times["ours"])]
    return {
        "model": name,
        "threads": torch.get_num_threads(),
        "med": med,
        "ratio": med["ref"] / med["ours"],
        "quartiles": quartiles(per_batch),
        "model_ratio": statistics.median(model_times["ref"]) / statistics.median(model_times["ours"]),
        "extra": {w: statistics.median(v) for w, v in extra.items()},
        "epoch": epoch,
        "epoch_ratio": epoch["ref"] / epoch["ours"],
        "first_diff": rel_diff(first["ours"], first["ref"]),
        "per_epoch": per_epoch,
        "n": n_batches,
    }


def diagflat_extra(n: int, n_items: int) -> tuple[float, float, float]:
    """MMRec's diag(d)·A·diag(d) minus row/column scaling, forward + backward, on an n × n matrix:
    (s at n, s at n_items extrapolated by (n_items / n)³, s of the scaling at n)."""
    a = torch.rand(n, n)
    out = {}
    for mode in ("scale", "diagflat", "scale", "diagflat"):  # second pair timed: the first warms up
        x = a.clone().requires_grad_(True)
        t0 = time.perf_counter()
        dense_normalized(x, mode).sum().backward()
        out[mode] = time.perf_counter() - t0
    extra = out["diagflat"] - out["scale"]
    return extra, extra * (n_items / n) ** 3, out["scale"]


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def report(rows: list[dict], diag: dict[int, list[tuple]], data, cmd: str, loads: list[str]) -> list[str]:
    lines = [
        "# Training speed: FREEDOM and LATTICE, ours vs MMRec's computation structure",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}",
        f"- machine: {os.cpu_count()}-core x86_64 CPU, 24 GB, no GPU; device cpu; load average (1/5/15 min) "
        + "; ".join(loads),
        f"- command: `{cmd}`",
        f"- data: MMRec Sports ({data.n_users} users, {data.n_items} items, {len(data.train)} train pairs), MiniLM keyword "
        "vectors as t and v; each model at its config defaults (models/freedom.py, models/lattice.py); batch 2048",
        "- ours: models/<model>.py + our trainer's fused Adam; reference: benchmarks/common/reference_baselines.py + MMRec's "
        "plain torch.optim.Adam; same initial weights, same batches, alternating batch by batch",
        "",
        "| model | threads | s/batch ours | s/batch reference | ratio | per-batch ratio quartiles | ratio without the "
        "optimizer step | per-epoch work ours / reference (s) | s/epoch ours | s/epoch reference | s/epoch ratio | "
        "first-batch loss rel. diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        q1, q3 = r["quartiles"]
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['med']['ours']:.3f} | {r['med']['ref']:.3f} | {r['ratio']:.2f}× | "
            f"{q1:.2f}–{q3:.2f} | {r['model_ratio']:.2f}× | {r['extra']['ours']:.2f} / {r['extra']['ref']:.2f} | "
            f"{r['epoch']['ours']:.1f} | {r['epoch']['ref']:.1f} | {r['epoch_ratio']:.2f}× | {r['first_diff']:.1e} |"
        )
    n0 = rows[0]
    lines += [
        "",
        f"s/batch: median of {n0['n']} interleaved batches per implementation; s/epoch: that median × "
        f"{n0['per_epoch']} batches per epoch (LATTICE: {n0['per_epoch'] - 1} plus the rebuild batch) + the per-epoch "
        "work (FREEDOM: edge pruning, median of 3; LATTICE: the epoch's first batch, which rebuilds the item graph, "
        "1 sample).",
        "",
        "MMRec's diag(d)·A·diag(d) normalization of LATTICE's learned graph (not in the reference's measured rebuild, "
        "which scales rows and columns: same numbers), forward + backward, measured on n × n and extrapolated to "
        f"N = {data.n_items} by (N/n)³:",
        "",
        "| threads | n | extra s at n | extra s per epoch at N (extrapolated) | LATTICE reference s/epoch with it | ratio with it |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["model"] != "lattice":
            continue
        for n, (extra_n, extra_full, _) in diag.get(r["threads"], []):
            with_it = r["epoch"]["ref"] + extra_full
            lines.append(
                f"| {r['threads']} | {n} | {extra_n:.2f} | {extra_full:.0f} | {with_it:.0f} | {with_it / r['epoch']['ours']:.1f}× |"
            )
    lines.append("")
    return lines


# --- cross-check: the re-creation against MMRec's own classes (--mmrec SRC) --------------------

CHECK_HEADING = "## Cross-check: the re-creation against MMRec's own classes"
# our parameter name → MMRec's attribute: the parity tests' map, plus LATTICE's modality weights
MMREC_NAMES = {**FREEDOM_NAMES, "modal_weight": "modal_weight"}


class MMRecDataset:
    """What MMRec's model constructors read from their dataloader argument."""

    def __init__(self, data) -> None:
        self.dataset, self.data = self, data

    def get_user_num(self) -> int:
        return self.data.n_users

    def get_item_num(self) -> int:
        return self.data.n_items

    def inter_matrix(self, form: str = "coo") -> sp.coo_matrix:
        return self.data.train_csr.tocoo().astype(np.float32)  # row-major: the edge order of ours


def mmrec_class(src: Path, model: str) -> type:
    """MMRec's model class, loaded from its file under another name (its `models` package would
    shadow ours); its `common` and `utils` packages come from `src`. CPU shims as in
    benchmarks/parity/mmrec_parity.py: SciPy's dropped dok `_update`, `.cuda()` as a no-op."""
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, d: [self.__setitem__(k, v) for k, v in d.items()]
    torch.Tensor.cuda = lambda self, *a, **k: self
    spec = importlib.util.spec_from_file_location(f"mmrec_{model}", src / "models" / f"{model}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, model.upper())


def mmrec_config(work: Path, name: str, **model_args) -> dict:
    return {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "NEG_PREFIX": "neg__",
        "train_batch_size": BATCH, "device": torch.device("cpu"), "end2end": False, "is_multimodal_model": True,
        "data_path": str(work) + os.sep, "dataset": name,
        "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy",
        "embedding_size": 64, "feat_embed_dim": 64, "knn_k": 10, "lambda_coeff": 0.9, "cf_model": "lightgcn",
        "reg_weight": 1e-4, **model_args,
    }  # fmt: skip


def mmrec_pair(name: str, src: Path, work: Path, data, graph):
    """(our re-creation, MMRec's class) with the same weights and, for LATTICE, the same item graph."""
    d = work / f"mmrec-{name}"
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "text_feat.npy", graph.features["t"].numpy())
    np.save(d / "image_feat.npy", graph.features["v"].numpy())
    torch.manual_seed(0)
    if name == "freedom":
        ref = ReferenceFREEDOM(graph, FREEDOMConfig())
        cfg = mmrec_config(
            work, d.name, n_mm_layers=1, n_ui_layers=2, mm_image_weight=0.1, dropout=0.8, degree_ratio=1.0
        )
    else:
        ref = ReferenceLATTICE(graph, LATTICEConfig(), laplacian="scale")
        for m, file in (("v", "image_adj_10.pt"), ("t", "text_adj_10.pt")):  # MMRec loads its fixed graphs from here
            torch.save(ref.original[m], d / file)
        cfg = mmrec_config(work, d.name, weight_size=[64, 64], n_layers=1, mess_dropout=[0.1, 0.1])
    theirs = mmrec_class(src, name)(cfg, MMRecDataset(data))
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for ours_name, p in ref.named_parameters():
            params[MMREC_NAMES[ours_name]].copy_(p)
    if name == "freedom":  # the same pruned graph: same seed, same probabilities, same edge order
        torch.manual_seed(7)
        ref.resample_edges()
        torch.manual_seed(7)
        theirs.pre_epoch_processing()
    else:  # the epoch's item graph given to both (MMRec's own rebuild normalizes with N³ products)
        with torch.no_grad():
            adj = ref.dense_item_graph({m: ref.trs[m](ref.feat[m]) for m in ref.modalities})
        ref.dense_adj, ref.rebuild_next = adj, False
        theirs.item_adj, theirs.build_item_graph = adj, False
    return ref, theirs


def mmrec_check(src: Path, data, graph, triples: torch.Tensor, n: int) -> list[str]:
    """Per-batch seconds of the re-creation and of MMRec's class, interleaved, both with plain Adam."""
    import tempfile

    lines = [
        CHECK_HEADING,
        "",
        f"MMRec's FREEDOM and LATTICE classes (`{src}`, loaded by file) against benchmarks/common/reference_baselines.py, "
        "same weights, same batches, alternating, both with plain torch.optim.Adam, "
        f"{torch.get_num_threads()} thread(s); LATTICE's regular batches (both given the same item graph). "
        f"Load average at start {load()}.",
        "",
        "| model | s/batch re-creation | s/batch MMRec's class | MMRec / re-creation | per-batch quartiles | first-batch loss rel. diff |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("freedom", "lattice"):
        with tempfile.TemporaryDirectory(dir=WORK_DIR) as tmp:
            ref, theirs = mmrec_pair(name, src, Path(tmp), data, graph)
        opts = {
            "ref": torch.optim.Adam(ref.parameters(), lr=1e-3),
            "mmrec": torch.optim.Adam(theirs.parameters(), lr=1e-3),
        }
        times: dict[str, list[float]] = {"ref": [], "mmrec": []}
        first = {}
        for k in range(n + 1):
            b = triples[k * BATCH : (k + 1) * BATCH]
            for who in ("ref", "mmrec") if k % 2 == 0 else ("mmrec", "ref"):
                t0 = time.perf_counter()
                opts[who].zero_grad(set_to_none=True)
                if who == "ref":
                    loss = ref.batch_loss(b[:, 0], b[:, 1], b[:, 2])["loss"]
                else:
                    loss = theirs.calculate_loss(b.t())
                loss.backward()
                opts[who].step()
                value = float(loss.detach())
                if k:
                    times[who].append(time.perf_counter() - t0)
                else:
                    first[who] = value
            if k:
                print(
                    f"  check {name} batch {k}: re-creation {times['ref'][-1]:.3f}s MMRec {times['mmrec'][-1]:.3f}s",
                    flush=True,
                )
        med = {w: statistics.median(v) for w, v in times.items()}
        q1, q3 = quartiles([m / r for m, r in zip(times["mmrec"], times["ref"])])
        diff = abs(first["ref"] - first["mmrec"]) / abs(first["mmrec"])
        lines.append(
            f"| {name} | {med['ref']:.3f} | {med['mmrec']:.3f} | {med['mmrec'] / med['ref']:.2f}× | {q1:.2f}–{q3:.2f} | {diff:.1e} |"
        )
        del ref, theirs, opts
        gc.collect()
    lines.append("")
    return lines


def with_section(path: Path, lines: list[str]) -> str:
    """The results file with its cross-check section replaced by `lines` (appended when absent);
    the benchmark's tables and any other `## ` section are kept."""
    text = path.read_text() if path.exists() else ""
    head, tail = text, ""
    if CHECK_HEADING in text:
        head, rest = text.split(CHECK_HEADING, 1)
        tail = rest[rest.index("\n## ") :] if "\n## " in rest else ""
    head = head.rstrip("\n")
    return (head + "\n\n" if head else "") + "\n".join(lines).rstrip("\n") + "\n" + tail


def kept_sections(path: Path) -> str:
    """The `## ` sections of an earlier results file (cross-check, notes): a rerun keeps them."""
    text = path.read_text() if path.exists() else ""
    return text[text.index("\n## ") :] if "\n## " in text else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per implementation, after the first")
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run, one after another"
    )
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument(
        "--diagflat-n",
        type=int,
        nargs="*",
        default=[2048, 3072],
        help="sizes n of the diag-product measurement (none: skip)",
    )
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument(
        "--mmrec",
        type=Path,
        default=None,
        help="MMRec's src/ folder: instead of the benchmark, time the re-creation against MMRec's own "
        "classes (first of --threads) and write that section of --results",
    )
    args = ap.parse_args()

    data, graph = sports_graph(device="cpu")
    triples = torch.as_tensor(BPRSampler(data).epoch(0, 0))
    n = min(args.batches, math.ceil(len(triples) / BATCH) - 1)
    if args.mmrec is not None:
        if not (args.mmrec / "models" / "freedom.py").is_file():
            sys.exit(f"--mmrec {args.mmrec}: no models/freedom.py there; give MMRec's src/ folder")
        torch.set_num_threads(args.threads[0])
        lines = mmrec_check(args.mmrec.resolve(), data, graph, triples, n)
        lines.append(
            f"Command: `ANCHORREC_BENCH_WORK=/tmp/anchorrec_work .venv/bin/python benchmarks/speed/bench_baseline_speed.py {' '.join(sys.argv[1:])}`"
        )
        lines.append("")
        text = with_section(args.results, lines)
        with atomic_path(args.results) as tmp:
            tmp.write_text(text)
        print("\n".join(lines))
        return
    rows, diag, loads = [], {}, [f"start {load()}"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.models:
            print(f"{name}, {threads} thread(s), load {load()}", flush=True)
            rows.append(bench_model(name, data, graph, triples, n))
            print(f"  peak RSS so far {peak_gb():.1f} GB", flush=True)
            gc.collect()  # the reference LATTICE's dense N × N matrices go before the next run
        if "lattice" in args.models:
            diag[threads] = [(n, diagflat_extra(n, data.n_items)) for n in args.diagflat_n]
        loads.append(f"after {threads} thread(s) {load()}")
    cmd = "ANCHORREC_BENCH_WORK=/tmp/anchorrec_work .venv/bin/python " + " ".join(
        ["benchmarks/speed/bench_baseline_speed.py", *sys.argv[1:]]
    )
    lines = report(rows, diag, data, cmd, loads)
    lines.append(f"Peak resident memory of the process: {peak_gb():.1f} GB.")
    lines.append("")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).rstrip("\n") + "\n" + kept_sections(args.results)
    with atomic_path(args.results) as tmp:
        tmp.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
