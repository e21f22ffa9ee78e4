"""Facts about Triton releases come from one data file (kernels/releases.json): the tier limits,
the compiler aborts as [first, fixed) ranges, the per-step estimates; an unknown release gets the
most conservative set."""

from __future__ import annotations

import json

import pytest
import torch

from fastrnn.kernels import persistent, releases, tier1, tiers


def test_tiers_read_the_installed_release():
    assert tier1.TIER1_MAX_WEIGHT_BYTES == releases.by_dtype(releases.limits("tier1_max_weight_bytes"))
    assert persistent.RESIDENT_MAX_WEIGHT_BYTES_BWD == {
        int(k): v for k, v in releases.limits("resident_max_weight_bytes_bwd").items()
    }
    assert set(releases.load()["releases"]) >= {"3.6", "3.9"}  # the releases the limits were measured with


def test_unknown_release_gets_the_smallest_limits():
    data = releases.load()["releases"]
    aligned = releases.limits("tier1_max_weight_bytes", "99.0")
    cell = releases.limits("tier1_cell_limits", "99.0")
    for dtype in tiers.DTYPES:
        name = str(dtype).removeprefix("torch.")
        assert aligned[name] == min(r["limits"]["tier1_max_weight_bytes"][name] for r in data.values())
        for mode, by_dtype in cell.items():
            for i in range(2):
                assert by_dtype[name][i] == min(r["limits"]["tier1_cell_limits"][mode][name][i] for r in data.values())


def test_compiler_aborts_are_ranges_with_an_upstream_report():
    for entry in releases.load()["compiler_aborts"]:
        assert entry["upstream"] and entry["what"]
        first = entry["first"]
        dtype = getattr(torch, entry["dtype"])
        assert releases.compiler_abort(entry["mode"], dtype, entry["tier"], first) is entry
        if entry["fixed"]:
            assert releases.compiler_abort(entry["mode"], dtype, entry["tier"], entry["fixed"]) is None
        else:  # open: applies to a release this file does not know
            assert releases.compiler_abort(entry["mode"], dtype, entry["tier"], "99.0") is entry
    # the fp32 LSTM tier-1 forward aborts triton 3.9's compiler, not 3.6's
    assert releases.compiler_abort("LSTM", torch.float32, 1, "3.6") is None
    assert releases.compiler_abort("LSTM", torch.float32, 1, "3.9") is not None
    assert releases.compiler_abort("GRU", torch.float32, 1, "3.9") is None


def test_writing_estimates_keeps_the_rest(tmp_path, monkeypatch):
    path = tmp_path / "releases.json"
    path.write_text(releases.PATH.read_text())
    monkeypatch.setattr(releases, "PATH", path)
    releases.forget()
    try:
        releases.write_step_estimates({"fwd/TEST/fp16/16/0/90/x/1": 1.5}, release="99.1")
        data = json.loads(path.read_text())
        assert data["releases"]["99.1"]["step_estimates"] == {"fwd/TEST/fp16/16/0/90/x/1": 1.5}
        assert data["releases"]["99.1"]["limits"]["tier1_max_weight_bytes"]["float16"] == min(
            r["limits"]["tier1_max_weight_bytes"]["float16"] for k, r in data["releases"].items() if k != "99.1"
        )
        assert data["compiler_aborts"] == releases.load()["compiler_aborts"]
    finally:
        monkeypatch.undo()
        releases.forget()


@pytest.mark.parametrize("release", ["3.6", "3.9"])
def test_every_known_release_has_estimates(release):
    assert releases.step_estimates(release), f"no step estimates for triton {release}"
