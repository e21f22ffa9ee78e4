"""What a benchmark row is, and the registry of *case kinds* that produce rows.

A **row** (:class:`Case`) is one point of the grid: one kind of workload (``kind``), one cell,
dtype, shape and run (forward, or a training step).  Every provider of the run measures the same row side by side.

A **case kind** (:class:`CaseKind`) says how to run a family of rows: how to set up the shared
workload (weights, random inputs), how each provider builds a callable for it, what the row costs
(bytes, FLOPs, sequential steps: the floors), which grids it contributes to and in which order.
Registered: ``"rnn"`` (:mod:`benchmarks.rnn`: a ``torch.nn``-style recurrent stack) and
``"embed"`` (:mod:`benchmarks.embedding`: fused embedding + first layer vs ``nn.Embedding`` +
``torch.nn``).  A seq2seq training step registers its own kind the same way (see
``benchmarks/README.md``), and its rows then slot into the same tables, files, filters and plots.

A **suite** (:class:`Suite`) is the set of providers compared in one run: on a GPU ``fastrnn``
(triton backend) vs ``cudnn`` (``torch.nn`` on CUDA) plus the ``loop`` and ``compile``
references; without a GPU, ``fastrnn_auto`` (``backend='auto'``) vs ``torch_nn`` on the CPU.
"""

from __future__ import annotations

import operator
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: Short dtype names used in rows, files and filters.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}

#: Row runs: ``fwd`` is inference (``eval()`` + ``torch.no_grad()``); ``fwdbwd`` is a training
#: step (``train()``, forward, then backward from a random output gradient).
MODES = ("fwd", "fwdbwd")

#: How providers are called in tables and plots.
PROVIDER_LABELS: dict[str, str] = {
    "fastrnn": "fastrnn",
    "cudnn": "cuDNN",
    "loop": "torch loop",
    "compile": "compiled loop",
    "fastrnn_auto": "fastrnn (auto)",
    "torch_nn": "torch.nn",
}


