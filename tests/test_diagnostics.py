"""Positional-collapse diagnostics against hand-built cases (models/evaluation/diagnostics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.evaluation import diagnostics as dg


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_neighbours(x: np.ndarray, top: int, metric: str = "cosine") -> np.ndarray:
    if metric == "cosine":
        x = _unit(x)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :top]


def _clustered(n_per: int, centers: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = np.eye(dim)[:centers] * 5
    labels = np.repeat(np.arange(centers), n_per)
    return (c[labels] + noise * rng.standard_normal((len(labels), dim))).astype(np.float32), labels


# ------------------------------------------------------------------ neighbours


def test_neighbours_match_brute_force_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).standard_normal((97, 8)).astype(np.float32)
    expected = _brute_neighbours(x, 3)
    monkeypatch.setattr(dg, "SCORE_BUDGET", 97 * 10)  # blocks of 10 rows
    got = dg.item_neighbours(x, 3)
    assert np.array_equal(got, expected)
    assert not (got == np.arange(97)[:, None]).any()


def test_neighbours_cosine_vs_inner_product_and_duplicates() -> None:
    # item 2 points like item 0; item 1 is long: the score's inner product prefers it, cosine does not
    x = np.array([[1.0, 0.0], [10.0, 10.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    assert dg.item_neighbours(x, 1, "cosine")[0, 0] == 2
    assert dg.item_neighbours(x, 1, "ip")[0, 0] == 1
    # an exact duplicate is a neighbour, never the item itself; ties go to the lower id
    dup = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert dg.item_neighbours(dup, 2).tolist()[:3] == [[1, 2], [0, 2], [0, 1]]
    with pytest.raises(ValueError, match="top"):
        dg.item_neighbours(dup, 4)
    with pytest.raises(ValueError, match="metric"):
        dg.item_neighbours(dup, 1, "l2")


def test_neighbour_overlap() -> None:
    a = np.array([[1, 2], [0, 2], [0, 1]])
    assert dg.neighbour_overlap(a, a) == 1.0
    assert dg.neighbour_overlap(a, np.array([[2, 3], [3, 4], [3, 4]])) == pytest.approx(1 / 6)


# ------------------------------------------------------------------ coherence


def test_coherence_content_space_scores_one_and_collapsed_space_scores_low() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((50, 32)).astype(np.float32)
    text = np.repeat(base, 2, axis=0)  # items 2k and 2k+1 have the same text
    vision = rng.standard_normal((100, 16)).astype(np.float32)
    id_emb = rng.standard_normal((100, 24)).astype(np.float32)  # unrelated to content

    content = dg.coherence(text, {"text": text, "vision": vision})
    assert content["text@1"] == pytest.approx(1.0, abs=1e-6)
    assert content["text@1"] > content["text@2"] >= content["text@3"]
    assert abs(content["vision@1"]) < 0.2  # vision is independent of text here

    collapsed = dg.coherence(id_emb, {"text": text})
    assert collapsed["text@1"] < 0.25
    assert set(collapsed) == {"text@1", "text@2", "text@3"}


def test_coherence_equals_hand_computation() -> None:
    rng = np.random.default_rng(2)
    final = rng.standard_normal((30, 5)).astype(np.float32)
    feat = rng.standard_normal((30, 7)).astype(np.float32)
    nb = _brute_neighbours(final, 3)
    f = _unit(feat)
    got = dg.coherence(final, {"t": feat})
    for r in range(3):
        assert got[f"t@{r + 1}"] == pytest.approx(float(np.mean([f[i] @ f[nb[i, r]] for i in range(30)])), abs=1e-6)
    with pytest.raises(ValueError, match="rows"):
        dg.coherence(final, {"t": feat[:10]})


# ------------------------------------------------------------------ ID dominance


def _tiny_graph() -> sp.csr_matrix:
    # users × items: u0 {0,1}, u1 {1,2}, u2 {3}, u3 {1,2} (duplicate co-interaction), item 4 unseen
    rows = [0, 0, 1, 1, 2, 3, 3]
    cols = [0, 1, 1, 2, 3, 1, 2]
    return sp.csr_matrix((np.ones(7, np.float32), (rows, cols)), shape=(4, 5))


def test_two_hop_counts_by_hand() -> None:
    # item 0 ~ {1}; item 1 ~ {0, 2}; item 2 ~ {1}; item 3 ~ {} (only user has nothing else); 4 ~ {}
    assert dg.two_hop_counts(_tiny_graph()).tolist() == [1, 2, 1, 0, 0]
    assert dg.two_hop_counts(_tiny_graph(), block=2).tolist() == [1, 2, 1, 0, 0]


def test_id_dominance_by_hand() -> None:
    r = _tiny_graph()
    neigh = np.array([[1], [0], [1], [4], [3]])
    assert dg.id_dominance(np.zeros((5, 2)), r, top=1, neighbours=neigh) == pytest.approx((2 + 1 + 2 + 0 + 0) / 5)
    # from embeddings: items 0,1,2 near each other, 3 and 4 near each other
    emb = np.array([[1, 0], [1, 0.1], [1, 0.3], [0, 1], [0.1, 1]], dtype=np.float32)
    # angles 0°, 5.7°, 16.7°: neighbours 0→1, 1→0, 2→1, 3→4, 4→3
    assert dg.item_neighbours(emb, 1)[:, 0].tolist() == [1, 0, 1, 4, 3]
    assert dg.id_dominance(emb, r, top=1) == pytest.approx((2 + 1 + 2 + 0 + 0) / 5)


# ------------------------------------------------------------------ silhouette


def test_silhouette_planted_clusters_high_random_low() -> None:
    planted, labels = _clustered(40, 4, 16, 0.3, seed=3)
    noise = np.random.default_rng(4).standard_normal((160, 16)).astype(np.float32)
    assert dg.silhouette(planted, n_clusters=4, seed=0) > 0.7
    assert dg.silhouette(noise, n_clusters=4, seed=0) < 0.15
    # given labels: the true ones score high in the planted space, shuffled ones near zero
    assert dg.silhouette(planted, labels=labels) > 0.7
    assert dg.silhouette(planted, labels=np.random.default_rng(5).permutation(labels)) < 0.05
    # subsampling keeps the answer
    assert dg.silhouette(planted, n_clusters=4, seed=0, sample=80) > 0.7


def test_kmeans_fewer_distinct_points_than_clusters() -> None:
    """pop's item vectors are one number each: ±1 once normalised, two points for ten clusters."""
    import warnings

    scores = np.array([[3.0], [-1.0], [2.0], [-5.0], [1.0], [4.0]] * 5, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # KMeans' ConvergenceWarning on duplicate points would raise
        labels = dg.kmeans_labels(scores, n_clusters=10)
        assert dg.silhouette(scores, n_clusters=10) == pytest.approx(1.0)  # two tight clusters, far apart
        same = dg.kmeans_labels(np.ones((12, 3), dtype=np.float32), n_clusters=4)
    assert len(set(labels)) == 2 and len(set(labels[scores[:, 0] > 0])) == 1
    assert same.tolist() == [0] * 12


# ------------------------------------------------------------------ alignment / uniformity


def test_alignment_uniformity_by_hand() -> None:
    users = np.array([[3.0, 0.0], [0.0, 2.0]])  # normalised to e1, e2
    items = np.array([[0.0, 5.0], [1.0, 0.0]])  # e2, e1
    au = dg.alignment_uniformity(users, items, np.array([[0, 0], [1, 0]]))
    # pair (0,0): ‖e1 − e2‖² = 2; pair (1,0): ‖e2 − e2‖² = 0
    assert au["alignment"] == pytest.approx(1.0)
    # two orthogonal unit vectors: one pair at squared distance 2 → log exp(−2·2) = −4
    assert au["uniformity_user"] == pytest.approx(-4.0)
    assert au["uniformity_item"] == pytest.approx(-4.0)
    assert au["uniformity"] == pytest.approx(-4.0)
    collapsed = dg.alignment_uniformity(users, np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), np.array([[0, 0]]))
    assert collapsed["uniformity_item"] == pytest.approx(0.0, abs=1e-9)  # every item at one point
    three = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = np.log((np.exp(-4) + np.exp(-8) + np.exp(-4)) / 3)
    assert dg.alignment_uniformity(three, three, np.array([[0, 0]]))["uniformity_user"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="pairs"):
        dg.alignment_uniformity(users, items, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="dimension"):
        dg.alignment_uniformity(users, np.ones((2, 3)), np.array([[0, 0]]))


