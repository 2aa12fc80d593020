"""The inter-content encoder over token tables: masking, masked words, missing modality,
checkpoints, applying a pretrained encoder to another dataset, and a pretraining that learns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from ica_fixtures import killed_then_resumed, without_timing

from models.pretraining.apply import apply_encoder, load_encoder, write_applied_feature
from models.pretraining.ica import ICAConfig, InterContentEncoder, Tokens
from models.pretraining.inputs import EncoderMismatch, load_token_inputs
from models.pretraining.pretrain import item_asins, pretrain_ica
from store import schemas
from store.layout import dataset_paths
from store.tables import read_json, write_table
from store.tokens import token_columns, write_tokens
from store.vectors import read_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "ff_mult": 2, "dropout": 0.0, "batch_size": 64, "max_tokens": 8}
PAD, CLS, SEP = 0, 1, 2
COLOURS, TYPES, FILLER = range(10, 16), range(20, 25), range(30, 60)  # word ids of the toy tokenizer
TEXT_META = {
    "tokenizer": "toy-wordpiece",
    "vocab_size": 64,
    "mask_token_id": 3,
    "cls_id": CLS,
    "sep_id": SEP,
    "pad_id": PAD,
    "max_length": 8,
}


# ----- a synthetic catalog where image and text tokens share a latent ----------------------------
def synthetic(n: int, seed: int = 0, d_img: int = 12, d_txt: int = 10, T_img: int = 4):
    """Item = (colour, type, style). Image tokens show colour + type + style; the title is
    [CLS] colour type filler filler [SEP]; text states are contextual (each mixes its neighbours)."""
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(99)  # shared by every dataset: same 'extractor', same 'words'
    P, Q = world.normal(size=(len(COLOURS), d_img)), world.normal(size=(len(TYPES), d_img))
    S, pos = world.normal(size=(3, d_img)), world.normal(size=(T_img, d_img)) * 0.3
    E = world.normal(size=(64, d_txt))  # static word vectors the 'language model' starts from
    colour, kind, style = rng.integers(0, len(COLOURS), n), rng.integers(0, len(TYPES), n), rng.normal(size=(n, 3))
    img = (
        P[colour][:, None]
        + Q[kind][:, None]
        + (style @ S)[:, None]
        + pos[None]
        + 0.3 * rng.normal(size=(n, T_img, d_img))
    )
    filler = rng.integers(FILLER.start, FILLER.stop, size=(n, 2))
    ids = np.stack(
        [
            np.full(n, CLS),
            np.array(COLOURS)[colour],
            np.array(TYPES)[kind],
            filler[:, 0],
            filler[:, 1],
            np.full(n, SEP),
        ],
        1,
    ).astype(np.int32)
    static = E[ids]
    states = static + 0.5 * (np.roll(static, 1, 1) + np.roll(static, -1, 1)) + 0.05 * rng.normal(size=static.shape)
    return img.astype(np.float32), states.astype(np.float32), ids, colour


def write_token_dataset(home, name, n, seed=0, d_img=12, no_image=(), no_text=(), img_model="toy-img"):
    img, states, ids, colour = synthetic(n, seed, d_img=d_img)
    paths = dataset_paths(name, home)
    asins = [f"{name[:2].upper()}{i:05d}" for i in range(n)]
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
    tables = (
        ("img-tok", "image", img, None, no_image, {"grid": "2x2"}, img_model),
        ("txt-tok", "text", states, ids, no_text, TEXT_META, "toy-lm"),
    )
    for table, modality, x, tids, missing, meta, model in tables:
        counts = np.full(n, x.shape[1])
        counts[list(missing)] = 0
        reasons = [None if c else ("undecodable" if modality == "image" else "empty text") for c in counts]
        write_tokens(
            paths.token_feature(table),
            asins,
            np.arange(n),
            token_columns(x, counts, tids),
            reasons,
            dim=x.shape[2],
            max_tokens=x.shape[1],
            modality=modality,
            metadata={"encoder": "toy", "model": model, "weights": "", "input_hash": f"{name}-{table}"},
            token_meta=meta,
        )
    return paths, colour


def batch(n=6, seed=1):
    img, states, ids, _ = synthetic(n, seed)
    return (
        torch.as_tensor(img),
        torch.ones(n, 4, dtype=torch.bool),
        torch.as_tensor(states),
        torch.ones(n, 6, dtype=torch.bool),
        torch.as_tensor(ids),
    )


def model_for(ids: torch.Tensor, **kw) -> InterContentEncoder:
    torch.manual_seed(0)
    cfg = ICAConfig(**{**TINY, **kw})
    return InterContentEncoder(
        12, 10, cfg, vocab_ids=np.unique(ids.numpy()).tolist(), special_ids=(PAD, CLS, SEP)
    ).eval()


# ----- masking ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text_input", ["ids", "states"])
def test_hidden_tokens_never_reach_the_output(text_input):
    img, vi, txt, vt, ids = batch()
    model = model_for(ids, text_input=text_input)
    x = {"image": Tokens(img, vi), "text": Tokens(txt, vt, ids)}
    hidden = model.sample_hidden(model.maskable(x), torch.Generator().manual_seed(0), model.masking_active(x["text"]))
    assert hidden["image"].any() and hidden["text"].any()
    assert not hidden["text"][:, [0, 5]].any()  # [CLS]/[SEP] are never hidden
    fuse0, tok0 = model.encode(x, hidden)
    # rewrite every hidden token: features to garbage, ids to another word
    img2 = torch.where(hidden["image"][..., None], torch.randn_like(img) * 50, img)
    txt2 = torch.where(hidden["text"][..., None], torch.randn_like(txt) * 50, txt)
    ids2 = torch.where(hidden["text"], torch.full_like(ids, FILLER.start), ids)
    fuse1, tok1 = model.encode({"image": Tokens(img2, vi), "text": Tokens(txt2, vt, ids2)}, hidden)
    assert torch.allclose(fuse0, fuse1, atol=1e-5)
    assert torch.allclose(
        model.mlm_head(tok0["text"][hidden["text"]]), model.mlm_head(tok1["text"][hidden["text"]]), atol=1e-5
    )
    assert torch.allclose(
        model.recon["image"](tok0["image"][hidden["image"]]),
        model.recon["image"](tok1["image"][hidden["image"]]),
        atol=1e-5,
    )
    # …while changing a VISIBLE token does change the output (the check above can fail)
    visible_img = torch.where(hidden["image"][..., None], img, img + 1.0)
    fuse2, _ = model.encode({"image": Tokens(visible_img, vi), "text": Tokens(txt, vt, ids)}, hidden)
    assert not torch.allclose(fuse0, fuse2, atol=1e-3)


def test_mlm_loss_is_cross_entropy_over_hidden_positions_only():
    img, vi, txt, vt, ids = batch(n=8)
    model = model_for(ids, text_input="states", contrastive_weight=0.0, fusion_weight=0.0, mmm_weight=0.0)
    hidden = {"image": torch.zeros_like(vi), "text": torch.zeros_like(vt)}
    hidden["text"][0, 1] = hidden["text"][3, 2] = hidden["text"][5, 4] = True
    out = model(img, vi, txt, vt, hidden=hidden, text_ids=ids)
    _, tok = model.encode({"image": Tokens(img, vi), "text": Tokens(txt, vt, ids)}, hidden)
    logits = model.mlm_head(tok["text"][hidden["text"]]).detach()
    rows = model.word_rows(ids[hidden["text"]])
    assert rows.min() > 0  # every word is in the vocabulary ([UNK] is row 0)
    by_hand = float(np.mean([-float(F.log_softmax(lg, -1)[r]) for lg, r in zip(logits, rows)]))
    assert int(out["n_words"]) == 3 and int(out["n_masked"]) == 0
    assert float(out["mlm"]) == pytest.approx(by_hand, rel=1e-5) and out["loss"].item() == pytest.approx(
        by_hand, rel=1e-5
    )
    # the ids of visible positions are neither inputs (states) nor targets: the loss does not move
    other = ids.clone()
    other[~hidden["text"]] = FILLER.start + 1
    assert float(model(img, vi, txt, vt, hidden=hidden, text_ids=other)["mlm"]) == pytest.approx(
        float(out["mlm"]), rel=1e-6
    )
    # a hidden position's id is the target: changing it does
    other = ids.clone()
    other[0, 1] = FILLER.start + 1
    assert float(model(img, vi, txt, vt, hidden=hidden, text_ids=other)["mlm"]) != pytest.approx(
        float(out["mlm"]), rel=1e-3
    )


def test_missing_modality_gives_the_same_mm_whatever_its_tokens_hold():
    img, vi, txt, vt, ids = batch(n=5)
    model = model_for(ids)
    vi[1] = False  # item 1: no image
    vt[3] = False  # item 3: no text
    mm = model.fuse({"image": Tokens(img, vi), "text": Tokens(txt, vt, ids)})
    img2, txt2, ids2 = img.clone(), txt.clone(), ids.clone()
    img2[1] = 1e3
    txt2[3] = -1e3
    ids2[3] = FILLER.start
    mm2 = model.fuse({"image": Tokens(img2, vi), "text": Tokens(txt2, vt, ids2)})
    assert torch.allclose(mm, mm2, atol=1e-5)
    # and an absent modality is not a zero vector fed as data: zeros with a True mask differ
    vi_zero = vi.clone()
    vi_zero[1] = True
    img3 = img.clone()
    img3[1] = 0.0
    mm3 = model.fuse({"image": Tokens(img3, vi_zero), "text": Tokens(txt, vt, ids)})
    assert not torch.allclose(mm[1], mm3[1], atol=1e-3)


@pytest.mark.parametrize("off", ["contrastive", "mmm", "mlm", "fusion"])
def test_a_zero_weight_removes_its_term(off):
    img, vi, txt, vt, ids = batch(n=8)
    weights = {f"{k}_weight": (0.0 if k == off else 1.0) for k in ("contrastive", "mmm", "mlm", "fusion")}
    model = model_for(ids, **weights)
    torch.manual_seed(3)
    out = model(img, vi, txt, vt, text_ids=ids)
    assert float(out[off]) == 0.0
    on = [k for k in ("contrastive", "mmm", "mlm", "fusion") if k != off]
    assert all(float(out[k]) > 0 for k in on), {k: float(out[k]) for k in on}
    assert out["loss"].item() == pytest.approx(sum(float(out[k]) for k in on), rel=1e-5)
    if off == "mlm":  # no masked words at all, and no head to train
        assert int(out["n_words"]) == 0 and model.mlm_head is None
    if off == "mmm":  # no hidden image tokens
        assert int(out["n_masked"]) == 0


def test_pretrain_refuses_rows_longer_than_the_position_table(home):
    paths, _ = write_token_dataset(home, "alpha", n=30)
    cfg = ICAConfig(**{**RUN, "max_tokens": 5}, epochs=1)  # titles have 6 tokens
    with pytest.raises(ValueError, match=r"txt-tok\.parquet: an item has 6 tokens but ICAConfig\.max_tokens is 5"):
        pretrain_ica(
            paths, None, None, cfg, run_id="long", progress=False, image_tokens="img-tok", text_tokens="txt-tok"
        )
    assert not paths.run("ica-long").exists()


def test_config_checks_the_new_fields():
    with pytest.raises(ValueError, match="text_input"):
        ICAConfig(text_input="bag")
    with pytest.raises(ValueError, match="text_mask_ratio"):
        ICAConfig(text_mask_ratio=0.0)
    with pytest.raises(ValueError, match="mlm_weight"):
        ICAConfig(mlm_weight=-1.0)
    zero = {"contrastive_weight": 0.0, "mmm_weight": 0.0, "mlm_weight": 0.0, "fusion_weight": 0.0}
    with pytest.raises(ValueError, match="all 0"):
        ICAConfig(**zero)


# ----- the pretraining run over token tables ------------------------------------------------------
RUN = {**TINY, "d_model": 48, "batch_size": 50, "lr": 3e-3, "holdout": 0.2, "patience": 0}


def test_token_pretraining_learns_and_applies_to_another_dataset(home):
    paths, _ = write_token_dataset(home, "alpha", n=250, no_image=(3,), no_text=(4,))
    cfg = ICAConfig(**RUN, epochs=8)
    out = pretrain_ica(
        paths, None, None, cfg, run_id="tok", progress=False, image_tokens="img-tok", text_tokens="txt-tok"
    )

    # the loss falls and held-out retrieval beats the untrained encoder (and chance) by a margin
    hist = out["history"]
    assert hist[-1]["loss/loss"] < 0.7 * hist[1]["loss/loss"], [h.get("loss/loss") for h in hist]
    print(
        [
            (
                h.get("loss/mlm_acc"),
                h.get("loss/mlm"),
                h.get("retrieval/mean_recall@10"),
                h.get("retrieval/mean_recall@1"),
            )
            for h in hist
        ]
    )
    assert hist[-1]["loss/mlm"] < hist[1]["loss/mlm"] and hist[-1]["loss/mlm_acc"] > 2 * hist[1]["loss/mlm_acc"]
    before, after = out["untrained"]["retrieval/mean_recall@10"], out["final"]["retrieval/mean_recall@10"]
    chance = out["baselines"]["chance"]["retrieval/mean_recall@10"]
    assert after > before + 0.25 and after > 2 * chance, (before, after, chance)
    for key in (
        "loss/contrastive",
        "loss/mmm",
        "loss/mlm",
        "loss/fusion",
        "retrieval/i2t_recall@1",
        "retrieval/t2i_recall@10",
        "train_items_per_s",
    ):
        assert key in hist[-1], key
    # no interactions: content metrics skipped, and the run says why
    metrics = read_json(paths.metrics("ica-tok"))
    assert "content/recall@20, content/ndcg@20" in metrics["skipped"] and "content/recall@20" not in hist[-1]

    # the written table: mm for every item with content, unit norm; item 3 (no image) still has one
    table = read_features(paths.feature("ica-tok"))
    assert table.metadata["modality"] == "mm" and table.metadata["text_tokens"] == "txt-tok"
    order = np.argsort(table.item_ids)
    vec = table.vectors[order]
    assert table.valid.all() and np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)

    # checkpoint round trip: the loaded encoder gives the same mm as the table
    asins = item_asins(paths)
    image, text = (
        load_token_inputs(paths, "img-tok", asins, "image"),
        load_token_inputs(paths, "txt-tok", asins, "text"),
    )
    again = apply_encoder(paths.run("ica-tok"), image, text)
    assert np.allclose(again, vec, atol=1e-5)
    model, config = load_encoder(paths.run("ica-tok"))
    assert config["specs"]["text"]["tokenizer"] == "toy-wordpiece" and int(model.vocab_ids.numel()) > 30

    # applied to another dataset with the same extractors
    other, _ = write_token_dataset(home, "beta", n=40, seed=5)
    path = write_applied_feature(other, paths.run("ica-tok"))
    applied = read_features(path)
    assert applied.metadata["applied_from"].endswith("ica-tok") and len(applied.item_ids) == 40
    b_asins = item_asins(other)
    direct = apply_encoder(
        paths.run("ica-tok"),
        load_token_inputs(other, "img-tok", b_asins, "image"),
        load_token_inputs(other, "txt-tok", b_asins, "text"),
    )
    assert np.allclose(applied.vectors[np.argsort(applied.item_ids)], direct, atol=1e-6)
    assert not np.allclose(direct[:5], vec[:5], atol=1e-2)  # other items, other vectors

    # …and refused, naming both specs, when the image extractor differs in dim
    wide, _ = write_token_dataset(home, "gamma", n=20, seed=6, d_img=16)
    with pytest.raises(
        EncoderMismatch, match=r"image inputs \[.*dim=12.*\] but .*img-tok\.parquet has \[.*dim=16.*dim"
    ):
        write_applied_feature(wide, paths.run("ica-tok"))
    assert not wide.feature("ica-tok").exists()


def test_contextual_states_leak_the_hidden_word():
    """Why text_input='ids' is the default (see models/pretraining/ica.py): the hidden word is the
    colour, which the image also shows. Remove the image at test time: from contextual states the
    model still recovers it (the neighbours' states encode it), from word ids it cannot."""
    img, states, ids, _ = (torch.as_tensor(a) for a in synthetic(300, seed=11))
    vi, vt = torch.ones(300, 4, dtype=torch.bool), torch.ones(300, 6, dtype=torch.bool)
    hide = torch.zeros(300, 6, dtype=torch.bool)
    hide[:, 1] = True  # the colour word
    train, test = slice(0, 240), slice(240, 300)
    acc = {}
    for text_input in ("states", "ids"):
        model = model_for(ids, text_input=text_input, contrastive_weight=0.0, fusion_weight=0.0, mmm_weight=0.0)
        model.set_normalization("text", states[train][vt[train]].mean(0), states[train][vt[train]].std(0))
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        torch.manual_seed(0)
        for step in range(150):
            b = torch.randint(0, 240, (60,))
            no_img = vi[b] & (torch.rand(60, 1) < 0.5)  # half the batch sees the image
            loss = model(
                img[b],
                no_img,
                states[b],
                vt[b],
                hidden={"image": torch.zeros_like(vi[b]), "text": hide[b]},
                text_ids=ids[b],
            )["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        for seen in (False, True):
            with torch.no_grad():
                x = {"image": Tokens(img[test], vi[test] & seen), "text": Tokens(states[test], vt[test], ids[test])}
                _, tok = model.encode(x, {"image": torch.zeros_like(vi[test]), "text": hide[test]})
                pred = model.mlm_head(tok["text"][:, 1]).argmax(-1)
            acc[text_input, seen] = float((pred == model.word_rows(ids[test][:, 1])).float().mean())
    chance = 1 / len(COLOURS)
    assert acc["states", False] > 0.8 and acc["ids", False] < chance + 0.15, acc  # the leak
    assert acc["ids", True] > 0.8, acc  # from ids the word is learnt from the image: cross-modal


def test_token_run_resumes_after_a_kill_to_the_same_result(home, monkeypatch):
    paths, _ = write_token_dataset(home, "alpha", n=80)
    cfg = ICAConfig(**{**RUN, "dropout": 0.1}, epochs=3)
    kw = {"progress": False, "image_tokens": "img-tok", "text_tokens": "txt-tok"}
    full = pretrain_ica(paths, None, None, cfg, run_id="full", **kw)
    resumed = killed_then_resumed(
        monkeypatch, lambda: pretrain_ica(paths, None, None, cfg, run_id="cut", **kw), kill_at=2
    )
    assert without_timing(resumed["history"]) == without_timing(full["history"])
    assert np.array_equal(
        read_features(paths.feature("ica-full")).vectors, read_features(paths.feature("ica-cut")).vectors
    )
