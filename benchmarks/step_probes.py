"""The kernels of the per-step floors (:mod:`benchmarks.floors`): what one dependent step of a
recurrence costs at the least, measured on a GPU.

* :func:`grid_sync_loop_kernel`: tier 2's own grid barrier
  (:func:`fastrnn.kernels.persistent.grid_barrier`) in a loop, one program per SM: what a step
  spread over the whole GPU pays for synchronisation, and nothing else;
* :func:`cta_loop_kernel`: one program, a dependent FMA and a CTA barrier per step;
* :func:`cta_step_kernel`: one warp, the smallest dependent step on tensor cores (a 16 x 16 fp16
  state times a resident 16 x 16 weight tile, tanh, the state back into the product's operand
  layout): the chain every on-chip recurrence step contains.
"""

import triton
import triton.language as tl

from fastrnn.kernels.common import tanh
from fastrnn.kernels.persistent import grid_barrier


@triton.jit
def grid_sync_loop_kernel(sync_ptr, steps, max_spin, NUM_PROGRAMS: tl.constexpr):
    # sync_ptr: (64,) int32 zeros: the counter at 0, the timeout flag at 32.
    budget = max_spin
    for s in range(steps):
        ok = grid_barrier(sync_ptr, sync_ptr + 32, (s + 1) * NUM_PROGRAMS, budget)
        budget = tl.where(ok, budget, -1)


@triton.jit
def cta_loop_kernel(x_ptr, steps):
    # one program: a dependent FMA and a CTA barrier per step
    offs = tl.arange(0, 128)
    x = tl.load(x_ptr + offs)
    for _ in range(steps):
        x = x * 0.5 + 1.0
        tl.debug_barrier()
    tl.store(x_ptr + offs, x)


@triton.jit
def cta_step_kernel(h_ptr, w_ptr, steps):
    # h: (16, 16) fp16, w: (16, 16) fp16 resident; h <- tanh(h @ w) each step
    r = tl.arange(0, 16)
    w = tl.load(w_ptr + r[:, None] * 16 + r[None, :])
    h = tl.load(h_ptr + r[:, None] * 16 + r[None, :])
    for _ in range(steps):
        h = tanh(tl.dot(h, w, out_dtype=tl.float32)).to(tl.float16)
    tl.store(h_ptr + r[:, None] * 16 + r[None, :], h)
