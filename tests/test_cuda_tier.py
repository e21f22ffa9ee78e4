"""The CUDA cluster tier (tier 4, ``fastrnn/kernels/cluster.py``, ``kernels/cuda/``).

On a CPU:

* the kernel body runs in the host simulator (``kernels/cuda/cluster_sim.hpp``: every thread of every
  CTA of a cluster in lockstep, ldmatrix/mma.sync/st.async/mbarriers modelled from the PTX ISA)
  against ``fastrnn.reference`` in float64: every cell, fp16 and bf16, dense and variable lengths,
  reverse, initial states, forward and backward;
* mutants of the kernel's index and protocol code (a swapped fragment index, an off-by-one reverse
  time index, a single exchange buffer, a push without its barrier, ...) must fail that check;
* nvcc compiles the kernels for sm_90a and the SASS of a step holds what the design plans (one
  mbarrier wait, no cluster barrier, no local memory, the planned mma count), within the SM's
  shared memory and registers;
* without nvcc the tier is unavailable with one line and nothing else changes;
* the verification record is written and read back.

On an H100/H200 (``gpu`` tests): the tier forced through the modules against a float64 oracle
within twice cuDNN's error (``python -m benchmarks.cluster_check`` runs them first).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import fastrnn
from fastrnn import reference
from fastrnn.kernels import _runtime, cells, cluster, tiers
from fastrnn.kernels.call import Gradients, RecurrenceCall, allocate, backward_shapes, forward_shapes
from fastrnn.kernels.common import BackwardResult, ForwardResult

NO_CXX = "no C++ compiler (g++) to build the cluster simulator"
NO_NVCC = "nvcc is not installed here: the sm_90a compile checks need it"


def _cfg(mode, dtype, kernel, H, C, BT, NW, WM, KREG, AS=2, reduce=False) -> cluster.ClusterConfig:
    cfg = cluster.ClusterConfig(mode, dtype, kernel, H, C, BT, NW, WM, KREG, AS, reduce)
    cfg.check()
    return cfg


#: Simulated configurations per (cell, dtype): (forward, backward).  Small sizes, chosen so that
#: between them they take every path of the kernel: A fragments in registers only, in shared memory
#: only and split (KREG 0 < KSW), K split across warps (WK > 1), one and two n-tiles (BT 8/16),
#: several pairs per thread, one and two accumulator sets, clusters of 1, 2, 3, 4 and 16 CTAs.
SIM_CONFIGS = {
    ("RNN_TANH", "fp16"): (_cfg("RNN_TANH", "fp16", "fwd", 32, 2, 8, 2, 1, 1), _cfg("RNN_TANH", "fp16", "bwd", 32, 2, 8, 2, 1, 0)),
    ("RNN_RELU", "bf16"): (_cfg("RNN_RELU", "bf16", "fwd", 64, 4, 16, 1, 1, 2), _cfg("RNN_RELU", "bf16", "bwd", 64, 4, 16, 1, 1, 4, 1)),
    ("LSTM", "fp16"): (_cfg("LSTM", "fp16", "fwd", 64, 4, 16, 2, 2, 1), _cfg("LSTM", "fp16", "bwd", 64, 4, 16, 4, 1, 2)),
    ("LSTM", "bf16"): (_cfg("LSTM", "bf16", "fwd", 48, 3, 8, 4, 4, 1), _cfg("LSTM", "bf16", "bwd", 48, 3, 8, 4, 1, 1)),
    ("GRU", "fp16"): (_cfg("GRU", "fp16", "fwd", 48, 1, 8, 3, 3, 1), _cfg("GRU", "fp16", "bwd", 48, 1, 8, 3, 3, 4, 1)),
    ("GRU", "bf16"): (_cfg("GRU", "bf16", "fwd", 64, 4, 8, 4, 1, 0), _cfg("GRU", "bf16", "bwd", 64, 4, 8, 4, 1, 1)),
}  # fmt: skip
#: The backward's reduce-scatter exchange (fp32 partial sums of dh sent to each unit's CTA), with the
#: same forwards; GRU H = 48 is a cluster of one CTA (its exchange stays in the CTA).
SIM_REDUCE = {
    ("RNN_TANH", "fp16"): _cfg("RNN_TANH", "fp16", "bwd", 32, 2, 8, 2, 2, 0, 1, True),
    ("LSTM", "fp16"): _cfg("LSTM", "fp16", "bwd", 64, 4, 16, 2, 2, 2, 2, True),
    ("GRU", "fp16"): _cfg("GRU", "fp16", "bwd", 48, 1, 8, 3, 3, 4, 2, True),
    ("GRU", "bf16"): _cfg("GRU", "bf16", "bwd", 64, 4, 8, 2, 2, 1, 2, True),
}
#: A cluster of 16 CTAs (the non-portable size) at a size the tier serves.
SIM_C16 = (_cfg("LSTM", "fp16", "fwd", 256, 16, 8, 2, 2, 4), _cfg("LSTM", "fp16", "bwd", 256, 16, 8, 2, 1, 8))
ALL_SIM = [c for pair in SIM_CONFIGS.values() for c in pair] + list(SIM_REDUCE.values()) + list(SIM_C16)

#: Largest error against float64 (relative to the reference's largest magnitude, at least 1) that
#: the simulated kernel may show after the few steps simulated: the 16-bit storage and exchange of
#: h, dpre and the inputs.  An index or protocol error is off by O(1) (or NaN).
SIM_TOL = {"fp16": 4e-3, "bf16": 3e-2}


def _sim(configs=None, header_dir=None) -> cluster.Simulator:
    if cluster.host_compiler() is None:
        pytest.skip(NO_CXX)
    return cluster.simulator(configs or ALL_SIM, header_dir=header_dir)


@pytest.fixture(scope="module")
def sim():
    return _sim()


def _case(mode, dtype, H, T=5, B=10, varlen=False, reverse=False, h0=False, seed=0, states=False, save=True):
    """A layer's call (CPU tensors in ``dtype``) and its gx: weights like torch.nn's init."""
    g = torch.Generator().manual_seed(seed)
    G, dt = cells.get(mode).G, cluster.TORCH_DTYPES[dtype]
    k = H**-0.5
    w = ((torch.rand(G * H, H, generator=g) * 2 - 1) * k).to(dt)
    gx = (torch.randn(T, B, G * H, generator=g) * 0.5).to(dt)
    b_hh = ((torch.rand(G * H, generator=g) * 2 - 1) * k).to(dt) if cells.get(mode).inner_bias else None
    h0_ = (torch.randn(B, H, generator=g) * 0.5).to(dt) if h0 else None
    c0_ = (torch.randn(B, H, generator=g) * 0.5).to(dt) if h0 and cells.get(mode).has_cell_state else None
    lengths = None
    if varlen:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
    call = RecurrenceCall(mode, T, B, w, h0_, c0_, lengths, b_hh, None, reverse, save)
    return (dataclasses.replace(call, states=True) if states else call), gx


def _reference(call: RecurrenceCall, gx: torch.Tensor):
    """``fastrnn.reference`` in float64 on the same (16-bit) inputs: gx as the input with W_ih = I."""
    GH = gx.shape[2]
    b = None
    if call.b_hh is not None:  # only the inner-bias gates' recurrent biases reach the kernel
        b = torch.zeros(GH, dtype=torch.float64)
        for g in call.cell.inner_gates:
            b[g * call.H : (g + 1) * call.H] = call.b_hh[g * call.H : (g + 1) * call.H].double()
    d = lambda t: None if t is None else t.double()
    return reference.layer_forward(call.mode, gx.double(), torch.eye(GH, dtype=torch.float64), call.w_hh.double(),
                                   None, b, d(call.h0), d(call.c0), lengths=call.lengths, reverse=call.reverse)  # fmt: skip


class Guarded:
    """Tensors for the simulator with a guard zone as large as the tensor on each side, filled with
    a sentinel: the kernel's global memory is plain host memory there, so a read out of bounds
    reads the sentinel (a wrong result) and a write out of bounds lands in a guard, which
    :meth:`check` reports (instead of corrupting the heap)."""

    SENTINEL = -1024.0

    def __init__(self):
        self.buffers: list[tuple[torch.Tensor, int]] = []

    def empty(self, shape, dtype, fill=float("nan")):
        n = max(1, int(torch.Size(shape).numel()))
        buf = torch.full((3 * n,), self.SENTINEL if dtype.is_floating_point else -(2**40), dtype=dtype)
        buf[n : 2 * n] = fill if dtype.is_floating_point else -1
        self.buffers.append((buf, n))
        return buf[n : n + int(torch.Size(shape).numel())].view(shape)

    def copy(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        out = self.empty(t.shape, t.dtype)
        out.copy_(t)
        return out

    def check(self) -> None:
        for buf, n in self.buffers:
            guards = torch.cat([buf[:n], buf[2 * n :]])
            want = self.SENTINEL if buf.dtype.is_floating_point else -(2**40)
            if not bool((guards == want).all()):
                raise RuntimeError("the kernel wrote outside a tensor (a guard zone changed)")


def _guarded_call(mem: Guarded, call: RecurrenceCall, gx: torch.Tensor) -> tuple[RecurrenceCall, torch.Tensor]:
    c = dataclasses.replace(call, w_hh=mem.copy(call.w_hh), h0=mem.copy(call.h0), c0=mem.copy(call.c0),
                            lengths=mem.copy(call.lengths), b_hh=mem.copy(call.b_hh))  # fmt: skip
    return c, mem.copy(gx)


def _run_forward(s: cluster.Simulator, cfg, call, gx, seed=1) -> ForwardResult:
    mem = Guarded()
    call, gx = _guarded_call(mem, call, gx)
    res = ForwardResult(**allocate(forward_shapes(call), mem.empty))
    s.run(cfg, cluster.forward_params(call, gx, res, call.lengths), -(-call.B // cfg.batch_tile), seed)
    mem.check()
    return res


def _run_backward(s: cluster.Simulator, cfg, call, res: ForwardResult, seed=2):
    mem = Guarded()
    call, _ = _guarded_call(mem, call, res.out)
    g = torch.Generator().manual_seed(seed + 100)
    rnd = lambda t: None if t is None else mem.copy(torch.randn(t.shape, generator=g).to(t.dtype))
    grads = Gradients(rnd(res.out), rnd(res.h_n), rnd(res.c_n), rnd(res.cs), mem.copy(res.out), mem.copy(res.saved))
    bres = BackwardResult(**allocate(backward_shapes(call), mem.empty))
    s.run(cfg, cluster.backward_params(call, grads, bres, call.lengths), -(-call.B // cfg.batch_tile), seed)
    mem.check()
    return grads, bres


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.isnan().any():
        return float("inf")
    return ((got.double() - want).abs().max() / max(1.0, want.abs().max().item())).item()


def _check_layer(s: cluster.Simulator, fwd_cfg, bwd_cfg, case: dict, seed: int = 1) -> dict[str, float]:
    """Simulate the forward and backward of one layer; the relative errors of every output against
    the float64 reference (hand-written BPTT)."""
    call, gx = _case(fwd_cfg.mode, fwd_cfg.dtype, fwd_cfg.hidden_size, **case)
    res = _run_forward(s, fwd_cfg, call, gx, seed)
    out, h_n, c_n, cache = _reference(call, gx)
    errs = dict(out=_err(res.out, out), h_n=_err(res.h_n, h_n))
    if c_n is not None:
        errs["c_n"] = _err(res.c_n, c_n)
    # the saved tensors of every active step (padding slots are 0)
    S, H = call.cell.S, call.H
    if S and call.saving:
        want = torch.zeros(call.T, call.B, S * H, dtype=torch.float64)
        rows = torch.arange(call.B)
        for st in cache.steps:
            t, act = st["t"], st["active"]
            vals = torch.cat([st["saved"][name] for name in call.cell.saved], dim=1)
            want[t[act], rows[act]] = vals[act]
        errs["saved"] = _err(res.saved, want)
    if res.cs is not None:  # return_states: every step's c_t, 0 at padding
        errs["cs"] = _err(res.cs, cache.c_states.double())
    if not call.saving:
        assert res.saved is None
        return errs
    grads, bres = _run_backward(s, bwd_cfg, call, res, seed + 1)
    if "h_new" in call.cell.reads:
        # RNN cells: the backward's derivative reads h_t (relu's is a step at 0), so the float64 BPTT
        # is linearised at the kernel's own h_t: a pre-activation within rounding of 0 would
        # otherwise take the other branch in float64
        rows = torch.arange(call.B)
        for st in cache.steps:
            act = st["active"][:, None]
            st["h"] = torch.where(act, res.out[st["t"], rows].double(), st["h"])
    d = lambda t: None if t is None else t.double()
    g = reference.layer_backward(cache, d(grads.d_out), d(grads.d_hn), d(grads.d_cn), d(grads.d_cs))
    errs["d_gx"] = _err(bres.d_gx, g["x"])
    errs["d_h0"] = _err(bres.d_h0, g["h0"])
    if bres.d_c0 is not None:
        errs["d_c0"] = _err(bres.d_c0, g["c0"])
    if bres.d_gh_inner is not None:  # GRU: the n gate's recurrent part, r * dn
        dn = [(st["t"], st["active"], st) for st in cache.steps]
        want = torch.zeros_like(bres.d_gh_inner, dtype=torch.float64)
        # d(r * (W_hn h + b_hn)) = r * dn: from the reference's own gate gradient of the input part
        d_px_n = g["x"][..., 2 * H : 3 * H]
        for t, act, st in dn:
            rows = torch.arange(call.B)
            want[t[act], rows[act]] = (d_px_n[t, rows] * st["saved"]["r"])[act]
        errs["d_gh_inner"] = _err(bres.d_gh_inner, want)
    return errs


CASES = {
    "dense": dict(),
    "varlen-reverse-h0": dict(varlen=True, reverse=True, h0=True),
    "varlen-h0-B19": dict(varlen=True, h0=True, B=19),  # two batch tiles, the second partly empty
}


def test_params_struct_and_shared_memory_layout_match_the_kernel(sim):
    """The launcher's ctypes ``Params`` and ``ClusterConfig.layout`` are mirrors of the C++ structs."""
    layout = sim.params_layout()
    assert layout[0] == ctypes_sizeof(cluster.Params)
    assert layout[1:] == [getattr(cluster.Params, name).offset for name, _ in cluster.Params._fields_]
    for cfg in ALL_SIM:
        assert sim.smem_bytes(cfg) == cfg.smem_bytes, cfg.name()


