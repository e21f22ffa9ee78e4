"""Reference maths: plain PyTorch step loops with hand-written backpropagation through time.

This module is the readable statement of what the kernels compute, and a test oracle that does
not share code with them.  One layer and one direction at a time:

* :func:`layer_forward` runs the step loop and returns the outputs plus a cache;
* :func:`layer_backward` is BPTT written out by hand from that cache (no autograd);
* :func:`stack_forward` chains layers/directions like ``torch.nn`` (it is differentiable with
  ordinary autograd, so it doubles as the "torch loop" provider).

``upcast=True`` computes in float64 and returns results in the input dtype: the oracle against
which low-precision results are judged.

Cell maths (gate order as ``torch.nn``; ``x W^T`` is ``F.linear``)::

    RNN:  h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)
    LSTM: i,f,g,o = split(x W_ih^T + b_ih + h W_hh^T + b_hh); i,f,o = sigmoid; g = tanh
          c' = f c + i g;  h' = o tanh(c')  [then h' = h' W_hr^T with proj_size]
    GRU:  r,z = sigmoid(x W_i{r,z}^T + b_i{r,z} + h W_h{r,z}^T + b_h{r,z})
          n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn));  h' = (1 - z) n + z h

Variable lengths: sequence b is active for its first ``lengths[b]`` steps; the reverse direction
reads those steps backwards; padding positions of the output are zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


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
    dtype = x.dtype
    cdt = torch.float64 if upcast else dtype
    T, B, _ = x.shape
    G = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}[mode]
    H = w_hh.shape[0] // G
    P = w_hh.shape[1]
    cv = lambda t: None if t is None else t.to(cdt)
    W = dict(w_ih=cv(w_ih), w_hh=cv(w_hh), b_ih=cv(b_ih), b_hh=cv(b_hh), w_hr=cv(w_hr))
    xc = x.to(cdt)
    h = xc.new_zeros(B, P) if h0 is None else h0.to(cdt)
    c = xc.new_zeros(B, H) if c0 is None else c0.to(cdt)
    cache = LayerCache(mode, xc, W, h, c if mode == "LSTM" else None, _step_order(T, B, lengths, reverse, x.device))
    out = xc.new_zeros(T, B, P)
    rows = torch.arange(B, device=x.device)
    for t, active in cache.order:
        xt = xc[t, rows]
        gi = F.linear(xt, W["w_ih"], W["b_ih"])
        gh = F.linear(h, W["w_hh"], W["b_hh"])
        st = {"h_prev": h, "c_prev": c}
        if mode in ("RNN_TANH", "RNN_RELU"):
            h_new = torch.tanh(gi + gh) if mode == "RNN_TANH" else torch.relu(gi + gh)
            c_new = c
        elif mode == "LSTM":
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c_new = f * c + i * g
            m = o * torch.tanh(c_new)
            h_new = F.linear(m, W["w_hr"]) if W["w_hr"] is not None else m
            st.update(i=i, f=f, g=g, o=o, c=c_new, m=m)
        else:
            xr, xz, xn = gi.chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h_new = (1 - z) * n + z * h
            c_new = c
            st.update(r=r, z=z, n=n, hn=hn)
        st.update(h=h_new, t=t, active=active)
        cache.steps.append(st)
        a = active[:, None]
        out[t, rows] = torch.where(a, h_new, torch.zeros_like(h_new))
        h = torch.where(a, h_new, h)
        c = torch.where(a, c_new, c)
    c_n = c.to(dtype) if mode == "LSTM" else None
    return out.to(dtype), h.to(dtype), c_n, cache


def layer_backward(
    cache: LayerCache, d_out: torch.Tensor, d_hn: torch.Tensor, d_cn: torch.Tensor | None = None
) -> dict:
    """Hand-written BPTT of :func:`layer_forward`.

    Returns a dict with ``x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0`` gradients (float64 when the
    forward was upcast).
    """
    W, mode = cache.weights, cache.mode
    cdt = cache.x.dtype
    B = cache.x.shape[1]
    rows = torch.arange(B, device=cache.x.device)
    d_out = d_out.to(cdt)
    dh = d_hn.to(cdt).clone()
    dc = torch.zeros_like(cache.c0) if mode == "LSTM" else None
    if mode == "LSTM" and d_cn is not None:
        dc = d_cn.to(cdt).clone()
    g = {k: (torch.zeros_like(v) if v is not None else None) for k, v in W.items()}
    dx = torch.zeros_like(cache.x)
    for st in reversed(cache.steps):
        t, a = st["t"], st["active"][:, None]
        dh_t = dh + torch.where(a, d_out[t, rows], torch.zeros_like(dh))
        h_prev = st["h_prev"]
        if mode in ("RNN_TANH", "RNN_RELU"):
            h = st["h"]
            dpre = dh_t * (1 - h * h) if mode == "RNN_TANH" else dh_t * (h > 0).to(cdt)
            dgi = dgh = torch.where(a, dpre, torch.zeros_like(dpre))
            dh_prev_extra = 0
        elif mode == "LSTM":
            i, f, gg, o, c = st["i"], st["f"], st["g"], st["o"], st["c"]
            if W["w_hr"] is not None:
                g["w_hr"] += torch.where(a, dh_t, torch.zeros_like(dh_t)).t() @ st["m"]
                dm = dh_t @ W["w_hr"]
            else:
                dm = dh_t
            tc = torch.tanh(c)
            dc_t = dc + dm * o * (1 - tc * tc)
            dpre = torch.cat(
                [
                    dc_t * gg * i * (1 - i),
                    dc_t * st["c_prev"] * f * (1 - f),
                    dc_t * i * (1 - gg * gg),
                    dm * tc * o * (1 - o),
                ],
                dim=1,
            )
            dgi = dgh = torch.where(a, dpre, torch.zeros_like(dpre))
            dc = torch.where(a, dc_t * f, dc)
            dh_prev_extra = 0
        else:
            r, z, n, hn = st["r"], st["z"], st["n"], st["hn"]
            dn_pre = dh_t * (1 - z) * (1 - n * n)
            dz_pre = dh_t * (h_prev - n) * z * (1 - z)
            dr_pre = dn_pre * hn * r * (1 - r)
            dgi = torch.where(a, torch.cat([dr_pre, dz_pre, dn_pre], 1), torch.zeros(B, 3 * r.shape[1], dtype=cdt))
            dgh = torch.where(a, torch.cat([dr_pre, dz_pre, dn_pre * r], 1), torch.zeros_like(dgi))
            dh_prev_extra = dh_t * z
        g["w_ih"] += dgi.t() @ cache.x[t, rows]
        g["w_hh"] += dgh.t() @ h_prev
        if g["b_ih"] is not None:
            g["b_ih"] += dgi.sum(0)
            g["b_hh"] += dgh.sum(0)
        dx[t, rows] += torch.where(a, dgi @ W["w_ih"], torch.zeros_like(dx[t, rows]))
        dh = torch.where(a, dgh @ W["w_hh"] + dh_prev_extra, dh)
    g.update(x=dx, h0=dh, c0=dc)
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
                mode,
                inp,
                w_ih,
                w_hh,
                b_ih,
                b_hh,
                None if h0 is None else h0[k],
                None if c0 is None else c0[k],
                w_hr=w_hr,
                lengths=lengths,
                reverse=d == 1,
                upcast=upcast,
            )
            outs.append(out)
            hs.append(hn)
            cs.append(cn)
        inp = torch.cat(outs, dim=2)
    return inp, torch.stack(hs), (torch.stack(cs) if mode == "LSTM" else None)
