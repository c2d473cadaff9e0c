"""CaseOps transform: the worked examples, round trips on random Unicode, the fast passes against slow
character-by-character references, and the decoder's errors on malformed text."""

from __future__ import annotations

import itertools
import random

import pytest

from pgolf_core.data import caseops
from pgolf_core.data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE, CaseOpsError, decode, encode

T, A, C, E = TITLE, ALLCAPS, CAPNEXT, ESC


def is_ascii_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def slow_encode(text: str) -> str:
    """The rules read literally: scan, cut maximal ASCII-letter runs, encode each run."""
    out, word = [], []

    def flush():
        if not word:
            return
        w = "".join(word)
        if w.islower():
            out.append(w)
        elif len(w) >= 2 and w.isupper():
            out.append(A + w.lower())
        elif w[0].isupper() and len(w) >= 2 and w[1:].islower():
            out.append(T + w.lower())
        else:
            out.append((T if w[0].isupper() else "") + w[0].lower())
            out.extend(C + ch.lower() if ch.isupper() else ch for ch in w[1:])
        word.clear()

    for ch in text:
        if is_ascii_letter(ch):
            word.append(ch)
            continue
        flush()
        out.append(E + ch if ch in caseops.MARKERS else ch)
    flush()
    return "".join(out)


def slow_decode(text: str) -> str:
    """A state machine (pending escape, pending word mode, active allcaps, pending capnext, in word) that
    raises ValueError where the encoder never writes a marker."""
    out = []
    pending_esc, mode, allcaps, capnext, in_word = False, None, False, False, False
    for ch in text:
        if pending_esc:
            if ch not in caseops.MARKERS:
                raise ValueError("escape of a non-marker")
            out.append(ch)
            pending_esc, in_word, allcaps = False, False, False
            continue
        if ch in caseops.MARKERS:
            if mode is not None or capnext:
                raise ValueError("marker after a pending marker")
            if ch == E:
                pending_esc, in_word, allcaps = True, False, False
            elif ch in (T, A):
                if in_word:
                    raise ValueError("word marker mid-word")
                mode = ch
            else:
                if not in_word or allcaps:
                    raise ValueError("capnext outside a mixed word")
                capnext = True
            continue
        if is_ascii_letter(ch):
            if ch.isupper():
                raise ValueError("capital letter")
            if not in_word:
                upper, allcaps, in_word = mode is not None, mode == A, True
            else:
                upper = allcaps or capnext
            out.append(ch.upper() if upper else ch)
            mode, capnext = None, False
            continue
        if mode is not None or capnext:
            raise ValueError("dangling marker")
        out.append(ch)
        in_word = allcaps = False
    if pending_esc or mode is not None or capnext:
        raise ValueError("dangling marker at the end")
    return "".join(out)


@pytest.mark.parametrize(
    "text, encoded",
    [
        ("The NASA Launch", f"{T}the {A}nasa {T}launch"),
        ("iPhone OpenAI", f"i{C}phone {T}open{C}a{C}i"),
        ("A", f"{T}a"),
        ("McDONALD's", f"{T}mc{C}d{C}o{C}n{C}a{C}l{C}d's"),
        ("x\ue001y", f"x{E}\ue001y"),
        ("don't", "don't"),
        ("Café", f"{T}caf\u00e9"),  # "Caf" is the word; é ends it
        ("ÉCOLE", f"\u00c9{A}cole"),
        ("COVID-19 US", f"{A}covid-19 {A}us"),
        ("", ""),
    ],
)
def test_worked_examples(text, encoded):
    assert encode(text) == encoded == slow_encode(text)
    assert decode(encoded) == text == slow_decode(encoded)


_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r .,;:'\"!?-_()[]{}<>/\\@#$%^&*+=~`|",
    # incl. a fullwidth A and the fi ligature, which NFKC turns into ASCII letters
    "\u00e9\u00c9\u00df\u03a3\u03c3\u0416\u4e2d\u6587\u00fc\u0131\u0130\uff21\ufb01",
    "\u0301\u0308\u0327",  # combining marks
    "".join(caseops.MARKERS),
    "\U0001f600\U0001d400\U00010348",  # astral: emoji, math bold A, gothic
]


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.random()
        if kind < 0.1:  # a long capital run
            parts.append("".join(rng.choice(_ALPHABETS[1]) for _ in range(rng.randint(2, 40))))
        elif kind < 0.2:  # any code point outside the surrogates
            cp = rng.randint(0, 0x10FFFF)
            parts.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
        else:
            alphabet = rng.choice(_ALPHABETS)
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
    return "".join(parts)


def test_round_trip_on_random_unicode_and_the_references_agree():
    rng = random.Random(20240520)
    for _ in range(4000):
        s = random_text(rng)
        enc = encode(s)
        assert enc == slow_encode(s), s
        assert decode(enc) == s, s
        assert slow_decode(enc) == s, s
        # Encoded text holds no capital ASCII letter, and encoding is a fixed point on lowercase text.
        assert not any("A" <= ch <= "Z" for ch in enc)


def test_round_trip_on_the_marker_characters_themselves():
    for n in range(1, 6):
        for combo in ("".join(p) for p in itertools.product(caseops.MARKERS, repeat=n)):
            for s in (combo, "Ab" + combo + "Cd", combo + "X"):
                assert decode(encode(s)) == s


def test_fast_decoder_raises_exactly_where_the_reference_does():
    """Random strings over a small alphabet of markers, letters and separators: the fast decoder fails iff
    the state machine fails, and agrees with it otherwise (strict); lenient mode never fails."""
    rng = random.Random(7)
    alphabet = ["a", "b", "Q", " ", "-", "\u00e9", T, A, C, E]
    failures = 0
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        try:
            want = slow_decode(s)
        except ValueError:
            failures += 1
            with pytest.raises(CaseOpsError, match="malformed CaseOps text at character"):
                decode(s)
        else:
            assert decode(s) == want, s
        decode(s, strict=False)
    assert 5000 < failures < 19000  # both outcomes are well exercised


@pytest.mark.parametrize(
    "text, message",
    [
        (f"a{T}b", "character 1: TITLE in the middle of a word"),
        (f"ab{A}cd", "character 2: ALLCAPS in the middle of a word"),
        (f"x {T}", "character 2: dangling TITLE: followed by the end of the text"),
        (f"{A} word", "dangling ALLCAPS: followed by ' '"),
        (f"{T}{A}ab", "dangling TITLE: followed by ALLCAPS"),
        (f"a{C}{C}b", "character 1: double CAPNEXT"),
        (f"{C}ab", "CAPNEXT at the start of a word"),
        (f"{A}ab{C}c", "character 3: CAPNEXT inside an ALLCAPS word"),
        (f"ok{E}x", "ESC must be followed by a marker character, found 'x'"),
        (f"ok{E}", "ESC must be followed by a marker character, found 'the end'"),
        ("Plain", "character 0: capital ASCII letter 'P'"),
    ],
)
def test_malformed_text_raises_a_clear_error(text, message):
    with pytest.raises(CaseOpsError, match=message):
        decode(text)


def test_lenient_decode_applies_what_it_can():
    # NFKC turns a full-width capital into "A" before a TITLE: strict decoding refuses, lenient goes on.
    assert decode(f"A{T}b", strict=False) == "AB"
    assert decode(f"x{T} {C}", strict=False) == "x "