def ctypes_sizeof(t) -> int:
    import ctypes

    return ctypes.sizeof(t)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("key", list(SIM_CONFIGS), ids=[f"{m}-{d}" for m, d in SIM_CONFIGS])
def test_simulated_cluster_matches_float64_reference(sim, key, case):
    """Forward (out, h_n, c_n, the saved tensors, zeros at padding) and backward (d_gx, GRU's
    d_gh_inner, d_h0, d_c0) of the kernel body, simulated on the host, against fastrnn.reference."""
    fwd, bwd = SIM_CONFIGS[key]
    errs = _check_layer(sim, fwd, bwd, CASES[case])
    bad = {k: v for k, v in errs.items() if not v <= SIM_TOL[fwd.dtype]}
    assert not bad, f"{fwd.name()} / {bwd.name()} {case}: {bad}"


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("key", list(SIM_REDUCE), ids=[f"{m}-{d}" for m, d in SIM_REDUCE])
def test_simulated_reduce_scatter_backward_matches_float64_reference(sim, key, case):
    """The backward with the reduce-scatter exchange, the same check."""
    fwd, bwd = SIM_CONFIGS[key][0], SIM_REDUCE[key]
    errs = _check_layer(sim, fwd, bwd, CASES[case])
    bad = {k: v for k, v in errs.items() if not v <= SIM_TOL[fwd.dtype]}
    assert not bad, f"{fwd.name()} / {bwd.name()} {case}: {bad}"


