"""Helpers every kernel file shares: ``@triton.jit`` building blocks and host-side utilities.

Nothing here knows a cell (those live in :mod:`.cells`) or a tier (:mod:`.tiers`).  The kernel
files import from here and from :mod:`.cells`/:mod:`.tiers`, never from each other.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from . import _runtime

# ---------------------------------------------------------------------------------------------
# jit helpers


@triton.jit
def tanh(x):
    """tanh without libdevice (the interpreter has none).  fp32: within 2 ulp in Triton's
    interpreter (measured 1.90, just above 0.625; numpy's float32 exp is itself up to ~2.5 ulp
    off) and 5 ulp on a GPU (derived from ``tl.exp``'s ex2.approx and ``div.full.f32``, whose
    errors CUDA documents; torch.tanh: 0.5).  ``tests/test_numerics.py`` measures it.

    ``|x| >= 0.625``: ``1 - 2/(exp(2|x|) + 1)``, so the rounding of exp and of the division falls
    on the small term and tanh near +-1 keeps full precision (``|x|`` capped at 20, where tanh is 1
    in fp64 too: no overflow; NaN passes through).  ``|x| < 0.625``: an odd polynomial fit for
    fp32 (at most 0.75 ulp measured; no cancellation near 0, subnormal inputs come back exact).
    The former ``(1 - e)/(1 + e)``, ``e = exp(-2|x|)``, had a relative error unbounded near 0 (1.7e7
    ulp at 1.5e-8); the backward's ``1 - tanh^2`` and every later step inherit such errors.
    fp64 keeps that form: its error there is ~1e-16 absolute.
    """
    a = tl.abs(x)
    if x.dtype == tl.float64:
        e = tl.exp(-2.0 * a)
        t = (1.0 - e) / (1.0 + e)
    else:
        is_small = a < 0.625
        big = 1.0 - 2.0 / (tl.exp(2.0 * tl.where(a > 20.0, 20.0, a)) + 1.0)
        s = tl.where(is_small, a, 0.0)
        z = s * s
        q = -0.3333328068256378 + z * (0.13331441581249237 + z * (-0.05373971536755562 + z * (
            0.02063908614218235 + z * -0.005704985000193119)))  # fmt: skip
        t = tl.where(is_small, s + s * z * q, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def sigmoid(x):
    """``1/(1 + exp(-x))``: saturates to 1 and 0 without NaN (exp may overflow to inf).  fp32:
    within 3.5 ulp in the interpreter (measured 3.21); on a GPU ``7 + 2.4 max(-x, 0)`` ulp, the
    exp approximation's error growing with its argument (derived, see :func:`tanh`).  Results
    below the smallest normal fp32 may be flushed to 0."""
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def relu(x):
    """``max(x, 0)``, exact, NaN passed through (``tl.maximum`` alone is IEEE maxNum: NaN -> 0)."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


#: Triton's interpreter multiplies fp32 ``tl.dot`` operands exactly, whatever ``input_precision``
#: says.  With this set (only the interpreter reads it; a compiled kernel always runs the real
#: instructions), :func:`mm` rounds the operands as the tensor cores do instead -- ``"tf32"``: each
#: operand truncated to TF32 (10 mantissa bits); ``"tf32x3"``: Triton's three-product split (big =
#: operand rounded to TF32, small = the rest, truncated; small*big + big*small + big*big) -- so
#: tests measure each precision's error on a CPU (``tests/test_numerics.py``).
EMULATE_TENSOR_CORES = tl.constexpr(False)


