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
:mod:`fastrnn.kernels.cells`, with the same interface as the kernel maths (lists instead of
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

The layer-normalised cells (``LN_LSTM``, ``LN_GRU``; haste's formulation, see
:mod:`fastrnn.kernels.cells`) use the extended interface, with their parameter vectors ``prm``
(a list of ``(H,)`` tensors) and the step's zoneout keep mask ``zm`` (``(B, H)``, a keep
probability, or ``None``)::

    forward(px, ph, h, c, prm, zm) -> (m, c_new, saved)
    backward(dm, dc, saved, h_new, h_prev, c_prev, prm, zm) -> (d_px, d_ph, dh_direct, dc_prev, d_prm)

Their input part is ``px = LN(x W_ih^T) * gamma_ih + b`` (``input_gamma`` of :func:`layer_forward`).

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
# The layer-normalised cells (haste's LayerNormLSTM / LayerNormGRU)


def _norm(xs: list) -> tuple[list, torch.Tensor]:
    """Layer norm of the rows of the tensors ``xs`` taken together: ``(hats, rstd (B, 1))``."""
    v = torch.cat(xs, dim=1)
    mean = v.mean(dim=1, keepdim=True)
    rstd = torch.rsqrt(((v - mean) ** 2).mean(dim=1, keepdim=True) + cells.LN_EPS)
    return list(((v - mean) * rstd).chunk(len(xs), dim=1)), rstd


def _norm_backward(dys: list, hats: list, rstd: torch.Tensor) -> list:
    """Gradient through :func:`_norm` given dL/dhat."""
    dy, hat = torch.cat(dys, dim=1), torch.cat(hats, dim=1)
    dx = rstd * (dy - dy.mean(dim=1, keepdim=True) - hat * (dy * hat).mean(dim=1, keepdim=True))
    return list(dx.chunk(len(dys), dim=1))


def _zoned(new, old, zm):
    """Zoneout: ``old + zm (new - old)`` (``zm`` the keep mask or probability; ``None``: off)."""
    return new if zm is None else old + zm * (new - old)


def _ln_lstm_forward(px, ph, h, c, prm, zm):
    a, rstd = _norm(ph)
    i, f = torch.sigmoid(px[0] + a[0] * prm[0]), torch.sigmoid(px[1] + a[1] * prm[1])
    g, o = torch.tanh(px[2] + a[2] * prm[2]), torch.sigmoid(px[3] + a[3] * prm[3])
    c_hat = f * c + i * g
    (nc,), rstd_c = _norm([c_hat])
    m = o * torch.tanh(nc * prm[4] + prm[5])
    c_new = _zoned(c_hat, c, zm)
    saved = dict(i=i, f=f, g=g, o=o, a=a, rstd=rstd, nc=nc, rstd_c=rstd_c, c=c_new)
    return _zoned(m, h, zm), c_new, saved


def _ln_lstm_backward(dm, dc, saved, h_new, h_prev, c_prev, prm, zm):
    i, f, g, o, a, nc = (saved[k] for k in ("i", "f", "g", "o", "a", "nc"))
    keep = 1.0 if zm is None else zm
    dm_cell, dc_hat = keep * dm, keep * dc
    ty = torch.tanh(nc * prm[4] + prm[5])
    d_o = dm_cell * ty
    dy = dm_cell * o * (1 - ty * ty)
    dc_hat = dc_hat + _norm_backward([dy * prm[4]], [nc], saved["rstd_c"])[0]
    dv = [dc_hat * g * i * (1 - i), dc_hat * c_prev * f * (1 - f), dc_hat * i * (1 - g * g), d_o * o * (1 - o)]
    d_ph = _norm_backward([dv[k] * prm[k] for k in range(4)], a, saved["rstd"])
    d_prm = [dv[k] * a[k] for k in range(4)] + [dy * nc, dy]
    return dv, d_ph, dm - dm_cell, dc_hat * f + (dc - keep * dc), d_prm


