"""The command line as users of argparse tools expect it: --version, defaults in --help, a
description per command, progress lines off a terminal, plurals, clear checkpoint errors, a
warning for unknown input characters; and ``import fastrnn`` without the seq2seq application."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import fastrnn
from fastrnn.__main__ import build_parser, main
from fastrnn.seq2seq.train import progress_style

COMMANDS = ("check", "train", "translate", "evaluate", "demo")
TINY = [
    "train", "--task", "copy", "--train-size", "96", "--valid-size", "8", "--max-len", "5", "--batch-size", "16",
    "--hidden-size", "12", "--embedding-dim", "6", "--warmup-steps", "1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _entries(help_text: str) -> dict[str, str]:
    """``{first option string: its help, whitespace-normalised}`` of every option in a --help text."""
    entries, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-[-\w]+)", line)
        if m:
            current = m.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("    ") and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fastrnn {fastrnn.__version__} (torch {torch.__version__.split('+')[0]}"), out


def test_every_command_has_a_description_and_every_option_its_default(capsys):
    top = _help(capsys)
    assert "--version" in top
    for command in COMMANDS:
        assert re.search(rf"^    {command}\s+\S", top, re.M), f"{command} lacks a help line in fastrnn --help"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    assert sorted(subparsers.choices) == sorted(COMMANDS)
    for command in COMMANDS:
        text = _help(capsys, command)
        description = subparsers.choices[command].description
        assert description and len(description) > 40, command
        assert " ".join(description.split()) in " ".join(text.split()), command
        entries = _entries(text)
        options = [a for a in subparsers.choices[command]._actions if a.option_strings and a.dest != "help"]
        assert len(entries) == len(options) + 1, (command, sorted(entries))  # + --help
        for option, line in entries.items():
            if option in ("-h", "--checkpoint"):  # --help, and a required option: no default
                continue
            assert "default" in line, f"fastrnn {command} --help: {option} does not state its default: {line!r}"
    train = _entries(_help(capsys, "train"))
    assert train["--train-size"].endswith("(default: 20000)")
    assert train["--mode"].endswith("(default: GRU)")
    assert train["--bidirectional"].endswith("(default: off)")
    assert train["--lr-decay"].endswith("to 5% at the last epoch (default: none)")
    translate = _entries(_help(capsys, "translate"))
    assert translate["--length-penalty"].endswith("(default: 1.0)")
    assert translate["--beam"].endswith("(default: 1)")
    assert "--length-penalty" in _entries(_help(capsys, "evaluate"))


def test_progress_style():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress_style(True, io.StringIO()) == "lines"
    assert progress_style(True, Terminal()) == "bar"
    assert progress_style(False, Terminal()) is None
    closed = io.StringIO()
    closed.close()
    assert progress_style(True, closed) == "lines"


def test_training_output_in_a_log_file_and_on_a_terminal(tmp_path, capsys, monkeypatch):
    # a log file (stderr is not a terminal): plain lines, no bar, correct plurals
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "fastrnn", *TINY, "--epochs", "1", "--out", str(tmp_path / "a")],
            stdout=f, stderr=subprocess.STDOUT, timeout=300, env={**os.environ, "WORLD_SIZE": "1"},
        )  # fmt: skip
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and "it/s" not in text, text
    assert re.search(r"^epoch 1/1: step 6/6, loss \d+\.\d{4}, \d+\.\ds$", text, re.M), text
    assert "(1 process): 96 pairs, 6 steps per epoch, 1 epoch\n" in text, text
    assert "(s)" not in text and "(es)" not in text, text
    assert "valid exact match" in text and "(8 pairs)" in text

    # on a terminal: a tqdm progress bar instead of the lines
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([*TINY, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    bar = terminal.getvalue()
    assert "epoch 1/2:" in bar and "\r" in bar and "it/s" in bar, bar
    assert not re.search(r"^epoch 1/2: step", bar, re.M)
    assert "2 epochs" in capsys.readouterr().out
    # --no-progress: neither
    terminal.truncate(0)
    assert main([*TINY, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "c")]) == 0
    assert "epoch 1/1" not in terminal.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main([*TINY, "--epochs", "1", "--no-progress", "--quiet", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _flip_a_byte_of_the_weights(data: bytes, path: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's storage
    n, m = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    at = info.header_offset + 30 + n + m + info.file_size // 2
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])


def test_damaged_checkpoints_say_what_is_wrong(checkpoint, tmp_path, capsys):
    good = checkpoint.read_bytes()
    cases = {
        "empty": (b"", "the file is empty"),
        "truncated": (good[: len(good) // 2], "the file is truncated"),
        "cut at the end": (good[:-10], "the file is truncated"),
        "text": (b"hello, world\n" * 10, "torch.save writes a zip archive, and this file is not one"),
        "random": (bytes(range(256)) * 16, "torch.save writes a zip archive, and this file is not one"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        err = _error(capsys, ["translate", "-c", str(path), "abc"])
        assert "damaged or not a checkpoint" in err and reason in err, (name, err)
        assert not re.search(r"'\d+'|Errno|\(\d+\)|central directory|miniz", err), (name, err)
    flipped = tmp_path / "flipped.pt"
    _flip_a_byte_of_the_weights(good, flipped)
    err = _error(capsys, ["evaluate", "-c", str(flipped)])
    assert "fails its checksum: bytes in the file were changed" in err, err
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a whole module: not weights-only data
    err = _error(capsys, ["translate", "-c", str(pickled), "abc"])
    assert "holds Python objects other than tensors" in err, err
    _error(capsys, ["translate", "-c", str(checkpoint), "--length-penalty", "nan", "abc"])


def test_unknown_characters_are_warned_about_once(checkpoint, tmp_path, capsys, monkeypatch):
    assert main(["translate", "-c", str(checkpoint), "abc", "cab"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stdin", io.StringIO("a?c\n??!\nabc\n" * 300))  # several batches
    assert main(["translate", "-c", str(checkpoint), "--batch-size", "64", "--beam", "3"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 900
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == [
        "fastrnn translate: warning: 2 distinct characters of the input (1,200 occurrences) not in the model's "
        "vocabulary, read as <unk>: '?', '!'"
    ], captured.err
    data = tmp_path / "pairs.tsv"
    data.write_text("ab#\t#ba\nabc\tcba\n", encoding="utf-8")
    assert main(["evaluate", "-c", str(checkpoint), "--data", str(data), "--beam", "2", "--length-penalty", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning") == 2, captured.err  # sources and references, once each
    assert "1 distinct character of the sources (1 occurrence)" in captured.err
    assert "(2 pairs), beam 2, length penalty 0" in captured.out, captured.out


def test_translate_and_evaluate_decode_on_static_buffers_unless_eager(checkpoint, capsys, monkeypatch):
    """By default the static-buffer step (a CUDA graph on a GPU); --eager: the model's own step.
    Both print the same translations and the same evaluation."""
    from fastrnn.seq2seq import Seq2Seq
    from fastrnn.seq2seq import static as static_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the other decoding path ran")

    texts = ["abc", "cab", "a", "bcaab"]
    for flags in ([], ["--beam", "3"]):
        outputs = {}
        for eager in (False, True):
            with monkeypatch.context() as m:  # the path not asked for must not run
                if eager:
                    m.setattr(static_mod, "decoder_for", refuse)
                else:
                    m.setattr(Seq2Seq, "decode_step", refuse)
                option = ["--eager"] if eager else []
                assert main(["translate", "-c", str(checkpoint), *flags, *option, *texts]) == 0
                outputs[eager, "translate"] = capsys.readouterr().out
                assert main(["evaluate", "-c", str(checkpoint), *flags, *option]) == 0
                outputs[eager, "evaluate"] = capsys.readouterr().out
        assert len(outputs[True, "translate"].splitlines()) == len(texts)
        for command in ("translate", "evaluate"):
            assert outputs[False, command] == outputs[True, command], (flags, command)
    assert "--eager" in _entries(_help(capsys, "translate")) and "--eager" in _entries(_help(capsys, "evaluate"))


def test_import_fastrnn_leaves_the_seq2seq_application_alone():
    code = """
import json, sys
import torch
before = set(sys.modules)
import fastrnn
new = sorted(set(sys.modules) - before)
lazy = fastrnn.seq2seq.Seq2Seq.__module__
from fastrnn.seq2seq import beam_search
print(json.dumps({"new": new, "lazy": lazy, "dir": "seq2seq" in dir(fastrnn)}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.splitlines()[-1])
    heavy = [m for m in res["new"] if m.split(".")[0] in ("tqdm", "matplotlib", "sacrebleu", "pandas")]
    assert not [m for m in res["new"] if m.startswith("fastrnn.seq2seq")], res["new"]
    assert not heavy, heavy
    assert res["lazy"] == "fastrnn.seq2seq.model" and res["dir"]
