"""PyTorch's own module tests for nn.RNN/GRU/LSTM, run against fastrnn's triton path.

The cases are the ``module_db`` inputs of PyTorch's ``test_modules.py``
(``torch.testing._internal.common_modules``, shipped in the torch wheel): for each module, its
``module_inputs_func`` gives constructor arguments and forward inputs (unbatched sequences with and
without initial states, packed batches; inputs drawn from [-9, 9] as ``make_tensor`` does).  Each
case builds ``torch.nn.<X>`` and ``fastrnn.<X>(backend="triton")`` with the same arguments and
state dict, runs both on the same inputs and the same random output gradients, and compares the
outputs and the gradients of every input and parameter with ``torch.testing.assert_close`` at its
default tolerances for the dtype (fp32: atol 1e-5, rtol 1.3e-6; fp64: atol 1e-7, rtol 1e-7).  Those
are tighter than fp32 on some draws (weight gradients of up to ~30 from inputs in [-9, 9]):
where fastrnn and torch.nn differ by more than them, fastrnn must be the one closer to float64 and
within them of it (``_assert_close_to_torch``).

On CPU the kernels run in Triton's interpreter; on a GPU they are the compiled kernels.  Seeds are
fixed; ``FASTRNN_MODULE_DB_SEED=<n>`` draws another set of inputs, weights and output gradients
(`docs/numerics.md`: a loop over 20 seeds).
"""

from __future__ import annotations

import functools
import os
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import fastrnn
from helpers import _tensors, assert_same_structure, device


