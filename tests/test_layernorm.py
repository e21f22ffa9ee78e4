"""``fastrnn.LayerNormLSTM`` / ``LayerNormGRU``: the tier-1 kernels against the reference (forward
and every gradient, float64 and float32), the reference's hand-written maths against autograd,
zoneout (expectation at eval, mask statistics at train, h and c zoned together), recurrent
DropConnect, determinism with a seed, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import reference
from fastrnn.dispatch import BackendUnavailable
from fastrnn.kernels import _runtime, cells, persistent, tiers
from fastrnn.layernorm import layer_norm_stack
from helpers import assert_within_oracle, device

MODES = ["LN_LSTM", "LN_GRU"]
CLASSES = {"LN_LSTM": fastrnn.LayerNormLSTM, "LN_GRU": fastrnn.LayerNormGRU}


def _rand(gen, *shape, dtype=torch.float64, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=dtype)).to(device()).requires_grad_()


# ---------------------------------------------------------------------------------------------
# the reference's maths


@pytest.mark.parametrize("zoneout", ["none", "eval", "mask"])
@pytest.mark.parametrize("mode", MODES)
def test_reference_step_backward_is_the_gradient_of_its_forward(mode, zoneout):
    cell, step = cells.get(mode), reference.STEPS[mode]
    gen = torch.Generator().manual_seed(0)
    B, H, G = 3, 4, cell.G
    px = [torch.randn(B, H, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(G)]
    ph = [torch.randn(B, H, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(G)]
    h, c = (torch.randn(B, H, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    prm = [1 + 0.3 * torch.randn(H, generator=gen, dtype=torch.float64) for _ in cell.params]
    prm = [p.requires_grad_() for p in prm]
    zm = {"none": None, "eval": 0.7, "mask": (torch.rand(B, H, generator=gen) < 0.6).double()}[zoneout]
    m, c_new, saved = step.forward(px, ph, h, c, prm, zm)
    dm, dc = (
        torch.randn(B, H, generator=gen, dtype=torch.float64),
        torch.randn(B, H, generator=gen, dtype=torch.float64),
    )
    outs, grads = [m], [dm]
    if cell.has_cell_state:
        outs.append(c_new)
        grads.append(dc)
    leaves = [*px, *ph, h, c, *prm]
    auto = torch.autograd.grad(outs, leaves, grads, allow_unused=True)
    d_px, d_ph, dh_direct, dc_prev, d_prm = step.backward(dm, dc, saved, m, h, c, prm, zm)
    # the direct path to h_{t-1} (zoneout, GRU's z h) plus the path through W_hh (via ph)
    manual = [*d_px, *d_ph, dh_direct, dc_prev if cell.has_cell_state else None, *(d.sum(0) for d in d_prm)]
    for i, (a, b) in enumerate(zip(auto, manual, strict=True)):
        if a is None:
            assert b is None or (torch.as_tensor(b) == 0).all(), i
            continue
        torch.testing.assert_close(
            torch.as_tensor(b).expand_as(a), a, rtol=1e-10, atol=1e-12, msg=lambda m_, i=i: f"{i}: {m_}"
        )


@pytest.mark.parametrize("mode", MODES)
def test_reference_hand_written_bptt_matches_autograd(mode):
    """``layer_backward`` (input layer norm, parameters, zoneout, variable lengths, reverse)
    against autograd of ``layer_forward``."""
    cell = cells.get(mode)
    gen = torch.Generator().manual_seed(1)
    T, B, I, H, G = 4, 3, 3, 5, cell.G
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
    w_ih, w_hh = (torch.randn(G * H, k, generator=gen, dtype=torch.float64, requires_grad=True) for k in (I, H))
    b_ih, gamma = (1 + 0.2 * torch.randn(G * H, generator=gen, dtype=torch.float64) for _ in range(2))
    b_ih, gamma = b_ih.requires_grad_(), gamma.requires_grad_()
    prm = (1 + 0.3 * torch.randn(len(cell.params) * H, generator=gen, dtype=torch.float64)).requires_grad_()
    h0, c0 = (torch.randn(B, H, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    zm = (torch.rand(T, B, H, generator=gen) < 0.7).double()
    lengths = torch.tensor([4, 1, 3])
    out, h_n, c_n, cache = reference.layer_forward(mode, x, w_ih, w_hh, b_ih, None, h0, c0, lengths=lengths,
                                                   reverse=True, input_gamma=gamma, params=prm, zoneout=zm)  # fmt: skip
    d_out, d_hn = torch.randn_like(out), torch.randn_like(h_n)
    d_cn = torch.randn_like(h_n) if cell.has_cell_state else None
    loss = (out * d_out).sum() + (h_n * d_hn).sum() + ((c_n * d_cn).sum() if d_cn is not None else 0)
    names = ["x", "w_ih", "w_hh", "b_ih", "gamma_ih", "params", "h0"] + (["c0"] if cell.has_cell_state else [])
    leaves = [x, w_ih, w_hh, b_ih, gamma, prm, h0] + ([c0] if cell.has_cell_state else [])
    auto = torch.autograd.grad(loss, leaves)
    manual = reference.layer_backward(cache, d_out, d_hn, d_cn)
    for name, a in zip(names, auto, strict=True):
        torch.testing.assert_close(manual[name], a, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------------------------
# the kernels against the reference


def _stack_args(mode, T, B, I, H, layers, D, dtype, seed=0):
    cell = cells.get(mode)
    gen = torch.Generator().manual_seed(seed)
    G = cell.G
    weights, norms = [], []
    for layer in range(layers):
        for _ in range(D):
            inp = I if layer == 0 else D * H
            weights += [_rand(gen, G * H, inp, dtype=dtype, scale=0.5), _rand(gen, G * H, H, dtype=dtype, scale=0.5),
                        _rand(gen, G * H, dtype=dtype, scale=0.2), _rand(gen, G * H, dtype=dtype, scale=0.2)]  # fmt: skip
            norm = [
                1 + _rand(gen, G * H, dtype=dtype, scale=0.2).detach(),
                1 + _rand(gen, G * H, dtype=dtype, scale=0.2).detach(),
            ]
            if cell.has_cell_state:
                norm += [
                    1 + _rand(gen, H, dtype=dtype, scale=0.2).detach(),
                    _rand(gen, H, dtype=dtype, scale=0.2).detach(),
                ]
            norms.append(tuple(t.requires_grad_() for t in norm))
    x = _rand(gen, T, B, I, dtype=dtype)
    h0 = _rand(gen, layers * D, B, H, dtype=dtype)
    c0 = _rand(gen, layers * D, B, H, dtype=dtype) if cell.has_cell_state else None
    zm = (torch.rand(layers * D, T, B, H, generator=gen) < 0.75).to(dtype).to(device())
    return x, weights, norms, h0, c0, zm, gen


# The mode x zoneout product is slow; the default run keeps LN_LSTM with a zoneout mask and LN_GRU
# in eval and without zoneout.
@pytest.mark.parametrize(
    "mode,zoneout",
    [pytest.param(m, z, marks=() if (m, z) in {("LN_LSTM", "mask"), ("LN_GRU", "eval"), ("LN_GRU", "none")}
                  else pytest.mark.slow)
     for m in MODES for z in ("mask", "eval", "none")],
)  # fmt: skip
def test_kernels_match_the_reference_float64(mode, zoneout):
    """Tier 1 against the step loop: 2 layers, bidirectional, variable lengths, initial states,
    every zoneout kind; forward (and the LSTM's states) and every gradient."""
    cell = cells.get(mode)
    T, B, I, H, layers, D = 5, 3, 3, 5, 2, 2
    x, weights, norms, h0, c0, zm, gen = _stack_args(mode, T, B, I, H, layers, D, torch.float64)
    zo = {"mask": zm, "eval": 0.75, "none": None}[zoneout]
    lengths = torch.tensor([5, 2, 4], device=device())
    kw = dict(num_layers=layers, bidirectional=True, lengths=lengths, zoneout=zo, return_states=cell.has_cell_state)
    before = dict(_runtime.LAUNCHES)
    got = layer_norm_stack(mode, x, weights, norms, h0, c0, tier=1, **kw)
    want = layer_norm_stack(mode, x, weights, norms, h0, c0, tier=None, **kw)
    results = [t for t in got if t is not None]
    oracle = [t for t in want if t is not None]
    for i, (a, b) in enumerate(zip(results, oracle, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, i=i: f"result {i}: {m}")
    leaves = [x, h0, *weights, *(t for n in norms for t in n)] + ([c0] if c0 is not None else [])
    probes = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device()) for t in results]
    loss = lambda rs: sum((r * p).sum() for r, p in zip(rs, probes, strict=True))
    g_got = torch.autograd.grad(loss(results), leaves)
    g_want = torch.autograd.grad(loss(oracle), leaves)
    assert {k for k, n in _runtime.LAUNCHES.items() if n != before.get(k, 0)} == {"recurrent_fwd", "recurrent_bwd"}
    for i, (a, b) in enumerate(zip(g_got, g_want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, i=i: f"gradient {i}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_kernels_float32_within_the_oracle_rule(mode):
    """float32 kernels vs the float32 step loop, both against float64 (an odd H: padded columns
    must stay out of the row statistics)."""
    T, B, I, H = 4, 3, 3, 7
    args64 = _stack_args(mode, T, B, I, H, 1, 1, torch.float64, seed=4)
    x, weights, norms, h0, c0, zm, gen = args64
    cast = lambda t: None if t is None else t.detach().float().requires_grad_()
    runs = {}
    for name, tier, conv in (("fast", 1, cast), ("loop", None, cast), ("oracle", None, lambda t: t)):
        xs, ws, hs, cs = conv(x), [conv(w) for w in weights], conv(h0), conv(c0)
        ns = [tuple(conv(t) for t in n) for n in norms]
        z = zm[:1].to(xs.dtype)
        res = [t for t in layer_norm_stack(mode, xs, ws, ns, hs, cs, tier=tier, zoneout=z) if t is not None]
        leaves = [xs, hs, *ws, *(t for n in ns for t in n)] + ([cs] if cs is not None else [])
        probe = torch.Generator().manual_seed(7)
        loss = sum((r * torch.randn(r.shape, generator=probe, dtype=torch.float64).to(r)).sum() for r in res)
        runs[name] = [r.detach() for r in res] + list(torch.autograd.grad(loss, leaves))
    for i, (a, b, c) in enumerate(zip(runs["fast"], runs["loop"], runs["oracle"], strict=True)):
        assert_within_oracle(a, b, c, torch.float32, f"result {i}")


# ---------------------------------------------------------------------------------------------
# modules: backends, zoneout, DropConnect, determinism


def _pair(mode, dtype=torch.float32, **kw):
    cls = CLASSES[mode]
    fast = cls(3, 5, **kw, backend="triton").to(device(), dtype)
    loop = cls(3, 5, **kw, backend="torch").to(device(), dtype)
    with torch.no_grad():  # non-trivial layer-norm parameters
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loop.load_state_dict(fast.state_dict())
    return fast, loop


@pytest.mark.parametrize("mode", MODES)
def test_backends_agree_in_training_for_a_seed(mode):
    """Masks are drawn with torch's generator before the backend runs: with the same seed both
    backends see the same zoneout, DropConnect and inter-layer dropout masks (packed input,
    batch_first, two layers, bidirectional; float64, so that only the masks could differ)."""
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.3, zoneout=0.3, recurrent_dropout=0.25)
    fast, loop = _pair(mode, torch.float64, **kw)
    x = torch.randn(3, 4, 3, device=device(), dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([2, 4, 3]), batch_first=True, enforce_sorted=False)
    results = []
    for m in (fast, loop):
        torch.manual_seed(11)
        out, hidden = m(packed)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        grads = torch.autograd.grad(out.data.square().sum() + h.sum(), list(m.parameters()))
        results.append([out.data, h, *grads])
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m_, i=i: f"{i}: {m_}")