@pytest.mark.parametrize("key", [("LSTM", "fp16"), ("LSTM", "bf16")], ids=["LSTM-fp16", "LSTM-bf16"])
def test_simulated_states_and_inference(sim, key):
    """return_states (every step's c_t forward, its gradient d_cs backward) and the inference
    forward (nothing saved)."""
    fwd, bwd = SIM_CONFIGS[key]
    for case in (dict(varlen=True, reverse=True, h0=True, states=True), dict(varlen=True, save=False)):
        errs = _check_layer(sim, fwd, bwd, case)
        assert ("cs" in errs) == case.get("states", False)
        assert all(v <= SIM_TOL[fwd.dtype] for v in errs.values()), (case, errs)


def test_simulated_timeout_ends_the_launch_with_nan_and_status(sim):
    """A CTA whose exchange times out (injected: its third wait) finishes the launch without waiting
    again: no deadlock, Params.status = 1, its units NaN from that step on, every unit from the next
    (the NaN state it pushes), the steps before untouched."""
    fwd, _ = SIM_CONFIGS[("LSTM", "fp16")]
    mem = Guarded()
    call, gx = _guarded_call(mem, *_case("LSTM", "fp16", 64, T=6))
    res = ForwardResult(**allocate(forward_shapes(call), mem.empty))
    status = torch.zeros(1, dtype=torch.int32)
    sim.inject_timeout(cta=1, wait=3)  # the wait of step 3
    try:
        sim.run(fwd, cluster.forward_params(call, gx, res, None, status), -(-call.B // fwd.batch_tile))
    finally:
        sim.inject_timeout()
    mem.check()
    out, U = res.out.float(), fwd.U
    assert status.item() == 1
    assert torch.isfinite(out[:3]).all()
    assert out[3, :, U : 2 * U].isnan().all() and torch.isfinite(out[3, :, :U]).all()
    assert out[4:].isnan().all() and res.h_n.isnan().all()


def test_simulated_cluster_of_16_ctas(sim):
    """The non-portable cluster size at a size the tier serves (LSTM H = 256: 16 units per CTA)."""
    errs = _check_layer(sim, *SIM_C16, dict(varlen=True, reverse=True, h0=True, T=4, B=9))
    assert all(v <= SIM_TOL["fp16"] for v in errs.values()), errs


def test_simulated_schedules_do_not_change_the_result(sim):
    """Other interleavings of the CTAs and warps (the scheduler's seed) give bit-identical outputs:
    the exchange has no race the simulator can find."""
    fwd, _ = SIM_CONFIGS[("LSTM", "fp16")]
    call, gx = _case("LSTM", "fp16", 64, varlen=True, h0=True)
    outs = [_run_forward(sim, fwd, call, gx, seed).out for seed in (1, 2, 3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ---------------------------------------------------------------------------------------------
# Mutants: each is a plausible slip in the kernel's index or protocol code; the simulator check
# above must fail for every one (its finding, or an error above the tolerance).

MUTANTS = {
    # name: (file, original, mutant, what it stands for)
    "a-fragment-layout": ("cluster_common.cuh", "row = (lane >> 2) + 8 * (r & 1);\n  col = 2 * (lane & 3) + e + 8 * (r >> 1);",
                          "row = (lane >> 2) + 8 * (r >> 1);\n  col = 2 * (lane & 3) + e + 8 * (r & 1);",
                          "the mma A fragment's registers 1 and 2 swapped"),
    "reverse-time-off-by-one": ("cluster_common.cuh", "reverse ? len - 1 - s : (i64)s", "reverse ? len - s : (i64)s",
                                "the reverse direction reads one step late"),
    "single-exchange-buffer": ("cluster_common.cuh", "FR_FN int exchange_buffer(int i) { return (i + 1) & 1; }",
                               "FR_FN int exchange_buffer(int i) { return 0; }",
                               "one gathered buffer instead of two"),
    "push-before-stage-complete": ("cluster_kernel.cuh",
                                   "    if (tid == 0) hw.mbar_expect(sm.bar(nxt), CF::BYTES);\n    hw.sync();",
                                   "    if (tid == 0) hw.mbar_expect(sm.bar(nxt), CF::BYTES);",
                                   "a CTA pushes its slice before its other threads have written their part"),
    "gate-offset": ("cluster_common.cuh", "const int g = m / CF::U, u = m % CF::U;", "const int g = m % CF::G, u = m / CF::G;",
                    "gate-major rows read as unit-major"),
    "d-fragment-layout": ("cluster_common.cuh", "row = (lane >> 2) + 8 * (r >> 1);\n  col = 2 * (lane & 3) + (r & 1);",
                          "row = (lane >> 2) + 8 * (r & 1);\n  col = 2 * (lane & 3) + (r >> 1);",
                          "the accumulator's rows and columns mixed up"),
    "ldmatrix-row": ("cluster_common.cuh", "return (nt * 8 + (lane & 7)) * CF::LDV + k0 + 8 * ((lane >> 3) & 1);",
                     "return (nt * 8 + (lane >> 2)) * CF::LDV + k0 + 8 * ((lane >> 3) & 1);",
                     "ldmatrix row addresses from the wrong lanes"),
    "push-slot": ("cluster_common.cuh", "dst = b * CF::LDV + g * CF::H + rank * CF::U + u;",
                  "dst = b * CF::LDV + g * CF::H + dst_rank * CF::U + u;",
                  "a CTA's slice lands in the receiver's own slot"),
    "no-expect-tx": ("cluster_kernel.cuh", "    if (tid == 0) hw.mbar_expect(sm.bar(nxt), CF::BYTES);\n", "",
                     "the receiving mbarrier is never armed"),
    "wait-parity": ("cluster_common.cuh", "FR_FN u32 exchange_parity(int i) { return (u32)((i >> 1) & 1); }",
                    "FR_FN u32 exchange_parity(int i) { return (u32)(i & 1); }",
                    "waits on the wrong phase of its barrier"),
    "backward-previous-step": ("cluster_kernel.cuh",
                               "const i64 tp = reverse ? t + 1 : t - 1;\n    const bool prev = act && tp >= 0 && tp < len[j];\n    ld_dout",
                               "const i64 tp = reverse ? t - 1 : t + 1;\n    const bool prev = act && tp >= 0 && tp < len[j];\n    ld_dout",
                               "the backward reads h_{t-1}/c_{t-1} from the wrong neighbour"),
    "reduce-slot": ("cluster_common.cuh", "dst = (rank * CF::BT + b) * CF::U + u;", "dst = (dst_rank * CF::BT + b) * CF::U + u;",
                    "reduce-scatter: partial sums land in the receiver's own slot"),
    "reduce-rows": ("cluster_common.cuh", "src = b * CF::LDM + dst_rank * CF::U + u;", "src = b * CF::LDM + rank * CF::U + u;",
                    "reduce-scatter: a CTA sends its own units' rows to everyone"),
    "gru-inner-bias-gate": ("cluster_kernel.cuh", "(g == CellT::INNER ? bhn[j] : 0.0f)", "(g == 1 ? bhn[j] : 0.0f)",
                            "GRU's b_hn added to the z gate"),
}  # fmt: skip
DEFAULT_MUTANTS = (
    "a-fragment-layout",
    "reverse-time-off-by-one",
    "single-exchange-buffer",
    "push-before-stage-complete",
)


def _mutant_fails(tmp_path: Path, name: str) -> str:
    """Build the simulator from a mutated copy of the CUDA sources and run the check; returns how it
    failed."""
    file, old, new, _ = MUTANTS[name]
    src = tmp_path / "cuda"
    shutil.copytree(cluster.CUDA_DIR, src)
    text = (src / file).read_text()
    assert text.count(old) >= 1, f"mutant {name}: its original text is no longer in {file}"
    (src / file).write_text(text.replace(old, new))
    key = ("GRU", "fp16") if name == "gru-inner-bias-gate" else ("LSTM", "fp16")
    fwd, bwd = SIM_CONFIGS[key]
    if name.startswith("reduce-"):
        bwd = SIM_REDUCE[key]
    s = _sim([fwd, bwd], header_dir=src)
    try:
        errs = _check_layer(s, fwd, bwd, dict(varlen=True, reverse=True, h0=True))
    except RuntimeError as exc:  # the simulator's own finding: deadlock, race, out-of-range access
        return str(exc)
    bad = {k: v for k, v in errs.items() if not v <= SIM_TOL["fp16"]}
    assert bad, f"mutant {name} ({MUTANTS[name][3]}) was not caught: {errs}"
    return f"errors {bad}"


@pytest.mark.parametrize("name", DEFAULT_MUTANTS)
def test_mutant_is_caught(tmp_path, name):
    assert _mutant_fails(tmp_path, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in MUTANTS if m not in DEFAULT_MUTANTS])
def test_mutant_is_caught_slow(tmp_path, name):
    assert _mutant_fails(tmp_path, name)


# ---------------------------------------------------------------------------------------------
# Configurations


def test_every_layer_the_tier_accepts_has_configurations_that_fit():
    """Both directions, both batch tiles: shared memory within 227 KB (with the 1 KB the cluster
    kernels reserve), units per CTA a multiple of 16, the warps splitting the tiles evenly, and the
    C++ rules (ClusterConfig.check)."""
    accepted = 0
    for mode in cluster.CELL_IDS:
        for dtype in (torch.float16, torch.bfloat16):
            for H in range(16, 1025, 16):
                if cluster._static_reason(mode, H, 0, dtype):
                    continue
                accepted += 1
                for kernel in ("fwd", "bwd"):
                    for bt in (8, 16):
                        if bt == 16 and not cluster.layouts(mode, H, dtype, kernel, bt):
                            continue  # 8 sequences a cluster only (the layer's largest sizes)
                        cfg = cluster.choose_config(mode, H, dtype, kernel, bt)
                        cfg.check()
                        assert cfg.smem_bytes + cluster.RESERVED_SMEM <= cluster.SMEM_LIMIT
                        assert cfg.cluster == cluster.cluster_size(H) and cfg.U % 16 == 0
    assert accepted > 100
    assert cluster._static_reason("LSTM", 512, 0, torch.float16) is None
    assert "multiple of 16" in cluster._static_reason("LSTM", 100, 0, torch.float16)
    assert "float16 and bfloat16" in cluster._static_reason("LSTM", 256, 0, torch.float32)
    assert "proj_size" in cluster._static_reason("LSTM", 256, 128, torch.float16)
    assert "LN_LSTM" in cluster._static_reason("LN_LSTM", 64, 0, torch.float16)


def test_configuration_is_a_tier_config():
    cfg = cluster.config("LSTM", 256, 0, torch.float16, "fwd", 232448, "ieee")
    assert cfg.batch_tile == 16 and cfg.cluster == 16
    assert cfg.on_chip_bytes("LSTM", 256, 0, torch.float16) == 4 * 256 * 256 * 2 // 16
    assert cfg.override(256, torch.float16, block_b=8).batch_tile == 8
    with pytest.raises(ValueError, match="split_k"):
        cfg.override(256, torch.float16, split_k=2)
    assert cfg.with_batch_tile(8) == cluster.choose_config("LSTM", 256, torch.float16, "fwd", 8)
    if hasattr(tiers, "from_key") and hasattr(tiers, "plan_layer"):
        plan = tiers.plan_layer("LSTM", 256, 0, torch.float16, cluster.NUMBER)
        key = plan.key
        tiers._BY_KEY.pop(key, None)  # read back from the string alone
        assert tiers.from_key(key).forward == plan.forward and tiers.from_key(key).backward == plan.backward


def test_registered_between_tier_1_and_tier_2():
    tier = tiers.get_tier(cluster.NUMBER)
    assert tier.automatic and tier.rank == 1.5 and tier.name == cluster.TIER_NAME
    assert tier.barriers_per_step == 0 and tier.verified is cluster.verification
    assert tier.compiled is None and tier.report_rows is cluster.report_rows  # the report asks it for its rows
    assert tier.device_sources == cluster.DEVICE_SOURCES
    assert tier.unsupported("LSTM", 100, 0, torch.float16, False, None) is not None  # a release is ignored


@pytest.mark.parametrize("verified", [False, True])
def test_chosen_automatically_only_where_verified(verified, monkeypatch):
    """A kernel that has never passed its tests on a GPU is never chosen automatically: an LSTM too
    large for tier 1 goes to the cluster tier only where its verification record says so, else to
    tier 2 with the reason.  Kills: ``choose_tier`` not asking ``Tier.verified``."""
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    tier = tiers.get_tier(cluster.NUMBER)
    asked = []

    def verified_here(device):
        asked.append(device)
        return verified, "verified on a test GPU" if verified else "not verified on compute capability 9.0"

    as_on_a_gpu = dataclasses.replace(tier, unsupported=lambda *a, **k: None, device_unsupported=None,
                                      verified=verified_here)  # fmt: skip
    tiers.register(as_on_a_gpu)
    try:
        number, why = tiers.choose_tier("LSTM", 768, 0, torch.float16, device=torch.device("cuda", 1))
        assert asked == [torch.device("cuda", 1)]
        if verified:
            assert number == cluster.NUMBER and "DSMEM (verified on a test GPU)" in why  # explain names the record
        else:
            assert number == 2
            assert f"not verified on compute capability 9.0 (it runs when forced: FASTRNN_TIER={cluster.NUMBER})" in why
        # a layer tier 1 holds never gets that far
        assert tiers.choose_tier("LSTM", 32, 0, torch.float16)[0] == 1
        monkeypatch.setenv("FASTRNN_TIER", str(cluster.NUMBER))  # forced: no record needed
        assert tiers.choose_tier("LSTM", 768, 0, torch.float16)[0] == cluster.NUMBER
    finally:
        tiers.register(tier)


def test_every_tiers_device_sources_are_in_the_kernel_hash():
    """The kernel hash (which keys auto's measurements and the report's cache) covers each tier's
    device code: editing a CUDA source invalidates what was measured with it.  Kills: the CUDA
    sources left out of ``sources.KERNEL_SOURCES``."""
    from fastrnn.kernels import sources

    assert "cluster" in sources.TIER_MODULES
    for tier in tiers.registered().values():
        assert set(tier.device_sources) <= set(sources.KERNEL_SOURCES), tier.name
        assert all((sources.HERE / name).exists() for name in tier.device_sources)
    assert tiers.get_tier(cluster.NUMBER).device_sources


# ---------------------------------------------------------------------------------------------
# Without nvcc, without a GPU


def _no_nvcc(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("FASTRNN_NVCC", raising=False)
    monkeypatch.delenv("CUDA_HOME", raising=False)


def test_without_nvcc_the_tier_says_so_in_one_line(monkeypatch):
    _no_nvcc(monkeypatch)
    assert cluster.nvcc_path() is None
    why = tiers.tier_unsupported(cluster.NUMBER, "LSTM", 256, 0, torch.float16)
    assert why is not None and "nvcc" in why and "\n" not in why
    # the static reasons come first and do not depend on the toolchain
    assert "multiple of 16" in tiers.tier_unsupported(cluster.NUMBER, "LSTM", 100, 0, torch.float16)
    # nothing else changes: the automatic choice, a module, the other tiers
    assert tiers.choose_tier("LSTM", 64, 0, torch.float32, interpreted=True)[0] == 1
    m = fastrnn.LSTM(8, 16)
    assert m(torch.randn(3, 2, 8))[0].shape == (3, 2, 16)
    with pytest.raises(RuntimeError, match="no nvcc"):
        cluster.compile_cubin(cluster.choose_config("LSTM", 256, torch.float16, "fwd"))


def test_forced_tier_without_a_gpu_is_unavailable_not_broken(monkeypatch):
    """FASTRNN_TIER=4 on a machine without the tier: backend='auto' runs torch's code,
    backend='triton' raises BackendUnavailable naming the tier's reason."""
    if torch.cuda.is_available() and tiers.tier_unsupported(cluster.NUMBER, "LSTM", 32, 0, torch.float16) is None:
        pytest.skip("this machine runs the cluster tier")
    monkeypatch.setenv("FASTRNN_TIER", "4")
    x = torch.randn(4, 2, 8)
    assert fastrnn.LSTM(8, 32, backend="auto")(x)[0].shape == (4, 2, 32)
    with pytest.raises(fastrnn.BackendUnavailable, match="cluster tier"):
        fastrnn.LSTM(8, 32, backend="triton")(x)


# ---------------------------------------------------------------------------------------------
# nvcc: the sources compile for sm_90a, and the SASS of a step is what the design plans


def _need_nvcc():
    if cluster.nvcc_path() is None:
        pytest.skip(NO_NVCC)
    if cluster.cuda_tool("nvdisasm") is None or cluster.cuda_tool("cuobjdump") is None:
        pytest.skip("cuobjdump/nvdisasm are not installed here (beside nvcc or in Triton's package)")


def _assert_step_facts(row: dict) -> None:
    cfg_name = row["config"]
    assert row["error"] is None, row["error"]
    assert row["time_loop"] is not None, f"{cfg_name}: no time loop with mma found"
    assert row["loop_local_insts"] == 0, f"{cfg_name}: local memory inside the time loop"
    assert row["shared_ok"], f"{cfg_name}: {row['shared_bytes']} B of shared memory"
    assert row["regs_ok"], f"{cfg_name}: {row['registers']} registers x threads exceed the SM"
    waits, bars = row["planned_waits"], row["planned_cta_barriers"]
    assert row["waits_per_step"] == waits, (
        f"{cfg_name}: {row['waits_per_step']} mbarrier waits per step, planned {waits}"
    )
    assert row["cluster_barriers_per_step"] == 0, f"{cfg_name}: a cluster barrier inside the loop"
    assert row["step_bars"] == bars, f"{cfg_name}: {row['step_bars']} CTA barriers per step, planned {bars}"
    if row["cluster"] > 1:
        assert row["expect_tx"] == 1 and row["st_async"] >= 1, f"{cfg_name}: no expect-tx / st.async in the loop"
    else:
        assert row["expect_tx"] == 0 and row["st_async"] == 0, f"{cfg_name}: st.async in a cluster of one CTA"
    assert row["hmma"] == row["step_mma"], f"{cfg_name}: {row['hmma']} HMMA in the loop, planned {row['step_mma']}"


#: The default run compiles these (a second run reads them from the disk cache).
DEFAULT_COMPILES = [
    ("GRU", torch.float16, 48, "bwd", 8),  # a cluster of one CTA: no st.async
    ("LSTM", torch.float16, 256, "fwd", 8),
    ("LSTM", torch.float16, 256, "bwd", 8),
    ("GRU", torch.bfloat16, 128, "fwd", 16),
    ("RNN_TANH", torch.float16, 512, "bwd", 16),
]


@pytest.mark.parametrize("mode,dtype,H,kernel,bt", DEFAULT_COMPILES, ids=[f"{m}-{d}-H{h}-{k}-bt{b}".replace("torch.", "")
                                                                          for m, d, h, k, b in DEFAULT_COMPILES])  # fmt: skip
def test_compiles_for_sm90a_with_the_planned_step(mode, dtype, H, kernel, bt):
    _need_nvcc()
    row = cluster.report_row(cluster.choose_config(mode, H, dtype, kernel, bt))
    _assert_step_facts(row)
    assert row["spill_stores"] == 0 and row["stack_bytes"] == 0, row


@pytest.mark.slow
def test_every_configuration_compiles_with_the_planned_step():
    """Every cell and dtype at H 128-768, and every hidden size the tier takes (fp16), both
    directions and batch tiles: about 500 compiles, minutes on a cold cache."""
    _need_nvcc()
    bad = []
    for row in cluster.report_rows(cluster.report_configs(full=True, every_size=True), jobs=2):
        try:
            _assert_step_facts(row)
        except AssertionError as exc:
            bad.append(str(exc).splitlines()[0])
    assert not bad, "\n".join(bad)


def test_report_rows_carry_the_kernel_report_keys():
    _need_nvcc()
    (row,) = cluster.report_rows([cluster.choose_config("LSTM", 256, torch.float16, "fwd", 8)])
    # the kernel report's own row description names the same layer
    described = dataclasses.make_dataclass("Row", ["kernel", "cell", "dtype", "hidden_size", "block_b"])
    (again,) = cluster.report_rows([described("fwd", "LSTM", "fp16", 256, 8)])
    assert again["config"] == row["config"]
    for key in ("kernel", "cell", "dtype", "hidden_size", "P", "arch", "variant", "block_b", "num_warps",
                "weight_bytes", "registers", "stack_bytes", "spill_stores", "spill_loads", "local_insts",
                "loop_local_insts", "shared_bytes", "tensor_cores", "step_mma", "step_bars", "est_us", "compile_s",
                "error", "cluster", "waits_per_step", "cluster_barriers_per_step"):  # fmt: skip
        assert key in row, key
    assert "| LSTM | fp16 | 256 | fwd | 8 | 16 |" in cluster.format_rows([row])


def test_the_kernel_report_command_compiles_the_tier(capsys):
    """``python -m fastrnn.kernels.report --tiers 4`` sweeps the tier's sizes for sm_90 only (no
    sm_80 build, no fp32) and prints its nvcc-built rows among the others.  Kills: the report
    handing CUDA rows to Triton's compiler, or sweeping architectures the tier does not build."""
    _need_nvcc()
    from fastrnn.kernels import report

    cfgs = report.configs([1, cluster.NUMBER], cells=["GRU"], dtypes=["fp16", "fp32"], hidden_sizes=[32],
                          archs=[90, 80], kernels=["fwd"])  # fmt: skip
    assert {(c.tier, c.arch, c.dtype) for c in cfgs if c.tier == cluster.NUMBER} == {(cluster.NUMBER, 90, "fp16")}
    assert report.main(["--tiers", "4", "--cells", "GRU", "--dtypes", "fp16", "--hidden", "32", "--kernels",
                        "fwd", "--jobs", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "tier4," in out and " ok" in out and "ERROR" not in out


def test_step_prediction_for_the_target_layer():
    """The calibrated step model's prediction for LSTM fp16 H = 256, B = 16 (two clusters of 8
    sequences): at most 1.0 us a step forward (a prediction; the GPU check measures it)."""
    cfg = cluster.choose_config("LSTM", 256, torch.float16, "fwd", 8)
    assert cluster.predict_step(cfg)["us"] <= 1.0


# ---------------------------------------------------------------------------------------------
# The verification record


def test_verification_record_is_written_and_read(tmp_path):
    path = tmp_path / "verified.json"
    assert cluster.verification(capability="9.0", path=path) == (
        False, f"tier {cluster.NUMBER} has not been verified on compute capability 9.0")  # fmt: skip
    path.write_text(json.dumps({"about": "kept", "records": []}))
    rec = cluster.record_verification(path=path, gpu="NVIDIA H200", capability="9.0", torch="2.11")
    assert json.loads(path.read_text())["about"] == "kept"
    assert rec["kernel_hash"] == cluster.sources_hash() and rec["tier"] == cluster.NUMBER
    ok, why = cluster.verification(capability="9.0", path=path)
    assert ok and "NVIDIA H200" in why
    assert not cluster.verification(capability="10.0", path=path)[0]
    # another build of the sources: not verified
    data = json.loads(path.read_text())
    data["records"][0]["kernel_hash"] = "0123456789abcdef"
    path.write_text(json.dumps(data))
    ok, why = cluster.verification(capability="9.0", path=path)
    assert not ok and "other sources" in why
    # writing again replaces the record of that capability
    cluster.record_verification(path=path, gpu="NVIDIA H100", capability="9.0")
    assert [r["gpu"] for r in cluster.load_verified(path)] == ["NVIDIA H100"]


def test_committed_verification_file_is_well_formed():
    for r in cluster.load_verified():
        assert {"tier", "kernel_hash", "gpu", "capability", "date"} <= set(r)


# ---------------------------------------------------------------------------------------------
# On an H100/H200: the tier forced through the modules, against float64


def _gpu_or_skip(mode: str, H: int, dtype: torch.dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    why = tiers.tier_unsupported(cluster.NUMBER, mode, H, 0, dtype)
    if why:
        pytest.skip(why)


GPU_CASES = [("RNN", "tanh", 128), ("RNN", "relu", 256), ("LSTM", None, 128), ("LSTM", None, 256), ("GRU", None, 256),
             ("LSTM", None, 512), ("GRU", None, 768), ("LSTM", None, 768), ("LSTM", None, 176)]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "family,nonlinearity,H", GPU_CASES, ids=[f"{f}{'-' + n if n else ''}-H{h}" for f, n, h in GPU_CASES]
)
def test_gpu_forced_tier_against_float64(monkeypatch, family, nonlinearity, H, dtype):
    """Forward and every gradient of a bidirectional layer on a packed batch (unsorted lengths,
    T = 64, B = 21: three tiles of 8 or two of 16) through tier 4, against torch.nn in float64:
    within twice torch.nn's (cuDNN's) own error plus the floor of the oracle rule."""
    from helpers import compare_twins, module_inputs, twins

    mode = cells.family_mode(family, nonlinearity)
    _gpu_or_skip(mode, H, dtype)
    monkeypatch.setenv("FASTRNN_TIER", str(cluster.NUMBER))
    kw = dict(bidirectional=True, **({"nonlinearity": nonlinearity} if nonlinearity else {}))
    T, B, I = 64, 21, 32
    fast, ref = twins(family, I, H, dtype=dtype, **kw)
    before = dict(_runtime.LAUNCHES)
    compare_twins(fast, ref, module_inputs(family, kw, T, B, "packed_unsorted", True, I, H, dtype), dtype)
    ran = {k for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert {"cluster_fwd", "cluster_bwd"} <= ran, ran


@pytest.mark.gpu
def test_gpu_exchange_status_is_clean(monkeypatch):
    """With FASTRNN_CLUSTER_CHECK=1 the launcher reads the kernel's status: every exchange completed."""
    _gpu_or_skip("LSTM", 256, torch.float16)
    monkeypatch.setenv("FASTRNN_CLUSTER_CHECK", "1")
    monkeypatch.setenv("FASTRNN_TIER", str(cluster.NUMBER))
    m = fastrnn.LSTM(64, 256, backend="triton").cuda().half()
    out, _ = m(torch.randn(200, 40, 64, device="cuda", dtype=torch.float16))
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# The launch path through the CUDA driver API, against a stand-in libcuda built from cuda.h

FAKE_DRIVER = r"""
#include <cuda.h>
#include <string.h>
static CUlaunchConfig last;
static CUlaunchAttribute last_attr;
static unsigned char last_params[1024];
static int func_attr[64], launches, pushed, loaded_elf, occupancy_attrs;
static CUcontext primary = (CUcontext)0x1234;
CUresult cuInit(unsigned int f) { return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int o) { *d = o; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { *c = primary; return CUDA_SUCCESS; }
CUresult cuCtxPushCurrent_v2(CUcontext c) { ++pushed; return c == primary ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; }
CUresult cuCtxPopCurrent_v2(CUcontext* c) { --pushed; *c = primary; return CUDA_SUCCESS; }
CUresult cuModuleLoadData(CUmodule* m, const void* image) {
  loaded_elf = memcmp(image, "\x7f" "ELF", 4) == 0; *m = (CUmodule)0x55; return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
  if (strcmp(name, "fastrnn_cluster") != 0) return CUDA_ERROR_NOT_FOUND; *f = (CUfunction)0x66; return CUDA_SUCCESS; }
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) { func_attr[a] = v; return CUDA_SUCCESS; }
CUresult cuLaunchKernelEx(const CUlaunchConfig* c, CUfunction f, void** params, void** extra) {
  if (pushed != 1) return CUDA_ERROR_INVALID_CONTEXT;
  last = *c; if (c->numAttrs) last_attr = c->attrs[0];
  memcpy(last_params, params[0], sizeof last_params); ++launches; return CUDA_SUCCESS; }
CUresult cuOccupancyMaxActiveClusters(int* n, CUfunction f, const CUlaunchConfig* c) {
  occupancy_attrs = c->numAttrs == 1 && c->attrs[0].id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
                    && c->attrs[0].value.clusterDim.x == c->gridDimX;
  *n = 7; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult rc, const char** s) { *s = "stand-in error"; return CUDA_SUCCESS; }
void fake_state(unsigned long long* out) {
  out[0] = last.gridDimX; out[1] = last.gridDimY; out[2] = last.gridDimZ; out[3] = last.blockDimX;
  out[4] = last.blockDimY; out[5] = last.blockDimZ; out[6] = last.sharedMemBytes; out[7] = (unsigned long long)last.hStream;
  out[8] = last.numAttrs; out[9] = last_attr.id; out[10] = last_attr.value.clusterDim.x;
  out[11] = last_attr.value.clusterDim.y; out[12] = last_attr.value.clusterDim.z; out[13] = launches;
  out[14] = func_attr[CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES];
  out[15] = func_attr[CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED]; out[16] = loaded_elf;
  out[17] = pushed; out[18] = occupancy_attrs; }
const unsigned char* fake_params(void) { return last_params; }
"""


def _cuda_header_dir() -> Path | None:
    """Where nvcc takes cuda.h from (its dry run's INCLUDES)."""
    import re
    import subprocess

    nvcc = cluster.nvcc_path()
    if nvcc is None:
        return None
    dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"], capture_output=True,
                         text=True)  # fmt: skip
    for d in re.findall(r'INCLUDES="-I([^"]+)"', dry.stdout + dry.stderr):
        if (Path(d.strip()) / "cuda.h").exists():
            return Path(d.strip())
    return None


@pytest.fixture
def fake_driver(tmp_path, monkeypatch):
    _need_nvcc()
    include, cxx = _cuda_header_dir(), cluster.host_compiler()
    if include is None or cxx is None:
        pytest.skip("cuda.h (beside nvcc) and a C++ compiler are needed to build the stand-in driver")
    import ctypes
    import subprocess

    (tmp_path / "fake.cpp").write_text('extern "C" {\n' + FAKE_DRIVER + "\n}\n")
    so = tmp_path / "libfakecuda.so"
    subprocess.run([cxx, "-shared", "-fPIC", f"-I{include}", str(tmp_path / "fake.cpp"), "-o", str(so)], check=True)
    drv = cluster._Driver(str(so))
    monkeypatch.setattr(cluster, "_driver", lambda: drv)
    # kernels loaded through the stand-in must never reach a later test (on a GPU: a real launch)
    monkeypatch.setattr(cluster, "_KERNELS", {})
    monkeypatch.setattr(cluster, "_ACTIVE_CLUSTERS", {})

    class Stream:
        cuda_stream = 0xABC0

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    lib = ctypes.CDLL(str(so))
    lib.fake_params.restype = ctypes.POINTER(ctypes.c_ubyte)

    def state() -> list[int]:
        out = (ctypes.c_ulonglong * 19)()
        lib.fake_state(out)
        return list(out)

    return state, lib


def test_launch_through_the_driver_api(fake_driver):
    """cuLaunchKernelEx gets the grid, the block, the dynamic shared memory, torch's stream, one
    cluster-dimension attribute (C, 1, 1) and the Params bytes; the function gets the shared-memory
    and (C = 16) non-portable-cluster attributes; the cubin is an ELF; the primary context is pushed
    around the call and popped after."""
    import ctypes

    state, lib = fake_driver
    cfg = cluster.choose_config("LSTM", 256, torch.float16, "fwd", 16)
    k = cluster.ClusterKernel(cfg, 0)
    params = cluster.Params(x=0x1000, s_x_t=12345, w=0x2000, T=7, B=33, reverse=1)
    k[(cfg.cluster * 3,)](params)
    s = state()
    assert s[0:3] == [48, 1, 1] and s[3:6] == [cfg.threads, 1, 1] and s[6] == cfg.smem_bytes
    assert s[7] == 0xABC0 and s[8] == 1 and s[9] == cluster.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    assert s[10:13] == [16, 1, 1] and s[13] == 1
    assert s[14] == cfg.smem_bytes and s[15] == 1 and s[16] == 1 and s[17] == 0
    got = bytes(lib.fake_params()[: ctypes.sizeof(cluster.Params)])
    assert got == bytes(params)
    assert k.max_active_clusters() == 7 and state()[18] == 1


def test_batch_tile_follows_the_clusters_the_device_runs(fake_driver, monkeypatch):
    """Tiles of 8 sequences while all of the batch's clusters run at once (the stand-in says 7)."""
    cfg = cluster.choose_config("GRU", 256, torch.float16, "bwd", 16)
    assert cluster.batch_tile_for(cfg, 5, 0).batch_tile == 8
    assert cluster.batch_tile_for(cfg, 56, 0).batch_tile == 8  # 7 clusters of 8
    assert cluster.batch_tile_for(cfg, 57, 0) is cfg  # 8 clusters would not all run: tiles of 16


def test_docs_size_table_is_generated():
    """docs/tiers.md's table of tier 4's hidden sizes is what the tier accepts (never typed)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "tiers.md").read_text()
    begin, end = page.index(cluster.SIZES_BEGIN), page.index(cluster.SIZES_END) + len(cluster.SIZES_END)
    assert page[begin:end] == cluster.sizes_table(), (
        "docs/tiers.md's tier-4 sizes are stale: paste cluster.sizes_table()"
    )


# ---------------------------------------------------------------------------------------------
# The launcher's own argument preparation, through the simulator instead of the driver


class _SimKernel:
    """``kernel[grid](params, keep, status)`` as the launcher calls it, run by the simulator."""

    def __init__(self, s: cluster.Simulator, cfg: cluster.ClusterConfig):
        self.s, self.cfg = s, cfg

    def __getitem__(self, grid):
        assert grid[0] % self.cfg.cluster == 0
        return lambda params, keep=None, status=None: self.s.run(self.cfg, params, grid[0] // self.cfg.cluster, 5)


def test_launchers_prepare_sliced_inputs_for_the_kernel(sim, monkeypatch):
    """cluster.forward/backward with the bidirectional layer's slices (gx, d_out not contiguous),
    lengths, h0, GRU's b_hh: what they hand the kernel (Params, grid) gives the reference's answer."""
    monkeypatch.setattr(cluster, "kernel", lambda cfg, device_index: _SimKernel(sim, cfg))
    monkeypatch.setattr(cluster, "batch_tile_for", lambda cfg, batch, device_index: cfg)
    monkeypatch.setattr(cluster, "_device_index", lambda device: 0)
    monkeypatch.setattr(cluster, "_check_call", lambda call: None)  # CPU tensors: the simulator's memory
    fwd, bwd = SIM_CONFIGS[("GRU", "bf16")]
    call, gx = _case("GRU", "bf16", 64, T=6, B=11, varlen=True, reverse=True, h0=True)
    T, B, GH, H = call.T, call.B, gx.shape[2], call.H
    both = torch.zeros(T, B, 2 * GH, dtype=gx.dtype)
    both[..., GH:] = gx
    sliced = both[..., GH:]  # the reverse direction's half of one input projection
    assert not sliced.is_contiguous()
    before = _runtime.LAUNCHES.get("cluster_fwd", 0)
    res = cluster.forward(call, sliced, fwd)
    assert _runtime.LAUNCHES.get("cluster_fwd", 0) == before + 1
    out, h_n, _, cache = _reference(call, gx)
    assert _err(res.out, out) <= SIM_TOL["bf16"] and _err(res.h_n, h_n) <= SIM_TOL["bf16"]
    g = torch.Generator().manual_seed(3)
    d_both = torch.randn(T, B, 2 * H, generator=g).to(gx.dtype)
    d_out, d_hn = d_both[..., H:], torch.randn(B, H, generator=g).to(gx.dtype)
    bres = cluster.backward(call, Gradients(d_out, d_hn, None, None, res.out, res.saved), bwd)
    want = reference.layer_backward(cache, d_out.double(), d_hn.double())
    assert _err(bres.d_gx, want["x"]) <= SIM_TOL["bf16"] and _err(bres.d_h0, want["h0"]) <= SIM_TOL["bf16"]
    empty = dataclasses.replace(call, T=0)
    assert torch.equal(cluster.forward(empty, sliced[:0], fwd).h_n, call.h0)  # nothing to run: h_n = h0


# ---------------------------------------------------------------------------------------------
# The GPU check's plan (python -m benchmarks.cluster_check), on a CPU


def _cluster_check():
    import sys

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
        sys.path.insert(0, root)
    from benchmarks import cluster_check

    return cluster_check


def test_gpu_check_grid_and_verification_rule(tmp_path, capsys):
    """The benchmark grid (the headline row first, every cell x dtype x B x H beside it), and the
    rule that a skipped gpu test means no verification record."""
    cc = _cluster_check()
    rows = cc.bench_rows()
    assert rows[0] == dict(family="LSTM", nonlinearity=None, dtype="fp16", B=16, H=768)
    assert len(rows) == 1 + 3 * 2 * 2 * 3
    for row in rows:  # every row is a layer the tier runs (the fwd+bwd rows too)
        mode = cells.family_mode(row["family"], row["nonlinearity"])
        assert cluster._static_reason(mode, row["H"], 0, cluster.TORCH_DTYPES[row["dtype"]]) is None, row
    junit = tmp_path / "tests.xml"
    junit.write_text(
        '<testsuites><testsuite tests="3" failures="0" errors="0">'
        '<testcase name="test_gpu_forced_tier_against_float64[fp16-LSTM-H128]"/>'
        '<testcase name="test_gpu_exchange_status_is_clean"><skipped message="needs a CUDA GPU"/></testcase>'
        '<testcase name="test_mutant_is_caught[a]"/></testsuite></testsuites>'
    )
    counts = cc._junit_counts(junit)
    assert counts["gpu_tests"] == 2 and counts["gpu_skipped"] == ["test_gpu_exchange_status_is_clean"]
    assert cc.verify_step(dict(status="failed"), {})["status"] == "skipped"
    if not torch.cuda.is_available():
        assert cc.main([]) == 2 and "no CUDA device" in capsys.readouterr().err
