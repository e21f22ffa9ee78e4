"""The kernels' arithmetic against float64 (docs/numerics.md): the activations the cells use
(``tanh``, ``sigmoid``, ``relu``), measured in ulp over a dense grid of fp32 inputs by running the
kernels' own ``@triton.jit`` functions; and each precision of fp32 dots (``fp32_precision``:
``"ieee"``, ``"tf32x3"``, ``"tf32"``), modules' outputs and gradients against a float64 oracle.

Where the kernels run decides the bound: Triton's interpreter computes ``tl.exp`` with numpy's
float32 exp (itself up to ~2.5 ulp off), a GPU with ``ex2.approx.f32`` after scaling the argument
by log2(e) (CUDA documents that sequence, ``__expf``, as ``2 + floor(1.173 |x|)`` ulp) and
divides with ``div.full.f32`` (2 ulp).  The GPU bounds below follow from those documented errors
(a worst-case sweep of each rounding), the interpreter's are measured; docs/numerics.md lists both.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import fastrnn
from fastrnn.kernels import _runtime, cells, common
from helpers import FLOOR, TWINS, assert_within_oracle, device, module_inputs, run_and_grad

# ---------------------------------------------------------------------------------------------
# the activations, in ulp


#: Largest error in ulp of the correctly rounded fp32 value, interpreter and GPU.  The GPU's
#: sigmoid inherits the exp approximation's error, which grows with the argument: ``7 + 2.4
#: max(-x, 0)`` ulp (tiny in absolute terms: the values there are below 1e-4 times ulp(1)).
ULP_BOUND = {
    "interpreter": {"tanh": lambda x: 2.0, "sigmoid": lambda x: 3.5},
    "gpu": {"tanh": lambda x: 5.0, "sigmoid": lambda x: 7.0 + 2.4 * np.maximum(-x, 0.0)},
}

#: fp32 results below the smallest normal number may be flushed to zero (both platforms): their
#: error is measured absolutely, against this.
TINY = 2.0**-126


@triton.jit
def _activations_kernel(x_ptr, tanh_ptr, sigmoid_ptr, relu_ptr, n, RELU_CELL: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(tanh_ptr + offs, common.tanh(x), mask=mask)
    tl.store(sigmoid_ptr + offs, common.sigmoid(x), mask=mask)
    # relu as the RNN_RELU cell computes it: its forward maths with a zero recurrent part
    m, _c, _saved = RELU_CELL((x,), (tl.zeros_like(x),), x, x)
    tl.store(relu_ptr + offs, m, mask=mask)


def activations(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The kernels' ``tanh``, ``sigmoid`` and RNN_RELU's ``relu`` of ``x`` (fp32, on the test device)."""
    out = {name: torch.empty_like(x) for name in ("tanh", "sigmoid", "relu")}
    block = 4096
    _activations_kernel[(triton.cdiv(x.numel(), block),)](
        x, out["tanh"], out["sigmoid"], out["relu"], x.numel(), RELU_CELL=cells.get("RNN_RELU").forward, BLOCK=block
    )
    return out


def _fp32_between(lo: float, hi: float, step: int = 1) -> np.ndarray:
    """Every ``step``-th fp32 number in ``[lo, hi)`` (``0 <= lo < hi``), by bit pattern."""
    a, b = np.array([lo, hi], dtype=np.float32).view(np.int32)
    return np.arange(a, b, step, dtype=np.int32).view(np.float32)


