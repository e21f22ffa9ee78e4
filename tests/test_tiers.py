"""Tiers 2 and 3 (hidden units split across programs) against torch.nn, and the tier choice.

On CPU the kernels run in Triton's interpreter, where programs run one after another: tier 2
runs its per-step body as one launch per step (with its resident weights) and tier 3 its
streamed one, so the maths and indexing of both are checked here; the grid barrier itself needs
a GPU (the last tests of this file).  ``FASTRNN_TIER`` forces a tier.

Hidden sizes are chosen so that a layer spans several programs with a partial last slice
(``H = 20``: slices of 16 and 4 units; ``H = 40``: 16, 16, 8, and two ``K`` chunks when the
weights are streamed) and ``B = 17`` spans two batch tiles.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import fastrnn
from fastrnn.kernels import _runtime, cells, grid, persistent, tier1, tiers
from fastrnn.kernels.call import RecurrenceCall
from fastrnn.modules import resolve
from helpers import TOL, compare_twins, device, module_inputs, twins

# Every registered cell with a torch.nn twin (the registry is the list): family, kwargs, test id.
CELLS = [(cells.get(m).family, dict(cells.get(m).twin_kwargs)) for m in cells.modes(twin=True)]
CELL_IDS = [cells.get(m).twin_kwargs.get("nonlinearity") or m.lower() for m in cells.modes(twin=True)]
# (name, constructor kwargs, T, B, input kind, with initial state, H)
CONFIGS = [
    ("two_layers_bidir_h0", dict(num_layers=2, bidirectional=True), 4, 3, "dense", True, 20),
    ("packed_unsorted_bidir", dict(bidirectional=True), 5, 4, "packed_unsorted", True, 20),
    ("two_batch_tiles_H40", dict(bias=True), 3, 17, "dense", True, 40),
    ("unbatched_batch_first", dict(batch_first=True), 3, None, "unbatched", True, 20),
]
# The whole product is slow; the default run keeps, per tier, two fp32 cases (configuration k with
# cell k: tier 2 the even k, tier 3 the odd ones, so both tiers together cover every configuration
# and every cell) and one fp64 case (tier 2 the last cell, tier 3 the one before).
CASES = [
    pytest.param(tier, cell, ckw, *cfg, torch.float32, id=f"tier{tier}-{cfg[0]}-{cid}-fp32",
                 marks=() if i % len(CELLS) == j and i % 2 == tier % 2 else pytest.mark.slow)
    for tier in (2, 3)
    for i, cfg in enumerate(CONFIGS)
    for j, ((cell, ckw), cid) in enumerate(zip(CELLS, CELL_IDS))
] + [
    pytest.param(tier, cell, ckw, *CONFIGS[1], torch.float64, id=f"tier{tier}-{CONFIGS[1][0]}-{cid}-fp64",
                 marks=() if j == len(CELLS) + 1 - tier else pytest.mark.slow)
    for tier in (2, 3)
    for j, ((cell, ckw), cid) in enumerate(zip(CELLS, CELL_IDS))
]  # fmt: skip


@pytest.mark.parametrize("tier,cell,cell_kwargs,name,kwargs,T,B,kind,with_h0,H,dtype", CASES)
def test_tier_matches_torch_nn(monkeypatch, tier, cell, cell_kwargs, name, kwargs, T, B, kind, with_h0, H, dtype):
    monkeypatch.setenv("FASTRNN_TIER", str(tier))
    I = 3
    kw = {**cell_kwargs, **kwargs}
    fast, ref = twins(cell, I, H, dtype=dtype, **kw)
    before = dict(_runtime.LAUNCHES)
    compare_twins(fast, ref, module_inputs(cell, kw, T, B, kind, with_h0, I, H, dtype), dtype)
    ran = {k for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert ran == {f"multi_fwd_tier{tier}", f"multi_bwd_tier{tier}"}, ran  # no tier-1 launch


@pytest.mark.parametrize("tier", [2, 3])
def test_fused_embedding_runs_in_tier(monkeypatch, tier):
    """EmbeddingRNN (ids in, embedding fused into the first layer) through tiers 2/3 equals
    nn.Embedding + nn.GRU, outputs and every gradient."""
    from torch import nn

    monkeypatch.setenv("FASTRNN_TIER", str(tier))
    torch.manual_seed(0)
    emb, rnn = nn.Embedding(11, 6).to(device()), nn.GRU(6, 20, num_layers=2).to(device())
    fused = fastrnn.EmbeddingRNN.from_modules(emb, rnn, backend="triton")
    ref_emb, ref_rnn = nn.Embedding(11, 6).to(device()), nn.GRU(6, 20, num_layers=2).to(device())
    ref_emb.load_state_dict(emb.state_dict())
    ref_rnn.load_state_dict(rnn.state_dict())
    ids = torch.randint(0, 11, (4, 3), device=device())
    out, h_n = fused(ids)
    out_ref, h_ref = ref_rnn(ref_emb(ids))
    torch.testing.assert_close(out, out_ref, **TOL[torch.float32])
    torch.testing.assert_close(h_n, h_ref, **TOL[torch.float32])
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (out_ref * w).sum().backward()
    ref_grads = dict(ref_emb.named_parameters(prefix="emb")) | dict(ref_rnn.named_parameters(prefix="rnn"))
    got_grads = dict(emb.named_parameters(prefix="emb")) | dict(rnn.named_parameters(prefix="rnn"))
    for name, p in ref_grads.items():
        torch.testing.assert_close(
            got_grads[name].grad, p.grad, **TOL[torch.float32], msg=lambda m, n=name: f"{n}: {m}"
        )


def test_streamed_and_resident_weights_are_both_covered():
    """The tests above run tier 2 with resident weight slices and tier 3 with streamed ones, in
    more than one K chunk for H = 40."""
    assert persistent.multi_config("LSTM", 20, torch.float32, 2).resident is False  # fp32 LSTM: never
    assert persistent.multi_config("GRU", 40, torch.float32, 2).resident
    streamed = persistent.multi_config("GRU", 40, torch.float32, 3)
    assert not streamed.resident and streamed.block_k < 40


def test_resident_slices_follow_the_measured_limits():
    """Resident where the report found clean, launchable builds: 16-bit forwards up to 128 KiB
    (LSTM H = 1024), 16-bit backwards up to 32 KiB (LSTM H = 256; larger ones spill at 8 warps
    and cannot launch at 16), within the device's shared memory; every resident build at 8 warps."""
    bf16 = torch.bfloat16
    assert persistent.multi_config("LSTM", 1024, bf16, 2, "fwd").resident
    assert not persistent.multi_config("LSTM", 1024, bf16, 2, "bwd").resident
    assert persistent.multi_config("LSTM", 256, bf16, 2, "bwd").resident
    assert not persistent.multi_config("LSTM", 512, bf16, 2, "bwd").resident  # 64 KiB
    # an A100 (163 KB per block) cannot hold the 128 KiB slice and its h row; an H100 can
    assert not persistent.multi_config("LSTM", 1024, bf16, 2, "fwd", smem_bytes=163 * 1024).resident
    assert persistent.multi_config("LSTM", 1024, bf16, 2, "fwd", smem_bytes=227 * 1024).resident
    for mode, H, dtype, kernel in itertools.product(
        ("RNN_TANH", "GRU", "LSTM"), (128, 256, 512, 1024), tiers.DTYPES, ("fwd", "bwd")
    ):
        cfg = persistent.multi_config(mode, H, dtype, 2, kernel)
        if cfg.resident:
            limit = (
                persistent.RESIDENT_MAX_WEIGHT_BYTES_BWD if kernel == "bwd" else persistent.RESIDENT_MAX_WEIGHT_BYTES
            )
            assert persistent.slice_weight_bytes(mode, H, dtype) <= limit[torch.empty(0, dtype=dtype).element_size()]
            assert cfg.num_warps == 8, (mode, H, dtype, kernel, cfg)


