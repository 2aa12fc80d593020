"""The inter-content encoder, its pretraining run and the content metrics, on tiny generated data."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch
from ica_fixtures import killed_then_resumed, without_timing

from models.evaluation.content_metrics import content_topn, cross_modal_retrieval
from models.pretraining.ica import ICAConfig, InterContentEncoder, info_nce
from models.pretraining.pretrain import pretrain_ica, write_concat_feature
from store import schemas
from store.layout import dataset_paths
from store.tables import read_json, write_table
from store.vectors import read_features, write_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(d_model=32, n_layers=1, n_heads=2, ff_mult=2, dropout=0.0, batch_size=64)


def make_dataset(home, name="toy", n=120, d_img=12, d_txt=8, seed=0, no_image=(), no_text=(), interactions=False):
    """items.parquet + image/text feature tables where text = fixed linear map of image + noise."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, d_img)).astype(np.float32)
    W = rng.normal(size=(d_img, d_txt)).astype(np.float32)
    txt = (img @ W + 0.1 * rng.normal(size=(n, d_txt))).astype(np.float32)
    paths = dataset_paths(name, home)
    asins = [f"A{i:05d}" for i in range(n)]
    items = pa.table(
        {
            "item_id": pa.array(np.arange(n, dtype=np.int32)),
            "asin": asins,
            "title": [f"item {i}" for i in range(n)],
            "description": [None] * n,
            "brand": [None] * n,
            "categories": [[] for _ in range(n)],
            "image_url": [None] * n,
            "text": [f"item {i}" for i in range(n)],
        }
    )
    write_table(items, paths.items, schemas.ITEMS)
    for feat, x, missing, modality in (("img", img, no_image, "image"), ("txt", txt, no_text, "text")):
        valid = np.ones(n, dtype=bool)
        valid[list(missing)] = False
        write_features(
            paths.feature(feat),
            asins[::-1],
            np.arange(n)[::-1],
            x[::-1],
            valid=valid[::-1],  # reversed: align by asin
            encoder="toy",
            model="toy",
            weights="",
            modality=modality,
            input_hash=f"h-{feat}-{seed}",
        )
    if interactions:
        write_interactions(paths, n, rng)
    return paths, img, txt


def write_interactions(paths, n_items, rng, n_users=30):
    rows = []
    for u in range(n_users):
        for j, i in enumerate(rng.choice(n_items, 6, replace=False)):
            rows.append((u, int(i), 1.0, j, "train" if j < 4 else ("valid" if j == 4 else "test")))
    u, i, r, t, s = zip(*rows)
    write_table(
        pa.table(
            {
                "user_id": pa.array(u, pa.int32()),
                "item_id": pa.array(i, pa.int32()),
                "rating": r,
                "timestamp": pa.array(t, pa.int64()),
                "split": s,
            }
        ),
        paths.interactions,
        schemas.INTERACTIONS,
    )
    write_table(
        pa.table({"user_id": pa.array(range(n_users), pa.int32()), "reviewer_id": [f"U{k}" for k in range(n_users)]}),
        paths.users,
        schemas.USERS,
    )


def tiny_model(d_img=6, d_txt=5, **kw) -> InterContentEncoder:
    torch.manual_seed(0)
    return InterContentEncoder(d_img, d_txt, ICAConfig(**{**TINY, **kw})).eval()


