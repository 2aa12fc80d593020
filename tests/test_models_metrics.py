"""Evaluator against hand-computed cases, blocked = unblocked, and the paired test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.evaluation.metrics import (
    RankingEvaluator,
    paired_test,
    ranking_metrics,
)


def three_users():
    """score(u, i) = user_emb[u, i] (item_emb = identity), 6 items.

    user 0: scores .9 .8 .7 .6 .5 .4, trained on item 0, held out {1, 3}
            ranking (item 0 excluded): 1 2 3 4 5 → hits 1 0 1 0 0
    user 1: no held-out item → not evaluated
    user 2: scores .1 .2 .3 .4 .5 .6, trained on item 5, held out {2}
            ranking: 4 3 2 1 0 → hits 0 0 1 0 0
    """
    user = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.5] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], dtype=np.float32)
    item = np.eye(6, dtype=np.float32)
    train = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 1, 2], [0, 1, 5])), shape=(3, 6), dtype=np.float32)
    held = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 2], [1, 3, 2])), shape=(3, 6), dtype=np.float32)
    return user, item, train, held


def test_hand_computed_three_users():
    user, item, train, held = three_users()
    m = ranking_metrics(user, item, train, held, ks=(2, 4), device="cpu")
    l2 = np.log2
    # user 0 @2: hits [1,0]   @4: hits [1,0,1,0]; user 2 @2: none  @4: hit at rank 3
    u0 = {
        "recall@2": 1 / 2,
        "precision@2": 1 / 2,
        "ndcg@2": 1 / (1 + 1 / l2(3)),
        "map@2": 1 / 2,
        "recall@4": 1.0,
        "precision@4": 2 / 4,
        "ndcg@4": (1 + 1 / l2(4)) / (1 + 1 / l2(3)),
        "map@4": (1 / 1 + 2 / 3) / 2,
    }
    u2 = {
        "recall@2": 0,
        "precision@2": 0,
        "ndcg@2": 0,
        "map@2": 0,
        "recall@4": 1.0,
        "precision@4": 1 / 4,
        "ndcg@4": (1 / l2(4)) / 1.0,
        "map@4": (1 / 3) / 1,
    }
    assert set(m) == set(u0)
    for key in u0:
        assert m[key] == pytest.approx((u0[key] + u2[key]) / 2, abs=1e-6), key


def test_per_user_arrays_and_excluded_user():
    user, item, train, held = three_users()
    per = ranking_metrics(user, item, train, held, ks=(4,), device="cpu", per_user=True)
    np.testing.assert_array_equal(per["users"], [0, 2])
    np.testing.assert_allclose(per["map@4"], [(1 + 2 / 3) / 2, 1 / 3], rtol=1e-6)


def test_training_items_never_recommended():
    user, item, _, _ = three_users()
    # user 0 scores item 0 highest; held out item 1 is second
    held = sp.csr_matrix(([1.0], ([0], [1])), shape=(3, 6), dtype=np.float32)
    trained_on_0 = sp.csr_matrix(([1.0], ([0], [0])), shape=(3, 6), dtype=np.float32)
    no_train = sp.csr_matrix((3, 6), dtype=np.float32)
    assert ranking_metrics(user, item, trained_on_0, held, ks=(1,), device="cpu")["recall@1"] == 1.0
    assert ranking_metrics(user, item, no_train, held, ks=(1,), device="cpu")["recall@1"] == 0.0


def test_blocked_equals_single_block_and_user_subset():
    rng = np.random.default_rng(0)
    nu, ni = 97, 60
    user = rng.standard_normal((nu, 8)).astype(np.float32)
    item = rng.standard_normal((ni, 8)).astype(np.float32)
    train = sp.random(nu, ni, density=0.1, random_state=1, format="csr", dtype=np.float32)
    held = sp.random(nu, ni, density=0.05, random_state=2, format="csr", dtype=np.float32)
    held = held - held.multiply(train > 0)
    held.eliminate_zeros()
    held.data[:] = 1
    train.data[:] = 1
    a = ranking_metrics(user, item, train, held, block=7, device="cpu")
    b = ranking_metrics(user, item, train, held, block=4096, device="cpu")
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9)
    # brute-force recall@10 per user in NumPy
    scores = user @ item.T
    scores[train.toarray() > 0] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :10]
    h = held.toarray()
    rec = [h[u, top[u]].sum() / h[u].sum() for u in range(nu) if h[u].sum() > 0]
    assert a["recall@10"] == pytest.approx(np.mean(rec), abs=1e-6)
    sub = np.array([3, 10, 50])
    ev = RankingEvaluator(train, held, users=sub, device="cpu")
    assert set(ev.users) <= set(sub)


def test_paired_test():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 400)
    b = a - 0.05 + rng.normal(0, 0.02, 400)
    r = paired_test(a, b)
    assert r["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    assert r["n"] == 400 and r["t_pvalue"] < 1e-6 and r["wilcoxon_pvalue"] < 1e-6
    same = paired_test(a, a.copy())
    assert same["t_pvalue"] == 1.0 and same["mean_diff"] == 0.0
    noise = paired_test(a, a + rng.normal(0, 0.01, 400))
    assert noise["t_pvalue"] > 0.001
    with pytest.raises(ValueError):
        paired_test(a, b[:10])


def test_paired_over_seeds_is_the_paired_t_over_per_seed_values():
    from scipy import stats

    from models.evaluation.metrics import paired_over_seeds

    a, b = [0.10, 0.12, 0.11, 0.13], [0.09, 0.10, 0.11, 0.10]
    diff, p = paired_over_seeds(a, b)
    assert diff == pytest.approx(0.015)
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue) and 0.05 < p < 0.2  # 3 of 4 seeds ahead: no claim
    assert np.isnan(paired_over_seeds([0.2], [0.1])[1])  # one seed: no test
    assert np.isnan(paired_over_seeds([0.2, 0.3], [0.1, 0.2])[1])  # a constant difference: no t
    with pytest.raises(ValueError, match="equal length"):
        paired_over_seeds([0.1, 0.2], [0.1])