def test_tier1_fp32_split_k_only_for_fma_dots():
    """fp32 RNN H = 128 splits its dots' K in two on FMA (K-long rows per thread spill otherwise),
    not on tensor cores (TF32: split in two, triton 3.6 spills in the loop; unsplit is clean);
    what ops launches is what the plan says."""
    f32 = torch.float32
    fma, tf32 = (tier1.tier1_config("RNN_TANH", 128, 0, f32, p) for p in ("ieee", "tf32"))
    assert (fma.num_warps, fma.split_k) == (16, 2) and (tf32.num_warps, tf32.split_k) == (16, 1)
    assert tiers.plan_layer("RNN_TANH", 128, 0, f32, 1, None, "tf32").forward == tf32
    x3 = tier1.tier1_config("RNN_TANH", 128, 0, f32, "tf32x3")  # three TF32 products: 16 warps spill
    assert (x3.num_warps, x3.split_k) == (8, 1)
    assert tier1.tier1_config("RNN_TANH", 128, 0, torch.bfloat16, "tf32").split_k == 1


def test_tier3_launches_once_per_step(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "3")
    fast, _ = twins("GRU", 3, 20)
    x = torch.randn(6, 2, 3, device=device(), requires_grad=True)
    before = dict(_runtime.LAUNCHES)
    fast(x)[0].sum().backward()
    launched = {k: n - before.get(k, 0) for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert launched == {"multi_fwd_tier3": 6, "multi_bwd_tier3": 7}  # the backward finishes step 0 last


def test_tier2_is_deterministic(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "2")
    fast, _ = twins("LSTM", 3, 20)
    x = torch.randn(4, 5, 3, device=device())
    runs = []
    for _ in range(2):
        fast.zero_grad()
        out, _ = fast(x)
        out.square().sum().backward()
        runs.append([out.detach().clone()] + [p.grad.clone() for p in fast.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# the tier choice


def test_choose_tier_rule(monkeypatch):
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    assert tiers.choose_tier("RNN_TANH", 16, 0, torch.float32)[0] == 1
    tier, why = tiers.choose_tier("LSTM", 2048, 0, torch.bfloat16)
    assert tier == 2 and "streamed from L2" in why and "tier-1 kernel holds at most" in why
    tier, why = tiers.choose_tier("LSTM", 1024, 0, torch.bfloat16)
    assert tier == 2 and "resident in the forward, streamed from L2 in the backward" in why
    assert "resident W_hh slices" in tiers.choose_tier("LSTM", 256, 0, torch.bfloat16)[1]
    tier, why = tiers.choose_tier("LSTM", 1024, 256, torch.bfloat16)
    assert tier is None and "projected LSTM" in why
    # the interpreter keeps tiers 2/3 to sizes a CPU can run
    tier, why = tiers.choose_tier("LSTM", 4096, 0, torch.float32, interpreted=True)
    assert tier is None and "in the interpreter" in why


def test_forced_tier(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "3")
    assert tiers.choose_tier("RNN_TANH", 16, 0, torch.float32) == (3, "tier 3 forced by FASTRNN_TIER")
    monkeypatch.setenv("FASTRNN_TIER", "1")
    tier, why = tiers.choose_tier("LSTM", 1024, 0, torch.bfloat16)
    assert tier is None and "tier-1 kernel holds at most" in why
    monkeypatch.setenv("FASTRNN_TIER", "99")
    with pytest.raises(ValueError, match="FASTRNN_TIER must be"):
        tiers.choose_tier("LSTM", 16, 0, torch.float32)


def test_explain_names_the_tier(monkeypatch):
    m = fastrnn.GRU(3, 20, backend="triton").to(device())
    x = torch.randn(2, 2, 3, device=device())
    monkeypatch.setenv("FASTRNN_TIER", "2")
    assert fastrnn.explain(m, x) == "requested 'triton' -> triton: tier 2 forced by FASTRNN_TIER"
    monkeypatch.delenv("FASTRNN_TIER")
    assert fastrnn.explain(m, x) == "requested 'triton' -> triton: tier 1: all of W_hh fits one program"


def test_forced_tier_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "2")
    m = fastrnn.LSTM(3, 20, proj_size=4, backend="triton").to(device())
    with pytest.raises(fastrnn.BackendUnavailable, match="tier 2 does not run a projected LSTM"):
        m(torch.randn(2, 2, 3, device=device()))


# ---------------------------------------------------------------------------------------------
# GPU: the grid barrier

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="the grid barrier needs a CUDA device")


def _outputs_and_grads(module, x, h0, seed=1):
    """Outputs and gradients (input, h0, every parameter) of a random functional, in fp64."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    out, h_n = module(x, h0)
    g = torch.Generator(device="cpu").manual_seed(seed)
    loss = sum(
        (t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum() for t in (out, h_n)
    )
    loss.backward()
    vals = {"out": out, "h_n": h_n, "d_input": x.grad, "d_h0": h0.grad}
    vals.update({f"d_{n}": p.grad for n, p in module.named_parameters()})
    return {k: v.double() for k, v in vals.items()}


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cell,H", [("RNN", 256), ("GRU", 128), ("LSTM", 128), ("GRU", 1024), ("LSTM", 1024)])
def test_tier2_compiled_within_twice_cudnn_error(monkeypatch, cell, H, dtype):
    """One persistent launch per layer and direction (grid barrier per step; resident weight
    slices for 16-bit at H=128/256, streamed at 1024), against an fp64 reference: every output
    and gradient within twice cuDNN's own error in the same dtype (fp32: TF32 off), plus a small
    atol."""
    monkeypatch.setenv("FASTRNN_TIER", "2")
    monkeypatch.setenv("FASTRNN_BARRIER_CHECK", "1")
    T, B, I = 40, 37, 32
    fast, ref = twins(cell, I, H, bidirectional=True)
    ref64 = type(ref)(I, H, bidirectional=True).cuda().double()
    ref64.load_state_dict(ref.state_dict())
    fast, ref = fast.to(dtype), ref.to(dtype)
    x = torch.randn(T, B, I, device="cuda", dtype=torch.float64)
    h0 = torch.randn(2, B, H, device="cuda", dtype=torch.float64)
    want = _run_cell(ref64, x, h0)
    before = dict(_runtime.LAUNCHES)
    got = _run_cell(fast, x.to(dtype), h0.to(dtype))
    launched = {k: n - before.get(k, 0) for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)}
    assert launched == {"multi_fwd_tier2": 2, "multi_bwd_tier2": 2}  # one launch per direction
    base = _run_cell(ref, x.to(dtype), h0.to(dtype))
    atol = 1e-5 if dtype == torch.float32 else 1e-3
    for k in want:
        err_fast = (got[k] - want[k]).abs().max().item()
        err_cudnn = (base[k] - want[k]).abs().max().item()
        assert err_fast <= 2 * err_cudnn + atol * max(1.0, want[k].abs().max().item()), (k, err_fast, err_cudnn)


def _run_cell(module, x, h0):
    if isinstance(module, (torch.nn.LSTM, fastrnn.LSTM)):
        c0 = h0.flip(-1).contiguous()

        class _Wrap(torch.nn.Module):  # LSTM's (h0, c0) behind the (x, h0) interface
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x, h):
                out, (h_n, c_n) = self.m(x, (h, c0.detach().to(h.dtype)))
                return out, h_n + c_n

        return _outputs_and_grads(_Wrap(module), x, h0)
    return _outputs_and_grads(module, x, h0)


@gpu
@pytest.mark.parametrize("check", [True, False], ids=["flag_checked", "nan_poisoned"])
def test_barrier_that_never_completes_fails_loudly(monkeypatch, check):
    """Counters that start far below any target: no barrier can complete.  The bounded spin gives
    up (fast: later barriers do not wait once the flag is set); with the flag checked the launcher
    raises BarrierTimeout, without it every output after the first step is NaN -- never a hang,
    never a silent wrong answer.  The device stays usable."""
    T, B, H = 5, 40, 256
    gx = torch.randn(T, B, H, device="cuda")
    w = torch.randn(H, H, device="cuda") / H**0.5
    cfg = lambda tier: persistent.multi_config("RNN_TANH", H, torch.float32, tier)
    call = RecurrenceCall("RNN_TANH", T, B, w)
    monkeypatch.setattr(grid, "_BARRIER_START", -(2**30))
    monkeypatch.setenv("FASTRNN_BARRIER_CHECK", "1" if check else "0")
    if check:
        with pytest.raises(grid.BarrierTimeout, match="not all resident"):
            persistent.multi_fwd(call, gx, cfg(2), tier=2, max_spin=2000)
    else:
        res = persistent.multi_fwd(call, gx, cfg(2), tier=2, max_spin=2000)
        assert torch.isnan(res.out[1:]).all() and torch.isnan(res.h_n).all()
        assert not torch.isnan(res.out[0]).any()  # step 0 needs no barrier
    monkeypatch.setattr(grid, "_BARRIER_START", 0)
    torch.testing.assert_close(
        persistent.multi_fwd(call, gx, cfg(2), tier=2).out, persistent.multi_fwd(call, gx, cfg(3), tier=3).out
    )


@pytest.mark.parametrize("tier,mode", [(2, "LSTM"), (3, "GRU")])
def test_opcheck_recurrence_in_tier(monkeypatch, tier, mode):
    """The custom op (fake impl, autograd through the tier-2/3 backward, no aliasing of inputs)."""
    from fastrnn import ops

    monkeypatch.setenv("FASTRNN_TIER", str(tier))
    T, B, H = 3, 2, 18
    cell = cells.get(mode)
    G = cell.G

    def rnd(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device()).requires_grad_()

    args = (mode, rnd(T, B, G * H), rnd(G * H, H), rnd(B, H), rnd(B, H) if cell.has_cell_state else None,
            torch.tensor([3, 1], device=device()), rnd(G * H) if cell.inner_bias else None, None, 1, 1,
            tiers.plan_layer(mode, H, 0, torch.float64, tier).key)  # fmt: skip
    torch.library.opcheck(ops.recurrence_fwd, args)


def test_check_command_reports_tier_and_agreement(monkeypatch):
    from fastrnn.check import run_check

    monkeypatch.setenv("FASTRNN_TIER", "3")
    rows = run_check(T=2, B=2, input_size=3, hidden_size=4, num_layers=1, bidirectional=False,
                     device=str(device()), repeats=1)  # fmt: skip
    assert [r["cell"] for r in rows] == ["RNN", "LSTM", "GRU"]
    for r in rows:
        assert r["tier"] == 3 and r["agrees"], r
        assert r["max_out_diff"] < 1e-4 and r["max_grad_diff"] < 1e-3, r  # and no gross difference either


def test_programs_per_sm_occupancy_arithmetic():
    # 170 registers -> 5632 per warp (22 x 256); 8 warps -> 45056 of 65536: 1 program per SM
    assert grid.programs_per_sm(170, 24 * 1024, 8) == 1
    # 100 registers, 4 warps: 3328 x 4 = 13312 -> 4 by registers; 12 KiB (+1) shared -> 17; 16 by threads
    assert grid.programs_per_sm(100, 12 * 1024, 4) == 4
    # shared memory bound: 100 KiB per program -> 2 in 228 KiB
    assert grid.programs_per_sm(32, 100 * 1024, 4) == 2
    # too big for one SM at all
    assert grid.programs_per_sm(255, 240 * 1024, 8) == 0


@pytest.mark.parametrize(
    "tier,mode",
    [pytest.param(t, m, marks=() if (t, m) in {(2, "LSTM"), (3, "GRU")} else pytest.mark.slow)
     for t in (2, 3) for m in ("RNN_TANH", "LSTM", "GRU")],
)  # fmt: skip
def test_bf16_in_interpreter(tier, mode):
    """bf16 tiers 2/3 (the interpreter multiplies bf16 in fp32: the GPU tests cover the real
    tensor-core dot) against an fp32 run on the same bf16-valued inputs: within twice tier 1's
    bf16 error plus a small atol."""
    from fastrnn.kernels import tier1

    g = torch.Generator().manual_seed(0)
    T, B, H = 4, 18, 40
    cell = cells.get(mode)
    G = cell.G

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).bfloat16().to(device())

    gx, w, h0 = rnd(T, B, G * H), rnd(G * H, H, scale=0.2), rnd(B, H)
    c0 = rnd(B, H) if cell.has_cell_state else None
    b_hh = rnd(G * H) if cell.inner_bias else None
    lengths = torch.randint(1, T + 1, (B,), generator=g).to(device())
    f32 = lambda t: None if t is None else t.float()
    cfg1 = tier1.tier1_config(mode, H, 0, torch.bfloat16)

    call = RecurrenceCall(mode, T, B, w, h0, c0, lengths, b_hh, reverse=True)
    call32 = RecurrenceCall(mode, T, B, f32(w), f32(h0), f32(c0), lengths, f32(b_hh), reverse=True)
    want = tier1.recurrent_fwd(call32, f32(gx), tier1.tier1_config(mode, H, 0, torch.float32))
    base = tier1.recurrent_fwd(call, gx, cfg1)
    got = persistent.multi_fwd(call, gx, persistent.multi_config(mode, H, torch.bfloat16, tier), tier=tier)
    for name in ("out", "h_n"):
        err_base = (getattr(base, name).float() - getattr(want, name)).abs().max().item()
        err = (getattr(got, name).float() - getattr(want, name)).abs().max().item()
        assert err <= 2 * err_base + 5e-3, (name, err, err_base)


def _output_state_grads(fast, x) -> list[torch.Tensor]:
    """``[output, h_n, every parameter's gradient]`` of one forward and backward of ``fast``."""
    fast.zero_grad()
    out, hidden = fast(x)
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    (out.square().sum() + h.sum()).backward()
    return [out.detach().clone(), h.detach().clone()] + [p.grad.clone() for p in fast.parameters()]


@pytest.mark.parametrize(
    "mode", [pytest.param("RNN_TANH", marks=pytest.mark.slow), pytest.param("LSTM", marks=pytest.mark.slow), "GRU"]
)
def test_programs_looping_over_batch_tiles(monkeypatch, mode):
    """The tier-2 build for more batch tiles than co-resident groups (a program loops over
    tiles, its state in buffers, not registers; on a GPU only at large batch) equals the build
    with one tile per program, forward and backward, run here per step with one group."""
    monkeypatch.setenv("FASTRNN_TIER", "2")
    fast, _ = twins(resolve(mode).family, 3, 20, **resolve(mode).twin_kwargs)
    fast = fast.double()
    x = torch.randn(4, 40, 3, dtype=torch.float64, device=device())  # 40 sequences: three batch tiles
    runs = []
    for groups in (None, 1):
        monkeypatch.setattr(grid, "_STEP_GROUPS", groups)
        runs.append(_output_state_grads(fast, x))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["LSTM", pytest.param("GRU", marks=pytest.mark.slow)])
def test_streamed_backward_with_split_k_chunks(monkeypatch, mode):
    """The streamed backward with each K chunk split across warps (16-bit backwards too large to
    keep resident on a GPU) equals the unsplit build: tier 3, H = 40 in chunks of 32 (the second
    partial), each split in two, forward and every gradient in float64."""
    import dataclasses

    monkeypatch.setenv("FASTRNN_TIER", "3")
    fast, _ = twins(resolve(mode).family, 3, 40, **resolve(mode).twin_kwargs)
    fast = fast.double()
    x = torch.randn(4, 3, 3, dtype=torch.float64, device=device())
    plain = persistent.multi_config
    runs = []
    for split in (1, 2):

        def config(*args, split=split, **kwargs):
            cfg = plain(*args, **kwargs)
            return dataclasses.replace(cfg, block_k=32, split_k=split) if not cfg.resident else cfg

        monkeypatch.setattr(persistent, "multi_config", config)
        runs.append(_output_state_grads(fast, x))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
