"""Build, account and load the artifact: quantize -> serialize -> compress, always verified by a round trip.

The challenge counts code bytes + compressed model bytes against a decimal cap (``quant.byte_cap``,
default ``pgolf_core.challenge.BYTE_CAP``; decimal, not MiB: #1019's pruning target used MiB; the code
counted as it ships, ``quant.code_packing``: pgolf_core.code_pack's wrapper or the raw files).
``Artifact`` carries both numbers, the margin and an over-cap flag; an artifact over the cap is reported
with its overage (and a warning), never hidden.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from pgolf_core.atomic import atomic_write_bytes
from pgolf_core.code_bytes import counted_bytes
from pgolf_core.code_pack import packed_bytes
from pgolf_core.config import QuantConfig
from pgolf_core.quant.classify import resolve_state
from pgolf_core.quant.compress import COMPRESSORS, lrzip_path, lrzip_status
from pgolf_core.quant.format import ArtifactError, decode, encode
from pgolf_core.quant.pergroup import make_plan
from pgolf_core.quant.prune import PruneResult, prune_to_fit
from pgolf_core.quant.quantize import dequantize_all, quantize_state
from pgolf_core.quant.schemes import QTensor, dequantize

REPO_ROOT = Path(__file__).resolve().parents[2]


class ArtifactOverCapWarning(UserWarning):
    """code bytes + model bytes exceed the decimal cap."""


def code_bytes(qcfg: QuantConfig, root: str | os.PathLike = ".") -> int:
    """Counted code bytes of ``qcfg.code_files`` (globs relative to ``root``; one that matches nothing or
    leaves ``root`` is an error): the self-extracting wrapper's size (``quant.code_packing: packed``,
    pgolf_core.code_pack) or the raw file sizes, each file counted once (``raw``)."""
    if qcfg.code_packing == "packed":
        return packed_bytes(qcfg.code_files, root)
    return counted_bytes(qcfg.code_files, root)


@dataclass
class Artifact:
    """The compressed model blob and its accounting against the cap."""

    blob: bytes
    code_bytes: int
    cap: int
    compressor: str  # what was chosen, e.g. "zlib" or "brotli+shuffle"
    details: dict = field(default_factory=dict)
    quantized: list[QTensor] = field(default_factory=list, repr=False)  # the stored form, for inspection
    prune: PruneResult | None = field(default=None, repr=False)  # what +-1 pruning changed, if it ran

    @property
    def model_bytes(self) -> int:
        return len(self.blob)

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.code_bytes

    @property
    def margin(self) -> int:
        """cap - total: bytes to spare (negative: over the cap)."""
        return self.cap - self.total_bytes

    @property
    def over_cap(self) -> bool:
        return self.total_bytes > self.cap

    @property
    def overage(self) -> int:
        return max(0, -self.margin)

    def summary(self) -> str:
        verdict = (
            f"OVER THE CAP by {self.overage:,} bytes" if self.over_cap else f"margin {self.margin:,} bytes"
        )
        return (
            f"artifact {self.total_bytes:,} bytes = model {self.model_bytes:,} ({self.compressor}) + "
            f"code {self.code_bytes:,}; cap {self.cap:,}: {verdict}"
        )

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_bytes(path, self.blob)


class _StreamCache(dict):
    """Compressed streams by (codec, SHA-256), the oldest dropped past ``limit`` entries (a few probes'
    worth: every probe of a 16 MB model adds ~16 MB of streams)."""

    limit = 96

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            del self[next(iter(self))]


def _candidates(qcfg: QuantConfig) -> list[tuple[str, str]]:
    """(codec, layout) pairs to build: the whole-blob codecs x the byte-shuffle layouts, and pergroup
    (its codec decided by ``pergroup_codec``)."""
    if qcfg.compressor == "pergroup":
        return [(pergroup_codec(qcfg), "pergroup")]
    comps = COMPRESSORS if qcfg.compressor == "auto" else (qcfg.compressor,)
    layouts = {"off": ("plain",), "on": ("grouped",), "auto": ("plain", "grouped")}[qcfg.byte_shuffle]
    out = [(c, lay) for c in comps for lay in layouts]
    return out + [(pergroup_codec(qcfg), "pergroup")] if qcfg.compressor == "auto" else out


def pergroup_codec(qcfg: QuantConfig) -> str:
    """lrzip when ``quant.lrzip`` is auto and the binary is installed, else brotli."""
    return "lrzip" if qcfg.lrzip == "auto" and lrzip_path() is not None else "brotli"


def _label(compressor: str, layout: str) -> str:
    if layout == "pergroup":
        return f"pergroup+{compressor}"
    return compressor + ("+shuffle" if layout == "grouped" else "")


def build_artifact(
    model_or_state: nn.Module | Mapping[str, Tensor],
    qcfg: QuantConfig,
    *,
    model: nn.Module | None = None,
    hessians: Mapping[str, Tensor] | None = None,
    verify: bool = True,
    code_root: str | os.PathLike | None = None,
) -> Artifact:
    """Quantize, serialize and compress a model (or a state dict with ``model=`` for its structure).

    Every (compressor, layout) candidate of ``qcfg.compressor`` / ``qcfg.byte_shuffle`` is built and
    the smallest kept; all sizes go to ``details["candidates"]``. With ``verify`` the chosen blob is
    decoded and checked bit-identical to the in-memory dequantized weights (tested, not trusted).
    With ``quant.prune_to_cap`` an artifact over the cap gets selective +-1 pruning (prune.py) with the
    chosen codec and layout until it fits; ``details["prune"]`` and ``Artifact.prune`` say what changed.
    """
    qts, details = quantize_state(model_or_state, qcfg, model=model, hessians=hessians)
    best = None
    candidates, timings = {}, details["timings"]
    t0 = time.perf_counter()
    for comp, layout in _candidates(qcfg):
        plan = None
        if layout == "pergroup":
            t_plan = time.perf_counter()
            plan = make_plan(qts, details["roles"], comp)
            timings["pergroup_plan_s"] = time.perf_counter() - t_plan
        blob, section_bytes = encode(qts, comp, layout, qcfg.scheme, plan=plan)
        candidates[_label(comp, layout)] = len(blob)
        if best is None or len(blob) < len(best[0]):
            best = (blob, section_bytes, comp, layout, plan)
    timings["compress_s"] = time.perf_counter() - t0
    blob, section_bytes, comp, layout, plan = best
    details["lrzip"] = lrzip_status()  # "lrzip <version>" or "lrzip: not installed"
    n_code = code_bytes(qcfg, code_root or REPO_ROOT)
    prune = None
    if qcfg.prune_to_cap and len(blob) + n_code > qcfg.byte_cap:
        t_prune = time.perf_counter()
        state = resolve_state(model_or_state, model)[0]
        cache = _StreamCache()  # streams by content: unchanged sections are not recompressed

        def size_of(candidate: list[QTensor]) -> int:
            return len(encode(candidate, comp, layout, qcfg.scheme, plan=plan, cache=cache)[0])

        qts, prune = prune_to_fit(
            qts, state, qcfg.byte_cap - n_code, size_of, hessians=hessians, max_probes=qcfg.prune_max_probes
        )
        if prune.values:
            blob, section_bytes = encode(qts, comp, layout, qcfg.scheme, plan=plan, cache=cache)
        details["prune"] = prune.as_dict()
        timings["prune_s"] = time.perf_counter() - t_prune
    details["candidates"] = candidates
    details["header_bytes"] = int.from_bytes(blob[10:14], "little")  # the compressed JSON header
    details["section_bytes"] = section_bytes  # compressed bytes per section (per group when shuffled)
    raw = {}
    for qt in qts:
        raw[qt.group] = raw.get(qt.group, 0) + sum(a.numel() * a.element_size() for a in qt.arrays.values())
    details["group_raw_bytes"] = raw
    if verify:
        t1 = time.perf_counter()
        expected = dequantize_all(qts)
        _, loaded = decode(blob)
        for qt in loaded:
            if not torch.equal(dequantize(qt), expected[qt.name]):
                raise RuntimeError(f"artifact round trip changed {qt.name}: encoder/decoder bug")
        timings["verify_s"] = time.perf_counter() - t1
    art = Artifact(blob, n_code, qcfg.byte_cap, _label(comp, layout), details, qts, prune)
    details["accounting"] = {
        "model_bytes": art.model_bytes,
        "code_bytes": art.code_bytes,
        "total_bytes": art.total_bytes,
        "cap": art.cap,
        "margin": art.margin,
        "over_cap": art.over_cap,
        "lrzip": details["lrzip"],
        "pruned_values": 0 if prune is None else prune.values,
    }
    if art.over_cap:
        warnings.warn(art.summary(), ArtifactOverCapWarning, stacklevel=2)
    return art


def load_artifact(blob_or_path: bytes | bytearray | memoryview | str | os.PathLike) -> dict[str, Tensor]:
    """The dequantized state dict of an artifact (bytes or a file path). Never unpickles anything.

    Raises ArtifactError naming the problem for anything malformed: a pickle, a bad magic or version,
    a tampered header or payload (checksums), a truncated file, offsets or shapes that do not fit.
    """
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        blob, source = bytes(blob_or_path), "artifact"
    else:
        path = Path(blob_or_path)
        if not path.is_file():
            raise ArtifactError(f"{path}: no such artifact file")
        blob, source = path.read_bytes(), str(path)
    try:
        _, qts = decode(blob)
    except ArtifactError as e:
        raise ArtifactError(f"{source}: {e}") from None
    return {qt.name: dequantize(qt) for qt in qts}
