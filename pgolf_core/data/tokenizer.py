"""SentencePiece tokenizers: train one with the challenge's settings, or load an existing ``.model``.

The challenge's recipe (its data export script in openai/parameter-golf): BPE, character_coverage 0.999,
byte_fallback, split_digits, nmt_nfkc normalization, no dummy prefix, pad 0 / bos 1 / eos 2 / unk 3,
hard_vocab_limit off. Note the published ``fineweb_1024_bpe.model`` was trained *without* byte fallback
(it has no ``<0x..>`` pieces), so characters outside its vocabulary become ``<unk>``, which the
challenge counts as 0 bytes.

A CaseOps tokenizer (PR #1729) is trained the same way on CaseOps-transformed text, with the four
case markers as user-defined symbols at ids 4-7 (so each is always one token of its own) and the byte
pieces after them; ``is_caseops_tokenizer`` recognises one, e.g. the published
``fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from pgolf_core.atomic import atomic_write_bytes, atomic_write_text
from pgolf_core.data.caseops import MARKERS as CASEOPS_MARKERS
from pgolf_core.data.caseops import encode as caseops_encode

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CASEOPS_FIRST_ID = 4  # TITLE, ALLCAPS, CAPNEXT, ESC at ids 4, 5, 6, 7

CHALLENGE_TRAINER_SETTINGS = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": PAD_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "unk_id": UNK_ID,
    "hard_vocab_limit": False,
}


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable, or does not fit what the data needs."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def caseops_marker_ids(sp: spm.SentencePieceProcessor) -> tuple[int, ...] | None:
    """The ids of TITLE, ALLCAPS, CAPNEXT, ESC if ``sp`` is a CaseOps tokenizer (the markers as single
    user-defined pieces at ids 4-7), else None."""
    ids = tuple(range(CASEOPS_FIRST_ID, CASEOPS_FIRST_ID + len(CASEOPS_MARKERS)))
    if sp.vocab_size() <= ids[-1]:
        return None
    for i, mark in zip(ids, CASEOPS_MARKERS, strict=True):
        special = sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i)
        if sp.id_to_piece(i) != mark or special:
            return None
        if sp.encode(mark) != [i]:
            return None
    return ids


def is_caseops_tokenizer(sp: spm.SentencePieceProcessor) -> bool:
    return caseops_marker_ids(sp) is not None


def load_tokenizer(path: str | os.PathLike, *, caseops: bool | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece ``.model``; errors name the file. ``caseops`` True / False requires the model
    to be / not to be a CaseOps tokenizer (None: either)."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer model not found")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from None
    if sp.bos_id() != BOS_ID:
        raise TokenizerError(f"{path}: BOS id is {sp.bos_id()}, the challenge's format needs {BOS_ID}")
    if caseops is not None and is_caseops_tokenizer(sp) != caseops:
        if caseops:
            raise TokenizerError(
                f"{path}: not a CaseOps tokenizer (ids 4-7 must be the markers U+E001-U+E004 as single "
                "user-defined pieces); train one with --caseops"
            )
        raise TokenizerError(
            f"{path}: a CaseOps tokenizer (case markers at ids 4-7); pass --caseops to use it"
        )
    return sp


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_prefix: str | os.PathLike,
    *,
    num_threads: int = 2,
    max_sentence_length: int = 1 << 20,
    caseops: bool = False,
) -> Path:
    """Train a BPE tokenizer with the challenge's settings; writes ``<prefix>.model`` and ``.vocab``.

    Deterministic for a given input order (SentencePiece's sampler is off: every text is used).
    ``max_sentence_length`` is raised from SentencePiece's 4,192-byte default so that long
    documents are not silently dropped from training. ``caseops``: train on the CaseOps form of the
    texts, with the markers as user-defined symbols at ids 4-7.
    """
    out_prefix = Path(out_prefix)
    buf = io.BytesIO()
    # NUL breaks SentencePiece's line-based internals; the challenge maps it to a space for training.
    cleaned = (t.replace("\x00", " ").strip() for t in texts)
    if caseops:
        cleaned = (caseops_encode(t) for t in cleaned)
    extra = {"user_defined_symbols": list(CASEOPS_MARKERS)} if caseops else {}
    spm.SentencePieceTrainer.train(
        sentence_iterator=(t for t in cleaned if t),
        model_writer=buf,
        vocab_size=vocab_size,
        num_threads=num_threads,
        max_sentence_length=max_sentence_length,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
        **CHALLENGE_TRAINER_SETTINGS,
        **extra,
    )
    model_path = atomic_write_bytes(out_prefix.with_suffix(".model"), buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    atomic_write_text(out_prefix.with_suffix(".vocab"), vocab)
    return model_path