def _ln_gru_forward(px, ph, h, c, prm, zm):
    a, rstd = _norm(ph)
    r, z = torch.sigmoid(px[0] + a[0] * prm[0]), torch.sigmoid(px[1] + a[1] * prm[1])
    hn = a[2] * prm[2] + prm[3]
    n = torch.tanh(px[2] + r * hn)
    m = (1 - z) * n + z * h
    return _zoned(m, h, zm), c, dict(r=r, z=z, n=n, hn=hn, a=a, rstd=rstd)


def _ln_gru_backward(dm, dc, saved, h_new, h_prev, c_prev, prm, zm):
    r, z, n, hn, a = (saved[k] for k in ("r", "z", "n", "hn", "a"))
    keep = 1.0 if zm is None else zm
    dm_cell = keep * dm
    dn = dm_cell * (1 - z) * (1 - n * n)
    dz = dm_cell * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dhn = dn * r
    d_ph = _norm_backward([dr * prm[0], dz * prm[1], dhn * prm[2]], a, saved["rstd"])
    return [dr, dz, dn], d_ph, dm_cell * z + (dm - dm_cell), dc, [dr * a[0], dz * a[1], dhn * a[2], dhn]


register("LN_LSTM", _ln_lstm_forward, _ln_lstm_backward)
register("LN_GRU", _ln_gru_forward, _ln_gru_backward)


