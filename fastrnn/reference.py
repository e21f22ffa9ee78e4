"""Reference maths: plain PyTorch step loops with hand-written backpropagation through time.

This module is the readable statement of what the kernels compute, and a test oracle that does
not share code with them.  One layer and one direction at a time:

* :func:`layer_forward` runs the step loop and returns the outputs plus a cache;
* :func:`layer_backward` is BPTT written out by hand from that cache (no autograd);
* :func:`stack_forward` chains layers/directions like ``torch.nn`` (it is differentiable with
  ordinary autograd, so it doubles as the "torch loop" provider).

``upcast=True`` computes in float64 and returns results in the input dtype: the oracle against
which low-precision results are judged.

Each cell's step is registered here (:func:`register`), beside its spec and kernel maths in
``fastrnn/kernels/cells.py``, with the same interface as the kernel maths (lists instead of
tuples, ``saved`` a dict)::

    forward(px, ph, h, c) -> (m, c_new, saved)
    backward(dm, dc, saved, h_new, h_prev, c_prev) -> (d_px, d_ph, dh_direct, dc_prev)

``px[g]`` is the input part of gate ``g``'s pre-activation (``x W_ih^T + b_ih``, plus ``b_hh``
except for the cell's inner-bias gates), ``ph[g]`` its recurrent part (``h W_hh^T``, plus
``b_hh`` for the inner-bias gates).  A cell registered without ``backward`` gets one from
autograd applied to its forward step (a test oracle, not a statement of the maths).

The cells of ``torch.nn`` (gate order as ``torch.nn``)::

    RNN:  h' = act(px + ph)
    LSTM: i,f,o = sigmoid(px + ph), g = tanh(px + ph);  c' = f c + i g;  h' = o tanh(c')
          [then h' = h' W_hr^T with proj_size]
    GRU:  r,z = sigmoid(px + ph);  n = tanh(px_n + r ph_n)  (ph_n = h W_hn^T + b_hn);
          h' = (1 - z) n + z h

Variable lengths: sequence b is active for its first ``lengths[b]`` steps; the reverse direction
reads those steps backwards; padding positions of the output are zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .kernels import cells


@dataclass(frozen=True)
class ReferenceStep:
    """A cell's plain-PyTorch step (see the module doc)."""

    forward: Callable
    backward: Callable | None = None


STEPS: dict[str, ReferenceStep] = {}


def register(mode: str, forward: Callable, backward: Callable | None = None) -> None:
    """Register the reference step of the cell ``mode`` (registered in :mod:`fastrnn.kernels.cells`)."""
    STEPS[mode] = ReferenceStep(forward, backward)


def unregister(mode: str) -> None:
    STEPS.pop(mode, None)


def _autograd_backward(step: ReferenceStep, cell: cells.Cell):
    """A backward step from autograd of the forward step (for cells registered without one)."""

    def backward(dm, dc, saved, h_new, h_prev, c_prev, *, px, ph):
        leaves = [t.detach().requires_grad_() for t in (*px, *ph, h_prev, c_prev)]
        G = cell.G
        m, c_new, _ = step.forward(leaves[:G], leaves[G : 2 * G], leaves[2 * G], leaves[2 * G + 1])
        outs, grads = [m], [dm]
        if cell.has_cell_state:
            outs.append(c_new)
            grads.append(dc)
        d = torch.autograd.grad(outs, leaves, grads, allow_unused=True)
        d = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, d, strict=True)]
        return d[:G], d[G : 2 * G], d[2 * G], d[2 * G + 1]

    return backward


# ---------------------------------------------------------------------------------------------
# The cells of torch.nn


def _rnn_forward(act):
    def forward(px, ph, h, c):
        return act(px[0] + ph[0]), c, {}

    return forward


def _rnn_tanh_backward(dm, dc, saved, h_new, h_prev, c_prev):
    d = dm * (1 - h_new * h_new)
    return [d], [d], 0, dc


def _rnn_relu_backward(dm, dc, saved, h_new, h_prev, c_prev):
    d = dm * (h_new > 0).to(dm.dtype)
    return [d], [d], 0, dc


def _lstm_forward(px, ph, h, c):
    i, f, g, o = (
        torch.sigmoid(px[0] + ph[0]),
        torch.sigmoid(px[1] + ph[1]),
        torch.tanh(px[2] + ph[2]),
        torch.sigmoid(px[3] + ph[3]),
    )
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new, dict(i=i, f=f, g=g, o=o, c=c_new)


