"""The sweeps behind the analysis notebooks: quantization schemes and n-gram settings on one trained run.

Each function returns stage records (with verdicts) the notebooks plot and tabulate; nothing here is
notebook-specific beyond taking a ``NotebookRun``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pgolf_core.compliance import check_artifact_size
from pgolf_core.config import QuantConfig, RunConfig
from pgolf_core.eval import EvalResult, stream_byte_counts
from pgolf_core.notebook import NotebookRun
from pgolf_core.pipeline import (
    Session,
    coverage_verdict,
    evaluate_guarded,
    quantize_weights,
    stage_q,
    stage_q_sw,
    stage_record,
    standard_eval,
)
from pgolf_core.quant import GapRow, build_artifact, load_artifact, quant_gap
from pgolf_core.quant.calib import train_calibration_batches
from pgolf_core.quant.classify import QUANT_GROUPS, classify
from pgolf_core.quant.gptq import Hessians
from pgolf_core.stages import StageRecord


def _saved_hessians(train_dir: Path) -> Hessians | None:
    """Hessians the training run collected inside its budget (GPTQ configs), if any."""
    from pgolf_core.checkpoint import load_checkpoint

    path = train_dir / "checkpoints" / "hessians.pt"
    if not path.is_file():
        return None
    h = Hessians(load_checkpoint(path))
    h.seconds, h.batches, h.rows = 0.0, 0, {}
    return h


def gap_rows(
    nb: NotebookRun, train_dir: Path, variants: list[tuple[str, QuantConfig]]
) -> tuple[list[GapRow], list[StageRecord]]:
    """The quant-gap table for the run's final weights, and one stage record ``q[<scheme>]`` per row."""
    session = Session.open(nb.cfg, train_dir, nb.run_dir)
    results: list[EvalResult] = []

    def evaluate(model) -> EvalResult:
        model.to(session.device).eval()
        model.set_loops(True)  # evaluation always runs with the loops on (a no-op without loops)
        res = standard_eval(session, model)
        results.append(res)
        return res

    rows = quant_gap(
        session.weights("final"),
        nb.cfg,
        variants,
        evaluate=evaluate,
        calib_batches=lambda: list(train_calibration_batches(nb.cfg)),
        hessians=_saved_hessians(train_dir),
        device=session.device,
    )
    records = []
    for row, res, (_, qcfg) in zip(rows, results[1:], variants, strict=True):
        t7 = check_artifact_size(
            model_bytes=row.model_bytes, code_bytes=row.artifact_bytes - row.model_bytes, cap=qcfg.byte_cap
        )
        verdicts = [coverage_verdict(res, session.val.size), session.t10(res.bytes), t7]
        rec = res.stage_record(f"q[{row.scheme}]", artifact_bytes=row.artifact_bytes, verdicts=verdicts)
        records.append(
            replace(rec, notes=f"{row.bits}; clip {row.clip}; {row.compressor}; gap {row.gap:+.5f}")
        )
    return rows, records


def group_gaps(nb: NotebookRun, train_dir: Path, qcfg: QuantConfig) -> dict[str, float]:
    """bpb gap of quantizing one tensor group at a time (the others keep their trained weights)."""
    session = Session.open(nb.cfg, train_dir, nb.run_dir)
    state = session.weights("final")
    model = session.model_with(state)
    groups = {name: c.group for name, c in classify(model).items()}
    before = standard_eval(session, model).bpb
    needs_h = qcfg.scheme == "groups" and any(getattr(qcfg, g).gptq for g in QUANT_GROUPS)
    hessians = None
    if needs_h:
        hessians = _saved_hessians(train_dir)
        if hessians is None:
            from pgolf_core.quant import collect_hessians

            hessians = collect_hessians(model, list(train_calibration_batches(nb.cfg)))
    structure = session.model_with(state).cpu()
    deq = load_artifact(build_artifact(state, qcfg, model=structure, hessians=hessians).blob)
    out = {}
    for group in QUANT_GROUPS:
        names = [n for n, g in groups.items() if g == group]
        if not names:
            continue
        mixed = {k: (deq[k] if k in names else v) for k, v in state.items()}
        out[group] = standard_eval(session, session.model_with(mixed)).bpb - before
    return out


def ngram_records(
    nb: NotebookRun, train_dir: Path, configs: list[tuple[str, RunConfig]]
) -> tuple[list[StageRecord], dict[str, float]]:
    """The plain model and each n-gram setting on the q weights; returns (records, cache tokens/s).

    The model's sliding-window log-probabilities are computed once and shared by every setting, so
    the reported tokens/s is the cache and mixer alone.
    """
    from pgolf_core.ngram import FullStreamModel, NgramScorer, WindowedTorchModel

    session = Session.open(nb.cfg, train_dir, nb.run_dir)
    q = quantize_weights(session, session.weights("final"))
    base = (stage_q_sw if nb.cfg.eval.stride else stage_q)(session, q, "model only")
    model = session.model_with(q.state)
    stride = nb.cfg.eval.stride or nb.cfg.eval_seq_len
    windowed = WindowedTorchModel(
        model,
        nb.cfg.eval_seq_len,
        stride=stride,
        temperature=nb.cfg.eval.temperature,
        autocast=session.autocast,
    )

    def table(tokens: np.ndarray) -> np.ndarray:
        rows = windowed.logprobs(tokens, 1, tokens.size)
        return np.concatenate([np.zeros((1, rows.shape[1]), dtype=rows.dtype), rows])

    lm = FullStreamModel(table, windowed.vocab_size)  # keeps the validation table: one stream cached
    probe_lm = FullStreamModel(table, windowed.vocab_size)  # the compliance probes' perturbed streams
    val = np.asarray(session.val, dtype=np.int64)
    lm.logprobs(val, 1, 2)  # precompute once, outside the timed region of every setting
    nbytes = int(stream_byte_counts(session.val, session.luts).sum())
    records, speeds = [base], {}
    for name, cfg_v in configs:
        sv = session.with_config(cfg_v)

        def evaluate(cfg_v=cfg_v) -> EvalResult:
            t0 = time.perf_counter()
            score = NgramScorer(lm, cfg_v.ngram).score_stream(val)
            return EvalResult.from_stream(score, nbytes, time.perf_counter() - t0)

        res, t6 = evaluate_guarded(sv, evaluate)
        speeds[name] = res.tokens / res.seconds
        records.append(
            stage_record(sv, name, res, lambda cfg_v=cfg_v: NgramScorer(probe_lm, cfg_v.ngram), [t6], q)
        )
    return records, speeds
