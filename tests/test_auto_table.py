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
    key = "LSTM|float16|L1|uni|dense|rnn|H768|P0|B4|T5|infer"  # the headline row: cuDNN 2.07 ms, fastrnn 11.1 ms
    assert h200["classes"][key]["torch_ms"] < h200["classes"][key]["triton_ms"]
    assert h200["kernel_hash"] == auto_table.kernel_hash_at(h200["commit"])


def test_kernel_hash_of_the_working_tree_matches_git_when_clean():
    """The two ways to hash the kernel sources (files on disk, git objects) agree: HEAD's hash
    equals the installed sources' unless the kernels have uncommitted changes."""
    import subprocess

    dirty = subprocess.run(["git", "status", "--porcelain", "kernels/"], cwd=auto_table.REPO_ROOT,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not dirty:
        assert auto_table.kernel_hash_at("HEAD") == auto.kernel_hash()
    else:
        assert auto_table.kernel_hash_at("HEAD") != auto.kernel_hash()