def _lstm_backward(dm, dc, saved, h_new, h_prev, c_prev):
    i, f, g, o, c = (saved[k] for k in "ifgoc")
    tc = torch.tanh(c)
    dc_t = dc + dm * o * (1 - tc * tc)
    d = [dc_t * g * i * (1 - i), dc_t * c_prev * f * (1 - f), dc_t * i * (1 - g * g), dm * tc * o * (1 - o)]
    return d, d, 0, dc_t * f


def _gru_forward(px, ph, h, c):
    r, z = torch.sigmoid(px[0] + ph[0]), torch.sigmoid(px[1] + ph[1])
    n = torch.tanh(px[2] + r * ph[2])
    return (1 - z) * n + z * h, c, dict(r=r, z=z, n=n, hn=ph[2])


def _gru_backward(dm, dc, saved, h_new, h_prev, c_prev):
    r, z, n, hn = saved["r"], saved["z"], saved["n"], saved["hn"]
    dn = dm * (1 - z) * (1 - n * n)
    dz = dm * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    return [dr, dz, dn], [dr, dz, dn * r], dm * z, dc


register("RNN_TANH", _rnn_forward(torch.tanh), _rnn_tanh_backward)
register("RNN_RELU", _rnn_forward(torch.relu), _rnn_relu_backward)
register("LSTM", _lstm_forward, _lstm_backward)
register("GRU", _gru_forward, _gru_backward)


# ---------------------------------------------------------------------------------------------
# One layer


@dataclass
class LayerCache:
    """What :func:`layer_backward` needs from :func:`layer_forward`."""

    mode: str
    x: torch.Tensor
    weights: dict
    h0: torch.Tensor
    c0: torch.Tensor | None
    order: list  # per step s: (time index per sequence (B,), active mask (B,))
    steps: list = field(default_factory=list)  # per step: dict of intermediates


def _step_order(T: int, B: int, lengths: torch.Tensor | None, reverse: bool, device) -> list:
    L = torch.full((B,), T, dtype=torch.long, device=device) if lengths is None else lengths.to(device)
    order = []
    for s in range(T):
        active = s < L
        t = (L - 1 - s) if reverse else torch.full_like(L, s)
        order.append((torch.where(active, t, torch.full_like(L, s)), active))
    return order


def _bias_split(cell: cells.Cell, b_hh: torch.Tensor | None, H: int):
    """``(folded, inner)``: ``b_hh`` split into the part added to ``px`` (every gate but the
    inner-bias ones) and the part added to ``ph`` (the inner-bias gates)."""
    if b_hh is None:
        return None, None
    inner = torch.zeros_like(b_hh)
    for g in cell.inner_gates:
        inner[g * H : (g + 1) * H] = b_hh[g * H : (g + 1) * H]
    return b_hh - inner, inner


def layer_forward(
    mode: str,
    x: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    *,
    w_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    upcast: bool = False,
):
    """One layer/direction. ``x`` (T, B, I); returns ``(out (T,B,P), h_n (B,P), c_n or None, cache)``."""
    cell, step = cells.get(mode), STEPS[mode]
    dtype = x.dtype
    cdt = torch.float64 if upcast else dtype
    T, B, _ = x.shape
    G = cell.G
    H = w_hh.shape[0] // G
    P = w_hh.shape[1]
    cv = lambda t: None if t is None else t.to(cdt)
    W = dict(w_ih=cv(w_ih), w_hh=cv(w_hh), b_ih=cv(b_ih), b_hh=cv(b_hh), w_hr=cv(w_hr))
    b_fold, b_inner = _bias_split(cell, W["b_hh"], H)
    xc = x.to(cdt)
    h = xc.new_zeros(B, P) if h0 is None else h0.to(cdt)
    c = xc.new_zeros(B, H) if c0 is None else c0.to(cdt)
    cache = LayerCache(
        mode, xc, W, h, c if cell.has_cell_state else None, _step_order(T, B, lengths, reverse, x.device)
    )
    out = xc.new_zeros(T, B, P)
    rows = torch.arange(B, device=x.device)
    for t, active in cache.order:
        gi = F.linear(xc[t, rows], W["w_ih"], W["b_ih"])
        gh = F.linear(h, W["w_hh"])
        if b_fold is not None:
            gi, gh = gi + b_fold, gh + b_inner
        px, ph = list(gi.chunk(G, dim=1)), list(gh.chunk(G, dim=1))
        m, c_new, saved = step.forward(px, ph, h, c)
        h_new = F.linear(m, W["w_hr"]) if W["w_hr"] is not None else m
        cache.steps.append(dict(h_prev=h, c_prev=c, px=px, ph=ph, m=m, saved=saved, h=h_new, t=t, active=active))
        a = active[:, None]
        out[t, rows] = torch.where(a, h_new, torch.zeros_like(h_new))
        h = torch.where(a, h_new, h)
        c = torch.where(a, c_new, c) if cell.has_cell_state else c
    c_n = c.to(dtype) if cell.has_cell_state else None
    return out.to(dtype), h.to(dtype), c_n, cache


