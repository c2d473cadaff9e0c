"""The verdicts the stages share: coverage (T4), the data tripwire around an evaluation (T6), the
evaluation time (T8), the data split (T9) and the scorer checks T1-T5 on a probe drawn from the whole
stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch.distributed as tdist

from pgolf_core.challenge import VAL_DOCS
from pgolf_core.compliance import (
    check_coverage,
    check_data_access,
    check_data_split,
    check_eval_time,
    probe_windows,
    run_scorer_checks,
)
from pgolf_core.config import DataConfig, RunConfig
from pgolf_core.data.shards import list_shards, load_tokens, read_header
from pgolf_core.data.tokenizer import BOS_ID
from pgolf_core.eval import EvalResult
from pgolf_core.scoring import Scorer
from pgolf_core.stages import StageRecord, Verdict

if TYPE_CHECKING:
    from pgolf_core.pipeline.roundtrip import StageWeights
    from pgolf_core.pipeline.session import Session


def coverage_verdict(res: EvalResult, n_tokens: int) -> Verdict:
    """T4 full: the evaluation committed every target 1..n_tokens-1 of the stream exactly once, judged
    position by position from its own record (``EvalResult.committed``: how many times each position
    entered the loss sum; ``compliance.check_coverage``), not from a count: a plan with one overlap
    and one gap has the right count. A result without that record is judged by its count, and at
    best n/a."""
    want = n_tokens - 1
    if res.committed is None:
        ok = res.tokens == want
        return Verdict(
            "T4 full",
            None if ok else False,
            f"{res.tokens:,} targets scored, the stream has {want:,}"
            + (
                ": the count matches, but the evaluation kept no per-position record, so an overlap "
                "offset by a gap cannot be ruled out"
                if ok
                else ": not exactly once"
            ),
            float(res.tokens),
            float(want),
        )
    verdict = check_coverage(expected=range(1, n_tokens), counts=res.committed, check="T4 full")
    recorded = int(np.asarray(res.committed, dtype=np.int64).sum())
    if verdict.passed and recorded != res.tokens:  # the record and the loss's own count disagree
        return Verdict(
            "T4 full",
            False,
            f"the per-position record holds {recorded:,} commits but the loss averaged over "
            f"{res.tokens:,} targets",
            float(res.tokens),
            float(want),
        )
    return verdict


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


def probe_stream(
    val: np.ndarray, probe_tokens: int, *, n_windows: int, seed: int, bos_id: int = BOS_ID
) -> tuple[np.ndarray, list[int], int]:
    """The scorer checks' probe: ``n_windows`` windows of ``probe_tokens // n_windows + 1`` tokens at
    seeded random offsets across the whole of ``val`` (``compliance.probe_windows``: one window per
    equal segment, moved to the segment's first document start where that leaves room), concatenated.

    Returns (probe, offsets, width): probe position p is validation position
    ``offsets[p // width] + p % width``. Fewer windows when ``val`` is too short for that many.

    One stream rather than one run of the checks per window: every check then sees every window at
    the cost of a single probe, with the sample sizes of a single probe (T1's cuts and the T1b/T2
    positions are stratified over the whole stream, so they fall in every window); separate runs
    would multiply each check's fixed cost by the window count (about 0.1 s a pass for the smoke
    model on CPU), or shrink each window below the evaluation's sequence length (4,096 tokens in 4
    windows at seq_len 2,048), where the sliding and TTT schedules under test no longer take shape.
    """
    k = max(1, min(int(n_windows), int(probe_tokens)))
    per = max(1, min(int(probe_tokens) // k, len(val) - 1))
    windows = probe_windows(val, per, n_windows=k, seed=seed, bos_id=bos_id)
    return np.concatenate([w for _, w in windows]), [o for o, _ in windows], per + 1


def probe_verdicts(ctx: Session, make_scorer: Callable[[], Scorer]) -> list[Verdict]:
    """noise, T1..T5 of the stage's scorer (built fresh by the factory ``make_scorer`` as the checks
    need) on ``probe_stream``: ``eval.probe_tokens`` tokens from ``eval.probe_windows`` places of the
    validation stream (seed ``eval.probe_seed``), on rank 0. Each reason says where the probe lies and
    the check's seconds; the first also the probe's total seconds."""
    ev = ctx.cfg.eval
    if ev.probe_tokens <= 0:
        return [Verdict("T1-T5", None, "eval.probe_tokens is 0: scorer checks skipped")]
    if not ctx.dist.is_main:
        return []
    probe, offsets, width = probe_stream(
        ctx.val, ev.probe_tokens, n_windows=ev.probe_windows, seed=ev.probe_seed
    )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    verdicts = run_scorer_checks(
        make_scorer,
        probe,
        vocab_size=ctx.cfg.model.vocab_size,
        uniform_tokens=ev.probe_tokens,
        n_cuts=ev.probe_cuts,
        seed=ev.probe_seed,
        timings=timings,
    )
    total = time.perf_counter() - t0
    where = (
        f"probe of {len(offsets)} x {width:,} tokens at validation offsets "
        f"{', '.join(f'{o:,}' for o in offsets)} (seed {ev.probe_seed})"
    )
    out = []
    for i, v in enumerate(verdicts):
        secs = timings.get(v.check, 0.0) + (timings.get("base", 0.0) if i == 0 else 0.0)
        cost = f"{secs:.2f} s" + (f" of {total:.2f} s for all the checks" if i == 0 else "")
        out.append(Verdict(v.check, v.passed, f"{where}, {cost}: {v.reason}", v.measured, v.limit))
    return out


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


def main_rank_stage(ctx: Session, name: str, evaluate, make_scorer, weights) -> StageRecord:
    """A stage that rank 0 alone scores (a stream scorer: n-gram, tilt): the others wait and receive
    its record, so every rank returns the same one."""
    rec = None
    if ctx.dist.is_main:
        res, t6 = evaluate_guarded(ctx, evaluate)
        rec = stage_record(ctx, name, res, make_scorer, [t6], weights)
    if ctx.dist.distributed and tdist.is_initialized():
        box = [rec]
        tdist.broadcast_object_list(box, src=0)
        rec = box[0]
    return rec