@pytest.mark.parametrize("mode", MODES)
def test_determinism_with_a_seed(mode):
    fast, _ = _pair(mode, zoneout=0.4, recurrent_dropout=0.3)
    x = torch.randn(5, 2, 3, device=device())

    def run(seed):
        torch.manual_seed(seed)
        out, _ = fast(x)
        return out.detach()

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    fast.eval()
    assert torch.equal(run(3), run(4))  # evaluation draws nothing


@pytest.mark.parametrize("mode", MODES)
def test_zoneout_expectation_at_eval(mode):
    """One step from a given state: the training output is linear in the keep mask, so its mean
    over many draws converges to the evaluation output (the expectation ``1 - zoneout``)."""
    torch.manual_seed(0)
    p, n = 0.3, 400
    _, m = _pair(mode, zoneout=p)
    x = torch.randn(1, 1, 3, device=device()).expand(1, n, 3).contiguous()
    h0 = torch.randn(1, 1, 5, device=device()).expand(1, n, 5).contiguous()
    hx = (h0, torch.randn(1, 1, 5, device=device()).expand(1, n, 5).contiguous()) if mode == "LN_LSTM" else h0
    with torch.no_grad():
        m.train()
        train_out = m(x, hx)[0][0]  # (n, H): n independent masks
        m.eval()
        eval_out = m(x, hx)[0][0]
        fast, _ = _pair(mode, zoneout=p)
        fast.load_state_dict(m.state_dict())
        fast.eval()
        torch.testing.assert_close(fast(x[:, :2], (hx[0][:, :2], hx[1][:, :2]) if mode == "LN_LSTM" else hx[:, :2])[0][0],
                                   eval_out[:2], rtol=1e-5, atol=1e-6)  # fmt: skip
    # per unit: train = h0 + mask (h~ - h0), eval = h0 + (1 - p)(h~ - h0); mean within 4 sigma
    spread = (eval_out[0] - h0[0, 0]).abs() / (1 - p)  # |h~ - h0|
    sigma = spread * (p * (1 - p) / n) ** 0.5
    assert ((train_out.mean(0) - eval_out[0]).abs() <= 4 * sigma + 1e-6).all()
    assert not torch.allclose(train_out[0], eval_out[0])