# ------------------------------------------------------------------ all together


def test_diagnose_embeddings_separates_collapsed_from_content_preserving() -> None:
    rng = np.random.default_rng(6)
    text, labels = _clustered(30, 4, 12, 0.5, seed=7)
    n = len(text)
    id_emb = rng.standard_normal((n, 8)).astype(np.float32)
    users = rng.standard_normal((20, 8)).astype(np.float32)
    r = sp.random(20, n, density=0.2, random_state=8, format="csr")
    r.data[:] = 1
    collapsed = dg.diagnose_embeddings(id_emb, users, r, {"text": text}, id_item_emb=id_emb, n_clusters=4)
    assert collapsed["id_overlap@3"] == 1.0
    assert collapsed["coherence.text@1"] == collapsed["id_space.coherence.text@1"]
    content_final = np.hstack([text, 0.01 * id_emb])
    users20 = rng.standard_normal((20, 20)).astype(np.float32)
    kept = dg.diagnose_embeddings(content_final, users20, r, {"text": text}, id_item_emb=id_emb, n_clusters=4)
    assert kept["coherence.text@1"] > collapsed["coherence.text@1"] + 0.5
    assert kept["silhouette.final_by_content"] > 0.5 > collapsed["silhouette.final_by_content"]
    assert kept["id_overlap@3"] < 0.3
    assert kept["notes"] == []
    alone = dg.diagnose_embeddings(content_final, users20, r, {"text": text}, n_clusters=4)
    assert "silhouette.id" not in alone and any("ID-space" in n for n in alone["notes"])