@triton.jit
def _tf32_round(x):
    """fp32 -> the nearest TF32 value, ties away from zero (``cvt.rna.tf32.f32``); inf/NaN kept."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x1000) & 0xFFFFE000
    return tl.where((bits & 0x7F800000) == 0x7F800000, bits, rounded).to(tl.float32, bitcast=True)


@triton.jit
def _tf32_truncate(x):
    """fp32 -> TF32 by dropping the low 13 mantissa bits (what an mma reads of an fp32 operand)."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _mm_emulated(a, b, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """:func:`mm` of fp32 ``a``, ``b`` with the tensor cores' rounding (see :data:`EMULATE_TENSOR_CORES`)."""
    if PRECISION == "tf32x3":
        a_big = _tf32_round(a)
        b_big = _tf32_round(b)
        a_small = _tf32_truncate(a - a_big)
        b_small = _tf32_truncate(b - b_big)
        acc = tl.dot(a_small, b_big, input_precision="ieee", out_dtype=ACC)
        acc = tl.dot(a_big, b_small, acc, input_precision="ieee", out_dtype=ACC)
        acc = tl.where(acc != acc, 0.0, acc)  # as Triton: NaN of the small products dropped
        return tl.dot(a_big, b_big, acc, input_precision="ieee", out_dtype=ACC)
    else:
        return tl.dot(_tf32_truncate(a), _tf32_truncate(b), input_precision="ieee", out_dtype=ACC)