@dataclass(frozen=True)
class Case:
    """One benchmark row.

    ``input_size`` of the first layer is ``H`` unless ``extra`` sets ``I``; ``T`` is the (maximum)
    sequence length; ``packed`` rows draw random lengths in ``[1, T]`` (one sequence of length
    ``T``) and feed a ``PackedSequence``.  ``extra`` holds kind-specific fields as sorted
    ``(name, value)`` pairs (e.g. a vocabulary size for an embedding kind).
    """

    kind: str
    cell: str  # "RNN" (tanh), "LSTM", "GRU"
    dtype: str  # key of DTYPES
    B: int
    H: int
    T: int
    layers: int = 1
    bidir: bool = False
    packed: bool = False
    run: str = "fwd"  # what the timed call runs: "fwd" (inference) or "fwdbwd" (a training step)
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Stable, human-readable identity, e.g. ``rnn/LSTM/fp16/B16/H768/T1024/L1/uni/dense/fwd``."""
        parts = [
            self.kind,
            self.cell,
            self.dtype,
            f"B{self.B}",
            f"H{self.H}",
            f"T{self.T}",
            f"L{self.layers}",
            "bi" if self.bidir else "uni",
            "packed" if self.packed else "dense",
            self.run,
        ]
        parts += [f"{k}{v}" for k, v in self.extra]
        return "/".join(parts)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def directions(self) -> int:
        return 2 if self.bidir else 1

    @property
    def input_size(self) -> int:
        return int(dict(self.extra).get("I", self.H))

    def fields(self) -> dict[str, Any]:
        """Flat ``{field: value}`` of the row (``extra`` fields inlined), for filters, CSV and JSON."""
        d = asdict(self)
        d.pop("extra")
        d.update(dict(self.extra))
        return d

    def seed(self, base: int) -> int:
        """Per-row seed: depends on ``base`` and the row's key only, not on run order or resume."""
        return (base * 1_000_003 + zlib.crc32(self.key.encode())) % (2**31 - 1)

    @classmethod
    def from_fields(cls, d: dict[str, Any]) -> Case:
        """Inverse of :meth:`fields`."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = tuple(sorted((k, v) for k, v in d.items() if k not in known))
        return cls(**{k: d[k] for k in known if k in d}, extra=extra)


@dataclass(frozen=True)
class Cost:
    """Work of one call of a row: the minimal bytes moved, FLOPs, and sequential steps."""

    bytes: float
    flops: float
    steps: int
    tokens: int  # sequence elements processed (sum of lengths * batch for packed)
    recurrent_bytes: int = 0  # one layer's and direction's W_hh: whether one SM can hold a step


#: ``build(case, workload, device) -> step``: a zero-argument callable running one timed call and
#: returning its output tensor (or raising: the reason is recorded in that cell).  A builder may
#: set ``step.note`` (a string recorded with the row, e.g. which backend fastrnn picked and why).
ProviderBuilder = Callable[[Case, Any, torch.device], Callable[[], Any]]


@dataclass
class CaseKind:
    """A family of rows (see module doc).

    Attributes:
        name: the ``kind`` field of its rows.
        setup: ``setup(case, device, seed) -> workload``: the state every provider of the row
            shares (reference ``torch.nn`` weights, random inputs, output gradient).
        providers: provider name -> builder.  A suite provider a kind lacks shows as "n/a".
        cost: ``cost(case, seed) -> Cost`` for the floors.
        grids: grid name -> function returning that grid's rows of this kind.
        tier: ``tier(case) -> int``: run order (0 first: headline rows); providers listed in
            :attr:`Suite.slow` run only on rows of tier <= 1 unless asked for everywhere.
    """

    name: str
    setup: Callable[[Case, torch.device, int], Any]
    providers: dict[str, ProviderBuilder]
    cost: Callable[[Case, int], Cost]
    grids: dict[str, Callable[[], list[Case]]]
    tier: Callable[[Case], int] = lambda case: 0
    description: str = ""


KINDS: dict[str, CaseKind] = {}


def register_kind(kind: CaseKind) -> CaseKind:
    """Add a case kind to the registry (its rows join every grid it defines)."""
    KINDS[kind.name] = kind
    return kind


@dataclass(frozen=True)
class Suite:
    """The providers compared in one run; speed-up = ``baseline`` time / ``subject`` time."""

    name: str
    providers: tuple[str, ...]
    subject: str
    baseline: str
    #: slow reference providers: by default run only on rows of tier <= 1 (see ``--slow-providers``)
    slow: tuple[str, ...] = field(default=())


GPU_SUITE = Suite(
    "gpu",
    ("fastrnn", "fastrnn_auto", "cudnn", "loop", "compile"),
    subject="fastrnn",
    baseline="cudnn",
    slow=("loop", "compile"),
)
CPU_SUITE = Suite("cpu", ("fastrnn_auto", "torch_nn"), subject="fastrnn_auto", baseline="torch_nn")
SUITES = {s.name: s for s in (GPU_SUITE, CPU_SUITE)}


# ---------------------------------------------------------------------------------------------
# --filter: "LSTM", "H=256", "H=256,512", "B>=64", "dtype!=fp32", "run=fwd"; terms are ANDed.

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*(<=|>=|!=|=|<|>)\s*(.+?)\s*$")


def _coerce(text: str, like: Any) -> Any:
    if isinstance(like, bool):
        t = text.lower()
        if t in ("1", "true", "yes", "y", "on"):
            return True
        if t in ("0", "false", "no", "n", "off"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


def compile_filter(terms: Sequence[str]) -> Callable[[Case], bool]:
    """A predicate for ``--filter`` terms (all must hold).

    A term is either ``field OP value`` with ``OP`` one of ``= != < <= > >=`` (``=``/``!=`` take a
    comma list: ``H=256,512``; strings compare case-insensitively) or else a case-insensitive
    substring of the row key (``rnn/LSTM/fp16/B16/H768/T1024/L1/uni/dense/fwd``).  A term may hold
    several space-separated terms.

    >>> keep = compile_filter(["LSTM", "H>=512", "run=fwd"])
    """
    preds: list[Callable[[Case], bool]] = []
    for chunk in terms:
        for term in chunk.split():
            m = _TERM.match(term)
            if not m:
                needle = term.lower()
                preds.append(lambda c, n=needle: n in c.key.lower())
                continue
            name, op, raw = m.groups()
            preds.append(_field_pred(name, op, raw))
    return lambda case: all(p(case) for p in preds)


#: Former names of fields, still understood in filters: ``mode`` was ``run``'s.
_FIELD_ALIASES = {"mode": "run"}


def _field_pred(name: str, op: str, raw: str) -> Callable[[Case], bool]:
    fn = _OPS[op]
    name = _FIELD_ALIASES.get(name, name)
    values = raw.split(",") if op in ("=", "!=") else [raw]

    def pred(case: Case) -> bool:
        fields = case.fields()
        if name not in fields:
            return op == "!="
        have = fields[name]
        want = [_coerce(v, have) for v in values]
        if isinstance(have, str):
            have = have.lower()
            want = [w.lower() for w in want]
        if op == "=":
            return have in want
        if op == "!=":
            return have not in want
        return fn(have, want[0])

    return pred


def select(rows: Iterable[Case], filters: Sequence[str]) -> list[Case]:
    """The rows that pass every filter term (order kept)."""
    keep = compile_filter(filters)
    return [r for r in rows if keep(r)]
