"""Token-level extraction (issue #15 part 1): tiny generated items, plus 50 real apparel photos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from features.extract import extract
from features.registry import get_encoder
from features.tokens import default_token_name, extract_tokens, extract_with_tokens, load_tokens
from store import StoreError, schemas
from store.hashing import file_sha256
from store.layout import DatasetPaths, dataset_paths
from store.tables import write_table
from store.vectors import read_features
from store.verify import problem

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# asin → (text, image kind): 'jpg' a generated photo, 'bad' bytes that are not an image, None no file
ITEMS = {
    "T0": ("Red cotton shirt with short sleeves", "jpg"),
    "T1": ("", "jpg"),
    "T2": ("blue denim jacket " * 12, "bad"),  # longer than max_length: truncated
    "T3": ("Green summer dress", None),
    "T4": (None, "jpg"),
    "T5": ("Black leather belt, size M", "jpg"),
}


def write_items(paths: DatasetPaths, asins: list[str], texts: list[str | None]) -> None:
    n = len(asins)
    none = [None] * n
    write_table(
        pa.table(
            {
                "item_id": pa.array(range(n), pa.int32()),
                "asin": asins,
                "title": texts,
                "description": none,
                "brand": none,
                "categories": pa.array([[]] * n, pa.list_(pa.string())),
                "image_url": none,
                "text": texts,
            }
        ),
        paths.items,
        schemas.ITEMS,
    )


@pytest.fixture()
def tiny(home) -> DatasetPaths:
    paths = dataset_paths("tok")
    paths.images_dir.mkdir(parents=True)
    for seed, (asin, (_, kind)) in enumerate(ITEMS.items()):
        if kind == "jpg":
            cells = (np.random.default_rng(seed).random((6, 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(cells).resize((80, 60), Image.NEAREST).save(paths.image(asin), "JPEG", quality=92)
        elif kind == "bad":
            paths.image(asin).write_bytes(b"\xff\xd8\xff truncated")
    write_items(paths, list(ITEMS), [text for text, _ in ITEMS.values()])
    return paths


@pytest.fixture(scope="module")
def effnet():
    return get_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return get_encoder("minilm", device="cpu")


def crash_on(monkeypatch, encoder, method: str, n: int) -> list[int]:
    """Make `encoder.<method>` raise on its n-th call (a run killed half-way); returns its call log."""
    real, calls = getattr(encoder, method), []

    def wrapped(*args):
        calls.append(len(args[0]))
        if len(calls) == n:
            raise KeyboardInterrupt("simulated crash")
        return real(*args)

    monkeypatch.setattr(encoder, method, wrapped)
    return calls


def _preprocessed(paths: DatasetPaths, asins: list[str], encoder) -> torch.Tensor:
    from features.decode import load_image

    return torch.stack([encoder.preprocess(load_image(paths.image(a), encoder.decode_size)) for a in asins])


# --- image tokens ------------------------------------------------------------------------------------


def test_image_tokens_shapes_values_and_missing_images(tiny, effnet):
    summary = extract_tokens(tiny, effnet, "image", batch_size=2, workers=0, progress=False)
    assert summary["name"] == "image-effnet-tok" == default_token_name("efficientnet-lite0")
    assert (summary["n_items"], summary["n_with_tokens"], summary["max_tokens"], summary["dim"]) == (6, 4, 16, 1280)
    assert summary["reasons"] == {"undecodable image": 1, "no image": 1}
    assert summary["bytes_per_item"] == pytest.approx(Path(summary["path"]).stat().st_size / 6, abs=0.1)
    table = load_tokens(tiny.token_feature("image-effnet-tok"))
    assert table.tokens.shape == (6, 16, 1280) and table.tokens.dtype == np.float16
    assert table.ids is None and table.modality == "image" and table.meta["grid"] == 4
    assert table.asin == list(ITEMS) and table.item_id.tolist() == list(range(6))
    assert table.valid.tolist() == [True, True, False, False, True, True]
    assert table.mask[table.valid].all() and not table.mask[~table.valid].any()
    assert not table.tokens[~table.valid].any()  # no token, not a zero "vector" that looks like data
    assert table.reasons[2].startswith("undecodable image") and table.reasons[3] == "no image"
    ok = ["T0", "T1", "T4", "T5"]
    expected = effnet.encode_image_tokens(_preprocessed(tiny, ok, effnet), 4)
    np.testing.assert_allclose(table.tokens[table.valid].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert not np.allclose(expected[0, 0], expected[0, 15], atol=1e-2)  # regions differ: not 16 copies of one vector


def test_full_grid_mean_is_exactly_the_pooled_vector(tiny, effnet):
    """At 224 px the head map is 7×7: grid 7 keeps every cell, so the token mean is the pooled feature."""
    batch = _preprocessed(tiny, ["T0", "T5"], effnet)
    tokens = effnet.encode_image_tokens(batch, 7)
    assert tokens.shape == (2, 49, 1280)
    np.testing.assert_allclose(tokens.mean(axis=1), effnet.encode(batch), rtol=1e-5, atol=1e-5)
    assert effnet.encode_image_tokens(batch[:0], 4).shape == (0, 16, 1280)


def test_resume_after_crash_and_rerun_give_identical_bytes(tiny, effnet, monkeypatch):
    path = tiny.token_feature("image-effnet-tok")
    extract_tokens(tiny, effnet, "image", batch_size=1, workers=0, progress=False)
    whole = file_sha256(path)
    path.unlink()
    crash_on(monkeypatch, effnet, "encode_image_tokens", 3)
    with pytest.raises(KeyboardInterrupt):
        extract_tokens(tiny, effnet, "image", batch_size=1, chunk_size=1, workers=0, progress=False)
    assert not path.exists() and len(list((tiny.tokens_dir / ".image-effnet-tok.partial").glob("part-*"))) >= 2
    monkeypatch.undo()
    calls = crash_on(monkeypatch, effnet, "encode_image_tokens", 0)
    summary = extract_tokens(tiny, effnet, "image", batch_size=1, chunk_size=1, workers=0, progress=False)
    assert summary["resumed"] == 4 and summary["encoded"] == 2 and calls == [1, 1]  # 2 images + 2 missing kept
    assert file_sha256(path) == whole
    assert b"created_at" not in path.read_bytes()
    assert json.loads(path.with_suffix(".json").read_text())["created_at"]
    assert not (tiny.tokens_dir / ".image-effnet-tok.partial").exists()
    again = extract_tokens(tiny, effnet, "image", progress=False)
    assert again["skipped"] and calls == [1, 1] and file_sha256(path) == whole


def test_sharded_token_extraction_equals_one_pass(tiny, effnet):
    extract_tokens(tiny, effnet, "image", name="one", batch_size=2, workers=0, progress=False)
    parts = [
        extract_tokens(tiny, effnet, "image", name="many", batch_size=2, workers=0, progress=False, shard=(i, 2))
        for i in range(2)
    ]
    assert sum(p["encoded"] for p in parts) == 5 and not tiny.token_feature("many").exists()
    final = extract_tokens(tiny, effnet, "image", name="many", progress=False)
    assert final["encoded"] == 0 and final["resumed"] == 6
    a, b = load_tokens(tiny.token_feature("one")), load_tokens(tiny.token_feature("many"))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.reasons == b.reasons


def test_grid_change_rebuilds_and_tokens_never_show_as_features(tiny, effnet):
    first = extract_tokens(tiny, effnet, "image", workers=0, progress=False)
    second = extract_tokens(tiny, effnet, "image", grid=2, workers=0, progress=False)
    assert not second["skipped"] and second["max_tokens"] == 4 and second["input_hash"] != first["input_hash"]
    table = load_tokens(tiny.token_feature("image-effnet-tok"))
    assert table.tokens.shape == (6, 4, 1280) and table.meta["grid"] == 2
    assert tiny.token_names() == ["image-effnet-tok"] and tiny.feature_names() == []


def test_pooled_extraction_is_unchanged_by_token_extraction(tiny, effnet):
    extract(tiny, effnet, batch_size=2, workers=0, progress=False)
    pooled = tiny.feature("image-effnet")
    before = file_sha256(pooled)
    extract_tokens(tiny, effnet, "image", workers=0, progress=False)
    assert file_sha256(pooled) == before
    table = read_features(pooled)
    ok = ["T0", "T1", "T4", "T5"]
    np.testing.assert_allclose(table.vectors[table.valid], effnet.encode(_preprocessed(tiny, ok, effnet)), atol=1e-5)
    path = tiny.feature("image-effnet")
    path.unlink()  # and a rebuilt pooled table keeps its bytes (the extract.py refactor changed nothing)
    extract(tiny, effnet, batch_size=3, workers=0, progress=False)
    assert file_sha256(path) == before


def count_backbone_photos(monkeypatch, module) -> list[int]:
    """Photos per forward call of `module.<forward>` (EfficientNet's head map, which both outputs use)."""
    real, calls = module.feature_map, []

    def counted(x):
        calls.append(len(x))
        return real(x)

    monkeypatch.setattr(module, "feature_map", counted)
    return calls


def test_one_backbone_pass_gives_the_pooled_and_token_tables_of_two_passes(tiny, effnet, monkeypatch):
    calls = count_backbone_photos(monkeypatch, effnet.net)
    extract(tiny, effnet, batch_size=2, workers=0, progress=False)
    extract_tokens(tiny, effnet, "image", batch_size=2, workers=0, progress=False)
    assert sum(calls) == 8  # 4 decodable photos, twice
    pooled, tokens = tiny.feature("image-effnet"), tiny.token_feature("image-effnet-tok")
    two_passes = file_sha256(pooled), file_sha256(tokens)
    pooled.unlink(), tokens.unlink()

    calls.clear()
    one = extract_with_tokens(tiny, effnet, grid=4, batch_size=2, workers=0, progress=False)
    assert one["encoded"] == 5 and one["token_rows"] == 5  # 4 photos and 1 undecodable file; no file: no row
    assert not tokens.exists() and file_sha256(pooled) == two_passes[0]
    rest = extract_tokens(tiny, effnet, "image", batch_size=2, workers=0, progress=False)
    assert (rest["encoded"], rest["resumed"], rest["n_with_tokens"]) == (0, 5, 4)
    assert sum(calls) == 4  # each decodable photo through the backbone once, for both tables
    assert file_sha256(tokens) == two_passes[1]
    assert not (tiny.tokens_dir / ".image-effnet-tok.partial").exists()

    calls.clear()  # both up to date: nothing runs; an up-to-date token table gets no new partial rows
    pooled.unlink()
    again = extract_with_tokens(tiny, effnet, grid=4, batch_size=2, workers=0, progress=False)
    assert again["token_rows"] == 0 and sum(calls) == 4 and file_sha256(pooled) == two_passes[0]
    assert not (tiny.tokens_dir / ".image-effnet-tok.partial").exists()


def test_one_pass_of_a_stopped_run_resumes_both_tables(tiny, effnet, monkeypatch):
    crash_on(monkeypatch, effnet, "encode_with_tokens", 3)
    with pytest.raises(KeyboardInterrupt):
        extract_with_tokens(tiny, effnet, batch_size=1, chunk_size=100, workers=0, progress=False)
    monkeypatch.undo()
    calls = count_backbone_photos(monkeypatch, effnet.net)
    resumed = extract_with_tokens(tiny, effnet, batch_size=1, workers=0, progress=False)
    assert (resumed["resumed"], resumed["encoded"]) == (4, 2)  # T0, T1, T2 (undecodable), T3 (no file) kept
    tok = extract_tokens(tiny, effnet, "image", batch_size=1, workers=0, progress=False)
    assert (tok["encoded"], tok["resumed"]) == (0, 5) and sum(calls) == 2  # T4, T5 once each


def test_the_grid_mean_is_not_the_pooled_vector_unless_the_grid_divides_the_map(tiny, effnet):
    """Why one pass keeps the head map rather than deriving the pooled vector from the 4×4 tokens."""
    batch = _preprocessed(tiny, ["T0", "T5"], effnet)
    pooled, tokens4 = effnet.encode_with_tokens(batch, 4)
    np.testing.assert_array_equal(pooled, effnet.encode(batch))
    np.testing.assert_array_equal(tokens4, effnet.encode_image_tokens(batch, 4))
    np.testing.assert_allclose(effnet.encode_with_tokens(batch, 7)[1].mean(axis=1), pooled, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tokens4.mean(axis=1), pooled, rtol=1e-3, atol=1e-4)  # 7×7 into 4×4: overlapping regions


# --- text tokens ---------------------------------------------------------------------------------


def test_text_tokens_mask_and_ids_match_the_tokenizer(tiny, minilm):
    summary = extract_tokens(tiny, minilm, "text", max_length=12, batch_size=2, progress=False)
    assert summary["name"] == "text-minilm-tok" and summary["reasons"] == {"empty text": 2}
    table = load_tokens(tiny.token_feature("text-minilm-tok"))
    assert table.tokens.shape == (6, 12, 384) and table.tokens.dtype == np.float16
    assert table.ids.dtype == np.int32 and table.modality == "text"
    assert (table.meta["mask_token_id"], table.meta["cls_token_id"], table.meta["sep_token_id"]) == (103, 101, 102)
    assert table.meta["vocab_size"] == 30522 and table.meta["max_length"] == 12
    assert table.valid.tolist() == [True, False, True, True, False, True]
    for i, (text, _) in enumerate(ITEMS.values()):
        if not table.valid[i]:
            assert table.reasons[i] == "empty text" and not table.ids[i].any() and not table.tokens[i].any()
            continue
        ids = minilm.tokenizer(text, truncation=True, max_length=12)["input_ids"]
        n = len(ids)
        assert table.mask[i].tolist() == [True] * n + [False] * (12 - n)
        assert table.ids[i, :n].tolist() == ids and not table.ids[i, n:].any()
        assert ids[0] == 101 and ids[-1] == 102
        with torch.inference_mode():
            hidden = minilm.net(
                **minilm.tokenizer([text], truncation=True, max_length=12, return_tensors="pt")
            ).last_hidden_state[0]
        np.testing.assert_allclose(table.tokens[i, :n].astype(np.float32), hidden.numpy(), rtol=3e-3, atol=3e-3)
    assert table.mask[2].all()  # the long text is cut at max_length


def test_text_resume_after_crash_gives_identical_bytes(tiny, minilm, monkeypatch):
    path = tiny.token_feature("text-minilm-tok")
    extract_tokens(tiny, minilm, "text", batch_size=1, progress=False)
    whole = file_sha256(path)
    path.unlink()
    crash_on(monkeypatch, minilm, "encode_tokens", 3)
    with pytest.raises(KeyboardInterrupt):
        extract_tokens(tiny, minilm, "text", batch_size=1, chunk_size=1, progress=False)
    monkeypatch.undo()
    summary = extract_tokens(tiny, minilm, "text", batch_size=1, progress=False)
    assert summary["resumed"] == 4 and summary["encoded"] == 2
    assert file_sha256(path) == whole


# --- CLIP patch tokens -----------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 24, "head_width": 12, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_spec(tmp_path_factory) -> str:
    import open_clip

    root = tmp_path_factory.mktemp("clip_tok")
    config = root / "tok-test-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    torch.save(open_clip.create_model("tok-test-clip").state_dict(), root / "w.pt")
    return f"clip-image:{config}:{root / 'w.pt'}"


def test_clip_patch_tokens_are_projected_patches_in_row_major_grid(tiny, tiny_clip_spec):
    clip = get_encoder(tiny_clip_spec, device="cpu")
    batch = _preprocessed(tiny, ["T0", "T5"], clip)
    clip.net.visual.output_tokens = True
    with torch.inference_mode():
        _, raw = clip.net.visual(batch)
    clip.net.visual.output_tokens = False
    patches = (raw @ clip.net.visual.proj).detach().numpy()  # (2, 16 patches of the 4×4 grid, 16)
    np.testing.assert_allclose(clip.encode_image_tokens(batch, 4), patches, rtol=1e-5, atol=1e-5)
    coarse = clip.encode_image_tokens(batch, 2)  # token 1 = top-right 2×2 block of patches 2, 3, 6, 7
    np.testing.assert_allclose(coarse[:, 1], patches[:, [2, 3, 6, 7]].mean(axis=1), rtol=1e-5, atol=1e-5)
    pooled, tokens = clip.encode_with_tokens(batch, 2)  # one pass of the tower, both outputs
    np.testing.assert_array_equal(pooled, clip.encode(batch))
    np.testing.assert_array_equal(tokens, coarse)
    summary = extract_tokens(tiny, tiny_clip_spec, "image", grid=2, workers=0, progress=False)
    assert summary["name"] == "image-clip-tok-test-clip-tok" and (summary["dim"], summary["max_tokens"]) == (16, 4)
    table = load_tokens(tiny.token_feature(summary["name"]))
    np.testing.assert_allclose(table.tokens[[0, 5]].astype(np.float32), coarse, rtol=2e-3, atol=2e-3)


# --- refusals and verification ----------------------------------------------------------------


def test_bad_arguments_are_refused_before_any_work(tiny, minilm):
    with pytest.raises(ValueError, match="makes text features, not image"):
        extract_tokens(tiny, "minilm", "image", progress=False)
    with pytest.raises(ValueError, match="grid must be"):
        extract_tokens(tiny, "efficientnet-lite0", "image", grid=0, progress=False)
    with pytest.raises(ValueError, match="max_length"):
        extract_tokens(tiny, minilm, "text", max_length=2, progress=False)
    with pytest.raises(ValueError, match="feature name"):
        extract_tokens(tiny, minilm, "text", name="../x", progress=False)
    assert not tiny.tokens_dir.exists()


def _without_tokens_method(encoder):
    return type(
        "NoTokens",
        (),
        {k: getattr(encoder, k) for k in ("spec", "name", "modality", "dim", "model", "weights", "device", "encode")},
    )()


def test_an_encoder_without_tokens_is_refused(tiny, minilm):
    with pytest.raises(ValueError, match="no text tokens"):
        extract_tokens(tiny, _without_tokens_method(minilm), "text", progress=False)


def test_verify_catches_a_changed_token_table(tiny, effnet):
    summary = extract_tokens(tiny, effnet, "image", grid=2, workers=0, progress=False)
    path = Path(summary["path"])
    assert problem(path) is None
    table = pq.read_table(path)
    flipped = table.set_column(0, "asin", pa.array(list(reversed(table.column("asin").to_pylist())), pa.string()))
    pq.write_table(flipped, path)  # metadata kept, rows changed
    found = problem(path)
    assert found and "content_hash" in found and "anchorrec features --dataset tok" in found


# --- real data ---------------------------------------------------------------------------------


def _apparel(shared_data: Path, home: Path, n: int) -> tuple[DatasetPaths, list[str]]:
    """The first n apparel items; images/ is a link to the shared photos (nothing copied)."""
    src = shared_data / "amazon-apparel-tops"
    with open(src / "items.tsv", newline="", encoding="utf-8") as fh:
        rows = [r for _, r in zip(range(n), csv.DictReader(fh, delimiter="\t"))]
    paths = dataset_paths("apparel50")
    paths.root.mkdir(parents=True)
    paths.images_dir.symlink_to(src / "images", target_is_directory=True)
    write_items(paths, [r["asin"] for r in rows], [r["title"] for r in rows])
    return paths, [r["title"] for r in rows]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_real_apparel_tokens_agree_with_pooled_vectors(shared_data, home, effnet, minilm):
    paths, titles = _apparel(shared_data, home, 50)
    image = extract_tokens(paths, effnet, "image", batch_size=25, workers=2, progress=False)
    assert image["n_with_tokens"] == 50 and image["reasons"] == {}
    extract(paths, effnet, batch_size=25, workers=2, progress=False)
    pooled = read_features(paths.feature("image-effnet")).vectors
    full = extract_tokens(paths, effnet, "image", name="grid7", grid=7, batch_size=25, workers=2, progress=False)
    cos7 = _cosine(load_tokens(Path(full["path"])).tokens.astype(np.float32).mean(axis=1), pooled)
    assert cos7.min() > 0.9999, cos7.min()  # every cell of the 7×7 map kept: the mean is the pooled vector
    tokens = load_tokens(paths.token_feature("image-effnet-tok"))
    cos = _cosine(tokens.tokens.astype(np.float32).mean(axis=1), pooled)
    # 4×4 regions of the 7×7 map overlap (2, 3, 3, 2 cells a side), so edge cells weigh less: close, not equal
    assert np.median(cos) > 0.99 and cos.min() > 0.98, (np.median(cos), cos.min())

    text = extract_tokens(paths, minilm, "text", batch_size=25, progress=False)
    assert text["n_with_tokens"] == 50
    words = load_tokens(paths.token_feature("text-minilm-tok"))
    whole = words.mask.sum(1) < 32  # not truncated: the masked mean is MiniLM's pooled vector
    assert whole.sum() >= 25
    mean = (words.tokens.astype(np.float32) * words.mask[..., None]).sum(1) / words.mask.sum(1, keepdims=True)
    cos_text = _cosine(mean[whole], minilm.encode([titles[i] for i in np.flatnonzero(whole)]))
    assert cos_text.min() > 0.999, cos_text.min()
    assert problem(paths.token_feature("text-minilm-tok")) is None


def test_left_padded_batches_are_stored_real_tokens_first():
    from features.tokens import Rows

    rows = Rows.empty(2, 4, 3, with_ids=True)
    tokens = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) + 1
    mask = np.array([[False, True, True], [True, True, True]])  # row 0 padded on the left
    rows.put([1, 0], tokens, mask, np.array([[0, 7, 8], [4, 5, 6]], np.int32))
    assert rows.counts.tolist() == [3, 2] and rows.ids.tolist() == [[4, 5, 6, 0], [7, 8, 0, 0]]
    np.testing.assert_array_equal(rows.tokens[1, :2], tokens[0, 1:])
    assert not rows.tokens[1, 2:].any() and not rows.tokens[0, 3].any()


def test_load_tokens_refuses_a_pooled_feature_table(tiny, effnet):
    extract(tiny, effnet, workers=0, progress=False)
    with pytest.raises(StoreError, match="not a token table .* anchorrec features --dataset tok"):
        load_tokens(tiny.feature("image-effnet"))


def test_a_damaged_token_table_is_rebuilt_not_called_up_to_date(tiny, effnet, monkeypatch):
    from test_features_extract import damage_a_page

    from store.verify import problem

    path = tiny.token_feature("image-effnet-tok")
    extract_tokens(tiny, effnet, "image", workers=0, progress=False)
    whole = file_sha256(path)
    damage_a_page(path)
    assert problem(path) is not None
    calls = crash_on(monkeypatch, effnet, "encode_image_tokens", 0)
    rebuilt = extract_tokens(tiny, effnet, "image", workers=0, progress=False)
    assert not rebuilt["skipped"] and sum(calls) > 0
    assert problem(path) is None and file_sha256(path) == whole
