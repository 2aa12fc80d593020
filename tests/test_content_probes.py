"""Content probes (issue 15, item 4) on tiny synthetic data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.content_probes import (
    choose_c,
    holdout_mask,
    linear_probe,
    majority_accuracy,
    normalize_colour,
    retrieval,
    ridge_map,
    top_labels,
)
from models.pretraining.pretrain import split_holdout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("Heather Grey", "grey"),
        ("Navy Blue", "blue"),
        ("Multi-color", "multi"),
        ("Multicoloured", "multi"),
        ("Black/White", "multi"),
        ("Off-White", "white"),
        ("Noir", "black"),
        ("Red 2", "red"),
        ("Hot Coral", "orange"),
        ("Charcoal", "grey"),
        ("Gray", "grey"),
        ("Grays", "grey"),
        ("Floral Print", "multi"),
        ("Royal", "blue"),
        ("As shown", None),
        ("", None),
        (None, None),
        ("Ivory", "white"),
        ("Turquoise", "teal"),
        ("BLACK", "black"),
    ],
)
def test_normalize_colour(name, expected) -> None:
    assert normalize_colour(name) == expected


def test_top_labels_keeps_the_k_most_frequent_ties_alphabetical() -> None:
    labels = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] + [None]
    assert top_labels(labels, k=2) == ["a"] * 5 + ["b"] * 3 + [None] * 3 + [None, None]
    assert top_labels(labels, k=10) == labels
    with pytest.raises(ValueError, match="k must be"):
        top_labels(labels, k=0)


def _clusters(n: int, classes: int, dim: int, rng: np.random.Generator, spread: float) -> tuple[np.ndarray, list[str]]:
    centres = rng.normal(size=(classes, dim)) * 10
    y = rng.integers(0, classes, n)
    return centres[y] + rng.normal(size=(n, dim)) * spread, [f"c{k}" for k in y]


def test_a_separable_probe_gets_one_and_a_random_one_gets_chance() -> None:
    rng = np.random.default_rng(0)
    x, y = _clusters(600, 4, 8, rng, spread=0.1)
    assert linear_probe(x[:500], y[:500], x[500:], y[500:], seed=0) == 1.0

    noise = rng.normal(size=(2000, 8))  # features that say nothing about the label
    labels = [f"c{k}" for k in rng.integers(0, 4, 2000)]
    acc = linear_probe(noise[:1500], labels[:1500], noise[1500:], labels[1500:], seed=0, c=1.0)
    assert 0.18 < acc < 0.32  # chance is 0.25; 500 test items: std ≈ 0.02


def test_probe_leaves_out_unlabelled_items_and_counts_unseen_test_labels_as_misses() -> None:
    rng = np.random.default_rng(1)
    x, y = _clusters(300, 3, 5, rng, spread=0.05)
    y_train = [None if k % 3 == 0 else v for k, v in enumerate(y[:200])]
    y_test = list(y[200:])
    y_test[:10] = ["never-seen"] * 10
    acc = linear_probe(x[:200], y_train, x[200:], y_test, seed=0, c=1.0)
    assert acc == pytest.approx(90 / 100)
    assert linear_probe(x[:200], y_train, x[200:], [None] * 50 + y_test[50:], seed=0, c=1.0) == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        linear_probe(x[:10], ["a"] * 10, x[10:20], ["a"] * 10)


def test_choose_c_reads_only_the_training_part_and_prefers_the_better_c() -> None:
    rng = np.random.default_rng(2)
    x, y = _clusters(400, 3, 6, rng, spread=0.2)
    y = np.asarray(y, dtype=object)
    assert choose_c(x, y, seed=0, grid=(0.5,)) == 0.5
    assert choose_c(x, y, seed=0, grid=(1e-6, 1.0)) == 1.0  # C=1e-6 shrinks every weight to ~0: chance


def test_majority_accuracy() -> None:
    assert majority_accuracy(["a", "a", "b", None], ["a", "b", "b", "a", None]) == 0.5


def test_retrieval_of_identical_vectors_is_perfect_and_of_unrelated_ones_near_chance() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 16))
    r = retrieval(x, x.copy())
    assert r["mean_recall@1"] == 1.0 and r["mean_recall@10"] == 1.0
    assert r["chance@1"] == pytest.approx(1 / 200) and r["chance@10"] == pytest.approx(10 / 200)
    far = retrieval(x, rng.normal(size=(200, 16)))
    assert far["mean_recall@10"] < 0.15  # chance 0.05


def test_ridge_map_recovers_a_linear_image_to_text_map() -> None:
    rng = np.random.default_rng(4)
    img = rng.normal(size=(500, 32))
    txt = img @ rng.normal(size=(32, 12)) + 0.01 * rng.normal(size=(500, 12))
    mapped = ridge_map(img[:400], txt[:400], img[400:], seed=0)
    assert mapped.shape == (100, 12)
    assert retrieval(mapped, txt[400:])["mean_recall@1"] > 0.95
    unrelated = ridge_map(img[:400], rng.normal(size=(400, 12)), img[400:], seed=0)
    assert retrieval(unrelated, txt[400:])["mean_recall@10"] < 0.3


def test_holdout_is_pretrainings_split_fixed_by_seed() -> None:
    h = holdout_mask(1000, 0.1, seed=0)
    assert h.sum() == 100
    assert np.array_equal(h, split_holdout(np.ones(1000, dtype=bool), 0.1, 0))
    assert np.array_equal(h, holdout_mask(1000, 0.1, seed=0))
    assert not np.array_equal(h, holdout_mask(1000, 0.1, seed=1))
    eligible = np.arange(1000) % 2 == 0
    assert not holdout_mask(1000, 0.1, 0, eligible)[~eligible].any()
