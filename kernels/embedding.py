"""Gather-GEMM: the first layer's input projection straight from token ids.

``gx[n] = E[ids[n]] @ W^T + b``: the A-rows of the GEMM are read from the embedding table by id,
so the embedded input ``(T, B, E)`` never exists.

Dimension letters::

    N  tokens (T*B)      V  vocabulary (rows of E)      K  embedding_dim      M  output width (D*G*H)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _runtime
from .common import Launch, mm
from .common import precision as fp32_precision


@triton.jit(do_not_specialize=["N"])  # N = T*B tokens: one compiled kernel for every shape
def _gather_gemm_kernel(
    ids_ptr,  # ids: (N,) int64, all in [0, V) (checked on the host)
    emb_ptr, s_emb_v, s_emb_k,  # E: (V, K)
    w_ptr, s_w_m, s_w_k,  # W: (M, K)
    b_ptr,  # b: (M,) (HAS_BIAS)
    out_ptr, s_out_n,  # out: (N, M), last dim contiguous
    N, K, M,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < N
    col_ok = cols < M
    ids = tl.load(ids_ptr + rows, mask=row_ok, other=0)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        k_ok = k < K
        a = tl.load(
            emb_ptr + ids[:, None] * s_emb_v + k[None, :] * s_emb_k, mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        b = tl.load(w_ptr + cols[None, :] * s_w_m + k[:, None] * s_w_k, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        acc += mm(a, b, PRECISION, ACC, UPCAST_DOT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    out = out_ptr + rows[:, None] * s_out_n + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def gather_gemm(
    ids: torch.Tensor, emb: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *, precision: str = "ieee"
) -> torch.Tensor:
    """``emb[ids] @ w.T + b`` without materialising ``emb[ids]``.

    Args:
        ids: ``(N,)`` int64 token ids, every one in ``[0, V)``.
        emb: ``(V, K)`` embedding table.  w: ``(M, K)``.  b: ``(M,)`` or ``None``.
        precision: fp32 dots (``"ieee"``, ``"tf32x3"``, ``"tf32"``; other dtypes ignore it).

    Returns:
        ``(N, M)`` in ``emb``'s dtype.

    Example::

        gx = gather_gemm(torch.tensor([3, 1]), torch.randn(5, 8), torch.randn(16, 8))  # (2, 16)
    """
    _runtime.check_device(ids.device)
    N, K, M = ids.numel(), emb.shape[1], w.shape[0]
    out = _runtime.empty((N, M), emb.dtype, emb.device)
    if N == 0 or M == 0:
        return out
    block_n = 16 if _runtime.INTERPRET else 64
    block_m = 32 if _runtime.INTERPRET else 64
    # fp32 reads K in chunks of 16: at 64 (and at 32 on sm_80) its 64 x 64 tile spills at 4 warps
    # in every precision (ieee, tf32, tf32x3), at 16 none does (kernels/NOTES.md)
    block_k = max(16, min(16 if emb.dtype == torch.float32 else 64, triton.next_power_of_2(K)))
    acc = tl.float64 if emb.dtype == torch.float64 else tl.float32
    grid = (triton.cdiv(N, block_n), triton.cdiv(M, block_m))
    Launch(
        _gather_gemm_kernel,
        grid,
        (
            ids, emb, emb.stride(0), emb.stride(1), w, w.stride(0), w.stride(1),
            b if b is not None else w, out, out.stride(0),
            N, K, M,
        ),
        dict(
            HAS_BIAS=b is not None, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k,
            PRECISION=fp32_precision(emb.dtype, precision),
            ACC=acc, UPCAST_DOT=_runtime.INTERPRET and emb.dtype == torch.bfloat16,
        ),
        "gather_gemm",
    ).run()  # fmt: skip
    return out
