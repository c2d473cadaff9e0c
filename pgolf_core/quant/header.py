"""The artifact's prefix and header: how they are written and every check made on reading them.

Layout (little endian):
    8   magic b"PGOLFART"
    2   format version (uint16)
    4   header length H (uint32)
    32  SHA-256 of the header bytes
    H   header: zlib-compressed UTF-8 JSON (tensor names, kinds, groups, dtypes, shapes, scheme meta,
        the compressor, the sections with their lengths, codecs and byte-shuffle parts, SHA-256 of
        the payload)
    ... payload: the compressed sections, back to back (format.py)

Loading checks, in order: pickle signatures, size, magic, version, header checksum, header JSON and
schema, section bounds, payload checksum, decompressed sizes, every array's bounds, dtype and shape
against its tensor's kind. Any failure raises ``ArtifactError`` saying what is wrong.

Nothing is inflated beyond what the header's shapes account for: every section must declare exactly
the bytes of the arrays stored in it, the sections together at most ``_MAX_RAW_TOTAL``, the tensors'
dequantized sizes at most ``_MAX_STATE_BYTES``; section and tensor counts, ranks and the header's own
size are bounded, and each stream is decompressed with an output limit of its declared size (a stream
that would expand further stops there and is an error).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib

import torch

from pgolf_core.quant.compress import CODECS

MAGIC = b"PGOLFART"
VERSION = 1
_PREFIX = struct.Struct("<8sHI32s")
# Bounds on what a crafted file can make the loader allocate. The largest pgolf artifact (a 16 MB
# model) declares a few tens of MB of section bytes and a few hundred tensors; these allow far more.
_MAX_HEADER = 8 << 20  # bytes of header JSON we agree to inflate
_MAX_SECTIONS = 64
_MAX_TENSORS = 1 << 14
_MAX_NDIM = 8
_MAX_RAW_TOTAL = 512 << 20  # decompressed bytes, all sections together (32x the cap)
_MAX_STATE_BYTES = 2 << 30  # bytes of the dequantized state dict the shapes and dtypes declare
KINDS = ("raw", "float", "row", "tensor")
DTYPES = {
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "int16": torch.int16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "float32": torch.float32,
    "int64": torch.int64,
    "float64": torch.float64,
}
# new kinds of array go at the end: the order of the others (and so older artifacts' bytes) stays put
ARRAY_ORDER = (
    *("data", "q", "scale", "lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale"),
    *("awq_q", "awq_scale", "perm"),
)
LQER_ARRAYS = {"lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale"}
AWQ_ARRAYS = {"awq_q", "awq_scale"}
# per-row codes stored transposed ("t") or row-permuted then transposed ("perm_t"): the per-group layout
TRANSFORMS = ("t", "perm_t")


class ArtifactError(ValueError):
    """An artifact is malformed, truncated, tampered with, or not an artifact at all."""


def itemsize(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def pack(header: dict) -> tuple[bytes, int]:
    """(prefix + compressed header JSON, header length) of a header dict."""
    hbytes = zlib.compress(json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), 9)
    return _PREFIX.pack(MAGIC, VERSION, len(hbytes), hashlib.sha256(hbytes).digest()) + hbytes, len(hbytes)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ArtifactError(msg)


def _is_int_list(v, n: int | None = None) -> bool:
    ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    return ok and (n is None or len(v) == n)


def _is_shape(v) -> bool:
    return _is_int_list(v) and len(v) <= _MAX_NDIM


def nbytes(shape: list[int], dtype: str) -> int:
    """Bytes of an array (Python ints: a crafted shape cannot overflow)."""
    return math.prod(shape) * itemsize(dtype)


def read_header(blob: bytes) -> tuple[dict, bytes]:
    """(header dict, payload bytes), with the prefix and header fully checked."""
    head = bytes(blob[:4])
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise ArtifactError(
            "this is a pickle / torch.save file, not a pgolf artifact: pgolf artifacts contain no pickle "
            "and are never unpickled (loading one could run arbitrary code)"
        )
    check(
        len(blob) >= _PREFIX.size,
        f"truncated artifact: {len(blob)} bytes, shorter than the {_PREFIX.size}-byte prefix",
    )
    magic, version, hlen, hsha = _PREFIX.unpack_from(blob, 0)
    check(magic == MAGIC, f"not a pgolf artifact: magic {magic!r}, expected {MAGIC!r}")
    check(
        version == VERSION,
        f"unsupported artifact format version {version} (this pgolf reads version {VERSION})",
    )
    check(
        _PREFIX.size + hlen <= len(blob),
        f"truncated artifact: header of {hlen} bytes runs past the end ({len(blob)} bytes)",
    )
    hbytes = bytes(blob[_PREFIX.size : _PREFIX.size + hlen])
    check(
        hashlib.sha256(hbytes).digest() == hsha,
        "header checksum mismatch: the header was tampered with or is corrupt",
    )
    try:
        d = zlib.decompressobj()
        text = d.decompress(hbytes, _MAX_HEADER)
        check(d.eof and not d.unconsumed_tail, "header does not inflate to a complete JSON document")
        header = json.loads(text.decode("utf-8"))
    except RecursionError:
        raise ArtifactError("header JSON is nested too deeply") from None
    except (zlib.error, ValueError) as e:  # ValueError: bad UTF-8, bad JSON, an int of too many digits
        raise ArtifactError(f"header is not valid compressed JSON: {e}") from None
    _validate_header(header)
    return header, bytes(blob[_PREFIX.size + hlen :])


def _validate_header(h) -> None:
    check(
        isinstance(h, dict) and h.get("format") == "pgolf-artifact", "header is not a pgolf-artifact header"
    )
    check(h.get("compressor") in CODECS, f"header: unknown compressor {h.get('compressor')!r}")
    check(isinstance(h.get("payload_sha256"), str), "header: payload_sha256 missing")
    check(isinstance(h.get("lrzip", ""), str), "header: lrzip must be a string")
    sections, tensors = h.get("sections"), h.get("tensors")
    check(
        isinstance(sections, list) and isinstance(tensors, list), "header: sections / tensors must be lists"
    )
    check(len(sections) <= _MAX_SECTIONS, f"header: {len(sections)} sections (at most {_MAX_SECTIONS})")
    check(len(tensors) <= _MAX_TENSORS, f"header: {len(tensors)} tensors (at most {_MAX_TENSORS})")
    for i, s in enumerate(sections):
        check(
            isinstance(s, dict) and _is_int_list([s.get("len"), s.get("raw")]),
            f"header: section {i} lengths invalid",
        )
        check(
            s.get("codec", h["compressor"]) in CODECS,
            f"header: section {i}: unknown codec {s.get('codec')!r}",
        )
        parts = s.get("parts")
        check(
            isinstance(parts, list) and all(_is_int_list(p, 2) and p[0] in (1, 2, 4, 8) for p in parts),
            f"header: section {i} parts invalid",
        )
        check(
            sum(p[1] for p in parts) == s["raw"] and all(p[1] % p[0] == 0 for p in parts),
            f"header: section {i} parts do not tile its {s['raw']} bytes",
        )
    raw_total = sum(s["raw"] for s in sections)
    check(
        raw_total <= _MAX_RAW_TOTAL,
        f"header: sections declare {raw_total:,} decompressed bytes (at most {_MAX_RAW_TOTAL:,})",
    )
    names, used, state_bytes = set(), [0] * len(sections), 0
    for t in tensors:
        check(isinstance(t, dict) and isinstance(t.get("n"), str), "header: a tensor entry has no name")
        name = t["n"]
        check(name not in names, f"header: tensor {name!r} appears twice")
        names.add(name)
        check(t.get("k") in KINDS, f"header: {name}: unknown kind {t.get('k')!r}")
        check(t.get("dt") in DTYPES, f"header: {name}: unknown dtype {t.get('dt')!r}")
        check(
            _is_shape(t.get("sh")),
            f"header: {name}: shape must be a list of at most {_MAX_NDIM} non-negative ints",
        )
        state_bytes += nbytes(t["sh"], t["dt"])
        check(
            state_bytes <= _MAX_STATE_BYTES,
            f"header: tensors declare over {_MAX_STATE_BYTES:,} bytes of weights (at {name})",
        )
        check(
            isinstance(t.get("m"), dict) and isinstance(t.get("g"), str),
            f"header: {name}: meta/group invalid",
        )
        arrays = t.get("a")
        check(
            isinstance(arrays, dict) and all(k in ARRAY_ORDER for k in arrays),
            f"header: {name}: unknown arrays",
        )
        for k, ref in arrays.items():
            ok = isinstance(ref, list) and len(ref) == 4 and _is_int_list(ref[:2]) and ref[2] in DTYPES
            check(ok and _is_shape(ref[3]), f"header: {name}.{k}: array reference invalid")
            check(ref[0] < len(sections), f"header: {name}.{k}: section {ref[0]} does not exist")
            size = nbytes(ref[3], ref[2])
            check(
                ref[1] + size <= sections[ref[0]]["raw"],
                f"header: {name}.{k}: bytes {ref[1]}..{ref[1] + size} lie outside section {ref[0]}",
            )
            used[ref[0]] += size
    for i, s in enumerate(sections):  # the shapes account for every byte a section may inflate to
        check(
            used[i] == s["raw"],
            f"header: section {i} declares {s['raw']:,} bytes, its arrays' shapes account for {used[i]:,}",
        )


def _expect(t: dict, key: str, dtype: str, shape: list[int] | None) -> None:
    ref = t["a"].get(key)
    check(ref is not None, f"{t['n']}: kind {t['k']} needs array {key!r}")
    check(ref[2] == dtype, f"{t['n']}.{key}: dtype {ref[2]}, expected {dtype}")
    check(shape is None or ref[3] == shape, f"{t['n']}.{key}: shape {ref[3]}, expected {shape}")


def validate_kind(t: dict) -> None:
    shape, kind, arrays = t["sh"], t["k"], t["a"]
    check(kind == "row" or "x" not in t, f"{t['n']}: only per-row tensors have a stored layout")
    allowed = {"raw": {"data"}, "float": {"data"}, "tensor": {"q", "scale"}}
    if kind in allowed:
        check(
            set(arrays) == allowed[kind],
            f"{t['n']}: kind {kind} stores {sorted(allowed[kind])}, got {sorted(arrays)}",
        )
    if kind == "raw":
        _expect(t, "data", t["dt"], shape)
    elif kind == "float":
        _expect(t, "data", arrays["data"][2], shape)
        check(
            arrays["data"][2] in ("float16", "float32", "bfloat16", "float64"),
            f"{t['n']}: stored float dtype invalid",
        )
    elif kind == "tensor":
        _expect(t, "q", "int8", shape)
        _expect(t, "scale", "float32", [])
    else:
        check(len(shape) == 2, f"{t['n']}: per-row tensor must be 2-D, header says {shape}")
        x = t.get("x")
        check(x in (None, *TRANSFORMS), f"{t['n']}: unknown stored layout {x!r}")
        _expect(t, "q", "int8", shape if x is None else [shape[1], shape[0]])
        _expect(t, "scale", "float16", [shape[0]])
        if x == "perm_t":
            ref = arrays.get("perm")
            check(
                ref is not None and ref[2] in ("int16", "int32"),
                f"{t['n']}: perm_t needs an int16/int32 perm",
            )
            _expect(t, "perm", ref[2], [shape[0]])
        extra = set(arrays) - {"q", "scale"} - ({"perm"} if x == "perm_t" else set())
        check(
            all(opt <= extra or not (opt & extra) for opt in (LQER_ARRAYS, AWQ_ARRAYS))
            and extra <= LQER_ARRAYS | AWQ_ARRAYS,
            f"{t['n']}: row arrays {sorted(arrays)}",
        )
        if "awq_q" in arrays:
            _validate_awq(t)
        if "lqer_a" in arrays:
            group = t["m"].get("lqer_group")
            check(isinstance(group, int) and group > 0, f"{t['n']}: lqer_group must be a positive int")
            r = arrays["lqer_a"][3][1] if len(arrays["lqer_a"][3]) == 2 else -1
            _expect(t, "lqer_a", "int8", [shape[0], r])
            _expect(t, "lqer_a_scale", "float32", [])
            _expect(t, "lqer_b", "int8", [r, shape[1]])
            _expect(t, "lqer_b_scale", "float16", [-(-r * shape[1] // group)])


def _validate_awq(t: dict) -> None:
    """AWQ-lite groups: [[start, size], ...] sorted, disjoint, inside the columns; awq_q holds their codes."""
    rows, cols = t["sh"]
    groups = t["m"].get("awq")
    ok = isinstance(groups, list) and len(groups) > 0 and all(_is_int_list(g, 2) for g in groups)
    check(ok, f"{t['n']}: meta awq must be a non-empty list of [start, size] pairs")
    end = 0
    for start, size in groups:
        check(size > 0 and start >= end, f"{t['n']}: awq groups {groups} overlap, are empty or unsorted")
        end = start + size
    check(end <= cols, f"{t['n']}: awq groups {groups} run past the {cols} columns")
    _expect(t, "awq_q", "int8", [rows, sum(size for _, size in groups)])
    _expect(t, "awq_scale", "float16", [rows])