# ----- the encoder ------------------------------------------------------------------------------
def test_shapes_and_masked_tokens_are_hidden():
    model = tiny_model()
    B, Ti, Tt = 5, 3, 2
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(B, Ti, 6, generator=g), torch.randn(B, Tt, 5, generator=g)
    vi, vt = torch.ones(B, Ti, dtype=torch.bool), torch.ones(B, Tt, dtype=torch.bool)
    vt[4] = False  # item 4 has no text
    inputs = {"image": (img, vi), "text": (txt, vt)}
    fuse, tokens = model.encode(inputs)
    assert fuse.shape == (B, 32) and tokens["image"].shape == (B, Ti, 32) and tokens["text"].shape == (B, Tt, 32)
    mm = model.fuse(inputs)
    assert mm.shape == (B, 32) and torch.allclose(mm.norm(dim=1), torch.ones(B), atol=1e-5)
    assert model.embed_modality("text", txt, vt).shape == (B, 32)

    hidden = model.sample_hidden({"image": vi, "text": vt}, generator=torch.Generator().manual_seed(0))
    per_item = torch.stack([hidden["image"].any(1), hidden["text"].any(1)], 1)
    assert per_item.sum(1).tolist() == [1] * B  # exactly one modality per item
    assert hidden["text"][4].sum() == 0  # no text: only image can be hidden
    counts = hidden["image"].sum(1) + hidden["text"].sum(1)
    expected = [max(1, round(0.3 * (Ti if h else Tt))) for h in per_item[:, 0].tolist()]
    assert counts.tolist() == expected

    fuse0, tok0 = model.encode(inputs, hidden)
    img2 = torch.where(hidden["image"].unsqueeze(-1), torch.randn(B, Ti, 6) * 100, img)
    txt2 = torch.where(hidden["text"].unsqueeze(-1), torch.randn(B, Tt, 5) * 100, txt)
    fuse1, tok1 = model.encode({"image": (img2, vi), "text": (txt2, vt)}, hidden)
    assert torch.allclose(fuse0, fuse1, atol=1e-5)  # hidden values never reach the network
    assert torch.allclose(tok0["image"], tok1["image"], atol=1e-5)
    # …while a visible value does: the check above can fail
    img3 = torch.where(hidden["image"].unsqueeze(-1), img, img + 1.0)
    fuse3, _ = model.encode({"image": (img3, vi), "text": (txt, vt)}, hidden)
    assert not torch.allclose(fuse0, fuse3, atol=1e-3)
    # padded (missing) tokens are ignored too
    txt4 = txt.clone()
    txt4[4] = 1e3
    assert torch.allclose(model.fuse({"image": (img, vi), "text": (txt4, vt)}), mm, atol=1e-5)


def test_single_token_single_modality_item_is_never_masked():
    model = tiny_model()
    vi = torch.tensor([[True], [False], [True]])
    vt = torch.tensor([[False], [True], [True]])
    hidden = model.sample_hidden({"image": vi, "text": vt})
    assert hidden["image"][:2].sum() == 0 and hidden["text"][:2].sum() == 0
    assert int(hidden["image"][2].sum() + hidden["text"][2].sum()) == 1


def direct_info_nce(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    n = len(a)
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = [scale * float(np.dot(x[i], y[j])) for j in range(n)]
            m = max(logits)
            total += -(logits[i] - (m + math.log(sum(math.exp(v - m) for v in logits))))
    return total / (2 * n)


def test_info_nce_equals_direct_computation():
    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(7, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(7, 4, generator=g), dim=1)
    got = float(info_nce(a, b, torch.tensor(5.0)))
    assert got == pytest.approx(direct_info_nce(a.numpy(), b.numpy(), 5.0), rel=1e-5)

    # inside the model: only items with both modalities, the model's own (learned) temperature
    model = tiny_model(mmm_weight=0.0, fusion_weight=0.0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.2))
    B = 6
    img, txt = torch.randn(B, 1, 6, generator=g), torch.randn(B, 1, 5, generator=g)
    vi, vt = torch.ones(B, 1, dtype=torch.bool), torch.ones(B, 1, dtype=torch.bool)
    vi[1] = False
    vt[4] = False
    out = model(img, vi, txt, vt)
    zi = model.embed_modality("image", img, vi).detach().numpy()
    zt = model.embed_modality("text", txt, vt).detach().numpy()
    keep = [0, 2, 3, 5]
    assert int(out["n_pairs"]) == 4
    assert float(out["contrastive"]) == pytest.approx(direct_info_nce(zi[keep], zt[keep], 5.0), rel=1e-4)
    assert out["loss"].item() == pytest.approx(float(out["contrastive"]), rel=1e-6)


