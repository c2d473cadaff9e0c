"""CaseOps: a lossless case transform, so the tokenizer sees lowercase words and case as separate tokens.

The transform of PR #1729 / #1736 (named ``lossless_caps_caseops_v1``; it reclaimed ~0.005-0.006
nats/token there). Four private-use characters carry the case:

- ``TITLE`` (U+E001): the next word's first letter is a capital;
- ``ALLCAPS`` (U+E002): every letter of the next word is a capital;
- ``CAPNEXT`` (U+E003): the next letter, inside a word, is a capital;
- ``ESC`` (U+E004): the next character is one of these four, taken literally.

A *word* is a maximal run of ASCII letters [A-Za-z]; everything else (digits, punctuation, whitespace,
non-ASCII letters such as "é") is copied unchanged and ends a word, so "don't" is "don" ' "t" and "Café"
is "Caf" + "é". Per word: all lowercase stays; all capitals and at least two letters becomes ALLCAPS +
lowercase; otherwise a capital first letter gets TITLE and every later capital gets CAPNEXT, with the
letters lowercased ("A" -> TITLE a; "iPhone" -> i CAPNEXT phone; "McDONALD" -> TITLE mc CAPNEXT d ...).

``decode(encode(s)) == s`` for every string. ``decode`` is strict by default: it raises ``CaseOpsError``
on text ``encode`` cannot produce (a marker inside a word, a marker not followed by a letter, a double
CAPNEXT, a capital ASCII letter, ...). ``strict=False`` decodes such text as far as it goes (markers
that apply to nothing are dropped): SentencePiece's NFKC can turn a full-width "Ａ" into "A" next to a
marker, and a byte recount over real data must not stop there.

Both directions are regular-expression passes with a Python callback only per capitalized word (encode)
or per marker (decode), so they run at C speed over lowercase text (bench/data_throughput.py).
"""

from __future__ import annotations

import re

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
MARKERS = (TITLE, ALLCAPS, CAPNEXT, ESC)
TRANSFORM_NAME = "lossless_caps_caseops_v1"

_MARKER_CLASS = "[\ue001-\ue004]"
_MARKER_RE = re.compile(_MARKER_CLASS)
# From a word's first capital to its end; a lowercase start ("i" of "iPhone") stays as it is.
_CAPITAL_WORD_SPLIT = re.compile("([A-Z][A-Za-z]*)")
# Left to right, so an ESC pairs with the character right after it before that character is read as a
# marker of its own ("ESC ESC TITLE a" is a literal ESC, then a title-case "A").
_DECODE_SPLIT = re.compile(
    f"({ESC}{_MARKER_CLASS}|{TITLE}[a-z]|{ALLCAPS}[a-z]+|{CAPNEXT}[a-z]|{_MARKER_CLASS})"
)
_UPPER_RE = re.compile("[A-Z]")
_NAMES = {TITLE: "TITLE", ALLCAPS: "ALLCAPS", CAPNEXT: "CAPNEXT", ESC: "ESC"}
_WORD_CACHE_MAX = 1 << 16


class CaseOpsError(ValueError):
    """Text that no call of ``encode`` produces; the message gives the position and what is wrong."""


def _encode_word(word: str) -> str:
    """A word from its first letter (a capital)."""
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + word.lower()
    return TITLE + word[0].lower() + _capnext(word[1:])


def _capnext(letters: str) -> str:
    """Letters inside a word: CAPNEXT before each capital."""
    return "".join(CAPNEXT + c.lower() if c <= "Z" else c for c in letters)


_word_cache: dict[str, str] = {}


def encode(text: str) -> str:
    """The CaseOps form of ``text``: lowercase ASCII words, case in marker characters."""
    if _MARKER_RE.search(text) is not None:
        text = _MARKER_RE.sub(ESC + r"\g<0>", text)
    parts = _CAPITAL_WORD_SPLIT.split(text)  # [other, capital word, other, capital word, ..., other]
    cache = _word_cache
    for i in range(1, len(parts), 2):
        word, before = parts[i], parts[i - 1]
        if before and "a" <= before[-1] <= "z":  # the word began lowercase: no TITLE, no ALLCAPS
            parts[i] = _capnext(word)
            continue
        hit = cache.get(word)
        if hit is None:
            hit = _encode_word(word)
            if len(cache) < _WORD_CACHE_MAX:  # names and sentence starts repeat; bound the memory
                cache[word] = hit
        parts[i] = hit
    return "".join(parts)


def _is_letter(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _fail(s: str, i: int, what: str) -> CaseOpsError:
    near = s[max(0, i - 12) : i + 12]
    return CaseOpsError(f"malformed CaseOps text at character {i}: {what} (near {near!r})")


def _check(s: str, at: int, g: str, prev: str, nxt: str) -> None:
    """Raise if the marker match ``g`` at ``at`` (between characters ``prev`` and ``nxt``) sits where
    ``encode`` never puts one."""
    mark = g[0]
    if len(g) == 1:  # a marker that applies to nothing
        if mark == ESC:
            raise _fail(s, at, f"ESC must be followed by a marker character, found {nxt or 'the end'!r}")
        if mark == CAPNEXT and nxt == CAPNEXT:
            raise _fail(s, at, "double CAPNEXT")
        found = _NAMES.get(nxt, repr(nxt)) if nxt else "the end of the text"
        raise _fail(s, at, f"dangling {_NAMES[mark]}: followed by {found}, not a lowercase letter")
    if mark in (TITLE, ALLCAPS) and _is_letter(prev):
        raise _fail(s, at, f"{_NAMES[mark]} in the middle of a word")
    if mark == CAPNEXT and not _is_letter(prev):
        raise _fail(s, at, "CAPNEXT at the start of a word (a capital first letter is written TITLE)")
    if mark == ALLCAPS and nxt == CAPNEXT:
        raise _fail(s, at + len(g), "CAPNEXT inside an ALLCAPS word")


def decode(text: str, *, strict: bool = True) -> str:
    """The original text of a CaseOps string; ``strict`` raises ``CaseOpsError`` on malformed input."""
    if strict:
        upper = _UPPER_RE.search(text)
        if upper is not None:
            what = f"capital ASCII letter {upper.group()!r} (encoded text holds lowercase letters only)"
            raise _fail(text, upper.start(), what)
    if _MARKER_RE.search(text) is None:
        return text
    parts = _DECODE_SPLIT.split(text)  # [other, marker match, other, marker match, ..., other]
    out = parts[:]
    at = 0
    for i in range(1, len(parts), 2):
        g = parts[i]
        at += len(parts[i - 1])
        if strict:
            # The neighbours may be the edges of adjacent matches (no text between them).
            prev = parts[i - 1][-1:] or (parts[i - 2][-1:] if i >= 2 else "")
            nxt = parts[i + 1][:1] or (parts[i + 2][:1] if i + 2 < len(parts) else "")
            _check(text, at, g, prev, nxt)
        if len(g) == 1:
            out[i] = ""  # lenient: a marker that applies to nothing
        elif g[0] == ESC:
            out[i] = g[1]
        else:
            out[i] = g[1:].upper()
        at += len(g)
    return "".join(out)


def marker_count(text: str) -> int:
    """Marker characters in ``text`` (escaped literals included)."""
    return len(_MARKER_RE.findall(text))
