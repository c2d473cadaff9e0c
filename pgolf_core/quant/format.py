"""The artifact container: bytes in, bytes out, and nothing in it is ever unpickled.

The prefix, the header and every check on them are in header.py; this module lays the arrays out in
sections and back. A section is one compressed stream; its decompressed bytes are a run of *parts*,
each byte-shuffled with its element size (stride 1: int8 codes; 2: fp16 scales; 4: fp32). A stored
array is (section, offset, dtype, shape) into the unshuffled bytes of its section. Layouts:

    plain     one section with one unshuffled part in state-dict order, like the challenge's
              torch.save + zlib
    grouped   one section per tensor group (embed, attn, mlp, gate, other), each with its int8 codes
              first and its wider values shuffled (byte shuffle of the wider values, as from #1218 on)
    pergroup  #1855's: one section per role (pergroup.py) with the int8 codes of that role, rows
              reordered and transposed, in its own codec (the smaller of lrzip, where installed,
              and brotli); one
              brotli section with everything else. Tensors record their stored layout ("x") and,
              when reordered, their row permutation (array "perm"), which decode checks and undoes.

Loading checks, in order: pickle signatures, size, magic, version, header checksum, header JSON and
schema, section bounds, payload checksum, decompressed sizes, every array's bounds, dtype and shape
against its tensor's kind, permutations. Any failure raises ``ArtifactError`` saying what is wrong.
Nothing is inflated beyond what the header's shapes account for (header.py).
"""

from __future__ import annotations

import hashlib

import torch

from pgolf_core.quant.classify import GROUPS
from pgolf_core.quant.compress import (
    COMPRESSORS,
    DecompressError,
    compress,
    decompress,
    lrzip_status,
    shuffle,
    unshuffle,
)
from pgolf_core.quant.header import (
    ARRAY_ORDER,
    DTYPES,
    ArtifactError,
    check,
    nbytes,
    pack,
    read_header,
    validate_kind,
)
from pgolf_core.quant.pergroup import PerGroupPlan, Section, check_permutation, plan_sections, restore_codes
from pgolf_core.quant.schemes import QTensor

__all__ = ["LAYOUTS", "ArtifactError", "decode", "encode"]
LAYOUTS = ("plain", "grouped", "pergroup")


def _array_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


# --------------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------------


def _plan_sections(qts: list[QTensor], layout: str) -> list[Section]:
    """[(section name, None, parts)], each part a list of (tensor index, array key, array) with one
    element size."""
    keys = [(i, k, qt.arrays[k]) for i, qt in enumerate(qts) for k in ARRAY_ORDER if k in qt.arrays]
    if layout == "plain":
        return [("all", None, [keys])]
    sections = []
    for group in GROUPS:
        in_group = [key for key in keys if qts[key[0]].group == group]
        parts = []
        for size in (1, 2, 4, 8):
            part = [key for key in in_group if key[2].element_size() == size]
            if part:
                parts.append(part)
        if parts:
            sections.append((group, None, parts))
    return sections


def encode(
    qts: list[QTensor],
    compressor: str,
    layout: str,
    scheme: str,
    *,
    plan: PerGroupPlan | None = None,
    cache: dict | None = None,
) -> tuple[bytes, dict[str, int]]:
    """(artifact bytes, compressed bytes per section name).

    ``compressor``: the codec of every section (plain, grouped); pergroup takes its codecs from the
    ``plan`` (``pergroup.make_plan``): each role section keeps the smaller of lrzip's and brotli's
    streams (lrzip's fixed framing loses on small streams), the rest is brotli. ``cache``: compressed
    streams by (codec, SHA-256
    of the raw bytes), reused across calls (pruning re-encodes with few sections changed).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "pergroup":
        if plan is None:
            raise ValueError("the pergroup layout needs plan=pergroup.make_plan(...)")
        compressor = plan.codec
        sections, xforms = plan_sections(qts, plan, ARRAY_ORDER)
    elif compressor not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compressor!r}; expected one of {COMPRESSORS}")
    else:
        sections, xforms = _plan_sections(qts, layout), {}
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
    for i, x in xforms.items():
        entries[i]["x"] = x
    sections_meta, blobs, section_bytes = [], [], {}
    for s_idx, (s_name, codec, parts) in enumerate(sections):
        raw_parts, parts_meta, offset = [], [], 0
        for part in parts:
            chunks = []
            for i, k, t in part:
                data = _array_bytes(t)
                entries[i]["a"][k] = [s_idx, offset, str(t.dtype).removeprefix("torch."), list(t.shape)]
                offset += len(data)
                chunks.append(data)
            joined = b"".join(chunks)
            stride = part[0][2].element_size() if layout != "plain" else 1
            raw_parts.append(shuffle(joined, stride))
            parts_meta.append([stride, len(joined)])
        raw = b"".join(raw_parts)
        digest = hashlib.sha256(raw).digest()
        best = None
        for method in (compressor,) if codec is None else codec:  # the smallest stream wins
            key = (method, digest)
            blob = cache.get(key) if cache is not None else None
            if blob is None:
                blob = compress(raw, method)
                if cache is not None:
                    cache[key] = blob
            if best is None or len(blob) < len(best[1]):
                best = (method, blob)
        method, blob = best
        blobs.append(blob)
        section_bytes[s_name] = len(blob)
        meta = {"name": s_name, "len": len(blob), "raw": offset, "parts": parts_meta}
        if codec is not None:
            meta["codec"] = method
        sections_meta.append(meta)
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
    if layout == "pergroup":  # which lrzip built it, or that none was installed (the brotli fallback)
        header["lrzip"] = lrzip_status()
    head, _ = pack(header)
    return head + payload, section_bytes


# --------------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------------


def decode(blob: bytes) -> tuple[dict, list[QTensor]]:
    """(header, QTensors) from artifact bytes, every field checked (see the module docstring)."""
    header, payload = read_header(blob)
    sections = header["sections"]
    total = sum(s["len"] for s in sections)
    check(
        total == len(payload),
        f"payload is {len(payload)} bytes, sections add up to {total}: truncated or padded file",
    )
    check(
        hashlib.sha256(payload).hexdigest() == header["payload_sha256"],
        "payload checksum mismatch: the data was tampered with or is corrupt",
    )
    raw_sections, pos = [], 0
    for i, s in enumerate(sections):
        try:
            raw = decompress(payload[pos : pos + s["len"]], s.get("codec", header["compressor"]), s["raw"])
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
        validate_kind(t)
        arrays = {}
        for k, (sec, off, dt, shape) in t["a"].items():
            n = nbytes(shape, dt)
            buf = bytearray(raw_sections[sec][off : off + n])
            arr = torch.frombuffer(buf, dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
            arrays[k] = arr.view(DTYPES[dt]).reshape(shape)
        if "x" in t:
            perm = arrays.pop("perm", None)
            if perm is not None:
                check(check_permutation(perm, t["sh"][0]), f"{t['n']}: perm is not a permutation of the rows")
                perm = perm.long()
            arrays["q"] = restore_codes(arrays["q"], perm)
        qts.append(QTensor(t["n"], t["k"], t["g"], t["dt"], tuple(t["sh"]), arrays, t["m"]))
    return header, qts
