"""Sequence-to-sequence models on fastrnn: encoder-decoder with attention, decoding, training.

>>> from fastrnn.seq2seq import Seq2Seq, Seq2SeqConfig, greedy_decode
>>> model = Seq2Seq(Seq2SeqConfig(src_vocab_size=30, tgt_vocab_size=30, attention="general"))

Importing this package needs only torch (tqdm, matplotlib and sacrebleu are imported where used).
The command line: ``fastrnn train | translate | evaluate | demo`` (see :mod:`fastrnn.seq2seq.cli`).
"""

from .attention import BahdanauAttention, LuongAttention
from .data import EOS, PAD, SOS, UNK, Seq2SeqError, Vocab, make_task, read_tsv
from .decoding import Hypotheses, beam_search, greedy_decode
from .model import Bridge, Decoder, DecoderState, Encoder, EncoderOutput, Seq2Seq, Seq2SeqConfig, sequence_loss

__all__ = [
    "Seq2Seq",
    "Seq2SeqConfig",
    "Encoder",
    "EncoderOutput",
    "Decoder",
    "DecoderState",
    "Bridge",
    "LuongAttention",
    "BahdanauAttention",
    "sequence_loss",
    "greedy_decode",
    "beam_search",
    "Hypotheses",
    "Vocab",
    "make_task",
    "read_tsv",
    "Seq2SeqError",
    "PAD",
    "SOS",
    "EOS",
    "UNK",
]
