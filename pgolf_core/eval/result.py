"""One evaluation's result (``EvalResult``) and the byte counts of a stream's targets.

bpb = loss_sum / (ln 2 * bytes): the mean NLL in nats per scored token, times tokens per byte, in
bits (the challenge's ``eval_val``). ``EvalResult.from_sums`` is the one place that formula is
written; ``from_stream`` builds a result from a scorer's per-position NLLs through it.

Per-position streams: ``EvalResult.nll`` (float32 [N], nan at position 0) and
``EvalResult.byte_counts`` (int16 [N], 0 at position 0). ``bytes_source`` says where the bytes came
from: the tokenizer byte tables ("luts") or the CaseOps validation sidecar ("sidecar"; see
``eval.target_bytes``). They are kept in memory: for the 62M-token
sp1024 validation set that is 248 MB + 124 MB per process, which a GPU node holds easily; float32
loses nothing because the model's NLLs are float32 to begin with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pgolf_core.data.tokenizer_bytes import LN2, ByteLUTs
from pgolf_core.eval.target_bytes import LUTS, TargetBytes, as_target_bytes
from pgolf_core.scoring import StreamScore
from pgolf_core.stages import StageRecord, Verdict


@dataclass(frozen=True)
class EvalResult:
    """One evaluation. ``as_dict`` is JSON-friendly (it leaves out the per-position streams).

    ``compliant`` is False only for the explicitly non-compliant ablations (pre-quantization TTT on
    the validation tokens before scoring them, the shape maintainers closed in #1376); their
    ``notes`` say why, and ``stage_record`` attaches a failed verdict so the number is never shown
    without it.
    """

    loss: float  # mean NLL, nats per scored token
    bpb: float  # bits per byte
    tokens: int  # scored targets
    bytes: int  # UTF-8 bytes those targets stand for
    seconds: float
    notes: str = ""
    compliant: bool = True
    info: dict = field(default_factory=dict, compare=False)  # JSON scalars: TTT chunks, steps, timings
    # int32 [N]: how many times each target position entered the loss sum (T4 judges it per position)
    committed: np.ndarray | None = field(default=None, compare=False, repr=False)
    nll: np.ndarray | None = field(default=None, compare=False, repr=False)  # float32 [N], nan at 0
    byte_counts: np.ndarray | None = field(default=None, compare=False, repr=False)  # int16 [N]
    bytes_source: str = LUTS  # "luts" | "sidecar" ("none": no bytes counted, the Scorer adapters)

    @classmethod
    def from_sums(cls, loss_sum: float, count: float, nbytes: float, seconds: float, **extra) -> EvalResult:
        """The result of ``count`` scored targets whose NLLs sum to ``loss_sum`` nats over ``nbytes``
        bytes (nan loss / bpb when there is nothing to divide by). ``extra``: the other fields."""
        return cls(
            loss=loss_sum / count if count else math.nan,
            bpb=loss_sum / (LN2 * nbytes) if nbytes else math.nan,
            tokens=int(count),
            bytes=int(nbytes),
            seconds=seconds,
            **extra,
        )

    @classmethod
    def from_stream(
        cls, score: StreamScore, nbytes: int, seconds: float, bytes_source: str = LUTS
    ) -> EvalResult:
        """The result of a scorer's pass over a stream: its per-position NLLs (nan where not scored),
        the bytes of the stream's targets (``TargetBytes.total``, whose ``kind`` is ``bytes_source``)
        and the pass's seconds. The score's JSON-scalar ``info`` entries (ints, floats, strings, dicts)
        are kept."""
        scored = ~np.isnan(score.nll)
        n = int(np.count_nonzero(scored))
        if n == 0:
            raise ValueError("EvalResult.from_stream: the stream score has no scored position (all nan)")
        info = {k: v for k, v in score.info.items() if isinstance(v, (int, float, str, dict))}
        committed = scored.astype(np.int32)  # nansum adds each scored position once
        return cls.from_sums(
            float(np.nansum(score.nll)),
            n,
            nbytes,
            seconds,
            info=info,
            bytes_source=bytes_source,
            committed=committed,
        )

    def as_dict(self) -> dict:
        d = {
            "loss": self.loss,
            "bpb": self.bpb,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "bytes_source": self.bytes_source,
        }
        if self.notes:
            d["notes"] = self.notes
        if not self.compliant:
            d["compliant"] = False
        if self.info:
            d["info"] = dict(self.info)
        return d

    def stage_record(
        self, stage: str, artifact_bytes: int | None = None, verdicts: Sequence[Verdict] = ()
    ) -> StageRecord:
        """This result as a stage record; a non-compliant result carries a failed verdict with its notes."""
        verdicts = list(verdicts)
        if not self.compliant:
            verdicts.append(Verdict("rules", False, self.notes or "NON-COMPLIANT evaluation"))
        return StageRecord(
            stage=stage,
            val_bpb=self.bpb,
            val_loss=self.loss,
            tokens=self.tokens,
            bytes=self.bytes,
            seconds=self.seconds,
            artifact_bytes=artifact_bytes,
            verdicts=verdicts,
            notes=self.notes,
            bytes_source=self.bytes_source,
        )

    def stream_score(self) -> StreamScore:
        """The per-position NLLs as a ``StreamScore`` (needs ``return_streams=True``)."""
        if self.nll is None:
            raise ValueError("this result has no per-position stream; evaluate with return_streams=True")
        return StreamScore(self.nll.astype(np.float64), info=dict(self.info))


def stream_byte_counts(tokens: np.ndarray, source: ByteLUTs | TargetBytes) -> np.ndarray:
    """int16 [N]: bytes of the target at each position (0 at position 0), from the byte tables or a
    ``TargetBytes`` (the CaseOps sidecar)."""
    return as_target_bytes(source).stream(tokens)