def test_missing_modality_items_train_on_what_they_have():
    model = tiny_model()
    model.train()
    B = 8
    g = torch.Generator().manual_seed(5)
    img = torch.randn(B, 1, 6, generator=g, requires_grad=True)
    txt = torch.randn(B, 1, 5, generator=g, requires_grad=True)
    vi, vt = torch.ones(B, 1, dtype=torch.bool), torch.ones(B, 1, dtype=torch.bool)
    vi[0] = False  # text only
    vt[1] = False  # image only
    vi[2] = vt[2] = False  # nothing
    out = model(img, vi, txt, vt)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )
    assert float(img.grad[0].abs().sum()) == 0.0 and float(txt.grad[1].abs().sum()) == 0.0  # absent: no influence
    assert float(img.grad[2].abs().sum()) == 0.0 and float(txt.grad[2].abs().sum()) == 0.0
    assert float(txt.grad[0].abs().sum()) > 0 and float(img.grad[1].abs().sum()) > 0  # present: contributes
    assert int(out["n_pairs"]) == 5


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="mask_ratio"):
        ICAConfig(mask_ratio=0.0)
    with pytest.raises(ValueError, match="mmm_loss"):
        ICAConfig(mmm_loss="l1")
    with pytest.raises(ValueError, match="n_heads"):
        ICAConfig(d_model=30, n_heads=4)


# ----- content metrics --------------------------------------------------------------------------
def test_cross_modal_retrieval_hand_cases():
    eye = np.eye(4, dtype=np.float32)
    r = cross_modal_retrieval(eye, eye, ks=(1, 2))
    assert r["mean_recall@1"] == 1.0 and r["chance@1"] == 0.25
    swapped = eye[[1, 0, 2, 3]]  # items 0 and 1 exchanged their texts
    r = cross_modal_retrieval(eye, swapped, ks=(1,))
    assert r["i2t_recall@1"] == 0.5 and r["t2i_recall@1"] == 0.5
    const = np.ones((5, 3), dtype=np.float32)  # all tied: expected recall = chance, not 1
    r = cross_modal_retrieval(const, const, ks=(1, 2))
    assert r["mean_recall@1"] == pytest.approx(0.2) and r["mean_recall@2"] == pytest.approx(0.4)
    big = np.random.default_rng(0).normal(size=(50, 8))
    assert cross_modal_retrieval(big, big, ks=(1,), block=7)["mean_recall@1"] == 1.0  # blocked == whole


def test_content_topn_hand_computed():
    # unit vectors at angles 0°, 10°, 90°, 100°, 180°: items 0,1 are close, 2,3 are close
    ang = np.deg2rad([0, 10, 90, 100, 180])
    V = np.stack([np.cos(ang), np.sin(ang)], 1) * np.array([[3.0], [1.0], [2.0], [1.0], [5.0]])  # norms must not matter
    train = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=np.float32))
    valid = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=np.float32))
    # user 0 trained on item 0 (0°): item1 cos10°=.98 > item2 0 > item3 −.17 > item4 −1 → top-1 item1 = hit
    # user 1 trained on item 2 (90°): item3 .98 > item1 .17 > item0 = item4 = 0 → top-1 item3, wants item4: miss
    # user 2 trained on item 4 (180°): item3 .17 > item2 0 > item1 −.98 > item0 −1 → top-1 item3 = hit
    r = content_topn(V, train, valid, k=1)
    assert r["recall@1"] == pytest.approx(2 / 3)
    r = content_topn(V, train, valid, k=20)  # k beyond the catalog: everything held out is found
    assert r["recall@20"] == pytest.approx(1.0)


