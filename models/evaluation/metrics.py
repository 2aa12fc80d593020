"""Full-ranking top-K evaluation: every item is a candidate, the user's training items are not.

Scores are computed in blocks of users (one matrix product per block, on the GPU when there is
one) so that the user × item score matrix never exists whole. Metrics follow MMRec's
definitions, averaged over users with at least one held-out item:

- recall@k    = hits in top k / |held-out|
- precision@k = hits in top k / k
- ndcg@k      = DCG@k / IDCG@k, IDCG over min(|held-out|, k) ideal positions
- map@k       = sum over hit positions i ≤ k of precision@i, / min(|held-out|, k)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

METRICS = ("recall", "ndcg", "precision", "map")
SCORE_BUDGET = 1 << 26  # score-matrix elements per block (256 MB of float32)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _csr_rows_to_device(m: sp.csr_matrix, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row within block, column) index tensors of a CSR block."""
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), counts)
    return torch.as_tensor(rows, device=device), torch.as_tensor(m.indices.astype(np.int64), device=device)


class RankingEvaluator:
    """Precomputes the per-block masks of one split once, then evaluates any embeddings.

    The trainer evaluates every epoch; preparing the index tensors once keeps an evaluation to
    matrix products, a scatter and a top-k per block.
    """

    def __init__(
        self,
        train_csr: sp.csr_matrix,
        heldout_csr: sp.csr_matrix,
        ks: Sequence[int] = (10, 20, 50),
        users: np.ndarray | None = None,
        block: int = 4096,
        device: str | torch.device | None = None,
    ) -> None:
        if train_csr.shape != heldout_csr.shape:
            raise ValueError(f"train {train_csr.shape} and held-out {heldout_csr.shape} shapes differ")
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        self.device = _device(device)
        n_users, self.n_items = heldout_csr.shape
        self.max_k = min(max(self.ks), self.n_items)
        heldout_csr = sp.csr_matrix(heldout_csr)
        train_csr = sp.csr_matrix(train_csr)
        n_heldout = np.diff(heldout_csr.indptr)
        users = np.arange(n_users) if users is None else np.asarray(users, dtype=np.int64)
        self.users = users[n_heldout[users] > 0]
        block = max(1, min(block, SCORE_BUDGET // max(self.n_items, 1)))
        self.blocks = []
        for start in range(0, len(self.users), block):
            u = self.users[start : start + block]
            tr = _csr_rows_to_device(train_csr[u], self.device)
            ho = _csr_rows_to_device(heldout_csr[u], self.device)
            n_pos = torch.as_tensor(n_heldout[u].astype(np.float32), device=self.device)
            self.blocks.append((torch.as_tensor(u, device=self.device), tr, ho, n_pos))
        pos = torch.arange(1, self.max_k + 1, dtype=torch.float32, device=self.device)
        self._discount = 1.0 / torch.log2(pos + 1.0)
        self._ideal = torch.cumsum(self._discount, 0)
        self._ranks = pos

    @torch.no_grad()
    def per_user(
        self, user_emb: torch.Tensor | np.ndarray, item_emb: torch.Tensor | np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-user metric arrays (aligned with `self.users`), for paired tests and buckets."""
        u_all = torch.as_tensor(user_emb, device=self.device, dtype=torch.float32)
        i_all = torch.as_tensor(item_emb, device=self.device, dtype=torch.float32)
        if i_all.shape[0] != self.n_items:
            raise ValueError(f"item_emb has {i_all.shape[0]} rows for {self.n_items} items")
        parts: dict[str, list[torch.Tensor]] = {f"{m}@{k}": [] for m in METRICS for k in self.ks}
        # One score buffer for all blocks: a fresh 256 MB tensor per block is a fresh mmap whose
        # page faults cost a third of the block's product on CPU (measured, benchmarks/speed/bench_evaluator.py).
        buffer = u_all.new_empty(max((len(b[0]) for b in self.blocks), default=0), self.n_items)
        for u, (tr_r, tr_c), (ho_r, ho_c), n_pos in self.blocks:
            scores = torch.mm(u_all[u], i_all.T, out=buffer[: len(u)])
            scores[tr_r, tr_c] = -torch.inf
            top = torch.topk(scores, self.max_k, dim=1, sorted=True).indices
            scores.zero_()
            scores[ho_r, ho_c] = 1.0  # reuse the buffer as the held-out indicator
            hits = scores.gather(1, top)
            for name, vals in self._from_hits(hits, n_pos).items():
                parts[name].append(vals)
        out = {name: torch.cat(v).cpu().numpy().astype(np.float64) if v else np.zeros(0) for name, v in parts.items()}
        out["users"] = self.users.copy()
        return out

    def _from_hits(self, hits: torch.Tensor, n_pos: torch.Tensor) -> dict[str, torch.Tensor]:
        cum_hits = torch.cumsum(hits, 1)
        dcg = torch.cumsum(hits * self._discount, 1)
        ap_sum = torch.cumsum(hits * cum_hits / self._ranks, 1)
        out = {}
        for k in self.ks:
            kk = min(k, self.max_k)
            n_rel = torch.clamp(n_pos, max=kk)
            idcg = self._ideal[n_rel.long() - 1]
            out[f"recall@{k}"] = cum_hits[:, kk - 1] / n_pos
            out[f"precision@{k}"] = cum_hits[:, kk - 1] / k
            out[f"ndcg@{k}"] = dcg[:, kk - 1] / idcg
            out[f"map@{k}"] = ap_sum[:, kk - 1] / n_rel
        return out

    def evaluate(self, user_emb: torch.Tensor | np.ndarray, item_emb: torch.Tensor | np.ndarray) -> dict[str, float]:
        per = self.per_user(user_emb, item_emb)
        per.pop("users")
        return {name: float(v.mean()) if len(v) else 0.0 for name, v in per.items()}


def ranking_metrics(
    user_emb: torch.Tensor | np.ndarray,
    item_emb: torch.Tensor | np.ndarray,
    train_csr: sp.csr_matrix,
    heldout_csr: sp.csr_matrix,
    ks: Sequence[int] = (10, 20, 50),
    users: np.ndarray | None = None,
    block: int = 4096,
    device: str | torch.device | None = None,
    per_user: bool = False,
) -> dict[str, Any]:
    """Mean Recall/NDCG/Precision/MAP@k over users with ≥ 1 held-out item (score = user @ item.T);
    with per_user, each user's values instead: {'users': ids, 'recall@20': array, ...}."""
    evaluator = RankingEvaluator(train_csr, heldout_csr, ks, users, block, device)
    return evaluator.per_user(user_emb, item_emb) if per_user else evaluator.evaluate(user_emb, item_emb)


def paired_over_seeds(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean per-seed difference a − b and the paired t-test's p over seeds.

    For per-run numbers (a diagnostic, a row's Recall@20) where each seed gives one value per
    model: with a handful of seeds this is the honest test, per-user tests would count users as
    independent draws of the training run. p is nan when it cannot be computed (one seed, or a
    constant difference)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"per-seed values must be 1-d, non-empty and of equal length, got {x.shape} and {y.shape}")
    diff = x - y
    constant = np.allclose(diff, diff[0], rtol=1e-9, atol=1e-12)  # float noise is no spread: its t would be huge
    p = float(stats.ttest_rel(x, y).pvalue) if len(x) > 1 and not constant else float("nan")
    return float(diff.mean()), p


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test of per-user metrics of two runs on one split."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired arrays must be 1-d and of equal length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError("a paired test needs at least 2 users")
    diff = a - b
    out = {"n": int(len(a)), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": float(diff.mean())}
    if np.all(diff == 0):
        out.update(t_stat=0.0, t_pvalue=1.0, wilcoxon_stat=0.0, wilcoxon_pvalue=1.0)
        return out
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b, zero_method="wilcox")
    out.update(
        t_stat=float(t.statistic),
        t_pvalue=float(t.pvalue),
        wilcoxon_stat=float(w.statistic),
        wilcoxon_pvalue=float(w.pvalue),
    )
    return out
