"""The shipped table of ``backend="auto"`` is generated from the committed results, never edited."""

from __future__ import annotations

import json

from benchmarks import auto_table
from fastrnn import auto


def test_shipped_table_equals_the_committed_results():
    """Regenerating ``fastrnn/auto_table.json`` from ``benchmarks/results/`` gives the shipped file
    byte for byte (after a GPU run: ``python -m benchmarks.auto_table``, then commit both)."""
    want = auto_table.render(auto_table.generate(auto_table.result_documents()))
    assert auto.TABLE_PATH.read_text() == want, "fastrnn/auto_table.json is stale or hand-edited: regenerate it"


def test_every_committed_gpu_run_is_in_the_table():
    table = json.loads(auto.TABLE_PATH.read_text())["devices"]
    docs = auto_table.result_documents()
    assert docs, "no committed GPU results"
    h200 = table["NVIDIA H200"]
    key = "LSTM|float16|L1|uni|dense|rnn|H768|P0|B4|T5|infer"  # the headline row: cuDNN faster
    assert h200["classes"][key]["torch_ms"] < h200["classes"][key]["triton_ms"]
    assert all(entry["kernels"] for entry in h200["classes"].values())


def test_every_entry_names_kernels_a_tier_can_read():
    """Each entry's ``kernels`` is a plan this checkout's tiers read back (its tier's configuration
    type, every field) and a device-code hash: what ``fastrnn.auto`` compares with the kernels that
    would run the class now.  Kills: a hand-edited or truncated identity."""
    from fastrnn.kernels import tiers

    for entry in json.loads(auto.TABLE_PATH.read_text())["devices"]["NVIDIA H200"]["classes"].values():
        plan_key, _, device_code = entry["kernels"].rpartition("@")
        plan = tiers.from_key(plan_key)
        assert plan.key == plan_key and len(device_code) == 16 and int(device_code, 16) >= 0


def _run(tmp_path, name: str, kernels: str | None, date: str, t: float = 1.0) -> tuple:
    row = {
        "case": dict(kind="rnn", cell="LSTM", dtype="fp16", layers=1, bidir=False, packed=False, H=256, B=16, T=512,
                     run="fwd"),
        "results": {"fastrnn": {"status": "ok", "median_ms": t, **({"kernels": kernels} if kernels else {})},
                    "cudnn": {"status": "ok", "median_ms": 2.0}},
    }  # fmt: skip
    env = dict(gpu="Fake GPU", commit="c" * 40, date=date)
    path = tmp_path / name / "results.json"
    return path, {"suite": "gpu", "env": env, "rows": [row]}


def test_each_entry_records_its_kernels_and_the_latest_run_wins(tmp_path):
    """Rows without the identity of their kernels are left out; a later run's measurement of a
    class replaces an earlier one.  Kills: entries without an identity, or the first run winning."""
    old = auto_table.generate([_run(tmp_path, "a", None, "2026-01-01")], root=tmp_path)
    assert "Fake GPU" not in old["devices"]
    runs = [_run(tmp_path, "a", "k-old", "2026-01-01", 1.0), _run(tmp_path, "b", "k-new", "2026-02-01", 3.0)]
    new = auto_table.generate(runs, root=tmp_path)["devices"]["Fake GPU"]
    (entry,) = new["classes"].values()
    assert entry["kernels"] == "k-new" and entry["triton_ms"] == 3.0 and new["sources"][-1] == "b/results.json"
    assert list(new["classes"]) == ["LSTM|float16|L1|uni|dense|rnn|H256|P0|B4|T5|infer"]