@triton.jit
def mm(a, b, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """(M, K) @ (K, N) with ``ACC`` accumulation; ``a`` is cast to ``b``'s storage dtype."""
    if UPCAST_DOT:  # the interpreter's bf16 tl.dot is wrong: multiply in ACC there
        return tl.dot(a.to(ACC), b.to(ACC), input_precision=PRECISION, out_dtype=ACC)
    elif EMULATE_TENSOR_CORES and PRECISION != "ieee":
        return _mm_emulated(a.to(b.dtype), b, PRECISION, ACC)
    else:
        return tl.dot(a.to(b.dtype), b, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def mm_split(a, w, SPLIT_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a`` (M, K) @ ``w`` with ``ACC`` accumulation.  ``SPLIT_K == 1``: ``w`` is (K, N), one dot.
    Else ``w`` is (SPLIT_K, K / SPLIT_K, N) and K is split across a batched dot whose partial
    products are summed: the chunks run on different warps instead of one after another (a
    shorter serial chain per step), and an fp32 FMA dot holds K / SPLIT_K-long rows per thread
    instead of K-long ones (fewer registers)."""
    if SPLIT_K == 1:
        return mm(a, w, PRECISION, ACC, UPCAST_DOT)
    else:
        a3 = tl.permute(tl.reshape(a, (a.shape[0], SPLIT_K, a.shape[1] // SPLIT_K)), (1, 0, 2))
        return tl.sum(mm(a3, w, PRECISION, ACC, UPCAST_DOT), axis=0)


@triton.jit
def load_split(w_ptr, s_n, s_k, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """The right operand of :func:`mm_split`: ``w[k, n]`` at ``w_ptr + n*s_n + k*s_k`` for
    ``n < N``, ``k < K`` (zero elsewhere), as ``(BLOCK_K, BLOCK_N)`` or, with K split in chunks,
    ``(SPLIT_K, BLOCK_K / SPLIT_K, BLOCK_N)``.  (Gate ``g`` of ``W_hh^T``: ``w_ptr`` at row
    ``g*H``, ``s_n`` the row stride, ``s_k`` the column stride; of ``W_hh``: the strides swapped.)"""
    sk = tl.arange(0, SPLIT_K)[:, None, None]
    kk = tl.arange(0, BLOCK_K // SPLIT_K)[None, :, None]
    nn = tl.arange(0, BLOCK_N)[None, None, :]
    k = sk * (BLOCK_K // SPLIT_K) + kk
    w = tl.load(w_ptr + nn.to(tl.int64) * s_n + k.to(tl.int64) * s_k, mask=(nn < N) & (k < K), other=0.0)
    if SPLIT_K == 1:
        return tl.reshape(w, (BLOCK_K, BLOCK_N))
    else:
        return w


@triton.jit
def time_index(s, seq_len, REVERSE: tl.constexpr):
    """Per-sequence time slot of loop step ``s`` (BLOCK_B,), and whether the sequence is active."""
    active = s < seq_len
    if REVERSE:
        t = seq_len - 1 - s
    else:
        t = seq_len * 0 + s
    return tl.where(active, t, s).to(tl.int64), active


@triton.jit
def load_gates(ptrs, H, mask, G: tl.constexpr):
    """The ``G`` gate blocks at ``ptrs + g*H`` (storage dtype, 0 outside ``mask``)."""
    gates = ()
    for g in tl.static_range(G):
        gates = gates + (tl.load(ptrs + g * H, mask=mask, other=0.0),)
    return gates


@triton.jit
def store_saved(sv_t, H, keep, mask, saved, S: tl.constexpr):
    """Store the cell's ``S`` saved tensors of one step at ``sv_t + k*H``; rows outside ``keep``
    (inactive sequences) get 0."""
    sdt = sv_t.dtype.element_ty
    for k in tl.static_range(S):
        tl.store(sv_t + k * H, tl.where(keep, saved[k], 0.0).to(sdt), mask=mask)


@triton.jit
def backward_step_inputs(saved_raw, h_new, h_prev, c_prev, d_cs, dm, dc, has_prev, h_init, c_init,
                         S: tl.constexpr, READ_H_NEW: tl.constexpr, READ_H_PREV: tl.constexpr,
                         HAS_C: tl.constexpr, HAS_DCS: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """What a backward step's cell maths read, in ``ACC``, from the step's loads (storage dtype):
    ``(saved, h_t, h_{t-1}, c_{t-1}, dc)`` -- the previous states are the initial ones where the
    step has no predecessor, tensors the cell does not read are placeholders (``dm``, ``dc``), and
    ``dc`` gains the step's own ``dc_t`` (``HAS_DCS``: ``c_t`` was an output of the forward)."""
    saved = ()
    for k in tl.static_range(S):
        saved = saved + (saved_raw[k].to(ACC),)
    if READ_H_NEW:
        h_new = h_new.to(ACC)
    else:
        h_new = dm
    if READ_H_PREV:
        h_prev = tl.where(has_prev, h_prev.to(ACC), h_init)
    else:
        h_prev = dm
    if HAS_C:
        c_prev = tl.where(has_prev, c_prev.to(ACC), c_init)
    else:
        c_prev = dc
    if HAS_DCS:
        dc = dc + d_cs.to(ACC)
    return saved, h_new, h_prev, c_prev, dc


# ---------------------------------------------------------------------------------------------
# launches and their results (every tier)


@dataclass
class Launch:
    """One kernel launch as data: what the launchers run and what the kernel report compiles."""

    kernel: Any  # a @triton.jit kernel
    grid: tuple[int, ...]
    args: tuple  # positional arguments
    kwargs: dict[str, Any]  # constexprs and launch options (num_warps, ...)
    name: str  # counted in _runtime.LAUNCHES

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)
        _runtime.count_launch(self.name)


def zoneout_args(cell, zoneout: torch.Tensor | float | None) -> tuple[torch.Tensor | None, float | None, int]:
    """``(zm, zkeep, ZONEOUT)`` of a launch: a ``(T, B, H)`` keep mask (training, ``ZONEOUT`` 1),
    a keep probability (evaluation: the mask's expectation, 2) or none (0).  What a launch does
    not use is ``None``: a compile-time constant, no kernel argument."""
    if zoneout is None:
        return None, None, 0
    if not cell.zoneout:
        raise ValueError(f"cell {cell.mode} has no zoneout")
    if isinstance(zoneout, torch.Tensor):
        return row_major(zoneout), None, 1
    return None, float(zoneout), 2


def check_params(cell, params: torch.Tensor | None, H: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The extended cell's parameter vector ``(NPRM*H,)``, contiguous in the accumulation dtype."""
    if not cell.params:
        return None
    if params is None or params.shape != (len(cell.params) * H,):
        got = None if params is None else tuple(params.shape)
        raise ValueError(f"cell {cell.mode} needs params of shape ({len(cell.params)}*{H},) "
                         f"({', '.join(cell.params)}), got {got}")  # fmt: skip
    return params.to(acc_dtype(dtype)).contiguous()


def flags(**optional: torch.Tensor | None) -> dict[str, bool]:
    """``HAS_<NAME>`` for each optional tensor: whether it was given."""
    return {f"HAS_{name.upper()}": t is not None for name, t in optional.items()}


@dataclass
class ForwardResult:
    out: torch.Tensor  # (T, B, P)
    h_n: torch.Tensor  # (B, P)
    c_n: torch.Tensor | None  # (B, H), cells with a cell state
    saved: torch.Tensor | None  # (T, B, S*H) when saved for the backward
    m: torch.Tensor | None  # (T, B, H) the output before the projection, projected and saved
    cs: torch.Tensor | None = None  # (T, B, H) c_t of every step, 0 at padding (asked for: ``states``)


@dataclass
class BackwardResult:
    d_gx: torch.Tensor  # (T, B, G*H) gradient of the gate pre-activations' input parts, 0 at padding
    d_gh_inner: torch.Tensor | None  # (T, B, N*H) inner-bias gates (extended cells: every gate): d(recurrent part)
    d_h: torch.Tensor | None  # (T, B, P) projected LSTM: total gradient of h_t
    d_h0: torch.Tensor  # (B, P)
    d_c0: torch.Tensor | None  # (B, H) cells with a cell state
    d_prm: torch.Tensor | None = None  # (T, B, NPRM*H) extended cells: each step's share of dL/dprm, 0 at padding


def initial_states(res: ForwardResult, h0: torch.Tensor | None, c0: torch.Tensor | None) -> ForwardResult:
    """An empty sequence or batch: the final states are the initial ones (zeros when not given)."""
    res.h_n.copy_(h0) if h0 is not None else res.h_n.zero_()
    if res.c_n is not None:
        res.c_n.copy_(c0) if c0 is not None else res.c_n.zero_()
    return res


def final_gradients(res: BackwardResult, grads) -> BackwardResult:
    """An empty sequence or batch: the initial states' gradients are the final states' ones."""
    res.d_h0.copy_(grads.d_hn)
    if res.d_c0 is not None:
        res.d_c0.copy_(grads.d_cn)
    return res


def run_forward(launch: Launch | None, res: ForwardResult, call) -> ForwardResult:
    """Run a tier's forward ``launch`` into ``res`` (its ``forward_launch``'s pair); ``None``: an
    empty call, whose final states are ``call``'s initial ones."""
    if launch is None:
        return initial_states(res, call.h0, call.c0)
    launch.run()
    return res


def run_backward(launch: Launch | None, res: BackwardResult, grads) -> BackwardResult:
    """Run a tier's backward ``launch`` into ``res`` (its ``backward_launch``'s pair); ``None``: an
    empty call, whose initial states' gradients are the final states' ones."""
    if launch is None:
        return final_gradients(res, grads)
    launch.run()
    return res


# ---------------------------------------------------------------------------------------------
# host helpers


def pow2(n: int) -> int:
    """Next power of two ``>= n``, at least 16 (the smallest ``tl.dot`` tile)."""
    return max(16, triton.next_power_of_2(n))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and state dtype for a storage dtype: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def precision(dtype: torch.dtype, fp32_precision: str) -> str:
    """``tl.dot``'s ``input_precision``: the call's ``fp32_precision`` (``"ieee"``, ``"tf32x3"``,
    ``"tf32"``: :data:`fastrnn.kernels.tiers.PRECISIONS`) for fp32 operands, IEEE for every other
    dtype (16-bit operands multiply exactly on tensor cores; fp64 has only IEEE)."""
    return fp32_precision if dtype == torch.float32 else "ieee"


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter multiplies bf16 ``tl.dot`` operands wrongly: upcast them there."""
    return _runtime.INTERPRET and dtype == torch.bfloat16


def row_major(x: torch.Tensor | None) -> torch.Tensor | None:
    """The kernels index the last dimension with stride 1."""
    if x is None or x.stride(-1) == 1:
        return x
    return x.contiguous()


def strides(x: torch.Tensor | None, n: int = 2) -> tuple:
    """The first ``n`` strides of ``x``, or ``None`` for each when ``x`` is absent (a ``None``
    tensor argument becomes a compile-time constant in Triton, and so do its strides)."""
    return tuple(x.stride(i) for i in range(n)) if x is not None else (None,) * n


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@functools.cache
def warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
