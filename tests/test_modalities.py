"""What the recommender is given when a modality is partly or wholly missing."""

from __future__ import annotations

import pytest

from models.training.modalities import Coverage, plan_modalities

IMG = Coverage("image-effnet", 90, 100)
TXT = Coverage("text-minilm", 100, 100)


def test_both_modalities_pretrain_and_feed_every_branch():
    plan = plan_modalities({"image": IMG, "text": TXT}, 0.2, "anchorrec")
    assert plan.pretrain and plan.note == "" and plan.usable == ["image", "text"]
    assert plan.features("ica-1") == {"v": "image-effnet", "t": "text-minilm", "mm": "ica-1"}
    assert plan.features(None) == {"v": "image-effnet", "t": "text-minilm", "mm": "text-minilm"}


@pytest.mark.parametrize("n_vectors", [0, 19])
def test_too_few_images_is_text_only(n_vectors):
    plan = plan_modalities({"image": Coverage("image-effnet", n_vectors, 100), "text": TXT}, 0.2, "anchorrec")
    assert not plan.pretrain and plan.usable == ["text"]
    assert plan.features(None) == {"v": "text-minilm", "t": "text-minilm", "mm": "text-minilm"}
    assert (
        plan.note
        == f"text only (image vectors for {n_vectors} of 100 items ({n_vectors}% < 20%)); ICA pretraining skipped"
    )


def test_exactly_the_threshold_is_enough():
    assert plan_modalities({"image": Coverage("i", 20, 100), "text": TXT}, 0.2, "anchorrec").pretrain


def test_missing_text_uses_images_everywhere():
    plan = plan_modalities({"image": IMG, "text": Coverage("text-minilm", 0, 100)}, 0.2, "alignrec")
    assert plan.features(None) == {"v": "image-effnet", "t": "image-effnet", "mm": "image-effnet"}
    assert plan.note.startswith("images only (text vectors for 0 of 100 items")


def test_images_off_on_purpose():
    plan = plan_modalities({"text": TXT}, 0.2, "anchorrec", image_off=True)
    assert plan.note == "text only (image off); ICA pretraining skipped"


def test_no_content_trains_id_only_lightgcn_or_stops_content_models():
    empty = {"image": Coverage("i", 0, 100), "text": Coverage("t", 0, 100)}
    plan = plan_modalities(empty, 0.2, "lightgcn")
    assert plan.features(None) == {} and plan.note.startswith("ID-only")
    with pytest.raises(ValueError, match="no usable content for anchorrec.*--model lightgcn"):
        plan_modalities(empty, 0.2, "anchorrec")