def test_zoneout_masks_at_train_are_per_step_per_unit_and_shared_by_h_and_c():
    """Where a unit kept its previous h it kept its previous c (one mask for both), the kept
    fraction is the zoneout rate (binomial bounds), and masks differ across steps."""
    torch.manual_seed(0)
    p = 0.35
    fast, _ = _pair("LN_LSTM", zoneout=p)
    T, B, H = 6, 3, 5
    x = torch.randn(T, B, 3, device=device())
    with torch.no_grad():
        out, (h_n, c_n), cs = fast(x, return_states=True)
    h_prev = torch.cat([torch.zeros(1, B, H, device=device()), out[:-1]])
    c_prev = torch.cat([torch.zeros(1, B, H, device=device()), cs[:-1]])
    kept_h = out == h_prev
    kept_c = cs == c_prev
    assert torch.equal(kept_h, kept_c)
    n = kept_h.numel()
    frac = kept_h.float().mean().item()
    assert abs(frac - p) <= 4 * (p * (1 - p) / n) ** 0.5, frac
    assert not all(torch.equal(kept_h[0], kept_h[t]) for t in range(1, T))
    # the masks themselves: shape (L*D, T, B, H), P(keep new) = 1 - p
    lay = type("Lay", (), dict(T=200, B=50, device=device()))
    _, masks = fastrnn.LayerNormGRU(3, 40, num_layers=2, zoneout=p)._masks(lay, torch.float32)
    assert masks.shape == (2, 200, 50, 40) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert abs(masks.mean().item() - (1 - p)) < 4 * (p * (1 - p) / masks.numel()) ** 0.5