def layer_backward(
    cache: LayerCache, d_out: torch.Tensor, d_hn: torch.Tensor, d_cn: torch.Tensor | None = None
) -> dict:
    """Hand-written BPTT of :func:`layer_forward`.

    Returns a dict with ``x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0`` gradients (float64 when the
    forward was upcast).
    """
    W, cell, step = cache.weights, cells.get(cache.mode), STEPS[cache.mode]
    backward = step.backward
    cdt = cache.x.dtype
    B = cache.x.shape[1]
    H = W["w_hh"].shape[0] // cell.G
    rows = torch.arange(B, device=cache.x.device)
    d_out = d_out.to(cdt)
    dh = d_hn.to(cdt).clone()
    dc = torch.zeros(B, H, dtype=cdt, device=cache.x.device)
    if cell.has_cell_state and d_cn is not None:
        dc = d_cn.to(cdt).clone()
    g = {k: (torch.zeros_like(v) if v is not None else None) for k, v in W.items()}
    dx = torch.zeros_like(cache.x)
    for st in reversed(cache.steps):
        t, a = st["t"], st["active"][:, None]
        zero = lambda v, a=a: torch.where(a, v, torch.zeros_like(v))
        dh_t = dh + zero(d_out[t, rows])
        if W["w_hr"] is not None:
            g["w_hr"] += zero(dh_t).t() @ st["m"]
            dm = dh_t @ W["w_hr"]
        else:
            dm = dh_t
        if backward is not None:
            d_px, d_ph, dh_direct, dc_prev = backward(dm, dc, st["saved"], st["h"], st["h_prev"], st["c_prev"])
        else:
            d_px, d_ph, dh_direct, dc_prev = _autograd_backward(step, cell)(
                dm, dc, st["saved"], st["h"], st["h_prev"], st["c_prev"], px=st["px"], ph=st["ph"]
            )
        dgi = zero(torch.cat(list(d_px), dim=1))
        dgh = zero(torch.cat(list(d_ph), dim=1))
        g["w_ih"] += dgi.t() @ cache.x[t, rows]
        g["w_hh"] += dgh.t() @ st["h_prev"]
        if g["b_ih"] is not None:
            g["b_ih"] += dgi.sum(0)
            inner = torch.zeros(cell.G * H, dtype=torch.bool, device=dgi.device)
            for gi in cell.inner_gates:
                inner[gi * H : (gi + 1) * H] = True
            g["b_hh"] += torch.where(inner, dgh, dgi).sum(0)
        dx[t, rows] += zero(dgi @ W["w_ih"])
        dh = torch.where(a, dgh @ W["w_hh"] + dh_direct, dh)
        if cell.has_cell_state:
            dc = torch.where(a, dc_prev, dc)
    g.update(x=dx, h0=dh, c0=dc if cell.has_cell_state else None)
    return g


def stack_forward(
    mode: str,
    x: torch.Tensor,
    weights,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    *,
    num_layers: int = 1,
    bias: bool = True,
    bidirectional: bool = False,
    proj_size: int = 0,
    lengths: torch.Tensor | None = None,
    upcast: bool = False,
):
    """A ``torch.nn``-style stack over ``_flat_weights``-ordered weights (no dropout).

    ``x`` (T, B, I) time-major.  Returns ``(out (T,B,D*P), h_n (L*D,B,P), c_n or None)``;
    differentiable by autograd.
    """
    D = 2 if bidirectional else 1
    per = 2 + (2 if bias else 0) + (1 if proj_size else 0)
    inp = x
    hs, cs = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            grp = list(weights[k * per : (k + 1) * per])
            w_ih, w_hh = grp[0], grp[1]
            b_ih, b_hh = (grp[2], grp[3]) if bias else (None, None)
            w_hr = grp[-1] if proj_size else None
            out, hn, cn, _ = layer_forward(
                mode, inp, w_ih, w_hh, b_ih, b_hh, None if h0 is None else h0[k], None if c0 is None else c0[k],
                w_hr=w_hr, lengths=lengths, reverse=d == 1, upcast=upcast,
            )  # fmt: skip
            outs.append(out)
            hs.append(hn)
            cs.append(cn)
        inp = torch.cat(outs, dim=2)
    return inp, torch.stack(hs), (torch.stack(cs) if cells.get(mode).has_cell_state else None)
