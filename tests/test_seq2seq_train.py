"""fastrnn.seq2seq training and command line: exact resume, DDP == one process, checkpoints, bad input."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrnn.__main__ import main
from fastrnn.seq2seq import train as train_mod
from fastrnn.seq2seq.data import Seq2SeqError
from fastrnn.seq2seq.train import TrainOptions, load_checkpoint, save_checkpoint, train


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread, and do not suffer from a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = [
    "--task", "copy", "--train-size", "96", "--valid-size", "8", "--max-len", "5", "--batch-size", "16",
    "--hidden-size", "12", "--embedding-dim", "6", "--warmup-steps", "1", "--no-progress", "--quiet",
]  # fmt: skip


def _run(*argv) -> int:
    return main(["train", *TINY, *map(str, argv)])


def _ckpt(out) -> dict:
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["losses"] == b["losses"], "losses must be reproduced exactly"
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    # dropout and scheduled sampling make the run depend on the RNG state, 2 layers + attention
    extra = ["--dropout", "0.2", "--teacher-forcing", "0.7", "--num-layers", "2", "--attention", "general"]
    assert _run(*extra, "--epochs", 3, "--out", tmp_path / "whole") == 0
    # interrupted after epoch 1, resumed
    assert _run(*extra, "--epochs", 1, "--out", tmp_path / "split") == 0
    assert _run(*extra, "--epochs", 3, "--out", tmp_path / "split", "--resume") == 0
    # interrupted in mid-epoch (step 8 of 6-step epochs), resumed
    assert _run(*extra, "--epochs", 3, "--max-steps", 8, "--out", tmp_path / "mid") == 0
    assert _ckpt(tmp_path / "mid")["progress"] == {"epoch": 1, "batch": 2, "step": 8}
    assert _run(*extra, "--epochs", 3, "--out", tmp_path / "mid", "--resume") == 0
    whole = _ckpt(tmp_path / "whole")
    assert len(whole["losses"]) == 18 and len(whole["history"]) == 3
    _assert_same_run(whole, _ckpt(tmp_path / "split"))
    _assert_same_run(whole, _ckpt(tmp_path / "mid"))
    assert whole["optimizer"]["state"][0]["step"] == 18
    # a different seed is a different run (so the equalities above mean something)
    assert _run(*extra, "--epochs", 1, "--seed", 1, "--out", tmp_path / "other") == 0
    assert _ckpt(tmp_path / "other")["losses"] != whole["losses"][:6]


def test_checkpoints_hold_and_restore_every_cuda_device_rng_state(tmp_path, monkeypatch):
    """The CUDA generators' save and restore, on any machine: two CUDA devices pretended (the run
    itself on the CPU)."""
    states = [torch.arange(16, dtype=torch.uint8) + 16 * i for i in range(2)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [t.clone() for t in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append([t.clone() for t in new]))
    assert _run("--epochs", 1, "--device", "cpu", "--out", tmp_path) == 0
    saved = _ckpt(tmp_path)["rng"][0]
    assert len(saved["cuda"]) == 2 and all(torch.equal(a, b) for a, b in zip(saved["cuda"], states))
    assert restored == []
    assert _run("--epochs", 2, "--device", "cpu", "--out", tmp_path, "--resume") == 0
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], states))


def test_set_rng_state_restores_what_the_machine_has(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: calls.append(("all", len(new))))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device="cuda": calls.append(("one", device)))
    cpu = torch.get_rng_state()
    base = {"torch": cpu, "python": random.getstate()}
    states = [torch.zeros(16, dtype=torch.uint8)] * 3
    for count, want in ((3, [("all", 3)]), (2, [("one", 0), ("one", 1)]), (4, [("one", 0), ("one", 1), ("one", 2)])):
        monkeypatch.setattr(torch.cuda, "device_count", lambda n=count: n)
        calls.clear()
        train_mod.set_rng_state({**base, "cuda": states}, torch.device("cpu"))
        assert calls == want, count
    calls.clear()  # a checkpoint of the previous version: one tensor, the training device's
    train_mod.set_rng_state({**base, "cuda": states[0]}, torch.device("cuda", 1))
    assert calls == [("one", torch.device("cuda", 1))]
    calls.clear()
    train_mod.set_rng_state({**base, "cuda": states[0]}, torch.device("cpu"))
    assert calls == [] and torch.equal(torch.get_rng_state(), cpu)


def test_cudnn_dropout_is_reseeded_from_the_generator_before_every_training_call(monkeypatch):
    from fastrnn import EmbeddingRNN
    from fastrnn.seq2seq import Seq2Seq, Seq2SeqConfig
    from fastrnn.seq2seq import model as model_mod

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)) or "state")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(("set", state, device)))
    cuda = torch.device("cuda", 1)
    rnn = EmbeddingRNN(10, 4, 6, 2, mode="LSTM", dropout=0.2).train()
    model_mod.reseed_rnn_dropout(rnn, cuda)
    assert calls == [("get", cuda), ("set", "state", cuda)]
    calls.clear()
    no_dropout = [
        EmbeddingRNN(10, 4, 6, 2, dropout=0.0),
        EmbeddingRNN(10, 4, 6, 1),
        EmbeddingRNN(10, 4, 6, 2, dropout=0.2).eval(),
    ]
    for other in no_dropout:
        model_mod.reseed_rnn_dropout(other, cuda)
    model_mod.reseed_rnn_dropout(rnn, torch.device("cpu"))
    assert calls == []
    # the model asks before each recurrent call: encoder, then the decoder (once, or at every step)
    seen = []
    monkeypatch.setattr(model_mod, "reseed_rnn_dropout", lambda module, device: seen.append(module))
    src, src_len, tgt = torch.randint(4, 10, (2, 3)), torch.tensor([3, 2]), torch.randint(4, 10, (2, 4))
    for attention, decoder_calls in (("general", 1), ("bahdanau", 4)):
        model = Seq2Seq(
            Seq2SeqConfig(10, 10, embedding_dim=4, hidden_size=6, num_layers=2, dropout=0.2, attention=attention)
        )
        seen.clear()
        model(src, src_len, tgt)
        assert seen == [model.encoder.rnn] + [model.decoder.rnn] * decoder_calls


def test_two_process_ddp_equals_one_process_on_the_concatenated_batch(tmp_path):
    # --device cpu (gloo): any machine can run two ranks on its CPU; nccl needs a GPU per rank
    args = ["--epochs", "2", "--attention", "general", "--bidirectional", "--train-size", "64", "--lr", "0.01"]
    args += ["--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fastrnn"]
    cmd += ["train", *TINY, *args, "--batch-size", "8", "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert main(["train", *TINY, *args, "--batch-size", "16", "--out", str(tmp_path / "one")]) == 0
    assert main(["train", *TINY, *args, "--batch-size", "8", "--out", str(tmp_path / "half")]) == 0
    ddp, one, half = _ckpt(tmp_path / "ddp"), _ckpt(tmp_path / "one"), _ckpt(tmp_path / "half")
    assert ddp["world_size"] == 2 and len(ddp["losses"]) == len(one["losses"]) == 8
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(one["losses"]), rtol=1e-6, atol=1e-6)
    moved = 0.0
    for k, w in one["model"].items():
        torch.testing.assert_close(ddp["model"][k], w, rtol=1e-5, atol=1e-6, msg=k)
        moved = max(moved, (w - half["model"][k]).abs().max().item())
    assert moved > 1e-3, "one process on half the batch must train differently"


def test_process_device_one_gpu_per_rank():
    """The DDP launcher's device choice, for machines this one is not (the GPU counts are given)."""
    pd = train_mod.process_device
    assert pd(None, 1, 0, 0) == torch.device("cpu")
    assert pd(None, 2, 1, 2) == torch.device("cuda", 1)
    assert pd("cpu", 2, 1, 1) == torch.device("cpu")
    assert pd("cuda", 2, 1, 2) == torch.device("cuda", 1)
    with pytest.raises(
        Seq2SeqError, match=r"this machine has 1 CUDA device:.*1 process per node.*--nproc-per-node 1.*--device cpu"
    ):
        pd(None, 2, 1, 1)  # torchrun --nproc-per-node 2 on a one-GPU machine
    with pytest.raises(Seq2SeqError, match="needs CUDA device 0, but this machine has 0 CUDA devices"):
        pd("cuda", 1, 0, 0)


