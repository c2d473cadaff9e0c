"""Stage records: one measured number with everything needed to trust it and its verdicts.

Stage names are fixed and shared by the core, the notebooks and the reports:

    pre      final raw weights, standard evaluation
    ema      EMA weights, standard evaluation
    q        artifact round trip (quantize, compress, decompress, dequantize), standard evaluation
    q_sw     artifact round trip, sliding-window evaluation
    q_ttt    artifact round trip, sliding window + legal score-first test-time training
    q_ngram  artifact round trip, sliding window (+ TTT if on) + legal n-gram cache mixing
    q_tilt   artifact round trip, sliding window + the token-only n-gram tilt on the scored loss
    q_ttt_tilt  artifact round trip, q_ttt's test-time training + the tilt on its scored loss (#2135)

Ablations that are not one of these (a non-compliant pre-quant TTT, a scheme in a sweep) use a
descriptive name of their own and are never shown without their verdicts. A record is compliant when no
verdict failed; a verdict of ``None`` means the check does not apply (and says why).

``bytes_source`` says where the bpb denominator came from: "luts" (the tokenizer byte tables, plain
tokenizers; also what a stages.json written before the field existed used) or "sidecar" (the CaseOps
validation byte sidecar: the original text's bytes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgolf_core.atomic import atomic_write_json

STAGES = ("pre", "ema", "q", "q_sw", "q_ttt", "q_ngram", "q_tilt", "q_ttt_tilt")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one compliance check (T1, T1b, T2 ... T10, as in ``pgolf_core.compliance``)."""

    check: str
    passed: bool | None  # None: not applicable here
    reason: str
    measured: float | None = None
    limit: float | None = None

    @property
    def label(self) -> str:
        return {True: "pass", False: "FAIL", None: "n/a"}[self.passed]


@dataclass
class StageRecord:
    stage: str
    val_bpb: float
    val_loss: float
    tokens: int
    bytes: int
    seconds: float
    artifact_bytes: int | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    notes: str = ""
    bytes_source: str = "luts"  # "luts" | "sidecar"

    @property
    def compliant(self) -> bool:
        return all(v.passed is not False for v in self.verdicts)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["compliant"] = self.compliant
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StageRecord:
        d = {k: v for k, v in d.items() if k != "compliant"}
        d["verdicts"] = [Verdict(**v) for v in d.get("verdicts", [])]
        return cls(**d)


def write_stages(path: str | os.PathLike, records: list[StageRecord], **meta) -> Path:
    """stages.json: {"stages": [...], **meta}, written atomically."""
    return atomic_write_json(path, {"stages": [r.as_dict() for r in records], **meta})


def read_stages(path: str | os.PathLike) -> list[StageRecord]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [StageRecord.from_dict(d) for d in data["stages"]]


def attach_verdicts(record: StageRecord, verdicts: Iterable[Verdict]) -> StageRecord:
    """Add verdicts to a stage record; a new verdict replaces an earlier one of the same check."""
    new = list(verdicts)
    names = {v.check for v in new}
    record.verdicts = [v for v in record.verdicts if v.check not in names] + new
    return record


def summarize(verdicts: Iterable[Verdict]) -> str:
    """One line per verdict: 'pass  T1  reason'."""
    return "\n".join(f"{v.label:4}  {v.check:8}  {v.reason}" for v in verdicts)