def _expecttest_or_shim() -> None:
    """torch's test helpers import ``expecttest`` (the ``test`` extra installs it) only to derive
    their ``TestCase`` from ``expecttest.TestCase``; ``module_db`` uses none of its features.  A
    machine that cannot install it (one without network access) gets a stand-in whose
    ``TestCase`` is ``unittest.TestCase``, so the cases still run there on the compiled kernels."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        import sys
        import types
        import unittest

        shim = types.ModuleType("expecttest")
        shim.TestCase = unittest.TestCase
        sys.modules["expecttest"] = shim


def _import_module_db():
    _expecttest_or_shim()
    # Importing torch's test helpers calls torch.backends.disable_global_flags(), after which
    # plain assignments such as `torch.backends.cudnn.allow_tf32 = False` (conftest.py) raise for
    # the rest of the process; the flag is restored on leaving this context.
    with torch.backends.__allow_nonbracketed_mutation():
        from torch.testing._internal.common_modules import module_db
    assert not torch.backends.flags_frozen(), "torch's test helpers froze torch.backends flags"
    return module_db


FASTRNN = {nn.RNN: fastrnn.RNN, nn.GRU: fastrnn.GRU, nn.LSTM: fastrnn.LSTM}
INFOS = {info.module_cls: info for info in _import_module_db() if info.module_cls in FASTRNN}
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
SEED = int(os.environ.get("FASTRNN_MODULE_DB_SEED", "0"))


def _seed(*key) -> int:
    return (SEED * 1_000_003 + zlib.crc32(repr(key).encode())) % 2**31


@functools.cache
def _cases(cls: type[nn.RNNBase], dtype_name: str) -> list:
    """``module_db``'s inputs for ``cls`` (packed sequences included where the function offers
    them), drawn once per process from a fixed seed."""
    info = INFOS[cls]
    kwargs = {} if cls is nn.LSTM else {"with_packed_sequence": True}
    torch.manual_seed(_seed(cls.__name__, dtype_name, "inputs"))
    return info.module_inputs_func(
        info, device=device(), dtype=DTYPES[dtype_name], requires_grad=True, training=True, **kwargs
    )


def _case_id(cls, dtype_name: str, i: int, case) -> str:
    kw = case.constructor_input.kwargs
    x, *hx = case.forward_input.args
    parts = [cls.__name__, dtype_name, f"{i:02d}", f"H{kw['hidden_size']}"]
    parts += [name for name in ("bidirectional", "batch_first") if kw.get(name)]
    parts += ["nobias"] if not kw.get("bias", True) else []
    parts += [f"proj{kw['proj_size']}"] if kw.get("proj_size") else []
    parts += [kw["nonlinearity"]] if "nonlinearity" in kw else []
    if isinstance(x, PackedSequence):
        parts.append(f"packed-B{int(x.batch_sizes[0])}")
    else:
        parts.append("x" + "x".join(map(str, x.shape)))
    parts += ["hx"] if hx else []
    return "-".join(parts)


def _features(case) -> set[str]:
    kw = case.constructor_input.kwargs
    x, *hx = case.forward_input.args
    out = {name for name in ("bidirectional", "batch_first", "proj_size") if kw.get(name)}
    out |= {"bias" if kw.get("bias", True) else "nobias"} | ({kw["nonlinearity"]} if "nonlinearity" in kw else set())
    return out | {"packed" if isinstance(x, PackedSequence) else "hx" if hx else "unbatched"}


def _default_cases(cls, dtype_name: str) -> set[int]:
    """The cases of the default run (the whole matrix is marked ``slow``): fp32, in order, each
    case that adds a constructor option or input kind (bidirectional, batch_first, bias or not,
    proj_size, tanh/relu, packed, initial states, unbatched) not yet covered; fp64, the first case with
    initial states."""
    cases = _cases(cls, dtype_name)
    if dtype_name != "fp32":
        return {next(i for i, c in enumerate(cases) if "hx" in _features(c))}
    chosen, covered = set(), set()
    for i, case in enumerate(cases):
        if not _features(case) <= covered:
            chosen.add(i)
            covered |= _features(case)
    return chosen


PARAMS = [
    pytest.param(
        cls, name, i, id=_case_id(cls, name, i, case), marks=() if i in _default_cases(cls, name) else pytest.mark.slow
    )
    for cls in FASTRNN
    for name in DTYPES
    for i, case in enumerate(_cases(cls, name))
]


def _fresh(obj):
    """A detached copy of the forward arguments whose tensors are new leaves needing grad."""
    if isinstance(obj, PackedSequence):
        return obj._replace(data=obj.data.detach().clone().requires_grad_())
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone().requires_grad_()
    if isinstance(obj, tuple):
        return tuple(_fresh(o) for o in obj)
    return obj


def _forward_backward(module: nn.Module, args: tuple, out_grads_seed: int, dtype: torch.dtype):
    """Outputs (flat), and the gradients of every input tensor and parameter after backward of
    random output gradients, drawn in ``dtype`` (same seed -> same gradients for every module, a
    float64 twin included)."""
    args = _fresh(args)
    out = module(*args)
    outs = _tensors(out)
    g = torch.Generator().manual_seed(out_grads_seed)
    grads = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(dtype).to(o) for o in outs]
    torch.autograd.backward(outs, grads)
    named = {f"input {i}": t.grad for i, t in enumerate(_tensors(args))}
    named.update({n: p.grad for n, p in module.named_parameters()})
    return out, [o.detach() for o in outs], named


def _to_float64(obj):
    if isinstance(obj, PackedSequence):
        return obj._replace(data=obj.data.double())
    if isinstance(obj, torch.Tensor):
        return obj.double()
    if isinstance(obj, tuple):
        return tuple(_to_float64(o) for o in obj)
    return obj


def _assert_close_to_torch(what: str, got: torch.Tensor, expected: torch.Tensor, exact) -> None:
    """``got`` (fastrnn) matches ``expected`` (torch.nn, same dtype) at assert_close's default
    tolerances.  Where the two differ by more, the float64 result (``exact()``) decides: ``got``
    must be no further from it than torch.nn's own result and within those tolerances of it (on
    an ill-conditioned draw two fp32 implementations can each be within tolerance of float64 and
    still differ by more than that from each other)."""
    try:
        torch.testing.assert_close(got, expected, msg=lambda m: f"{what}: {m}")
    except AssertionError:
        truth = exact()
        err_got = (got.double() - truth).abs().max().item()
        err_torch = (expected.double() - truth).abs().max().item()
        if err_got > err_torch:
            raise
        torch.testing.assert_close(
            got,
            truth.to(got.dtype),
            msg=lambda m: (
                f"{what}: fastrnn and torch.nn differ; against float64 ({err_got:.2e} vs "
                f"torch.nn's {err_torch:.2e}): {m}"
            ),
        )


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")  # torch.nn's CPU path
@pytest.mark.parametrize("cls,dtype_name,index", PARAMS)
def test_module_db_case(cls, dtype_name, index) -> None:
    case = _cases(cls, dtype_name)[index]
    dtype = DTYPES[dtype_name]
    args, kwargs = case.constructor_input.args, case.constructor_input.kwargs
    torch.manual_seed(_seed(cls.__name__, dtype_name, index, "weights"))
    ref = cls(*args, **kwargs).to(device=device(), dtype=dtype)
    fast = FASTRNN[cls](*args, **kwargs, backend="triton").to(device=device(), dtype=dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)

    out_grads_seed = _seed(cls.__name__, dtype_name, index, "out_grads")
    fwd_args = case.forward_input.args
    out_f, flat_f, grads_f = _forward_backward(fast, fwd_args, out_grads_seed, dtype)
    out_r, flat_r, grads_r = _forward_backward(ref, fwd_args, out_grads_seed, dtype)

    @functools.cache
    def exact():
        """torch.nn in float64 on the same (exactly converted) weights, inputs, output gradients."""
        ref64 = cls(*args, **kwargs).to(device=device(), dtype=torch.float64)
        ref64.load_state_dict(ref.state_dict(), strict=True)
        return _forward_backward(ref64, _to_float64(fwd_args), out_grads_seed, dtype)

    assert_same_structure(out_f, out_r)
    for i, (a, b) in enumerate(zip(flat_f, flat_r, strict=True)):
        _assert_close_to_torch(f"output {i}", a, b, lambda i=i: exact()[1][i])
    assert grads_f.keys() == grads_r.keys()
    for name in grads_r:
        assert grads_r[name] is not None and grads_f[name] is not None, name
        _assert_close_to_torch(f"gradient of {name}", grads_f[name], grads_r[name], lambda n=name: exact()[2][n])


def test_cases_cover_module_db() -> None:
    """Every module_db case of the three modules is parametrized, in both dtypes: per constructor
    combination (bias x batch_first x bidirectional, x nonlinearity for RNN, x proj_size for
    LSTM) an unbatched sequence without and one with initial states, and for RNN/GRU two packed
    batches."""
    combos = {nn.RNN: 16, nn.GRU: 8, nn.LSTM: 16}
    for cls, n_combos in combos.items():
        for name in DTYPES:
            cases = _cases(cls, name)
            keys = ("bias", "batch_first", "bidirectional", "nonlinearity", "proj_size")
            assert len({tuple(c.constructor_input.kwargs.get(k) for k in keys) for c in cases}) == n_combos
            packed = [isinstance(c.forward_input.args[0], PackedSequence) for c in cases]
            with_hx = [len(c.forward_input.args) > 1 for c in cases]
            assert sum(packed) == (0 if cls is nn.LSTM else 2 * n_combos)
            assert sum(with_hx) == n_combos
            assert len(cases) == n_combos * (2 if cls is nn.LSTM else 4)
    assert len(PARAMS) == 2 * sum(len(_cases(cls, "fp32")) for cls in FASTRNN)
