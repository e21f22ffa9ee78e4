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
    for _, doc in docs:
        assert doc["env"]["gpu"] in table
    h200 = table["NVIDIA H200"]
    key = "LSTM|float16|L1|uni|dense|rnn|H768|P0|B4|T5|infer"  # the headline row: cuDNN faster
    assert h200["classes"][key]["torch_ms"] < h200["classes"][key]["triton_ms"]
    assert h200["kernel_hash"] == auto_table.kernel_hash_at(h200["commit"])


def test_the_shipped_table_measured_these_kernels_or_says_it_is_stale():
    """An entry whose kernels are not this checkout's is marked stale (and then never used)."""
    for gpu, entry in json.loads(auto.TABLE_PATH.read_text())["devices"].items():
        if entry["kernel_hash"] != auto.kernel_hash():
            assert entry.get("stale"), f"{gpu}: measured kernels {entry['kernel_hash']}, not {auto.kernel_hash()}"
        else:
            assert "stale" not in entry, f"{gpu}: marked stale but measured these kernels"


def _run(tmp_path, name: str, kernel_hash: str, date: str) -> tuple:
    row = {
        "case": dict(kind="rnn", cell="LSTM", dtype="fp16", layers=1, bidir=False, packed=False, H=256, B=16, T=512,
                     mode="fwd"),
        "results": {"fastrnn": {"status": "ok", "median_ms": 1.0}, "cudnn": {"status": "ok", "median_ms": 2.0}},
    }  # fmt: skip
    env = dict(gpu="Fake GPU", kernel_hash=kernel_hash, commit="c" * 40, date=date)
    path = tmp_path / name / "results.json"
    return path, {"suite": "gpu", "env": env, "rows": [row]}


def test_regenerating_marks_other_kernels_stale_and_clears_the_mark(tmp_path):
    old = auto_table.generate([_run(tmp_path, "a", "0123456789abcdef", "2026-01-01")], root=tmp_path)
    entry = old["devices"]["Fake GPU"]
    assert entry["kernel_hash"] == "0123456789abcdef" and "kernels changed since" in entry["stale"]
    runs = [
        _run(tmp_path, "a", "0123456789abcdef", "2026-01-01"),
        _run(tmp_path, "b", auto.kernel_hash(), "2026-02-01"),
    ]
    new = auto_table.generate(runs, root=tmp_path)["devices"]["Fake GPU"]  # a run of these kernels: not stale
    assert new["kernel_hash"] == auto.kernel_hash() and "stale" not in new and new["sources"] == ["b/results.json"]
    assert list(new["classes"]) == ["LSTM|float16|L1|uni|dense|rnn|H256|P0|B4|T5|infer"]


def test_kernel_hash_of_the_working_tree_matches_git_when_clean():
    """The two ways to hash the kernel sources (files on disk, git objects) agree: HEAD's hash
    equals the installed sources' unless the files that build kernels have uncommitted changes."""
    import subprocess

    from fastrnn.kernels import sources

    paths = [f"kernels/{name}" for name in sources.KERNEL_SOURCES]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=auto_table.REPO_ROOT,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not dirty:
        assert auto_table.kernel_hash_at("HEAD") == auto.kernel_hash()
    else:
        assert auto_table.kernel_hash_at("HEAD") != auto.kernel_hash()
