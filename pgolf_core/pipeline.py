"""The post-training stages of a run, each a StageRecord with its compliance verdicts.

    run_stages(cfg, train_dir, out_dir)                     # from a notebook or a test, one process
    python -m pgolf_core.pipeline TRAIN_DIR --out DIR       # the same from a shell
    torchrun --standalone --nproc_per_node=8 -m pgolf_core.pipeline TRAIN_DIR --out DIR   # on a pod

Stages (pgolf_core.stages): ``pre`` (final raw weights) and ``ema`` (EMA weights) with standard
evaluation; ``q`` the artifact round trip (quantize the EMA weights when there are any, as the records
do, compress, write artifact.bin, read it back, dequantize) with standard evaluation; ``q_sw`` the same
weights with sliding-window evaluation (eval.stride > 0); ``q_ttt`` with legal score-first TTT
(ttt.enabled, or the marked NON-COMPLIANT pre-quant ablation); ``q_ngram`` sliding window mixed with the
legal n-gram cache (ngram.enabled; computed on rank 0).

Every record carries verdicts: T4 exactly-once and T10 byte recount on the real evaluation; T6 (no
training shard opened during evaluation; no validation shard during quantization); T7 artifact size
(q stages); T8 train and eval time (n/a off 8xH100, with the measured seconds); and T1, T1b, T2, T3,
T4, T5 measured by running the stage's own scorer on a probe: the first ``eval.probe_tokens``
validation tokens (TTT chunk sizes scaled so the probe holds four chunks, so that updates happen).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from pgolf_core.checkpoint import load_checkpoint
from pgolf_core.compliance import (
    FINEWEB_VAL_DOCS,
    check_artifact_size,
    check_byte_recount,
    check_data_access,
    check_data_split,
    check_eval_time,
    check_train_time,
    run_scorer_checks,
)
from pgolf_core.config import DataConfig, RunConfig, load_config
from pgolf_core.data.loader import load_validation_tokens
from pgolf_core.data.shards import list_shards, load_tokens, read_header
from pgolf_core.data.tokenizer import load_tokenizer
from pgolf_core.data.tokenizer_bytes import LN2, build_byte_luts
from pgolf_core.dist import DistInfo, dist_info_from_env, init_process_group, resolve_device
from pgolf_core.evaluate import (
    EvalResult,
    SlidingScorer,
    StandardScorer,
    evaluate_sliding,
    evaluate_standard,
    stream_byte_counts,
)
from pgolf_core.model import build_model
from pgolf_core.quant import build_artifact, load_artifact
from pgolf_core.scoring import Scorer
from pgolf_core.stages import STAGES, StageRecord, Verdict, write_stages
from pgolf_core.ttt import run_ttt, ttt_scorer

TARGET_HARDWARE = "8xH100"


@dataclass
class PipelineResult:
    records: list[StageRecord]
    train_seconds: float | None
    eval_seconds: float | None  # the last (submitted) stage's evaluation time
    artifact_bytes: int | None
    attn_backend: str
    artifact: dict = field(default_factory=dict)  # accounting and compressor of artifact.bin


class Session:
    """Everything the stages share: config, data, tables, the run's own records.

    Notebooks use it directly for ablations: ``session.with_config(cfg_variant)`` shares the loaded
    data and evaluates another quant / TTT / n-gram setting on the same weights.
    """

    def __init__(self, cfg: RunConfig, train_dir: Path, out_dir: Path, dist: DistInfo, device: torch.device):
        self.cfg, self.train_dir, self.out_dir, self.dist, self.device = cfg, train_dir, out_dir, dist, device
        dc = cfg.data
        self.sp = load_tokenizer(dc.tokenizer_path())
        self.luts = build_byte_luts(self.sp, cfg.model.vocab_size)
        val_files = list_shards(dc.root_path() / dc.val_pattern)
        self.val = load_validation_tokens(val_files, cfg.eval_seq_len, dc.val_max_tokens, cfg.model.vocab_size)
        self.run = json.loads((train_dir / "run.json").read_text()) if (train_dir / "run.json").is_file() else {}
        self.on_target = self._on_target()
        self.hardware = self.run.get("device_name") or str(device)
        self._t10: Verdict | None = None
        self._t9: Verdict | None = None

    @classmethod
    def open(cls, cfg: RunConfig, train_dir: str | Path, out_dir: str | Path, dist: DistInfo | None = None) -> Session:
        dist = dist or dist_info_from_env()
        device = resolve_device(cfg.train.device, dist)
        init_process_group(dist, device)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return cls(cfg, Path(train_dir), out, dist, device)

    def with_config(self, cfg: RunConfig) -> Session:
        """The same data and run, another config (the model section must not change)."""
        if cfg.model != self.cfg.model or cfg.data != self.cfg.data:
            raise ValueError("with_config: a variant may change quant / eval / ttt / ngram, not model or data")
        # (the validation stream loaded for this session is shared, so data must match exactly)
        other = copy.copy(self)
        other.cfg = cfg
        return other

    def weights(self, which: str = "final") -> dict:
        """Checkpoint weights: "raw", "ema", or "final" (EMA when the run has it, as the artifact uses)."""
        ckpt = self.train_dir / "checkpoints"
        if which == "final":
            which = "ema" if (ckpt / "final_ema.pt").is_file() else "raw"
        path = ckpt / f"final_{which}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {which} weights in this run")
        return load_checkpoint(path)

    def _on_target(self) -> bool:
        if self.device.type != "cuda" or self.dist.world_size != 8:
            return False
        return "H100" in torch.cuda.get_device_name(self.device)

    def t10(self, table_bytes: int) -> Verdict:
        """T10 once per pipeline: the same stream and tables serve every stage."""
        if self._t10 is None:
            self._t10 = check_byte_recount(self.val, self.sp, table_bytes=table_bytes)
        return self._t10

    def t9(self) -> Verdict:
        """T9 once per pipeline: the whole validation split (not the evaluated, possibly capped stream)
        against the first ``eval.split_check_tokens`` training tokens; a data audit, outside eval timing."""
        if self._t9 is None:
            self._t9 = data_split_verdict(self.cfg.data, self.cfg.eval.split_check_tokens)
        return self._t9

    def model_with(self, state: dict) -> torch.nn.Module:
        model = build_model(self.cfg.model, device=self.device).to(self.device)
        model.load_state_dict(state)
        if self.cfg.model.num_loops:
            model.set_looping(True)  # evaluation always runs with the loops on (records.md B8)
        return model.eval()

    @property
    def autocast(self) -> bool:
        return self.cfg.train.autocast and self.device.type == "cuda"


# --------------------------------------------------------------------------------------------------
# Verdicts shared by the stages
# --------------------------------------------------------------------------------------------------


def _coverage(res: EvalResult, n_tokens: int) -> Verdict:
    want = n_tokens - 1
    ok = res.tokens == want
    return Verdict("T4 full", ok, f"{res.tokens:,} targets scored, the stream has {want:,}" + ("" if ok else ": not exactly once"),
                   float(res.tokens), float(want))


def _probe_cfg(cfg: RunConfig, probe: int) -> RunConfig:
    """The stage's config shrunk to the probe: TTT chunks scaled so that four fit and updates happen."""
    chunk = max(probe // 4, 1)
    ttt = cfg.ttt.model_copy(update={
        "chunk_tokens": min(cfg.ttt.chunk_tokens, chunk),
        "lora_chunk_tokens": min(cfg.ttt.lora_chunk_tokens, max(chunk // 4, 1)),
        "lora_window": min(cfg.ttt.lora_window, chunk),
        "phased_prefix_docs": min(cfg.ttt.phased_prefix_docs, 8),
    })
    return cfg.model_copy(update={"ttt": ttt})


def _probe_verdicts(ctx: Session, make_scorer: Callable[[], Scorer]) -> list[Verdict]:
    """T1..T5 of the stage's scorer on the first ``eval.probe_tokens`` validation tokens (rank 0)."""
    n = ctx.cfg.eval.probe_tokens
    if n <= 0:
        return [Verdict("T1-T5", None, "eval.probe_tokens is 0: scorer checks skipped")]
    if not ctx.dist.is_main:
        return []
    probe = np.asarray(ctx.val[: n + 1], dtype=np.int64)
    verdicts = run_scorer_checks(make_scorer(), probe, vocab_size=ctx.cfg.model.vocab_size, uniform_tokens=n)
    return [Verdict(v.check, v.passed, f"probe of {n:,} tokens: {v.reason}", v.measured, v.limit) for v in verdicts]


def _eval_time(ctx: Session, seconds: float) -> Verdict:
    return check_eval_time(seconds, on_target_hardware=ctx.on_target, hardware=ctx.hardware)


def _evaluate(ctx: Session, fn: Callable[[], EvalResult]) -> tuple[EvalResult, Verdict]:
    """Run an evaluation under the T6 tripwire (no training shard may be opened while evaluating)."""
    box: list[EvalResult] = []
    verdict = check_data_access(lambda: box.append(fn()), phase="eval")
    if not box:
        raise RuntimeError(f"evaluation aborted by the data tripwire: {verdict.reason}")
    return box[0], verdict


def data_split_verdict(dc: DataConfig, max_train_tokens: int) -> Verdict:
    """T9 for a configured dataset: the official split must have 50,000 documents, a pgolf-built one
    the count its manifest states."""
    if max_train_tokens == 0:
        return Verdict("T9", None, "eval.split_check_tokens is 0: data split check skipped")
    root = dc.root_path()
    manifest = root / "manifest.json"  # read here, not with data.export: dataset building is not run code
    if dc.source == "official":
        expected = FINEWEB_VAL_DOCS
    else:
        expected = json.loads(manifest.read_text())["splits"]["val"]["documents"] if manifest.is_file() else None
    train_files = list_shards(root / dc.train_pattern)
    total = sum(read_header(f).num_tokens for f in train_files)
    return check_data_split(
        load_tokens(list_shards(root / dc.val_pattern)), train_files, expected_val_docs=expected,
        max_train_tokens=None if max_train_tokens >= total else max_train_tokens,
    )


def _record(ctx: Session, stage: str, res: EvalResult, scorer: Callable[[], Scorer], t6: Verdict,
            artifact: Verdict | None = None, artifact_bytes: int | None = None) -> StageRecord:
    verdicts = [_coverage(res, ctx.val.size), ctx.t10(res.bytes), ctx.t9(), t6]
    if artifact is not None:
        verdicts.append(artifact)
    verdicts.append(_eval_time(ctx, res.seconds))
    verdicts += _probe_verdicts(ctx, scorer)
    return res.stage_record(stage, artifact_bytes=artifact_bytes, verdicts=verdicts)


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------


def _standard(ctx: Session, model) -> EvalResult:
    return evaluate_standard(
        model, ctx.val, ctx.luts, seq_len=ctx.cfg.eval_seq_len, batch_tokens=ctx.cfg.eval.batch_tokens,
        dist=ctx.dist, device=ctx.device, autocast=ctx.autocast, temperature=ctx.cfg.eval.temperature,
    )


def _standard_scorer(ctx: Session, model) -> Callable[[], Scorer]:
    return lambda: StandardScorer(model, seq_len=ctx.cfg.eval_seq_len, temperature=ctx.cfg.eval.temperature)


def stage_weights(ctx: Session, stage: str, state: dict) -> StageRecord:
    """pre / ema: a checkpoint's weights, standard evaluation."""
    model = ctx.model_with(state)
    res, t6 = _evaluate(ctx, lambda: _standard(ctx, model))
    rec = _record(ctx, stage, res, _standard_scorer(ctx, model), t6)
    train_s = ctx.run.get("train_seconds")
    if train_s is not None:
        total = train_s + ctx.run.get("calib_seconds", 0.0)
        rec.verdicts.append(check_train_time(total, configured_cap=ctx.cfg.train.max_wallclock_seconds or None,
                                             on_target_hardware=ctx.on_target, hardware=ctx.hardware))
    return rec


def quantize_weights(ctx: Session, state: dict) -> tuple[dict, Verdict, Verdict, dict]:
    """Quantize + compress + write artifact.bin, read it back: (dequantized state, T7, T6, accounting)."""
    hessians = None
    h_path = ctx.train_dir / "checkpoints" / "hessians.pt"
    if h_path.is_file():
        hessians = load_checkpoint(h_path)
    structure = build_model(ctx.cfg.model, device="cpu")
    box = []
    t6 = check_data_access(lambda: box.append(build_artifact(state, ctx.cfg.quant, model=structure, hessians=hessians)),
                           phase="quant")
    if not box:
        raise RuntimeError(f"quantization aborted by the data tripwire: {t6.reason}")
    art = box[0]
    path = ctx.out_dir / "artifact.bin"
    if ctx.dist.is_main:
        art.save(path)
    if ctx.dist.distributed and tdist.is_initialized():
        tdist.barrier()
    q_state = load_artifact(path)  # the round trip goes through the file, as a reader would
    t7 = check_artifact_size(model_bytes=art.model_bytes, code_bytes=art.code_bytes, cap=art.cap)
    accounting = {"model_bytes": art.model_bytes, "code_bytes": art.code_bytes, "total_bytes": art.total_bytes,
                  "margin": art.margin, "over_cap": art.over_cap, "compressor": art.compressor,
                  "candidates": art.details.get("candidates", {})}
    return q_state, t7, t6, accounting


def stage_q(ctx: Session, q_state: dict, t7: Verdict, t6q: Verdict, total_bytes: int) -> StageRecord:
    model = ctx.model_with(q_state)
    res, t6 = _evaluate(ctx, lambda: _standard(ctx, model))
    rec = _record(ctx, "q", res, _standard_scorer(ctx, model), t6, t7, total_bytes)
    rec.verdicts.insert(3, Verdict("T6 quant", t6q.passed, t6q.reason, t6q.measured, t6q.limit))
    return rec


def stage_q_sw(ctx: Session, q_state: dict, t7: Verdict, total_bytes: int) -> StageRecord:
    cfg, model = ctx.cfg, ctx.model_with(q_state)
    res, t6 = _evaluate(ctx, lambda: evaluate_sliding(
        model, ctx.val, ctx.luts, seq_len=cfg.eval_seq_len, stride=cfg.eval.stride, batch_seqs=cfg.eval.sliding_batch_seqs,
        dist=ctx.dist, device=ctx.device, autocast=ctx.autocast, temperature=cfg.eval.temperature))
    scorer = lambda: SlidingScorer(model, seq_len=cfg.eval_seq_len, stride=cfg.eval.stride,  # noqa: E731
                                   temperature=cfg.eval.temperature)
    return _record(ctx, "q_sw", res, scorer, t6, t7, total_bytes)


def stage_q_ttt(ctx: Session, q_state: dict, t7: Verdict, total_bytes: int) -> StageRecord:
    model = ctx.model_with(q_state)
    res, t6 = _evaluate(ctx, lambda: run_ttt(model, ctx.val, ctx.luts, ctx.cfg, dist=ctx.dist, device=ctx.device)[0])
    probe_cfg = _probe_cfg(ctx.cfg, ctx.cfg.eval.probe_tokens)
    rec = _record(ctx, "q_ttt", res, lambda: ttt_scorer(model, probe_cfg), t6, t7, total_bytes)
    if ctx.cfg.ttt.prequant_ablation:
        rec.stage = "q_ttt_prequant_NONCOMPLIANT"
    return rec


def stage_q_ngram(ctx: Session, q_state: dict, t7: Verdict, total_bytes: int) -> StageRecord | None:
    """Sliding-window model log-probs mixed with the legal cache; rank 0 scores, the others wait."""
    from pgolf_core.ngram import NgramScorer, WindowedTorchModel

    cfg, model = ctx.cfg, ctx.model_with(q_state)
    stride = cfg.eval.stride or cfg.eval_seq_len

    def make_scorer() -> NgramScorer:
        lm = WindowedTorchModel(model, cfg.eval_seq_len, stride=stride, temperature=cfg.eval.temperature,
                                autocast=ctx.autocast)
        return NgramScorer(lm, cfg.ngram)

    def evaluate() -> EvalResult:
        t0 = time.perf_counter()
        score = make_scorer().score_stream(np.asarray(ctx.val, dtype=np.int64))
        nbytes = int(stream_byte_counts(ctx.val, ctx.luts).sum())
        loss_sum = float(np.nansum(score.nll))
        n = int(np.count_nonzero(~np.isnan(score.nll)))
        info = {k: v for k, v in score.info.items() if isinstance(v, (int, float, str, dict))}
        return EvalResult(loss=loss_sum / n, bpb=loss_sum / (LN2 * nbytes), tokens=n, bytes=nbytes,
                          seconds=time.perf_counter() - t0, info=info)

    rec = None
    if ctx.dist.is_main:
        res, t6 = _evaluate(ctx, evaluate)
        rec = _record(ctx, "q_ngram", res, make_scorer, t6, t7, total_bytes)
    if ctx.dist.distributed and tdist.is_initialized():
        box = [rec]
        tdist.broadcast_object_list(box, src=0)
        rec = box[0]
    return rec


def default_stages(cfg: RunConfig, have_ema: bool) -> list[str]:
    stages = ["pre"] + (["ema"] if have_ema else []) + ["q"]
    if cfg.eval.stride:
        stages.append("q_sw")
    if cfg.ttt.enabled or cfg.ttt.prequant_ablation:
        stages.append("q_ttt")
    if cfg.ngram.enabled:
        stages.append("q_ngram")
    return stages


def run_stages(
    cfg: RunConfig,
    train_dir: str | Path,
    out_dir: str | Path,
    *,
    stages: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Compute the requested stages (default: every stage the config enables) and write stages.json."""
    ctx = Session.open(cfg, train_dir, out_dir, dist)
    dist, device, train_dir, out_dir = ctx.dist, ctx.device, ctx.train_dir, ctx.out_dir
    ckpt = train_dir / "checkpoints"
    have_ema = (ckpt / "final_ema.pt").is_file()
    stages = list(stages or default_stages(cfg, have_ema))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {STAGES}")
    raw = ctx.weights("raw")
    ema = ctx.weights("ema") if have_ema else None
    records: list[StageRecord] = []
    accounting: dict = {}

    def done(rec: StageRecord | None) -> None:
        if rec is None:
            return
        records.append(rec)
        failed = [v.check for v in rec.verdicts if v.passed is False]
        log(f"stage {rec.stage:<6} val_bpb {rec.val_bpb:.5f}  val_loss {rec.val_loss:.5f}  {rec.seconds:7.1f}s  "
            + ("compliant" if not failed else f"NON-COMPLIANT ({', '.join(failed)})"))
        if dist.is_main:
            write_stages(out_dir / "stages.json", records, train_dir=str(train_dir), artifact=accounting)

    if "pre" in stages:
        done(stage_weights(ctx, "pre", raw))
    if "ema" in stages:
        if ema is None:
            raise FileNotFoundError(f"{ckpt / 'final_ema.pt'}: stage 'ema' needs train.ema_decay > 0")
        done(stage_weights(ctx, "ema", ema))
    q_stages = [s for s in stages if s.startswith("q")]
    if q_stages:
        q_state, t7, t6q, accounting = quantize_weights(ctx, ema if ema is not None else raw)
        log(f"artifact: {accounting['total_bytes']:,} bytes (model {accounting['model_bytes']:,} "
            f"{accounting['compressor']} + code {accounting['code_bytes']:,}); margin {accounting['margin']:,}"
            + ("  OVER THE CAP" if accounting["over_cap"] else ""))
        total = accounting["total_bytes"]
        if "q" in q_stages:
            done(stage_q(ctx, q_state, t7, t6q, total))
        if "q_sw" in q_stages:
            if not cfg.eval.stride:
                raise ValueError("stage 'q_sw' needs eval.stride > 0 (the records use 64)")
            done(stage_q_sw(ctx, q_state, t7, total))
        if "q_ttt" in q_stages:
            done(stage_q_ttt(ctx, q_state, t7, total))
        if "q_ngram" in q_stages:
            done(stage_q_ngram(ctx, q_state, t7, total))
    if dist.is_main:
        write_stages(out_dir / "stages.json", records, train_dir=str(train_dir), artifact=accounting)
    train_s = ctx.run.get("train_seconds")
    return PipelineResult(
        records=records,
        train_seconds=None if train_s is None else train_s + ctx.run.get("calib_seconds", 0.0),
        eval_seconds=records[-1].seconds if records else None,
        artifact_bytes=accounting.get("total_bytes"),
        attn_backend=ctx.run.get("attn_backend") or build_model(cfg.model, device=device).attn_backend,
        artifact=accounting,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pgolf_core.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("train_dir", help="a training run folder (config.yaml, checkpoints/)")
    ap.add_argument("--out", required=True, help="folder for stages.json and artifact.bin")
    ap.add_argument("--stages", nargs="+", choices=STAGES, help="default: every stage the config enables")
    args = ap.parse_args(argv)
    cfg = load_config(Path(args.train_dir) / "config.yaml")
    dist = dist_info_from_env()
    try:
        result = run_stages(cfg, args.train_dir, args.out, stages=args.stages, dist=dist)
    finally:
        if dist.distributed and tdist.is_initialized():
            tdist.destroy_process_group()
    if dist.is_main:
        print(json.dumps({"event": "stages", "eval_seconds": result.eval_seconds,
                          "artifact_bytes": result.artifact_bytes,
                          "stages": {r.stage: r.val_bpb for r in result.records}}))
    return 0 if all(math.isfinite(r.val_bpb) for r in result.records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