def test_recurrent_dropout_is_dropconnect_on_w_hh():
    """One mask per weight and forward, scaled by 1/(1-p); dropped weights get no gradient."""
    p = 0.4
    m = fastrnn.LayerNormGRU(3, 5, recurrent_dropout=p, backend="triton").to(device())
    lay = type("Lay", (), dict(T=4, B=2, device=device()))
    torch.manual_seed(2)
    weights, _ = m._masks(lay, torch.float32)
    w_eff = weights[1]
    kept = w_eff != 0
    torch.testing.assert_close(w_eff[kept], m.weight_hh_l0[kept] / (1 - p))
    x = torch.randn(4, 2, 3, device=device())
    torch.manual_seed(2)
    out, h = m(x)
    out.square().sum().backward()
    assert (m.weight_hh_l0.grad[~kept] == 0).all() and (m.weight_hh_l0.grad[kept] != 0).any()
    m.eval()  # no DropConnect at evaluation
    weights, _ = m._masks(lay, torch.float32)
    assert weights[1] is m.weight_hh_l0


# ---------------------------------------------------------------------------------------------
# API and errors


def test_parameters_state_dict_and_repr():
    m = fastrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, zoneout=0.1)
    names = dict(m.named_parameters())
    assert names["gamma_ih_l1_reverse"].shape == (16,) and names["beta_c_l0"].shape == (4,)
    assert (names["gamma_hh_l0"] == 1).all() and (names["beta_c_l0"] == 0).all()
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    assert set(ref.state_dict()) < set(m.state_dict())
    m.load_state_dict({**m.state_dict(), **ref.state_dict()})
    torch.testing.assert_close(m.weight_hh_l1_reverse, ref.weight_hh_l1_reverse)
    m.reset_parameters()
    assert (m.gamma_c_l0 == 1).all()
    assert "zoneout=0.1" in repr(m)
    assert len(fastrnn.LayerNormGRU(3, 4).state_dict()) == 6


def test_errors():
    with pytest.raises(ValueError, match="zoneout must be a number in"):
        fastrnn.LayerNormLSTM(3, 4, zoneout=1.5)
    with pytest.raises(ValueError, match="recurrent_dropout must be"):
        fastrnn.LayerNormGRU(3, 4, recurrent_dropout=-0.1)
    with pytest.raises(TypeError):
        fastrnn.LayerNormGRU(3, 4)(torch.randn(2, 1, 3), return_states=True)
    why = persistent.multi_unsupported(2, "LN_LSTM", 1024, 0, torch.bfloat16)
    assert "only tier 1" in why
    assert tiers.choose_tier("LN_GRU", 4096, 0, torch.bfloat16)[0] is None


def test_beyond_tier_1_auto_runs_the_step_loop_and_triton_refuses(monkeypatch):
    monkeypatch.setenv("FASTRNN_TIER", "2")
    x = torch.randn(3, 2, 3, device=device())
    with pytest.raises(BackendUnavailable, match="only tier 1"):
        fastrnn.LayerNormLSTM(3, 4, backend="triton").to(device())(x)
    out, (h, c) = fastrnn.LayerNormLSTM(3, 4, backend="auto")(x.cpu())
    assert out.shape == (3, 2, 4)