# ----- the pretraining run ----------------------------------------------------------------------
def test_pretrain_writes_feature_table_and_handles_missing(home):
    paths, img, txt = make_dataset(home, n=80, no_image=(3, 4), no_text=(4, 5), interactions=True)
    cfg = ICAConfig(**TINY, epochs=2, holdout=0.2, seed=1)
    out = pretrain_ica(paths, "img", "txt", cfg, run_id="t1", progress=False)
    ft = read_features(paths.feature("ica-t1"))
    assert ft.metadata["modality"] == "mm" and ft.metadata["encoder"] == "ica" and ft.dim == 32
    assert ft.metadata["weights"].endswith("checkpoint.pt")
    order = np.argsort(ft.item_ids)
    valid = ft.valid[order]
    assert valid.sum() == 79 and not valid[4] and ft.reasons[int(np.flatnonzero(ft.item_ids == 4)[0])]
    vec = ft.vectors[order][valid]
    assert np.isfinite(vec).all() and np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    hist = read_json(paths.metrics("ica-t1"))["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert all("retrieval/mean_recall@10" in h and "content/recall@20" in h for h in hist)
    assert "raw_concat" in out["baselines"] and out["n_holdout_items"] == round(0.2 * 76)

    cpath = write_concat_feature(paths, "img", "txt")
    cf = read_features(cpath)
    o = np.argsort(cf.item_ids)
    cv = cf.vectors[o]
    assert cf.dim == 20 and cf.metadata["modality"] == "mm" and not cf.valid[o][4]
    i = 10
    expected = np.concatenate([img[i] / np.linalg.norm(img[i]), txt[i] / np.linalg.norm(txt[i])]) / math.sqrt(2)
    assert np.allclose(cv[i], expected, atol=1e-5)
    assert np.allclose(cv[3][:12], 0) and np.allclose(np.linalg.norm(cv[3]), 1.0)  # no image: text block only


def test_resume_after_interruption_equals_uninterrupted(home, monkeypatch):
    paths, _, _ = make_dataset(home, n=90)
    cfg = ICAConfig(**{**TINY, "dropout": 0.1}, epochs=4, holdout=0.2, patience=0)
    full = pretrain_ica(paths, "img", "txt", cfg, run_id="full", progress=False)

    def run():
        return pretrain_ica(paths, "img", "txt", cfg, run_id="cut", progress=False)

    resumed = killed_then_resumed(monkeypatch, run, kill_at=3)
    assert without_timing(resumed["history"]) == without_timing(full["history"])
    a = torch.load(full["checkpoint"], weights_only=False)["model"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(
        read_features(paths.feature("ica-full")).vectors, read_features(paths.feature("ica-cut")).vectors
    )
    with pytest.raises(ValueError, match="ICAConfig.seed"):
        pretrain_ica(paths, "img", "txt", ICAConfig(**{**cfg.to_dict(), "seed": 9}), run_id="cut", progress=False)


def test_pretraining_recovers_planted_correspondence(home):
    paths, _, _ = make_dataset(home, n=400, d_img=32, d_txt=24, seed=2)
    cfg = ICAConfig(**{**TINY, "d_model": 64, "batch_size": 100}, epochs=25, lr=3e-3, holdout=0.25, patience=0)
    out = pretrain_ica(paths, "img", "txt", cfg, run_id="plant", progress=False)
    chance = out["baselines"]["chance"]["retrieval/mean_recall@1"]
    before = out["untrained"]["retrieval/mean_recall@1"]
    after = out["final"]["retrieval/mean_recall@1"]
    assert chance == pytest.approx(0.01)
    assert after > 0.6, out["final"]
    assert after > 20 * chance and after > before + 0.4, (before, after)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_mmm_term_reconstructs_original_features_of_hidden_tokens(kind):
    model = tiny_model(contrastive_weight=0.0, fusion_weight=0.0, mmm_loss=kind)
    g = torch.Generator().manual_seed(7)
    B = 4
    img, txt = torch.randn(B, 2, 6, generator=g), torch.randn(B, 1, 5, generator=g)
    vi, vt = torch.ones(B, 2, dtype=torch.bool), torch.ones(B, 1, dtype=torch.bool)
    hidden = {
        "image": torch.tensor([[True, False], [False, False], [False, True], [False, False]]),
        "text": torch.tensor([[False], [True], [False], [False]]),
    }
    out = model(img, vi, txt, vt, hidden=hidden)
    _, tok = model.encode({"image": (img, vi), "text": (txt, vt)}, hidden)
    errs = []
    for m, x in (("image", img), ("text", txt)):
        for b, t in hidden[m].nonzero().tolist():
            pred = model.recon[m](tok[m][b, t]).detach()
            target = (x[b, t] - getattr(model, f"{m}_mean")) / getattr(model, f"{m}_std")
            if kind == "cosine":
                errs.append(1 - float(pred @ target / (pred.norm() * target.norm())))
            else:
                errs.append(float(((pred - target) ** 2).mean()))
    assert int(out["n_masked"]) == 3
    assert float(out["mmm"]) == pytest.approx(sum(errs) / 3, rel=1e-5)


def test_pretrain_refuses_a_modality_without_vectors(home):
    """ICA on all-null image vectors 'succeeds' with losses of exactly 0: refuse it instead."""
    paths, _, _ = make_dataset(home, n=40, no_image=range(40))
    with pytest.raises(ValueError, match=r"img\.parquet: no item has a vector.*--images DIR"):
        pretrain_ica(paths, "img", "txt", ICAConfig(**TINY, epochs=1), run_id="null", progress=False)
    assert not paths.run("ica-null").exists()
    paths, _, _ = make_dataset(home, name="few", n=40, no_image=range(3, 40))
    with pytest.raises(ValueError, match="only 3 item\\(s\\) have both"):
        pretrain_ica(paths, "img", "txt", ICAConfig(**TINY, epochs=1), run_id="few", progress=False)


def test_cold_items_are_encoded_but_never_trained_on(home):
    """Items held out as cold (ingest --cold-items): changing their content moves no encoder weight,
    while their mm vectors still follow their content (issue 33: training never sees a cold item)."""
    cfg = ICAConfig(**TINY, epochs=2, holdout=0.2, patience=0)
    cold = np.arange(10)
    runs = {}
    for name, seed in (("clean", 0), ("noisy", 0)):
        paths, img, txt = make_dataset(home, name=name, n=80, seed=seed)
        write_table(
            pa.table(
                {
                    "item_id": pa.array(cold.astype(np.int32)),
                    "asin": [f"A{i:05d}" for i in cold],
                    "split": ["valid"] * 5 + ["test"] * 5,
                }
            ),
            paths.cold_items,
            schemas.COLD_ITEMS,
        )
        if name == "noisy":  # the cold items' rows replaced by noise
            noise = np.random.default_rng(5)
            for feat, x, modality in (("img", img, "image"), ("txt", txt, "text")):
                x = x.copy()
                x[cold] = noise.normal(size=(len(cold), x.shape[1])).astype(np.float32) * 3
                asins = [f"A{i:05d}" for i in range(80)]
                write_features(
                    paths.feature(feat), asins, np.arange(80), x, encoder="toy", model="toy", weights="",
                    modality=modality, input_hash=f"noisy-{feat}",
                )  # fmt: skip
        runs[name] = (paths, pretrain_ica(paths, "img", "txt", cfg, run_id="r", progress=False))
    a = torch.load(runs["clean"][1]["checkpoint"], weights_only=False)["model"]
    b = torch.load(runs["noisy"][1]["checkpoint"], weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    va = read_features(runs["clean"][0].feature("ica-r"))
    vb = read_features(runs["noisy"][0].feature("ica-r"))
    oa, ob = np.argsort(va.item_ids), np.argsort(vb.item_ids)
    warm = np.arange(10, 80)
    assert np.allclose(va.vectors[oa][warm], vb.vectors[ob][warm], atol=1e-6)
    assert not np.allclose(va.vectors[oa][cold], vb.vectors[ob][cold], atol=1e-3)
