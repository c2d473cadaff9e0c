"""What the notebooks call. No logic lives only in a notebook (DESIGN.md): they load a config, call
these helpers and the core, and plot.

Every notebook's first code cell after ``parameters`` is ``nb = setup(params_file, overrides, run_dir)``:
it moves to the project root (so a notebook opened in JupyterLab from notebooks/ finds params/ and
data/), validates the config, makes the report folder and returns a ``NotebookRun``.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf_core.atomic import atomic_write_json
from pgolf_core.config import RunConfig, load_config, to_yaml
from pgolf_core.stages import StageRecord

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class NotebookRun:
    cfg: RunConfig
    params_file: str
    overrides: dict
    run_dir: Path

    @property
    def train_dir(self) -> Path:
        """Where this notebook's own training writes (run_dir/train)."""
        return self.run_dir / "train"

    def path(self, name: str) -> Path:
        return self.run_dir / name


def setup(params_file: str, overrides: dict | None, run_dir: str) -> NotebookRun:
    """chdir to the project root, load and validate the config, make sure its data exists (building the
    smoke corpus or fetching the official shards when missing), create the report folder."""
    from pgolf_core.data.prepare import ensure_data

    if (ROOT / "pyproject.toml").is_file():
        os.chdir(ROOT)
    cfg = load_config(params_file, overrides or {})
    ensure_data(cfg.data, progress=False)
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    return NotebookRun(cfg, params_file, dict(overrides or {}), out)


def train_overrides(nb: NotebookRun) -> dict:
    """The run's overrides plus the training folder inside the report folder."""
    return {**nb.overrides, "train.run_dir": nb.run_dir.as_posix(), "train.run_id": "train"}


def train_here(nb: NotebookRun, nproc: int = 1) -> Path:
    """Train per the notebook's config into run_dir/train: in the kernel for one process, else torchrun.

    A second execution resumes from the run's last checkpoint (train.resume), so re-running a finished
    notebook costs only the final evaluation.
    """
    over = train_overrides(nb)
    if nproc <= 1:
        from pgolf_core.train import train

        train(load_config(nb.params_file, over), final_stages=False)  # run_pipeline evaluates them
    else:
        from pgolf_core.launch import run_module

        sets = [
            a
            for k, v in over.items()
            for a in ("--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
        ]
        args = [nb.params_file, *sets, "--no-final-stages"]  # run_pipeline evaluates them
        run_module("pgolf_core.train", args, nproc=nproc, log_file=nb.path("launch.log"))
    return nb.train_dir


def source_train_dir(nb: NotebookRun, source_run: str, nproc: int = 1) -> Path:
    """The training run a downstream notebook analyses: ``source_run``/train when given (its model must
    be the one this config describes), else a run trained here with this notebook's config."""
    if not source_run:
        print(f"no source_run given: training {nb.params_file} here first")
        return train_here(nb, nproc)
    train_dir = Path(source_run) / "train"
    cfg_path = train_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: source_run {source_run} has no finished training run")
    src = load_config(cfg_path)
    if not same_run_data(src, nb.cfg):
        raise ValueError(
            f"{nb.params_file}: its model/data sections differ from the source run's ({cfg_path}); "
            "downstream params files should `extends:` the training params"
        )
    return train_dir


def same_run_data(a: RunConfig, b: RunConfig) -> bool:
    """Same model and same dataset (how many validation tokens are scored may differ)."""
    cut = {"val_max_tokens": 0}
    return a.model == b.model and a.data.model_copy(update=cut) == b.data.model_copy(update=cut)


def run_pipeline(nb: NotebookRun, train_dir: Path, stages: list | None = None, nproc: int = 1):
    """Post-training stages into run_dir/stages.json; torchrun over nproc processes when above 1."""
    if nproc <= 1:
        from pgolf_core.pipeline import run_stages

        return run_stages(nb.cfg, train_dir, nb.run_dir, stages=stages or None)
    from pgolf_core.launch import run_module

    args = [train_dir.as_posix(), "--out", nb.run_dir.as_posix()] + (["--stages", *stages] if stages else [])
    run_module("pgolf_core.pipeline", args, nproc=nproc, log_file=nb.path("launch.log"))
    return None


def stage_table(records: list[StageRecord]):
    """An HTML table of stage records with every verdict beside its number (IPython displays it)."""
    from IPython.display import HTML

    color = {"pass": "#176c2a", "FAIL": "#b00020", "n/a": "#888"}
    rows = []
    for r in records:
        verdicts = " ".join(
            f'<span title="{html.escape(v.reason)}" style="color:{color[v.label]}">'
            f"{html.escape(v.check)}:{v.label}</span>"
            for v in r.verdicts
        )
        status = "compliant" if r.compliant else '<b style="color:#b00020">NON-COMPLIANT</b>'
        rows.append(
            f"<tr><td style='text-align:left'>{html.escape(r.stage)}</td>"
            f"<td>{r.val_bpb:.5f}</td><td>{r.val_loss:.5f}</td>"
            f"<td>{r.tokens:,}</td><td>{r.bytes:,}</td><td>{r.seconds:.1f}</td>"
            f"<td>{'' if r.artifact_bytes is None else f'{r.artifact_bytes:,}'}</td><td>{status}</td>"
            f"<td style='text-align:left;font-size:11px'>{verdicts}</td></tr>"
        )
    head = (
        "<tr><th>stage</th><th>val bpb</th><th>val loss</th><th>tokens</th><th>bytes</th><th>seconds</th>"
        "<th>artifact bytes</th><th>compliance</th><th>verdicts (hover for the reason)</th></tr>"
    )
    return HTML(f"<table>{head}{''.join(rows)}</table>")


def verdict_lines(records: list[StageRecord]) -> str:
    """Every verdict as text (kept in the report even where hover titles are not visible)."""
    out = []
    for r in records:
        out.append(f"{r.stage}: " + ("compliant" if r.compliant else "NON-COMPLIANT"))
        out += [f"    {v.label:4} {v.check:8} {v.reason}" for v in r.verdicts]
    return "\n".join(out)


def summarize_run(nb: NotebookRun, train_dir: Path) -> dict:
    """Training and evaluation seconds, artifact bytes and attention backend, from the run's files."""
    run = json.loads((train_dir / "run.json").read_text()) if (train_dir / "run.json").is_file() else {}
    stages_file = nb.path("stages.json")
    data = json.loads(stages_file.read_text()) if stages_file.is_file() else {"stages": []}
    stages = data.get("stages", [])
    return {
        "attn_backend": run.get("attn_backend"),
        "train_seconds": None
        if "train_seconds" not in run
        else run["train_seconds"] + run.get("calib_seconds", 0.0),
        "eval_seconds": stages[-1]["seconds"] if stages else None,
        "artifact_bytes": (data.get("artifact") or {}).get("total_bytes"),
        "train_dir": train_dir.as_posix(),
        "steps": run.get("steps"),
        "world_size": run.get("world_size"),
    }


def seed_record(run, final: StageRecord) -> StageRecord:
    """A seed's submitted score as a record named after the seed (verdicts kept)."""
    from dataclasses import replace

    return replace(final, stage=f"{final.stage} seed {run.seed}")


def write_outputs(nb: NotebookRun, **values: Any) -> Path:
    """run_dir/outputs.json: what the driver copies into the manifest and the index shows."""
    return atomic_write_json(nb.path("outputs.json"), values)


def config_text(cfg: RunConfig) -> str:
    return to_yaml(cfg)
