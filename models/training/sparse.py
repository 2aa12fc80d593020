"""A fixed sparse matrix as a differentiable linear map, fast on CPU and GPU alike.

`torch.sparse.mm` on a COO matrix re-transposes and re-coalesces the matrix in every backward
pass; on two CPU cores that doubles the cost of a propagation step. The graphs of a model never
change, so `FixedSparse` stores the matrix and its transpose once, as CSR, and the backward pass
is one more CSR product. `rows(idx, x)` computes only some rows of A @ x (a gather and a
segment sum), which is what a batch needs from the last propagation layer.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def csr_mm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a @ x for CSR `a` and dense `x`.

    On CPU, `a @ x` zero-fills a result, multiplies into a second buffer and copies it back;
    `addmm(out=…, beta=0)` writes the product once (1–2.5 ms less per 18k × 64 product, 20–35%,
    measured on the Sports graphs). beta=0 ignores the uninitialized buffer, NaNs included.
    """
    if a.device.type != "cpu":
        return a @ x
    out = x.new_empty(a.shape[0], x.shape[1])
    return torch.addmm(out, a, x, beta=0, out=out)


class _CsrMatmul(torch.autograd.Function):
    """y = A @ x with dy/dx = Aᵀ @ grad, Aᵀ given as its own CSR matrix."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return csr_mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, csr_mm(ctx.a_t, grad.contiguous())


def _csr_parts(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    csr = m.to_sparse_csr() if m.layout != torch.sparse_csr else m
    return csr.crow_indices().to(torch.int64), csr.col_indices().to(torch.int64), csr.values().to(torch.float32)


class FixedSparse(nn.Module):
    """A constant sparse (n × m) matrix; buffers follow `.to(device)` and stay out of checkpoints."""

    # CSR parts of A and of Aᵀ, registered as buffers in __init__ (declared here for their type)
    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    val_t: torch.Tensor

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        if not matrix.is_sparse and matrix.layout != torch.sparse_csr:
            raise ValueError(f"FixedSparse needs a sparse tensor, got layout {matrix.layout}")
        m = (matrix if matrix.layout == torch.sparse_coo else matrix.to_sparse_coo()).coalesce()
        self.shape = tuple(m.shape)
        crow, col, val = _csr_parts(m)
        crow_t, col_t, val_t = _csr_parts(m.t().coalesce())
        for name, t in (
            ("crow", crow),
            ("col", col),
            ("val", val),
            ("crow_t", crow_t),
            ("col_t", col_t),
            ("val_t", val_t),
        ):
            self.register_buffer(name, t, persistent=False)

    @property
    def nnz(self) -> int:
        return int(self.val.numel())

    def _csr(self, transpose: bool = False) -> torch.Tensor:
        if transpose:
            return torch.sparse_csr_tensor(
                self.crow_t, self.col_t, self.val_t, self.shape[::-1], check_invariants=False
            )
        return torch.sparse_csr_tensor(self.crow, self.col, self.val, self.shape, check_invariants=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A @ x for dense x (m × d)."""
        return _CsrMatmul.apply(self._csr(), self._csr(transpose=True), x)

    def _row_entries(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(segment of each nonzero in `idx`'s rows, its position in col/val, their count)."""
        start = self.crow[idx]
        counts = self.crow[idx + 1] - start
        total = int(counts.sum())
        seg = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        return seg, start[seg] + torch.arange(total, device=idx.device) - first[seg], total

    def row_cols(self, idx: torch.Tensor) -> torch.Tensor:
        """Column indices of the nonzeros in rows `idx` (with repeats)."""
        return self.col[self._row_entries(idx)[1]]

    def rows(self, idx: torch.Tensor, x: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """(A @ x)[idx] without computing the other rows.

        With `cols` (sorted, unique), x holds only those rows of the full x: x[k] is row cols[k];
        it must cover every column the rows `idx` touch. The gather costs more per nonzero than
        the CSR product, so without `cols`, rows holding more than an eighth of the matrix take
        the full product instead. Gathers use `index_select`, whose backward is one index_add
        (x[i]'s is an accumulating index_put, 2–2.5× slower fwd + bwd on CPU, measured).
        """
        seg, pos, total = self._row_entries(idx)
        if cols is None and total * 8 > self.nnz:
            return self(x).index_select(0, idx)
        col = self.col[pos] if cols is None else torch.searchsorted(cols, self.col[pos])
        out = x.new_zeros(len(idx), x.shape[1])
        return out.index_add(0, seg, self.val[pos, None] * x.index_select(0, col))

    def row_sums(self) -> torch.Tensor:
        return torch.zeros(self.shape[0], device=self.val.device).index_add_(
            0,
            torch.repeat_interleave(torch.arange(self.shape[0], device=self.val.device), torch.diff(self.crow)),
            self.val,
        )

    def col_sums(self) -> torch.Tensor:
        return torch.zeros(self.shape[1], device=self.val.device).index_add_(0, self.col, self.val)


def block(matrix: torch.Tensor, row_start: int, row_stop: int, col_start: int, col_stop: int) -> torch.Tensor:
    """A rectangular block of a sparse COO matrix, as a sparse COO matrix (re-indexed from 0)."""
    m = matrix.coalesce()
    r, c = m.indices()
    keep = (r >= row_start) & (r < row_stop) & (c >= col_start) & (c < col_stop)
    idx = torch.stack([r[keep] - row_start, c[keep] - col_start])
    shape = (row_stop - row_start, col_stop - col_start)
    return torch.sparse_coo_tensor(idx, m.values()[keep], shape, check_invariants=False).coalesce()
