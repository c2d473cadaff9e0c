"""The run folder ``<train.run_dir>/<run_id>/`` and the files a training run writes there (rank 0 only).

Every file is written atomically (pgolf_core.atomic) except the two append-only logs:
    config.yaml      the fully resolved config
    run.json         manifest: status, world size, device, attention backend, versions, routing, timings
    metrics.jsonl    one JSON object per train log / validation / final stage
    train.log        the human log
    result.json      the final stages with val loss / bpb
    checkpoints/     written through pgolf_core.checkpoint
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

import pgolf_core
from pgolf_core.atomic import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from pgolf_core.evaluate import EvalResult


@dataclass
class RunResult:
    """What ``train()`` returns; result.json holds the same fields."""

    run_id: str
    run_dir: str
    status: str
    steps: int
    train_seconds: float
    stopped_early: bool
    params: int
    attn_backend: str
    stages: dict[str, dict] = field(default_factory=dict)


def environment(device: torch.device) -> dict:
    """Versions and the device, for the manifest."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {
        "pgolf": pgolf_core.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
    }


class RunFiles:
    """The run folder; only rank 0 writes."""

    def __init__(self, root: Path, is_main: bool):
        self.root, self.is_main = root, is_main
        self.ckpt_dir = root / "checkpoints"
        self.run_id, self.facts = root.name, {}
        if is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg, file=sys.stdout)
            sys.stdout.flush()  # stream live through pipes (notebook launcher, torchrun)
            with open(self.root / "train.log", "a", encoding="utf-8") as f:
                f.write(msg + "\n")

    def metric(self, record: dict) -> None:
        if self.is_main:
            with open(self.root / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # The three kinds of metrics record: one line in the log and one JSON object in metrics.jsonl each.
    def val_event(self, step: int, iterations: int, res: EvalResult, train_time: float) -> None:
        self.log(
            f"step:{step}/{iterations} val_loss:{res.loss:.4f} val_bpb:{res.bpb:.4f} "
            f"train_time:{train_time:.1f}s eval_time:{res.seconds:.1f}s"
        )
        self.metric(
            {
                "event": "val",
                "step": step,
                "val_loss": res.loss,
                "val_bpb": res.bpb,
                "train_time_s": train_time,
                "eval_s": res.seconds,
            }
        )

    def train_event(
        self, step: int, iterations: int, loss: float, mult: float, tokens: int, elapsed: float
    ) -> None:
        self.log(
            f"step:{step}/{iterations} train_loss:{loss:.4f} lr_mult:{mult:.4f} "
            f"train_time:{elapsed:.1f}s step_avg:{1000 * elapsed / step:.1f}ms"
        )
        self.metric(
            {
                "event": "train",
                "step": step,
                "train_loss": loss,
                "lr_mult": mult,
                "tokens": tokens,
                "train_time_s": elapsed,
            }
        )

    def stage_event(self, name: str, step: int, res: EvalResult) -> None:
        self.log(
            f"stage {name}: val_loss:{res.loss:.6f} val_bpb:{res.bpb:.6f} "
            f"({res.tokens:,} tokens, {res.bytes:,} bytes, {res.seconds:.1f}s)"
        )
        self.metric({"event": "stage", "stage": name, "step": step, **res.as_dict()})

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop records from steps the resumed run will redo."""
        path = self.root / "metrics.jsonl"
        if self.is_main and path.exists():
            lines = path.read_text().splitlines()
            keep = [ln for ln in lines if ln and json.loads(ln).get("step", 0) <= after_step]
            atomic_write_text(path, "".join(k + "\n" for k in keep))

    def reset(self) -> None:
        """A fresh (not resumed) run owns its folder: drop logs and results of an earlier run there."""
        if self.is_main:
            for name in ("metrics.jsonl", "train.log", "result.json"):
                (self.root / name).unlink(missing_ok=True)

    def write_config(self, text: str) -> None:
        if self.is_main:
            atomic_write_text(self.root / "config.yaml", text)

    def json(self, name: str, obj: dict) -> None:
        if self.is_main:
            atomic_write_json(self.root / name, obj)

    def result(self, result: RunResult) -> None:
        self.json("result.json", asdict(result))

    def describe(self, run_id: str, **facts) -> None:
        """The manifest's fixed part, written with every status."""
        self.run_id, self.facts = run_id, facts

    def status(self, status: str, **extra) -> None:
        """run.json: the run's status ("running", "completed", "diverged", ...) with the fixed facts."""
        self.json("run.json", {"run_id": self.run_id, "status": status, **self.facts, **extra})