def test_reverse_with_attention_learns_the_trained_lengths(tmp_path):
    opts = TrainOptions(
        out=str(tmp_path), task="reverse", train_size=9600, valid_size=200, max_len=8, hidden_size=64,
        embedding_dim=16, bidirectional=True, attention="general", epochs=1, batch_size=32, lr=0.01,
        warmup_steps=30, lr_decay="linear", progress=False, quiet=True,
    )  # fmt: skip
    result = train(opts)
    assert len(result.losses) == 300
    test = train_mod.make_task("reverse", 300, seed=99, split="valid", min_len=1, max_len=8)
    res = train_mod.evaluate(result.model, test, result.src_vocab, result.tgt_vocab)
    assert res.exact_match >= 0.9, res.summary()
    assert res.token_accuracy >= 0.97, res.summary()


# ----------------------------------------------------------------------------------------------
# Checkpoints and bad input: clear message, exit status 2, no checkpoint overwritten


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert _run("--epochs", 1, "--attention", "general", "--out", out) == 0
    return out


def _fails(capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err


def _snapshot(run: Path):
    f = run / "checkpoint.pt"
    return f.read_bytes(), f.stat().st_mtime_ns


def test_train_refuses_to_overwrite_or_resume_with_other_settings(trained, tmp_path, capsys):
    before = _snapshot(trained)
    _fails(capsys, ["train", *TINY, "--out", str(trained)], "exists: pass --resume")
    _fails(capsys, ["train", *TINY, "--hidden-size", "16", "--resume", "--out", str(trained)], "--hidden-size: checkpoint 12, now 16")  # fmt: skip
    _fails(capsys, ["train", *TINY, "--attention", "general", "--task", "reverse", "--resume", "--out", str(trained)], "--task: checkpoint 'copy', now 'reverse'")  # fmt: skip
    assert _snapshot(trained) == before
    # the vocabulary comes from the data: other data, other vocabulary
    data = tmp_path / "d.tsv"
    data.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ["xyz", "zyx", "yxz"] * 40), encoding="utf-8")
    copied = tmp_path / "copied"
    shutil.copytree(trained, copied)
    saved = torch.load(copied / "checkpoint.pt", weights_only=True)
    saved["options"].update(task=None, data=str(data))
    save_checkpoint(copied / "checkpoint.pt", saved)
    argv = ["train", *[a for a in TINY if a not in ("--task", "copy")], "--attention", "general", "--data", str(data)]
    _fails(capsys, [*argv, "--resume", "--out", str(copied)], "vocabulary differs")


