"""From runs to a challenge records folder, and the significance test a record needs.

    pgolf export h100x8/record_1493 --out records/2026-11-21_MyRecord --name ... --author ... \
        --github-id ... --blurb ... [--sota-bpb 1.0611]

A *run group* is one configuration over several seeds (``pgolf suite ... --seeds 42 1337 2025``); its
completed training runs are read from reports/<suite>/<run_id>/ (manifest.json, stages.json, train/).
The submitted score of each seed is the first of these stages it has: q_ttt_tilt (TTT with the tilt,
#2135), q_ngram, q_ttt, q_tilt, q_sw, q: what the run's evaluation pipeline would report.

The export refuses, with the reason, a group in which any run failed, any stage record has a failed
compliance verdict, or the artifact (model bytes + every counted code file, the entry script and the
config included) exceeds the decimal byte cap of the runs' config (``quant.byte_cap``, by default the
challenge's ``pgolf_core.challenge.BYTE_CAP``). The code ships as the config says (``quant.code_packing``):
``packed``, one self-extracting train_gpt.py holding all of it (pgolf_core.code_pack), whose size is
bytes_code; ``raw``, the files, the entry script and config.yaml as they are, their sizes summed.

Significance (the challenge README: a new record must beat the state of the art by at least 0.005 nats
at p < 0.01, usually over 3 seeds): a one-sided one-sample t-test of the per-seed scores against
``sota - margin``. Scores are compared in bpb (the leaderboard unit); the 0.005-nat margin is converted
with the run's own tokens per byte, margin_bpb = 0.005 / ln 2 * tokens / bytes (sp8192: about 0.0019
bpb). ``sota_loss`` compares val_loss in nats directly (same tokenizer only).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgolf_core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from pgolf_core.code_bytes import CodeFilesError, counted_files, file_bytes
from pgolf_core.code_pack import ENTRY_NAME, ENTRY_SCRIPT, pack, project_files
from pgolf_core.config import load_config, to_yaml
from pgolf_core.outdir import UnsafeOutputDir, check_replaceable, staged_replace
from pgolf_core.record_readme import changes_from_baseline, render_readme
from pgolf_core.stages import StageRecord, read_stages

RECORD_MARGIN_NATS = 0.005
RECORD_ALPHA = 0.01
TRACK = "10min_16mb"
#: the first of these a run has is its submitted score
SCORE_STAGES = ("q_ttt_tilt", "q_ngram", "q_ttt", "q_tilt", "q_sw", "q")
#: submission.json field that marks a folder as written by ``pgolf export`` (the one it may replace)
GENERATOR = "pgolf export"
_MARKER_WHAT = f"submission.json with generator {GENERATOR!r}"


class SubmissionRefused(RuntimeError):
    """The run group cannot be exported; the message says why."""


@dataclass
class SeedRun:
    seed: int
    run_dir: Path
    manifest: dict
    stages: list[StageRecord]

    @property
    def final(self) -> StageRecord:
        by_name = {s.stage: s for s in self.stages}
        for name in SCORE_STAGES:
            if name in by_name:
                return by_name[name]
        raise SubmissionRefused(
            f"{self.run_dir}: no quantized stage ({', '.join(SCORE_STAGES)}) in stages.json"
        )

    @property
    def train_dir(self) -> Path:
        return Path((self.manifest.get("outputs") or {}).get("train_dir") or self.run_dir / "train")

    @property
    def outputs(self) -> dict:
        return self.manifest.get("outputs") or {}


@dataclass(frozen=True)
class Significance:
    """One-sided test that the mean score is below ``sota - margin``."""

    n: int
    mean: float
    std: float | None
    sota: float
    margin: float  # in the unit of the scores
    threshold: float  # sota - margin
    t: float | None
    p: float | None
    unit: str  # "bpb" or "nats"
    alpha: float = RECORD_ALPHA

    @property
    def bar_met(self) -> bool:
        return self.p is not None and self.p < self.alpha and self.mean < self.threshold

    def summary(self) -> str:
        if self.p is None:
            return (
                f"{self.n} seed(s): mean {self.mean:.5f} {self.unit}; a t-test needs at least 2 seeds "
                f"(the record bar: below {self.threshold:.5f} at p < {self.alpha})"
            )
        verdict = "MEETS the record bar" if self.bar_met else "does NOT meet the record bar"
        return (
            f"{self.n} seeds: mean {self.mean:.5f} {self.unit} (std {self.std:.5f}) vs SOTA {self.sota:.5f} "
            "- "
            f"margin {self.margin:.5f} = {self.threshold:.5f}; one-sided t = {self.t:.3f}, p = {self.p:.3g}: "
            f"{verdict} (p < {self.alpha})"
        )


def significance(
    scores: list[float], sota: float, margin: float, *, unit: str = "bpb", alpha: float = RECORD_ALPHA
) -> Significance:
    """One-sided one-sample t-test (H1: mean < sota - margin) on per-seed scores."""
    if not scores:
        raise ValueError("significance needs at least one score")
    n, mean = len(scores), statistics.fmean(scores)
    threshold = sota - margin
    if n < 2:
        return Significance(n, mean, None, sota, margin, threshold, None, None, unit, alpha)
    std = statistics.stdev(scores)
    if std == 0.0:  # a t statistic is undefined for zero spread: the sign of the difference decides
        t = -math.inf if mean < threshold else math.inf
        return Significance(
            n, mean, std, sota, margin, threshold, t, 0.0 if mean < threshold else 1.0, unit, alpha
        )
    from scipy import stats

    res = stats.ttest_1samp(scores, threshold, alternative="less")
    return Significance(
        n, mean, std, sota, margin, threshold, float(res.statistic), float(res.pvalue), unit, alpha
    )


def margin_bpb(tokens: int, nbytes: int, nats: float = RECORD_MARGIN_NATS) -> float:
    """The 0.005-nat-per-token bar in bits per byte for a stream of ``tokens`` standing for ``nbytes``."""
    return nats / math.log(2) * tokens / nbytes


# --------------------------------------------------------------------------------------------------
# Collecting a run group
# --------------------------------------------------------------------------------------------------


def _manifests(root: Path) -> list:
    out = []
    for p in root.glob("*/*/manifest.json"):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


def collect_group(group: str, reports_root: str | os.PathLike = "reports") -> list[SeedRun]:
    """The completed runs of ``group`` (manifest "group", e.g. "h100x8/record_1493"), one per seed, the
    newest run of each seed. Raises when a run of the group did not complete."""
    root = Path(reports_root)
    found: dict[int, SeedRun] = {}
    problems = []
    for mpath in sorted(root.glob("*/*/manifest.json")):
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or manifest.get("group") != group:
            continue
        if manifest.get("status") != "completed":
            problems.append(
                f"{mpath.parent.name}: {manifest.get('status')} "
                f"({manifest.get('error') or 'no error recorded'})"
            )
            continue
        spath = mpath.parent / "stages.json"
        if not spath.is_file():
            problems.append(f"{mpath.parent.name}: no stages.json")
            continue
        try:
            stages = read_stages(spath)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            problems.append(f"{spath}: unreadable ({type(e).__name__}: {e})")
            continue
        run = SeedRun(int(manifest.get("seed", 0)), mpath.parent, manifest, stages)
        old = found.get(run.seed)
        if old is None or manifest.get("started_utc", "") > old.manifest.get("started_utc", ""):
            found[run.seed] = run
    if problems:
        raise SubmissionRefused(f"group {group!r} has runs that did not complete: " + "; ".join(problems))
    if not found:
        groups = sorted({str(m.get("group", "?")) for m in _manifests(root) if isinstance(m, dict)})
        raise SubmissionRefused(f"no completed run of group {group!r} under {root}; groups there: {groups}")
    return [found[s] for s in sorted(found)]


# --------------------------------------------------------------------------------------------------
# The records folder
# --------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    out_dir: Path
    submission: dict
    significance: Significance | None
    files: list[str] = field(default_factory=list)


def _portable(cfg):
    """The config without what differs between seeds of one group (seed, run folder, run id)."""
    return cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"seed": 0, "run_dir": "runs", "run_id": None})}
    )


def _refuse_non_compliant(runs: list[SeedRun]) -> None:
    bad = []
    for run in runs:
        for rec in run.stages:
            failed = [v for v in rec.verdicts if v.passed is False]
            if failed:
                reasons = "; ".join(f"{v.check}: {v.reason}" for v in failed[:3])
                bad.append(f"seed {run.seed} stage {rec.stage}: {reasons}")
    if bad:
        raise SubmissionRefused("non-compliant: " + " | ".join(bad))


def _counted_code(cfg, root: Path) -> list[Path]:
    try:
        return counted_files(cfg.quant.code_files, root)
    except (CodeFilesError, FileNotFoundError) as e:
        raise SubmissionRefused(str(e)) from None


def export_submission(
    group: str,
    out_dir: str | os.PathLike,
    *,
    name: str,
    author: str,
    github_id: str,
    blurb: str,
    reports_root: str | os.PathLike = "reports",
    code_root: str | os.PathLike = ".",
    sota_bpb: float | None = None,
    sota_loss: float | None = None,
    track: str = TRACK,
    date: str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write the challenge's records folder for ``group``; raise SubmissionRefused with the reason.

    ``out_dir`` may be replaced (``overwrite``) only when an earlier export wrote it (``pgolf_core.outdir``).
    """
    out, code_root = Path(out_dir), Path(code_root)
    _check_out(out, overwrite, code_root)  # before any work: a refused folder is reported at once
    runs = collect_group(group, reports_root)
    _refuse_non_compliant(runs)
    configs = [_portable(load_config(r.train_dir / "config.yaml")) for r in runs]
    if any(to_yaml(c) != to_yaml(configs[0]) for c in configs):
        raise SubmissionRefused(f"group {group!r}: the seeds' configs differ beyond train.seed")
    cfg = configs[0]
    code_files = _counted_code(cfg, code_root)
    config_text = to_yaml(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": runs[0].seed})})
    )
    # (the entry script sets train.run_dir / run_id; reproduce another seed with --set train.seed=N)
    packed = None
    if cfg.quant.code_packing == "packed":  # one self-extracting train_gpt.py holds everything counted
        packed = pack(project_files(cfg.quant.code_files, code_root, {"config.yaml": config_text.encode()}))
        bytes_code = len(packed)
    else:
        bytes_code = file_bytes(code_root / f for f in code_files)
        bytes_code += len(ENTRY_SCRIPT.encode()) + len(config_text.encode())
    model_bytes = []
    for r in runs:
        artifact = r.run_dir / "artifact.bin"
        if not artifact.is_file():
            raise SubmissionRefused(f"{r.run_dir}: no artifact.bin (the q stage did not run)")
        model_bytes.append(artifact.stat().st_size)
    bytes_total = bytes_code + max(model_bytes)
    cap = cfg.quant.byte_cap
    if bytes_total > cap:
        raise SubmissionRefused(
            f"over the byte cap: code {bytes_code:,} + largest model {max(model_bytes):,} = {bytes_total:,} "
            "bytes "
            f"> {cap:,} (quant.byte_cap) by {bytes_total - cap:,}"
        )
    finals = [r.final for r in runs]
    sig = None
    if sota_bpb is not None:
        margin = margin_bpb(sum(f.tokens for f in finals), sum(f.bytes for f in finals))
        sig = significance([f.val_bpb for f in finals], sota_bpb, margin, unit="bpb")
    elif sota_loss is not None:
        sig = significance([f.val_loss for f in finals], sota_loss, RECORD_MARGIN_NATS, unit="nats")
    submission = {
        "name": name,
        "author": author,
        "github_id": github_id,
        "blurb": blurb,
        "date": date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "track": track,
        "generator": GENERATOR,
        "val_bpb": round(statistics.fmean(f.val_bpb for f in finals), 8),
        "val_loss": round(statistics.fmean(f.val_loss for f in finals), 8),
        "val_bpb_std": round(statistics.stdev([f.val_bpb for f in finals]), 8) if len(finals) > 1 else None,
        "bytes_total": bytes_total,
        "bytes_code": bytes_code,
        "code_packing": cfg.quant.code_packing,
        "seeds": [r.seed for r in runs],
        "seed_results": [
            {
                "seed": r.seed,
                "stage": f.stage,
                "val_bpb": round(f.val_bpb, 8),
                "val_loss": round(f.val_loss, 8),
                "bytes_total": bytes_code + mb,
                "train_seconds": r.outputs.get("train_seconds"),
                "eval_seconds": r.outputs.get("eval_seconds"),
            }
            for r, f, mb in zip(runs, finals, model_bytes, strict=True)
        ],
    }
    if sig is not None:
        submission["significance"] = {
            **asdict(sig),
            "bar_met": sig.bar_met,
            "margin_nats": RECORD_MARGIN_NATS,
        }
    written = []
    try:
        with staged_replace(
            out, overwrite=overwrite, owned=_exported_by_pgolf, what=_MARKER_WHAT, project_root=code_root
        ) as stage:
            if packed is not None:
                atomic_write_bytes(stage / ENTRY_NAME, packed)
            else:
                for f in code_files:
                    dest = stage / f
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(code_root / f, dest)
                    written.append(f.as_posix())
                atomic_write_text(stage / ENTRY_NAME, ENTRY_SCRIPT)
                atomic_write_text(stage / "config.yaml", config_text)
            for r in runs:
                log = r.train_dir / "train.log"
                if log.is_file():
                    shutil.copyfile(log, stage / f"train_seed{r.seed}.log")
                    written.append(f"train_seed{r.seed}.log")
                shutil.copyfile(r.run_dir / "stages.json", stage / f"stages_seed{r.seed}.json")
                written.append(f"stages_seed{r.seed}.json")
            atomic_write_json(stage / "submission.json", submission)
            readme = render_readme(name, blurb, runs, submission, sig, changes_from_baseline(cfg), cap)
            atomic_write_text(stage / "README.md", readme)
    except UnsafeOutputDir as e:
        raise SubmissionRefused(str(e)) from None
    written += [ENTRY_NAME, *(["config.yaml"] if packed is None else []), "submission.json", "README.md"]
    return ExportResult(out, submission, sig, sorted(written))


def _exported_by_pgolf(folder: Path) -> bool:
    try:
        data = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR


def _check_out(out: Path, overwrite: bool, code_root: Path) -> None:
    try:
        check_replaceable(
            out, overwrite=overwrite, owned=_exported_by_pgolf, what=_MARKER_WHAT, project_root=code_root
        )
    except UnsafeOutputDir as e:
        raise SubmissionRefused(str(e)) from None
