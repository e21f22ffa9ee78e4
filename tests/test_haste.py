"""``fastrnn.from_haste``: state dicts built from haste's documented layout (``kernel (I, G*H)``,
``recurrent_kernel (H, G*H)``, LSTM gate order i, g, f, o; GRU z, r, h; ``gamma (2, G*H)``,
``gamma_h``/``beta_h (H,)``) load into fastrnn modules whose outputs equal haste's documented
maths, written out here on haste's own matrices and gate order (float64, both backends).

``backend="triton"`` holds what a user gets: where the release data (the dispatcher's own
decision, :func:`fastrnn.kernels.tiers.choose_tier`) says no kernel tier runs the layer -- the
float64 layer-norm cells on a GPU, with most Triton releases -- it raises
:class:`fastrnn.BackendUnavailable` naming the limit, and ``backend="auto"`` gives haste's maths."""

from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn.haste import convert_haste_state_dict
from fastrnn.kernels import cells, releases, tiers
from helpers import device

EPS = 1e-5


def _ln(v, gain, shift=None):
    mean = v.mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(((v - mean) ** 2).mean(-1, keepdim=True) + EPS) * gain
    return out if shift is None else out + shift


def haste_forward(kind, sd, x, h0, c0=None, zoneout=0.0):
    """haste's layers in evaluation mode, from their documentation: right-multiplied kernels,
    haste's gate order, layer norm over all gates together; zoneout's expectation on ``h``."""
    H = sd["recurrent_kernel"].shape[0]
    norm = kind.startswith("LayerNorm")
    wx = x @ sd["kernel"]
    if norm:
        wx = _ln(wx, sd["gamma"][0])
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        rh = h @ sd["recurrent_kernel"]
        if norm:
            rh = _ln(rh, sd["gamma"][1])
        if kind.endswith("LSTM"):
            i, g, f, o = (wx[t] + rh + sd["bias"]).split(H, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            cc = _ln(c, sd["gamma_h"], sd["beta_h"]) if norm else c
            new = torch.sigmoid(o) * torch.tanh(cc)
        else:
            vx = (wx[t] + sd["bias"]).split(H, dim=1)
            vh = (rh + sd["recurrent_bias"]).split(H, dim=1)
            z, r = torch.sigmoid(vx[0] + vh[0]), torch.sigmoid(vx[1] + vh[1])
            g = torch.tanh(vx[2] + r * vh[2])
            new = z * h + (1 - z) * g
        h = zoneout * h + (1 - zoneout) * new
        outs.append(h)
    return torch.stack(outs), h, c


def haste_state_dict(kind, I, H, gen):
    G = 4 if kind.endswith("LSTM") else 3
    r = lambda *s, scale=0.4: scale * torch.randn(*s, generator=gen, dtype=torch.float64)
    sd = {"kernel": r(I, G * H), "recurrent_kernel": r(H, G * H), "bias": r(G * H)}
    if kind.endswith("GRU"):
        sd["recurrent_bias"] = r(G * H)
    if kind.startswith("LayerNorm"):
        sd["gamma"] = 1 + r(2, G * H, scale=0.2)
    if kind == "LayerNormLSTM":
        sd["gamma_h"], sd["beta_h"] = 1 + r(H, scale=0.2), r(H, scale=0.2)
    return sd


_MODES = {"LayerNormLSTM": "LN_LSTM", "LayerNormGRU": "LN_GRU", "LSTM": "LSTM", "GRU": "GRU"}


def kernels_refuse(kind: str, hidden_size: int) -> str | None:
    """Why no kernel tier runs a float64 ``kind`` layer of ``hidden_size`` on the test device, as
    the dispatcher decides it (release data included); ``None`` when one does."""
    tier, why = tiers.choose_tier(_MODES[kind], hidden_size, 0, torch.float64, interpreted=device().type == "cpu")
    return why if tier is None else None


def run_or_refuse(m, kind: str, call):
    """``call()`` with ``m`` on ``backend="triton"``: the result where a kernel tier runs the layer;
    where none does, assert the refusal (:class:`fastrnn.BackendUnavailable` naming each tier's
    reason, the tier-1 limit among them) and return the result with ``backend="auto"`` instead."""
    why = kernels_refuse(kind, m.hidden_size)
    if m.backend != "triton" or why is None:
        return call()
    with pytest.raises(fastrnn.BackendUnavailable) as err:
        call()
    for reason in why.split("; "):
        assert reason in str(err.value), (reason, str(err.value))
    m.backend = "auto"
    return call()


def test_float64_layer_norm_cells_have_the_release_data_limits():
    """The data the tests above follow: a float64 layer-norm cell runs in the interpreter at any
    size it can hold; compiled, within the release's own limit for the cell (0: never), which
    names the cell when it refuses."""
    for kind in ("LayerNormLSTM", "LayerNormGRU"):
        mode = _MODES[kind]
        assert tiers.tier_unsupported(1, mode, 6, 0, torch.float64, interpreted=True) is None
        for tier in (2, 3):
            assert "only tier 1" in tiers.tier_unsupported(tier, mode, 6, 0, torch.float64)
        limit = tiers.get_tier(1).unsupported(mode, 6, 0, torch.float64, False)
        nbytes = cells.get(mode).G * 16 * 16 * 8  # H = 6 pads to 16
        allowed = releases.limits("tier1_cell_limits").get(mode, {}).get("float64", [None, None])[1]
        assert (limit is None) == (allowed is None or nbytes <= allowed), (mode, limit, allowed)
        if limit is not None:
            assert f"holds at most {allowed // 1024} KiB for {mode}" in limit, limit


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU", "LSTM", "GRU"])
def test_from_haste_matches_haste_maths(kind, backend):
    gen = torch.Generator().manual_seed(0)
    T, B, I, H = 5, 3, 4, 6
    sd = haste_state_dict(kind, I, H, gen)
    m = fastrnn.from_haste(sd, backend=backend).to(device())
    assert type(m).__name__ == kind and m.weight_ih_l0.dtype == torch.float64
    m.eval()
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    lstm = kind.endswith("LSTM")
    c0 = torch.randn(B, H, generator=gen, dtype=torch.float64) if lstm else None
    want_out, want_h, want_c = haste_forward(kind, sd, x, h0, c0)
    dev = lambda t: t.to(device())
    hx = (dev(h0)[None], dev(c0)[None]) if lstm else dev(h0)[None]
    out, hidden = run_or_refuse(m, kind, lambda: m(dev(x), hx))
    torch.testing.assert_close(out.cpu(), want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((hidden[0] if lstm else hidden)[0].cpu(), want_h, rtol=1e-10, atol=1e-12)
    if lstm:
        torch.testing.assert_close(hidden[1][0].cpu(), want_c, rtol=1e-10, atol=1e-12)


def test_layer_norm_gru_zoneout_at_eval_matches_haste():
    """haste's GRU zoneout at evaluation, ``h = p h_prev + (1 - p) h_new``: the same expectation."""
    gen = torch.Generator().manual_seed(1)
    sd = haste_state_dict("LayerNormGRU", 3, 5, gen)
    m = fastrnn.from_haste(sd, zoneout=0.25, backend="triton").to(device()).eval()
    x = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    want, _, _ = haste_forward("LayerNormGRU", sd, x, h0, zoneout=0.25)
    got = run_or_refuse(m, "LayerNormGRU", lambda: m(x.to(device()), h0[None].to(device()))[0])
    torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)


def test_mapping_and_errors():
    gen = torch.Generator().manual_seed(2)
    sd = haste_state_dict("LayerNormLSTM", 3, 2, gen)
    name, out = convert_haste_state_dict({f"enc.rnn.{k}": v for k, v in sd.items()}, prefix="enc.rnn.")
    assert name == "LayerNormLSTM"
    H = 2
    # fastrnn's forget gate (rows H..2H) is haste's third block (f in i, g, f, o)
    torch.testing.assert_close(out["weight_ih_l0"][H : 2 * H], sd["kernel"][:, 2 * H : 3 * H].t())
    torch.testing.assert_close(out["gamma_hh_l0"][2 * H : 3 * H], sd["gamma"][1][H : 2 * H])  # g
    assert (out["bias_hh_l0"] == 0).all()
    with pytest.raises(ValueError, match="not a haste layer"):
        fastrnn.from_haste({"weight": torch.zeros(3)})
    bad = dict(sd, kernel=torch.zeros(3, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="expects kernel"):
        fastrnn.from_haste(bad)
    m = fastrnn.from_haste(haste_state_dict("GRU", 3, 4, gen), batch_first=True)
    assert isinstance(m, fastrnn.GRU) and m.batch_first
    # the same weights through torch.nn: haste's GRU is torch.nn's GRU with another layout
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    ref = torch.nn.GRU(3, 4, batch_first=True).double()
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x)[0], ref(x)[0])