def dense_grid(step: int = 8) -> torch.Tensor:
    """Inputs of both signs: every ``step``-th fp32 number around tanh's branch point (0.625) and
    in a few other intervals (``step=1``: every one, 1.7 million inputs); each power of two from
    the smallest subnormal up; log-spaced tiny values (subnormal to 1e-2); an even grid over
    [0, 20] (mid-range) and over [20, 110] (saturation, sigmoid's underflow); +-0, +-inf, the
    largest and the smallest normal fp32."""
    parts = [
        _fp32_between(0.6, 0.65, step),
        _fp32_between(1e-3, 1.02e-3, step),
        _fp32_between(0.99, 1.0, step),
        _fp32_between(4.0, 4.004, step),
        np.ldexp(np.float32(1), np.arange(-149, 128)).astype(np.float32),
        np.geomspace(1e-45, 1e-2, 400_000 // step).astype(np.float32),
        np.linspace(0, 20, 800_000 // step + 1, dtype=np.float32),
        np.linspace(20, 110, 20_001, dtype=np.float32),
        np.array([0.0, np.inf, np.finfo(np.float32).max, np.finfo(np.float32).tiny], dtype=np.float32),
    ]
    x = np.concatenate(parts)
    return torch.from_numpy(np.concatenate([x, -x]))


def ulp_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """``|got - want|`` in ulp of the fp32 number nearest ``want`` (float64), where that is a
    normal fp32 number; results below :data:`TINY` may be flushed: measured as ``err / TINY``
    (so at most 1 means "within the flush").  NaN where ``got`` is not finite."""
    want = want.double()
    err = (got.double() - want).abs()
    _, e = torch.frexp(want)
    ulp = torch.ldexp(torch.ones_like(want), (e - 1).clamp(min=-126) - 23)
    return torch.where(want.abs() >= TINY, err / ulp, err / TINY)


def _platform() -> str:
    return "interpreter" if _runtime.INTERPRET else "gpu"


def check_activations(got: dict[str, torch.Tensor], x: torch.Tensor, names=("tanh", "sigmoid", "relu")) -> dict:
    """Assert the bounds of :data:`ULP_BOUND` for ``names`` (relu: exact), saturation at +-inf
    and NaN passed through; returns each activation's largest ulp error.  Every failure message
    starts with the activation's name."""
    bounds = ULP_BOUND[_platform()]
    xd = x.double()
    worst = {}
    for name, ref in (("tanh", torch.tanh(xd)), ("sigmoid", torch.sigmoid(xd))):
        if name not in names:
            continue
        y = got[name].cpu()
        finite = torch.isfinite(x)
        assert torch.isfinite(y[finite]).all(), f"{name}: non-finite output for finite input, e.g. x = " + str(
            x[finite][~torch.isfinite(y[finite])][:4].tolist()
        )
        err = ulp_error(y, ref)
        limit = torch.from_numpy(np.broadcast_to(bounds[name](x.double().numpy()), x.shape).copy())
        bad = ~(err <= limit) & finite
        worst[name] = err[finite].max().item()
        assert not bad.any(), (
            f"{name} ({_platform()}): {bad.sum().item()} inputs beyond the bound, worst {worst[name]:.3g} ulp at "
            f"x = {x[finite][err[finite].argmax()].item()!r}; e.g. x = {x[bad][:4].tolist()}"
        )
        inf = torch.isinf(x)  # saturation: exactly +-1, and 1 / 0
        assert torch.equal(y[inf], ref[inf].float()), f"{name}: {y[inf].tolist()} at x = {x[inf].tolist()}"
    if "relu" in names:
        relu, num = got["relu"].cpu(), ~torch.isnan(x)
        assert torch.equal(relu[num], torch.relu(x[num])), "relu is not exact"
        worst["relu"] = 0.0
    for name in names:
        assert torch.isnan(got[name].cpu()[torch.isnan(x)]).all(), f"{name} does not pass NaN through"
    return worst


@pytest.mark.parametrize("step", [pytest.param(8, id="grid"), pytest.param(1, id="every-fp32", marks=pytest.mark.slow)])
def test_activations_within_their_ulp_bounds(step):
    """tanh, sigmoid and relu of the kernels against float64 over :func:`dense_grid` (and NaN):
    interpreted, tanh within 2 ulp and sigmoid within 3.5 (measured 1.90 and 3.21 with every fp32
    number of the intervals); on a GPU within the bounds derived from its exp and division
    (:data:`ULP_BOUND`)."""
    x = torch.cat([dense_grid(step), torch.tensor([float("nan"), -float("nan")])])
    got = activations(x.to(device()))
    worst = check_activations(got, x)
    assert worst["tanh"] > 0.5 and worst["sigmoid"] > 0.5  # the grid reaches rounding errors: a measurement


# ---------------------------------------------------------------------------------------------
# wrong activations the measurement catches (each one plausible, each once shipped or proposed)


@triton.jit
def _tanh_one_minus_e(x):
    """The former form, ``(1 - e)/(1 + e)`` with ``e = exp(-2|x|)``: cancellation near 0."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _tanh_via_sigmoid(x):
    return 2.0 * common.sigmoid(2.0 * x) - 1.0


@triton.jit
def _tanh_branch_at_0_3(x):
    """The kernels' tanh with the polynomial used only below 0.3 (the exp form above it)."""
    a = tl.abs(x)
    t = 1.0 - 2.0 / (tl.exp(2.0 * tl.where(a > 20.0, 20.0, a)) + 1.0)
    t = tl.where(a < 0.3, common.tanh(a), t)
    return tl.where(x < 0, -t, t)


@triton.jit
def _sigmoid_exp_over(x):
    """``exp(x) / (1 + exp(x))``: inf / inf = NaN once exp(x) overflows."""
    e = tl.exp(x)
    return e / (1.0 + e)


@triton.jit
def _sigmoid_via_tanh(x):
    """``(1 + tanh(x/2)) / 2``: cancellation where sigmoid is small."""
    return 0.5 * (1.0 + common.tanh(0.5 * x))


@triton.jit
def _relu_maxnum(px, ph, h, c):
    """``tl.maximum(v, 0)`` (IEEE maxNum): NaN becomes 0."""
    return tl.maximum(px[0] + ph[0], 0.0), c, ()


@triton.jit
def _mutant_kernel(x_ptr, tanh_ptr, sigmoid_ptr, relu_ptr, n, TANH: tl.constexpr, SIGMOID: tl.constexpr,
                   RELU_CELL: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(tanh_ptr + offs, TANH(x), mask=mask)
    tl.store(sigmoid_ptr + offs, SIGMOID(x), mask=mask)
    m, _c, _saved = RELU_CELL((x,), (tl.zeros_like(x),), x, x)
    tl.store(relu_ptr + offs, m, mask=mask)


MUTANTS = {
    "tanh (1-e)/(1+e)": ("tanh", dict(TANH=_tanh_one_minus_e)),
    "tanh 2 sigmoid(2x) - 1": ("tanh", dict(TANH=_tanh_via_sigmoid)),
    "tanh polynomial below 0.3 only": ("tanh", dict(TANH=_tanh_branch_at_0_3)),
    "sigmoid exp(x)/(1+exp(x))": ("sigmoid", dict(SIGMOID=_sigmoid_exp_over)),
    "sigmoid (1+tanh(x/2))/2": ("sigmoid", dict(SIGMOID=_sigmoid_via_tanh)),
    "relu tl.maximum": ("relu", dict(RELU_CELL=_relu_maxnum)),
}


@pytest.mark.parametrize(
    "mutant",
    [pytest.param(m, marks=() if m in ("tanh (1-e)/(1+e)", "relu tl.maximum") else pytest.mark.slow) for m in MUTANTS],
)
def test_the_measurement_fails_wrong_activations(mutant):
    """Each plausible wrong form of an activation, swapped in for the kernels' one, fails the
    same measurement (:func:`check_activations` of that activation)."""
    x = torch.cat([dense_grid(), torch.tensor([float("nan")])])
    name, swap = MUTANTS[mutant]
    fns = {**dict(TANH=common.tanh, SIGMOID=common.sigmoid, RELU_CELL=cells.get("RNN_RELU").forward), **swap}
    xd = x.to(device())
    got = {name: torch.empty_like(xd) for name in ("tanh", "sigmoid", "relu")}
    block = 4096
    _mutant_kernel[(triton.cdiv(x.numel(), block),)](xd, got["tanh"], got["sigmoid"], got["relu"], x.numel(), **fns,
                                                     BLOCK=block)  # fmt: skip
    with pytest.raises(AssertionError, match=f"^{name}"):
        check_activations(got, x, names=(name,))


# ---------------------------------------------------------------------------------------------
# each precision of fp32 dots, against float64


@contextlib.contextmanager
def tensor_cores():
    """Tensor-core rounding of fp32 dot operands: the interpreter emulates it while this is active
    (:data:`fastrnn.kernels.common.EMULATE_TENSOR_CORES`); a GPU always has it."""
    if not _runtime.INTERPRET:
        yield
        return
    before = common.EMULATE_TENSOR_CORES
    common.EMULATE_TENSOR_CORES = tl.constexpr(True)
    try:
        yield
    finally:
        common.EMULATE_TENSOR_CORES = before


#: ``"tf32"``'s contract: every output and gradient within this fraction of the oracle's largest
#: magnitude (at least 1) of float64 -- about 2^-7, where the products' operands keep 10 bits.
TF32_RELATIVE = 1e-2

#: The configurations each precision runs (cell, module keyword arguments, T, B, I, H); the first
#: of each precision's product is in the default run.
PRECISION_CASES = {
    "gru-2layer": ("GRU", dict(num_layers=2), 10, 3, 5, 24),
    "lstm-bidir": ("LSTM", dict(bidirectional=True), 10, 3, 5, 20),
    "rnn-tanh": ("RNN_TANH", dict(), 12, 3, 5, 32),
    "lstm-proj": ("LSTM", dict(proj_size=8), 10, 3, 5, 32),
}
_DEFAULT = {("tf32x3", "gru-2layer"), ("ieee", "rnn-tanh"), ("tf32", "rnn-tanh")}


def _precision_run(precision: str, case: str):
    """``(fast, ref, oracle)`` results: outputs and gradients of every input and parameter of a
    fastrnn module with ``fp32_precision=precision``, its torch.nn twin in fp32 (TF32 off), and the
    twin in float64."""
    mode, kwargs, T, B, I, H = PRECISION_CASES[case]
    family = cells.get(mode).family
    fast_cls, torch_cls = TWINS[family]
    kwargs = dict(kwargs, **cells.get(mode).twin_kwargs)
    torch.manual_seed(0)
    ref = torch_cls(I, H, **kwargs).to(device())
    fast = fast_cls(I, H, **kwargs, backend="triton", fp32_precision=precision).to(device())
    fast.load_state_dict(ref.state_dict())
    oracle = copy.deepcopy(ref).double()
    make = module_inputs(mode, kwargs, T, B, "dense", True, I, H, torch.float32)
    with tensor_cores():
        x, hx, leaves = make()
        got = run_and_grad(fast, x, hx, leaves)
    x, hx, leaves = make()
    base = run_and_grad(ref, x, hx, leaves)
    x, hx, leaves = make(torch.float64)
    want = run_and_grad(oracle, x, hx, leaves)
    return got, base, want


def _pairs(got, base, want):
    """``(what, fastrnn, torch.nn, float64)`` for every output and gradient."""
    for i, (a, b, c) in enumerate(zip(got[0], base[0], want[0], strict=True)):
        yield f"output {i}", a, b, c
    assert got[1].keys() == base[1].keys() == want[1].keys()
    for k in got[1]:
        yield f"gradient {k}", got[1][k], base[1][k], want[1][k]


@pytest.mark.parametrize(
    "precision,case",
    [pytest.param(p, c, id=f"{p}-{c}", marks=() if (p, c) in _DEFAULT else pytest.mark.slow)
     for p in ("ieee", "tf32x3", "tf32") for c in PRECISION_CASES],
)  # fmt: skip
def test_each_precision_against_float64(precision, case):
    """``"ieee"`` and ``"tf32x3"``: the fp32 rule (at most twice torch.nn's own fp32 error plus
    the floor; docs/numerics.md).  ``"tf32"``: within :data:`TF32_RELATIVE` of the oracle's scale,
    and further from it than torch.nn's fp32 -- the dots really ran in TF32 (in the interpreter:
    with the tensor cores' rounding emulated)."""
    got, base, want = _precision_run(precision, case)
    tf32_worst = 0.0
    for what, a, b, c in _pairs(got, base, want):
        if precision != "tf32":
            assert_within_oracle(a, b, c, torch.float32, f"{precision} {what}")
            continue
        scale = max(1.0, c.abs().max().item())
        err = (a.double() - c).abs().max().item()
        assert err <= TF32_RELATIVE * scale, f"tf32 {what}: {err:.3g} from float64 (scale {scale:.3g})"
        tf32_worst = max(tf32_worst, err / scale)
    if precision == "tf32":
        fp32_worst = max((b.double() - c).abs().max().item() / max(1.0, c.abs().max().item())
                         for _, _, b, c in _pairs(got, base, want))  # fmt: skip
        assert tf32_worst > 10 * fp32_worst + FLOOR[torch.float32], (tf32_worst, fp32_worst)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
def test_gather_gemm_precision_against_float64(precision):
    """The fused embedding's gather-GEMM (``strategy="gather_gemm"``) by the fp32 rule: the output
    and the gradients of the embedding table and every weight."""
    torch.manual_seed(0)
    V, E, H = 50, 40, 16
    emb, rnn = torch.nn.Embedding(V, E).to(device()), torch.nn.GRU(E, H).to(device())
    fused = fastrnn.EmbeddingRNN.from_modules(copy.deepcopy(emb), copy.deepcopy(rnn), backend="triton",
                                              strategy="gather_gemm")  # fmt: skip
    fused.rnn.fp32_precision = precision
    oracle_emb, oracle_rnn = copy.deepcopy(emb).double(), copy.deepcopy(rnn).double()
    ids = torch.randint(0, V, (9, 4), device=device())
    weights = torch.randn(9, 4, H, dtype=torch.float64).to(device())

    def grads(out, *modules):
        (out * weights.to(out.dtype)).sum().backward()
        return out.detach(), {n: p.grad for m in modules for n, p in m.named_parameters()}

    with tensor_cores():
        got = grads(fused(ids)[0], fused.embedding, fused.rnn)
    base = grads(rnn(emb(ids))[0], emb, rnn)
    want = grads(oracle_rnn(oracle_emb(ids))[0], oracle_emb, oracle_rnn)
    assert_within_oracle(got[0], base[0], want[0], torch.float32, f"{precision} output")
    assert got[1].keys() == base[1].keys() == want[1].keys()
    for k in got[1]:
        assert_within_oracle(got[1][k], base[1][k], want[1][k], torch.float32, f"{precision} gradient {k}")


# ---------------------------------------------------------------------------------------------
# what each precision compiles to (sm_90, Triton's own toolchain; no GPU needed)

_SASS_PROBE = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from fastrnn.kernels import report
from fastrnn.kernels.report.sass import nvidia_tool
cfg = report.KernelConfig(**json.loads(sys.argv[1]))
src, target, options = report.compile_source(cfg)
cubin = triton.compile(src, target=target, options=options).asm["cubin"]
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "k.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    sass = subprocess.run([nvidia_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
ops = {}
for m in re.finditer(r"^\s*/\*[0-9a-f]+\*/\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M):
    ops[m.group(1)] = ops.get(m.group(1), 0) + 1
print(json.dumps(dict(ops=ops, num_warps=options["num_warps"])))
"""


def sass_opcodes(**config) -> dict:
    """``{"ops": opcode counts, "num_warps": ...}`` of the kernel a launch of
    ``report.KernelConfig(**config)`` compiles to; opcodes with their modifiers (e.g.
    ``HMMA.1688.F32.TF32``), read from its cubin with ``nvdisasm``; counts per warp."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", _SASS_PROBE, json.dumps(config)], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("tier,cell,hidden", [(1, "RNN_TANH", 128), (1, "GRU", 64), (2, "GRU", 128)])
def test_fp32_precisions_compile_to_their_instructions(tier, cell, hidden):
    """sm_90 SASS of the fp32 forward: ``"tf32x3"`` and ``"tf32"`` multiply on tensor cores
    (``HMMA.*.TF32``; tf32x3 three times as many as tf32), ``"ieee"`` on FMA units (``FFMA``, no
    tensor-core instruction)."""
    pytest.importorskip("triton.backends.nvidia")
    from fastrnn.kernels import report

    if report.missing_tools():
        pytest.skip(f"CUDA tools {report.missing_tools()} not shipped with triton: cannot build cubins")
    base = dict(kernel="fwd", cell=cell, dtype="fp32", hidden_size=hidden, arch=90, varlen=True, reverse=True,
                has_h0=True, tier=tier)  # fmt: skip
    probes = {p: sass_opcodes(**base, precision=p) for p in ("ieee", "tf32", "tf32x3")}
    ops = {p: probe["ops"] for p, probe in probes.items()}
    # per program (the counts are per warp; the precisions' tiles may differ in warps)
    tf32_mma = {p: probe["num_warps"] * sum(n for op, n in ops[p].items() if re.match(r"HG?MMA\..*TF32", op))
                for p, probe in probes.items()}  # fmt: skip
    assert not any(re.match(r"(HG?MMA|DMMA)", op) for op in ops["ieee"]), ops["ieee"]
    assert ops["ieee"].get("FFMA", 0) > 100, ops["ieee"]
    assert tf32_mma["tf32"] > 0 and tf32_mma["tf32x3"] == 3 * tf32_mma["tf32"], tf32_mma


# ---------------------------------------------------------------------------------------------
# determinism (docs/numerics.md, "Determinism")

KERNELS_DIR = Path(common.__file__).parent


def _triton_atomics() -> set[tuple[str, str]]:
    """``(file, function)`` of every ``tl.atomic_*`` call in the Triton kernel sources."""
    found = set()
    for path in KERNELS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and node.attr.startswith("atomic_"):
                    found.add((path.name, fn.name))
    return found


def test_kernels_accumulate_without_atomics():
    """No kernel sums floating-point values with atomics (whose order changes from run to run):
    the only atomics are tier 2's barrier counter and timeout flag (integers); the CUDA sources
    have none.  Every other sum is a dot or a reduction in an order fixed at compile time."""
    assert _triton_atomics() == {("persistent.py", "grid_barrier")}
    cuda = re.compile(r"\batomic[A-Z]\w*\s*\(|\bred\.(?:async|relaxed|release|global|shared)|\batom\.")
    for path in sorted((KERNELS_DIR / "cuda").glob("*")) if (KERNELS_DIR / "cuda").is_dir() else []:
        code = "\n".join(line.split("//")[0] for line in path.read_text(errors="replace").splitlines())
        assert not cuda.search(code), f"{path.name}: an atomic operation ({cuda.search(code).group(0)})"


def _two_runs(make, run):
    """``run(make())`` twice, each on a freshly built module, under
    ``torch.use_deterministic_algorithms(True)``."""
    torch.use_deterministic_algorithms(True)
    try:
        return [run(make()) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)


def _outputs_and_grads(module, *inputs):
    torch.manual_seed(3)
    out = module(*inputs)
    flat = [t for t in (out if isinstance(out, tuple) else (out,)) for t in (t if isinstance(t, tuple) else (t,))]
    sum((t.float() * torch.randn(t.shape).to(t.device)).sum() for t in flat).backward()
    return [t.detach().clone() for t in flat] + [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    "what",
    ["gru-inner-bias", pytest.param("layernorm-lstm", marks=pytest.mark.slow),
     pytest.param("embedding-gather-gemm", marks=pytest.mark.slow), pytest.param("tier2-lstm", marks=pytest.mark.slow)],
)  # fmt: skip
def test_bitwise_reproducible_under_deterministic_algorithms(what, monkeypatch):
    """Outputs and every gradient bit for bit equal across two runs, for what sums across steps,
    tokens or programs: GRU's inner recurrent bias (its gradient a sum over time and batch),
    a layer-norm cell's per-unit parameters (likewise), the fused embedding's token gradients
    (``index_put_`` with accumulation over repeated ids), tier 2 (programs exchange ``h`` and
    their gate gradients every step)."""
    x = torch.randn(7, 5, 4, device=device())
    if what == "gru-inner-bias":
        runs = _two_runs(
            lambda: _seeded(lambda: fastrnn.GRU(4, 12, backend="triton")), lambda m: _outputs_and_grads(m, x)
        )
    elif what == "layernorm-lstm":
        runs = _two_runs(lambda: _seeded(lambda: fastrnn.LayerNormLSTM(4, 12, backend="triton")),
                         lambda m: _outputs_and_grads(m, x))  # fmt: skip
    elif what == "embedding-gather-gemm":
        ids = torch.randint(0, 3, (7, 5), device=device())  # many repeated ids
        runs = _two_runs(
            lambda: _seeded(
                lambda: fastrnn.EmbeddingRNN(3, 6, 12, mode="GRU", backend="triton", strategy="gather_gemm")
            ),
            lambda m: _outputs_and_grads(m, ids),
        )
    else:
        monkeypatch.setenv("FASTRNN_TIER", "2")
        runs = _two_runs(
            lambda: _seeded(lambda: fastrnn.LSTM(4, 20, backend="triton")), lambda m: _outputs_and_grads(m, x)
        )
    assert len(runs[0]) == len(runs[1]) > 2
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def _seeded(build):
    torch.manual_seed(0)
    return build().to(device())
