"""The verdicts the stages share: coverage (T4), the data tripwire around an evaluation (T6), the
evaluation time (T8), the data split (T9) and the scorer checks T1-T5 on a probe of the stream."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pgolf_core.challenge import VAL_DOCS
from pgolf_core.compliance import (
    check_data_access,
    check_data_split,
    check_eval_time,
    run_scorer_checks,
)
from pgolf_core.config import DataConfig, RunConfig
from pgolf_core.data.shards import list_shards, load_tokens, read_header
from pgolf_core.evaluate import EvalResult
from pgolf_core.scoring import Scorer
from pgolf_core.stages import StageRecord, Verdict

if TYPE_CHECKING:
    from pgolf_core.pipeline.roundtrip import StageWeights
    from pgolf_core.pipeline.session import Session


def coverage_verdict(res: EvalResult, n_tokens: int) -> Verdict:
    """T4 full: the evaluation scored every target of the ``n_tokens`` stream exactly once."""
    want = n_tokens - 1
    ok = res.tokens == want
    return Verdict(
        "T4 full",
        ok,
        f"{res.tokens:,} targets scored, the stream has {want:,}" + ("" if ok else ": not exactly once"),
        float(res.tokens),
        float(want),
    )


# The scorer checks run the stage's own scorer on a probe of the stream; a TTT scorer must update on the
# probe for T5 (no update before scoring) to test anything, so its chunking is shrunk to fit the probe.
PROBE_TTT_CHUNKS = 4  # TTT chunks the probe holds (chunked TTT trains after every chunk but the last)
PROBE_LORA_CHUNKS = 4  # per-document LoRA chunks per TTT chunk, so that documents get several steps
PROBE_PHASED_DOCS = 8  # phased TTT: the global passes fall within the probe's first documents


def probe_config(cfg: RunConfig, probe: int) -> RunConfig:
    """The stage's config shrunk to a probe of ``probe`` tokens (``PROBE_*``): TTT chunks scaled so that
    several fit and updates happen."""
    chunk = max(probe // PROBE_TTT_CHUNKS, 1)
    ttt = cfg.ttt.model_copy(
        update={
            "chunk_tokens": min(cfg.ttt.chunk_tokens, chunk),
            "lora_chunk_tokens": min(cfg.ttt.lora_chunk_tokens, max(chunk // PROBE_LORA_CHUNKS, 1)),
            "lora_window": min(cfg.ttt.lora_window, chunk),
            "phased_prefix_docs": min(cfg.ttt.phased_prefix_docs, PROBE_PHASED_DOCS),
        }
    )
    return cfg.model_copy(update={"ttt": ttt})


def probe_verdicts(ctx: Session, make_scorer: Callable[[], Scorer]) -> list[Verdict]:
    """T1..T5 of the stage's scorer on the first ``eval.probe_tokens`` validation tokens (rank 0)."""
    n = ctx.cfg.eval.probe_tokens
    if n <= 0:
        return [Verdict("T1-T5", None, "eval.probe_tokens is 0: scorer checks skipped")]
    if not ctx.dist.is_main:
        return []
    probe = np.asarray(ctx.val[: n + 1], dtype=np.int64)
    verdicts = run_scorer_checks(make_scorer(), probe, vocab_size=ctx.cfg.model.vocab_size, uniform_tokens=n)
    return [
        Verdict(v.check, v.passed, f"probe of {n:,} tokens: {v.reason}", v.measured, v.limit)
        for v in verdicts
    ]


def eval_time_verdict(ctx: Session, seconds: float) -> Verdict:
    """T8 eval: against the budget on the target hardware, n/a (with the seconds) elsewhere."""
    return check_eval_time(seconds, on_target_hardware=ctx.on_target, hardware=ctx.hardware)


def evaluate_guarded(ctx: Session, fn: Callable[[], EvalResult]) -> tuple[EvalResult, Verdict]:
    """Run an evaluation under the T6 tripwire (no training shard may be opened while evaluating):
    (its result, the T6 verdict)."""
    box: list[EvalResult] = []
    verdict = check_data_access(lambda: box.append(fn()), phase="eval")
    if not box:
        raise RuntimeError(f"evaluation aborted by the data tripwire: {verdict.reason}")
    return box[0], verdict


def data_split_verdict(dc: DataConfig, max_train_tokens: int) -> Verdict:
    """T9 for a configured dataset: the official split must have ``VAL_DOCS`` (50,000) documents, a
    pgolf-built one the count its manifest states."""
    if max_train_tokens == 0:
        return Verdict("T9", None, "eval.split_check_tokens is 0: data split check skipped")
    root = dc.root_path()
    manifest = root / "manifest.json"  # read here, not with data.export: dataset building is not run code
    if dc.source == "official":
        expected = VAL_DOCS
    else:
        expected = (
            json.loads(manifest.read_text())["splits"]["val"]["documents"] if manifest.is_file() else None
        )
    train_files = list_shards(root / dc.train_pattern)
    total = sum(read_header(f).num_tokens for f in train_files)
    return check_data_split(
        load_tokens(list_shards(root / dc.val_pattern)),
        train_files,
        expected_val_docs=expected,
        max_train_tokens=None if max_train_tokens >= total else max_train_tokens,
    )


def stage_record(
    ctx: Session,
    name: str,
    res: EvalResult,
    make_scorer: Callable[[], Scorer],
    data_access: Sequence[Verdict],
    weights: StageWeights,
) -> StageRecord:
    """The record of one stage: T4 full, T10, T9, the T6 verdicts ``data_access``, T7 when ``weights``
    are the artifact's, T8 eval, then T1..T5 of ``make_scorer()`` on the probe."""
    verdicts = [coverage_verdict(res, ctx.val.size), ctx.t10(res.bytes), ctx.t9(), *data_access]
    if weights.t7 is not None:
        verdicts.append(weights.t7)
    verdicts.append(eval_time_verdict(ctx, res.seconds))
    verdicts += probe_verdicts(ctx, make_scorer)
    return res.stage_record(name, artifact_bytes=weights.artifact_bytes, verdicts=verdicts)