def layer_norm_arguments(
    mode: str,
    b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None,
    gamma_hh: torch.Tensor,
    gamma_c: torch.Tensor | None = None,
    beta_c: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(b, prm)`` of a layer-normalised layer from its ``torch.nn``-named parameters: ``b``
    (G*H,) the bias added to the normalised input part ``LN(x W_ih^T) * gamma_ih`` (``b_ih``
    plus the recurrent biases that can be folded there: all of LSTM's, GRU's r and z), ``prm``
    (NPRM*H,) the cell's parameter vectors in ``Cell.params`` order (LSTM: ``gamma_hh``,
    ``gamma_c``, ``beta_c``; GRU: ``gamma_hh``, ``b_hn``).  Both differentiable."""
    GH = gamma_hh.shape[0]
    if mode == "LN_LSTM":
        b = None if b_ih is None else b_ih + b_hh
        return b, torch.cat([gamma_hh, gamma_c, beta_c])
    if mode == "LN_GRU":
        H = GH // 3
        if b_ih is None:
            return None, torch.cat([gamma_hh, gamma_hh.new_zeros(H)])
        return b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)]), torch.cat([gamma_hh, b_hh[2 * H :]])
    raise ValueError(f"{mode} is not a layer-normalised cell")


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
    c_states: torch.Tensor | None = None  # (T, B, H) c_t of every step, 0 at padding (cells with a cell state)


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
    input_gamma: torch.Tensor | None = None,
    params: torch.Tensor | None = None,
    zoneout: torch.Tensor | float | None = None,
):
    """One layer/direction. ``x`` (T, B, I); returns ``(out (T,B,P), h_n (B,P), c_n or None, cache)``.

    Layer-normalised cells: the input part is ``LN(x W_ih^T) * input_gamma + b_ih`` (``b_hh``
    folded as for any cell), ``params`` (NPRM*H,) the cell's parameter vectors
    (:func:`layer_norm_arguments`), ``zoneout`` a (T, B, H) keep mask, a keep probability or
    ``None``."""
    cell, step = cells.get(mode), STEPS[mode]
    dtype = x.dtype
    cdt = torch.float64 if upcast else dtype
    T, B, _ = x.shape
    G = cell.G
    H = w_hh.shape[0] // G
    P = w_hh.shape[1]
    cv = lambda t: None if t is None else t.to(cdt)
    W = dict(w_ih=cv(w_ih), w_hh=cv(w_hh), b_ih=cv(b_ih), b_hh=cv(b_hh), w_hr=cv(w_hr), gamma_ih=cv(input_gamma),
             params=cv(params))  # fmt: skip
    prm = list(W["params"].split(H)) if cell.params else None
    zm_of = lambda t: (
        None if zoneout is None else (zoneout.to(cdt)[t, rows] if isinstance(zoneout, torch.Tensor) else zoneout)
    )
    b_fold, b_inner = _bias_split(cell, W["b_hh"], H)
    xc = x.to(cdt)
    h = xc.new_zeros(B, P) if h0 is None else h0.to(cdt)
    c = xc.new_zeros(B, H) if c0 is None else c0.to(cdt)
    cache = LayerCache(
        mode, xc, W, h, c if cell.has_cell_state else None, _step_order(T, B, lengths, reverse, x.device)
    )
    out = xc.new_zeros(T, B, P)
    c_states = xc.new_zeros(T, B, H) if cell.has_cell_state else None
    rows = torch.arange(B, device=x.device)
    for t, active in cache.order:
        if W["gamma_ih"] is not None:
            raw = F.linear(xc[t, rows], W["w_ih"])
            mean = raw.mean(dim=1, keepdim=True)
            rstd = torch.rsqrt(((raw - mean) ** 2).mean(dim=1, keepdim=True) + cells.LN_EPS)
            gi = (raw - mean) * rstd * W["gamma_ih"] + (W["b_ih"] if W["b_ih"] is not None else 0)
        else:
            gi = F.linear(xc[t, rows], W["w_ih"], W["b_ih"])
        gh = F.linear(h, W["w_hh"])
        if b_fold is not None:
            gi, gh = gi + b_fold, gh + b_inner
        px, ph = list(gi.chunk(G, dim=1)), list(gh.chunk(G, dim=1))
        if cell.extended:
            zm = zm_of(t)
            m, c_new, saved = step.forward(px, ph, h, c, prm, zm)
        else:
            m, c_new, saved = step.forward(px, ph, h, c)
        h_new = F.linear(m, W["w_hr"]) if W["w_hr"] is not None else m
        cache.steps.append(dict(h_prev=h, c_prev=c, px=px, ph=ph, m=m, saved=saved, h=h_new, t=t, active=active))
        if W["gamma_ih"] is not None:
            cache.steps[-1].update(in_hat=(raw - mean) * rstd, in_rstd=rstd)
        if cell.extended:
            cache.steps[-1].update(prm=prm, zm=zm)
        a = active[:, None]
        out[t, rows] = torch.where(a, h_new, torch.zeros_like(h_new))
        h = torch.where(a, h_new, h)
        if cell.has_cell_state:
            c = torch.where(a, c_new, c)
            c_states[t, rows] = torch.where(a, c_new, torch.zeros_like(c_new))
    c_n = c.to(dtype) if cell.has_cell_state else None
    cache.c_states = c_states.to(dtype) if c_states is not None else None
    return out.to(dtype), h.to(dtype), c_n, cache


def layer_backward(
    cache: LayerCache,
    d_out: torch.Tensor,
    d_hn: torch.Tensor,
    d_cn: torch.Tensor | None = None,
    d_states: torch.Tensor | None = None,
) -> dict:
    """Hand-written BPTT of :func:`layer_forward`.

    ``d_states`` (T, B, H): the gradient of every step's cell state (``cache.c_states``), or
    ``None``.  Returns a dict with ``x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0`` gradients (float64
    when the forward was upcast), and ``gamma_ih``, ``params`` for layer-normalised cells.
    """
    W, cell, step = cache.weights, cells.get(cache.mode), STEPS[cache.mode]
    backward = step.backward
    cdt = cache.x.dtype
    B = cache.x.shape[1]
    H = W["w_hh"].shape[0] // cell.G
    rows = torch.arange(B, device=cache.x.device)
    d_out = d_out.to(cdt)
    d_states = d_states.to(cdt) if d_states is not None else None
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
        if d_states is not None and cell.has_cell_state:
            dc = dc + zero(d_states[t, rows])
        if cell.extended:
            d_px, d_ph, dh_direct, dc_prev, d_prm = backward(dm, dc, st["saved"], st["h"], st["h_prev"], st["c_prev"],
                                                             st["prm"], st["zm"])  # fmt: skip
            g["params"] += torch.cat([zero(d).sum(0) for d in d_prm])
        elif backward is not None:
            d_px, d_ph, dh_direct, dc_prev = backward(dm, dc, st["saved"], st["h"], st["h_prev"], st["c_prev"])
        else:
            d_px, d_ph, dh_direct, dc_prev = _autograd_backward(step, cell)(
                dm, dc, st["saved"], st["h"], st["h_prev"], st["c_prev"], px=st["px"], ph=st["ph"]
            )
        dgi = zero(torch.cat(list(d_px), dim=1))
        dgh = zero(torch.cat(list(d_ph), dim=1))
        d_in = dgi  # gradient of x W_ih^T
        if W["gamma_ih"] is not None:  # through the input's layer norm
            g["gamma_ih"] += (dgi * st["in_hat"]).sum(0)
            d_in = _norm_backward([dgi * W["gamma_ih"]], [st["in_hat"]], st["in_rstd"])[0]
        g["w_ih"] += d_in.t() @ cache.x[t, rows]
        g["w_hh"] += dgh.t() @ st["h_prev"]
        if g["b_ih"] is not None:
            g["b_ih"] += dgi.sum(0)
            inner = torch.zeros(cell.G * H, dtype=torch.bool, device=dgi.device)
            for gi in cell.inner_gates:
                inner[gi * H : (gi + 1) * H] = True
            if g["b_hh"] is not None:
                g["b_hh"] += torch.where(inner, dgh, dgi).sum(0)
        dx[t, rows] += zero(d_in @ W["w_ih"])
        dh = torch.where(a, dgh @ W["w_hh"] + dh_direct, dh)
        if cell.has_cell_state:
            dc = torch.where(a, dc_prev, dc)
    g.update(x=dx, h0=dh, c0=dc if cell.has_cell_state else None)
    return g


def stack_forward(
    mode: str, x: torch.Tensor, weights, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None, *,
    num_layers: int = 1, bias: bool = True, bidirectional: bool = False, proj_size: int = 0,
    lengths: torch.Tensor | None = None, upcast: bool = False, dropout: float = 0.0, training: bool = False,
    return_states: bool = False,
):  # fmt: skip
    """A ``torch.nn``-style stack over ``_flat_weights``-ordered weights.

    ``x`` (T, B, I) time-major.  Returns ``(out (T,B,D*P), h_n (L*D,B,P), c_n or None)``, and
    with ``return_states`` a fourth item ``c_states`` (T, B, L*D*H): every step's cell state,
    layer ``l`` and direction ``d`` at ``(l*D + d)*H`` (as :func:`fastrnn.functional.recurrent_stack`).
    ``dropout`` between layers (``training`` only) as ``torch.nn``, drawn with torch's generator.
    Differentiable by autograd: it is also the ``torch`` backend of calls ``torch.nn`` cannot serve.
    """
    D = 2 if bidirectional else 1
    per = 2 + (2 if bias else 0) + (1 if proj_size else 0)
    inp = x
    hs, cs, states = [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            grp = list(weights[k * per : (k + 1) * per])
            w_ih, w_hh = grp[0], grp[1]
            b_ih, b_hh = (grp[2], grp[3]) if bias else (None, None)
            w_hr = grp[-1] if proj_size else None
            out, hn, cn, cache = layer_forward(
                mode, inp, w_ih, w_hh, b_ih, b_hh, None if h0 is None else h0[k], None if c0 is None else c0[k],
                w_hr=w_hr, lengths=lengths, reverse=d == 1, upcast=upcast,
            )  # fmt: skip
            outs.append(out)
            hs.append(hn)
            cs.append(cn)
            states.append(cache.c_states)
        inp = torch.cat(outs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            inp = F.dropout(inp, p=dropout, training=True)
    has_c = cells.get(mode).has_cell_state
    c_n = torch.stack(cs) if has_c else None
    if return_states:
        if not has_c:
            raise ValueError(f"return_states: {mode} has no cell state")
        return inp, torch.stack(hs), c_n, torch.cat(states, dim=2)
    return inp, torch.stack(hs), c_n
