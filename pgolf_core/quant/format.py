"""The artifact container: bytes in, bytes out, and nothing in it is ever unpickled.

Layout (little endian):
    8   magic b"PGOLFART"
    2   format version (uint16)
    4   header length H (uint32)
    32  SHA-256 of the header bytes
    H   header: zlib-compressed UTF-8 JSON (tensor names, kinds, groups, dtypes, shapes, scheme meta,
        the compressor, the sections with their lengths and byte-shuffle parts, SHA-256 of the payload)
    ... payload: the compressed sections, back to back

A section is one compressed stream; its decompressed bytes are a run of *parts*, each byte-shuffled
with its element size (stride 1: int8 codes; 2: fp16 scales; 4: fp32). A stored array is
(section, offset, dtype, shape) into the unshuffled bytes of its section. The "plain" layout is one
section with one unshuffled part in state-dict order, like the challenge's torch.save + zlib; the
"grouped" layout has one section per tensor group (embed, attn, mlp, gate, other), each with its
int8 codes first and its wider values shuffled (per-group streams, as #1855 stores its int8 tensors by
role; byte shuffle of the wider values, as from #1218 on).

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

from pgolf_core.quant.classify import GROUPS
from pgolf_core.quant.compress import COMPRESSORS, DecompressError, compress, decompress, shuffle, unshuffle
from pgolf_core.quant.schemes import QTensor

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
ARRAY_ORDER = ("data", "q", "scale", "lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale", "awq_q", "awq_scale")
LQER_ARRAYS = {"lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale"}
AWQ_ARRAYS = {"awq_q", "awq_scale"}


class ArtifactError(ValueError):
    """An artifact is malformed, truncated, tampered with, or not an artifact at all."""


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def _array_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


# --------------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------------


def _plan_sections(qts: list[QTensor], layout: str) -> list[tuple[str, list[list[tuple[int, str]]]]]:
    """[(section name, parts)], each part a list of (tensor index, array key) with one element size."""
    keys = [(i, k) for i, qt in enumerate(qts) for k in ARRAY_ORDER if k in qt.arrays]
    if layout == "plain":
        return [("all", [keys])]
    if layout != "grouped":
        raise ValueError(f"unknown layout {layout!r}; expected plain or grouped")
    sections = []
    for group in GROUPS:
        in_group = [(i, k) for i, k in keys if qts[i].group == group]
        parts = []
        for size in (1, 2, 4, 8):
            part = [(i, k) for i, k in in_group if qts[i].arrays[k].element_size() == size]
            if part:
                parts.append(part)
        if parts:
            sections.append((group, parts))
    return sections


def encode(qts: list[QTensor], compressor: str, layout: str, scheme: str) -> tuple[bytes, dict[str, int]]:
    """(artifact bytes, compressed bytes per section name)."""
    if compressor not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compressor!r}; expected one of {COMPRESSORS}")
    entries = [
        {
            "n": qt.name,
            "k": qt.kind,
            "g": qt.group,
            "dt": qt.dtype,
            "sh": list(qt.shape),
            "m": qt.meta,
            "a": {},
        }
        for qt in qts
    ]
    sections_meta, blobs, section_bytes = [], [], {}
    for s_idx, (s_name, parts) in enumerate(_plan_sections(qts, layout)):
        raw_parts, parts_meta, offset = [], [], 0
        for part in parts:
            chunks = []
            for i, k in part:
                t = qts[i].arrays[k]
                data = _array_bytes(t)
                entries[i]["a"][k] = [s_idx, offset, str(t.dtype).removeprefix("torch."), list(t.shape)]
                offset += len(data)
                chunks.append(data)
            joined = b"".join(chunks)
            stride = qts[part[0][0]].arrays[part[0][1]].element_size() if layout == "grouped" else 1
            raw_parts.append(shuffle(joined, stride))
            parts_meta.append([stride, len(joined)])
        blob = compress(b"".join(raw_parts), compressor)
        blobs.append(blob)
        section_bytes[s_name] = len(blob)
        sections_meta.append({"name": s_name, "len": len(blob), "raw": offset, "parts": parts_meta})
    payload = b"".join(blobs)
    header = {
        "format": "pgolf-artifact",
        "scheme": scheme,
        "compressor": compressor,
        "layout": layout,
        "sections": sections_meta,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "tensors": entries,
    }
    hbytes = zlib.compress(json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), 9)
    prefix = _PREFIX.pack(MAGIC, VERSION, len(hbytes), hashlib.sha256(hbytes).digest())
    return prefix + hbytes + payload, section_bytes


# --------------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------------


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ArtifactError(msg)


def _is_int_list(v, n: int | None = None) -> bool:
    ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    return ok and (n is None or len(v) == n)


def _is_shape(v) -> bool:
    return _is_int_list(v) and len(v) <= _MAX_NDIM


def _nbytes(shape: list[int], dtype: str) -> int:
    """Bytes of an array (Python ints: a crafted shape cannot overflow)."""
    return math.prod(shape) * _itemsize(dtype)


def read_header(blob: bytes) -> tuple[dict, bytes]:
    """(header dict, payload bytes), with the prefix and header fully checked."""
    head = bytes(blob[:4])
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise ArtifactError(
            "this is a pickle / torch.save file, not a pgolf artifact: pgolf artifacts contain no pickle "
            "and are never unpickled (loading one could run arbitrary code)"
        )
    _check(
        len(blob) >= _PREFIX.size,
        f"truncated artifact: {len(blob)} bytes, shorter than the {_PREFIX.size}-byte prefix",
    )
    magic, version, hlen, hsha = _PREFIX.unpack_from(blob, 0)
    _check(magic == MAGIC, f"not a pgolf artifact: magic {magic!r}, expected {MAGIC!r}")
    _check(
        version == VERSION,
        f"unsupported artifact format version {version} (this pgolf reads version {VERSION})",
    )
    _check(
        _PREFIX.size + hlen <= len(blob),
        f"truncated artifact: header of {hlen} bytes runs past the end ({len(blob)} bytes)",
    )
    hbytes = bytes(blob[_PREFIX.size : _PREFIX.size + hlen])
    _check(
        hashlib.sha256(hbytes).digest() == hsha,
        "header checksum mismatch: the header was tampered with or is corrupt",
    )
    try:
        d = zlib.decompressobj()
        text = d.decompress(hbytes, _MAX_HEADER)
        _check(d.eof and not d.unconsumed_tail, "header does not inflate to a complete JSON document")
        header = json.loads(text.decode("utf-8"))
    except RecursionError:
        raise ArtifactError("header JSON is nested too deeply") from None
    except (zlib.error, ValueError) as e:  # ValueError: bad UTF-8, bad JSON, an int of too many digits
        raise ArtifactError(f"header is not valid compressed JSON: {e}") from None
    _validate_header(header)
    return header, bytes(blob[_PREFIX.size + hlen :])


def _validate_header(h) -> None:
    _check(
        isinstance(h, dict) and h.get("format") == "pgolf-artifact", "header is not a pgolf-artifact header"
    )
    _check(h.get("compressor") in COMPRESSORS, f"header: unknown compressor {h.get('compressor')!r}")
    _check(isinstance(h.get("payload_sha256"), str), "header: payload_sha256 missing")
    sections, tensors = h.get("sections"), h.get("tensors")
    _check(
        isinstance(sections, list) and isinstance(tensors, list), "header: sections / tensors must be lists"
    )
    _check(len(sections) <= _MAX_SECTIONS, f"header: {len(sections)} sections (at most {_MAX_SECTIONS})")
    _check(len(tensors) <= _MAX_TENSORS, f"header: {len(tensors)} tensors (at most {_MAX_TENSORS})")
    for i, s in enumerate(sections):
        _check(
            isinstance(s, dict) and _is_int_list([s.get("len"), s.get("raw")]),
            f"header: section {i} lengths invalid",
        )
        parts = s.get("parts")
        _check(
            isinstance(parts, list) and all(_is_int_list(p, 2) and p[0] in (1, 2, 4, 8) for p in parts),
            f"header: section {i} parts invalid",
        )
        _check(
            sum(p[1] for p in parts) == s["raw"] and all(p[1] % p[0] == 0 for p in parts),
            f"header: section {i} parts do not tile its {s['raw']} bytes",
        )
    raw_total = sum(s["raw"] for s in sections)
    _check(
        raw_total <= _MAX_RAW_TOTAL,
        f"header: sections declare {raw_total:,} decompressed bytes (at most {_MAX_RAW_TOTAL:,})",
    )
    names, used, state_bytes = set(), [0] * len(sections), 0
    for t in tensors:
        _check(isinstance(t, dict) and isinstance(t.get("n"), str), "header: a tensor entry has no name")
        name = t["n"]
        _check(name not in names, f"header: tensor {name!r} appears twice")
        names.add(name)
        _check(t.get("k") in KINDS, f"header: {name}: unknown kind {t.get('k')!r}")
        _check(t.get("dt") in DTYPES, f"header: {name}: unknown dtype {t.get('dt')!r}")
        _check(
            _is_shape(t.get("sh")),
            f"header: {name}: shape must be a list of at most {_MAX_NDIM} non-negative ints",
        )
        state_bytes += _nbytes(t["sh"], t["dt"])
        _check(
            state_bytes <= _MAX_STATE_BYTES,
            f"header: tensors declare over {_MAX_STATE_BYTES:,} bytes of weights (at {name})",
        )
        _check(
            isinstance(t.get("m"), dict) and isinstance(t.get("g"), str),
            f"header: {name}: meta/group invalid",
        )
        arrays = t.get("a")
        _check(
            isinstance(arrays, dict) and all(k in ARRAY_ORDER for k in arrays),
            f"header: {name}: unknown arrays",
        )
        for k, ref in arrays.items():
            ok = isinstance(ref, list) and len(ref) == 4 and _is_int_list(ref[:2]) and ref[2] in DTYPES
            _check(ok and _is_shape(ref[3]), f"header: {name}.{k}: array reference invalid")
            _check(ref[0] < len(sections), f"header: {name}.{k}: section {ref[0]} does not exist")
            nbytes = _nbytes(ref[3], ref[2])
            _check(
                ref[1] + nbytes <= sections[ref[0]]["raw"],
                f"header: {name}.{k}: bytes {ref[1]}..{ref[1] + nbytes} lie outside section {ref[0]}",
            )
            used[ref[0]] += nbytes
    for i, s in enumerate(sections):  # the shapes account for every byte a section may inflate to
        _check(
            used[i] == s["raw"],
            f"header: section {i} declares {s['raw']:,} bytes, its arrays' shapes account for {used[i]:,}",
        )


def _expect(t: dict, key: str, dtype: str, shape: list[int] | None) -> None:
    ref = t["a"].get(key)
    _check(ref is not None, f"{t['n']}: kind {t['k']} needs array {key!r}")
    _check(ref[2] == dtype, f"{t['n']}.{key}: dtype {ref[2]}, expected {dtype}")
    _check(shape is None or ref[3] == shape, f"{t['n']}.{key}: shape {ref[3]}, expected {shape}")


def _validate_kind(t: dict) -> None:
    shape, kind, arrays = t["sh"], t["k"], t["a"]
    allowed = {"raw": {"data"}, "float": {"data"}, "tensor": {"q", "scale"}}
    if kind in allowed:
        _check(
            set(arrays) == allowed[kind],
            f"{t['n']}: kind {kind} stores {sorted(allowed[kind])}, got {sorted(arrays)}",
        )
    if kind == "raw":
        _expect(t, "data", t["dt"], shape)
    elif kind == "float":
        _expect(t, "data", arrays["data"][2], shape)
        _check(
            arrays["data"][2] in ("float16", "float32", "bfloat16", "float64"),
            f"{t['n']}: stored float dtype invalid",
        )
    elif kind == "tensor":
        _expect(t, "q", "int8", shape)
        _expect(t, "scale", "float32", [])
    else:
        _check(len(shape) == 2, f"{t['n']}: per-row tensor must be 2-D, header says {shape}")
        _expect(t, "q", "int8", shape)
        _expect(t, "scale", "float16", [shape[0]])
        extra = set(arrays) - {"q", "scale"}
        _check(
            all(opt <= extra or not (opt & extra) for opt in (LQER_ARRAYS, AWQ_ARRAYS))
            and extra <= LQER_ARRAYS | AWQ_ARRAYS,
            f"{t['n']}: row arrays {sorted(arrays)}",
        )
        if "awq_q" in arrays:
            _validate_awq(t)
        if "lqer_a" in arrays:
            group = t["m"].get("lqer_group")
            _check(isinstance(group, int) and group > 0, f"{t['n']}: lqer_group must be a positive int")
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
    _check(ok, f"{t['n']}: meta awq must be a non-empty list of [start, size] pairs")
    end = 0
    for start, size in groups:
        _check(size > 0 and start >= end, f"{t['n']}: awq groups {groups} overlap, are empty or unsorted")
        end = start + size
    _check(end <= cols, f"{t['n']}: awq groups {groups} run past the {cols} columns")
    _expect(t, "awq_q", "int8", [rows, sum(size for _, size in groups)])
    _expect(t, "awq_scale", "float16", [rows])


def decode(blob: bytes) -> tuple[dict, list[QTensor]]:
    """(header, QTensors) from artifact bytes, every field checked (see the module docstring)."""
    header, payload = read_header(blob)
    sections = header["sections"]
    total = sum(s["len"] for s in sections)
    _check(
        total == len(payload),
        f"payload is {len(payload)} bytes, sections add up to {total}: truncated or padded file",
    )
    _check(
        hashlib.sha256(payload).hexdigest() == header["payload_sha256"],
        "payload checksum mismatch: the data was tampered with or is corrupt",
    )
    raw_sections, pos = [], 0
    for i, s in enumerate(sections):
        try:
            raw = decompress(payload[pos : pos + s["len"]], header["compressor"], s["raw"])
        except DecompressError as e:
            raise ArtifactError(f"section {i} ({s.get('name')}): {e}") from None
        pos += s["len"]
        out, off = [], 0
        for stride, length in s["parts"]:
            out.append(unshuffle(raw[off : off + length], stride))
            off += length
        raw_sections.append(b"".join(out))
    qts = []
    for t in header["tensors"]:
        _validate_kind(t)
        arrays = {}
        for k, (sec, off, dt, shape) in t["a"].items():
            n = _nbytes(shape, dt)
            buf = bytearray(raw_sections[sec][off : off + n])
            arr = torch.frombuffer(buf, dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
            arrays[k] = arr.view(DTYPES[dt]).reshape(shape)
        qts.append(QTensor(t["n"], t["k"], t["g"], t["dt"], tuple(t["sh"]), arrays, t["m"]))
    return header, qts