def test_resume_without_checkpoint(tmp_path, capsys):
    _fails(capsys, ["train", *TINY, "--resume", "--out", str(tmp_path / "none")], "--resume: no checkpoint at")
    assert not (tmp_path / "none" / "checkpoint.pt").exists()


def test_damaged_missing_and_foreign_checkpoints(trained, tmp_path, capsys):
    _fails(capsys, ["translate", "-c", str(tmp_path / "missing.pt"), "abc"], "checkpoint not found")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "checkpoint.pt").read_bytes()[:1000])
    _fails(capsys, ["translate", "-c", str(truncated), "abc"], "damaged or not a checkpoint")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    _fails(capsys, ["evaluate", "-c", str(garbage)], "damaged or not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    _fails(capsys, ["translate", "-c", str(foreign), "abc"], "not a fastrnn seq2seq checkpoint")
    # weights of another model shape under this checkpoint's configuration
    ckpt = load_checkpoint(trained)
    ckpt["model"]["decoder.out.weight"] = torch.zeros(3, 12)
    reshaped = tmp_path / "reshaped.pt"
    save_checkpoint(reshaped, ckpt)
    _fails(capsys, ["translate", "-c", str(reshaped), "abc"], "weights do not match its model configuration")
    # another vocabulary than the one the model was built for
    ckpt = load_checkpoint(trained)
    ckpt["tgt_vocab"]["tokens"] = ckpt["tgt_vocab"]["tokens"][:-1]
    save_checkpoint(reshaped, ckpt)
    _fails(capsys, ["translate", "-c", str(reshaped), "abc"], "vocabularies")
    # resuming from a damaged checkpoint leaves it alone
    shutil.copy(truncated, tmp_path / "checkpoint.pt")
    _fails(capsys, ["train", *TINY, "--resume", "--out", str(tmp_path)], "damaged or not a checkpoint")
    assert (tmp_path / "checkpoint.pt").read_bytes() == truncated.read_bytes()


def test_failed_save_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    shutil.copytree(trained, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": "x"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"], "no temporary file left behind"


def test_translate_and_evaluate(trained, capsys, monkeypatch):
    assert main(["translate", "-c", str(trained), "abc", "dcba"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("abc\n??\n"))  # '?' is not in the vocabulary
    assert main(["translate", "-c", str(trained / "checkpoint.pt"), "--beam", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    plot = trained / "by_length.png"
    assert main(["evaluate", "-c", str(trained), "--task", "copy", "--size", "40", "--beam", "2", "--plot", str(plot)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "exact match" in out and "token accuracy" in out and "source length" in out
    assert plot.stat().st_size > 5000


def test_translate_and_train_bad_input(trained, tmp_path, capsys, monkeypatch):
    _fails(capsys, ["translate", "-c", str(trained), "abc", "  "], "an empty line at line 2")
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(""))
    _fails(capsys, ["translate", "-c", str(trained)], "nothing to translate on stdin")
    _fails(capsys, ["translate", "-c", str(trained), "--beam", "0", "abc"], "--beam must be at least 1")
    bad = tmp_path / "bad.tsv"
    bad.write_text("abc\tcba\nno tab\n", encoding="utf-8")
    out = tmp_path / "run"
    _fails(capsys, ["train", "--data", str(bad), "--out", str(out), "--no-progress"], "bad.tsv:2: no tab in line")
    bad.write_text("abc\tcba\n\nx\ty\n", encoding="utf-8")
    _fails(capsys, ["train", "--data", str(bad), "--out", str(out), "--no-progress"], "bad.tsv:2: empty line")
    _fails(capsys, ["train", "--data", str(tmp_path / "no.tsv"), "--out", str(out)], "data file not found")
    _fails(capsys, ["train", *TINY, "--batch-size", "500", "--out", str(out)], "do not fill one batch")
    _fails(
        capsys, ["train", *TINY, "--attention", "dot", "--bidirectional", "--out", str(out)], "attention 'dot' needs"
    )
    assert not out.exists() or not (out / "checkpoint.pt").exists()


def test_tsv_training_with_word_level_and_unknown_words(tmp_path, capsys):
    data = tmp_path / "words.tsv"
    lines = [f"{a} {b}\t{b} {a}" for a in ["red", "green", "blue", "cyan"] for b in ["cat", "dog", "cow", "owl"]]
    data.write_text("\n".join(lines * 3) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--level", "word", "--batch-size", "8", "--epochs", "1", "--hidden-size", "12", "--out", str(out), "--no-progress", "--quiet"]) == 0  # fmt: skip
    ckpt = load_checkpoint(out)
    assert ckpt["src_vocab"]["level"] == "word" and "green" in ckpt["src_vocab"]["tokens"]
    assert main(["translate", "-c", str(out), "red cat", "purple cat"]) == 0  # 'purple' -> <unk>
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["evaluate", "-c", str(out), "--data", str(data)]) == 0
    report = capsys.readouterr().out
    if importlib.util.find_spec("sacrebleu") is None:  # BLEU is optional: the report says how to get it
        assert "install sacrebleu" in report
    else:
        assert "BLEU" in report and "copying the source as the translation: BLEU" in report and "copy BLEU" in report


def test_demo_runs_end_to_end_on_tiny_settings(tmp_path, capsys):
    argv = ["demo", "--steps", "12", "--max-len", "6", "--hidden-size", "8", "--test-size", "30", "--sequential"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no attention" in out and "attention" in out and "source length" in out
    table = out[out.index("source length  pairs") :].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["1-4", "5-6", "all"], out
    assert all(line.endswith("%") for line in table[1:4]), out
    assert (tmp_path / "accuracy_vs_length.png").stat().st_size > 5000
    assert load_checkpoint(tmp_path / "attention")["config"]["attention"] == "general"
    assert load_checkpoint(tmp_path / "no_attention")["config"]["attention"] is None
