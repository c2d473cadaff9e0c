"""The run folder ``<train.run_dir>/<run_id>/`` and the files a training run writes there (rank 0 only).

Every file is written atomically (pgolf_core.atomic) except the two append-only logs:
    config.yaml      the fully resolved config
    run.json         manifest: status, world size, device, attention backend, versions, routing, timings
    metrics.jsonl    one JSON object per train log / validation / final stage
    train.log        the human log
    result.json      the final stages with val loss / bpb
    checkpoints/     written through pgolf_core.checkpoint
    run.lock         while a run holds the folder: its pid and host (see RunLock)

The run id is a plain folder name, so a run never writes outside ``train.run_dir``. A run that ends by
an exception records it in run.json (``failed``, ``diverged``, ``interrupted``, with the reason); only a
killed process (SIGKILL, power loss) leaves ``running`` behind, and its stale lock tells the next start.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

import pgolf_core
from pgolf_core.atomic import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from pgolf_core.eval import EvalResult


class RunError(RuntimeError):
    """A training run cannot start or go on. The message is one line naming the file, key or value."""

    status = "failed"  # what run.json records when it ends a run


class TrainingDiverged(RunError):
    """The training loss, the weights or the final result became NaN or infinite; the last finite
    checkpoint is kept."""

    status = "diverged"


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


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """A run id names one folder inside ``train.run_dir``: no separators, no ``..``, not absolute."""
    if not _PLAIN_NAME.fullmatch(run_id):
        raise RunError(
            f"train.run_id={run_id!r}: expected a plain folder name (letters, digits, '.', '_', '-'; "
            "starting with a letter or digit; no '/', '..' or absolute path)"
        )
    return run_id


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message; with its type unless it is pgolf's own RunError."""
    lines = str(exc).strip().splitlines()
    msg = lines[0] if lines else ""
    if isinstance(exc, RunError):
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _who(owner: dict) -> str:
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started', '?')}"


class RunLock:
    """Exclusive ownership of a run folder: ``run.lock`` names the owner (pid, host, start time) and the
    owner holds an flock on it. The kernel drops the flock when the owner dies, however it dies, so a
    lock file whose flock is free is stale and the next run takes it over."""

    def __init__(self, root: Path):
        self.path = root / "run.lock"
        self._fd: int | None = None

    def _owner(self, fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> str | None:
        """Take the lock; returns a note when it took over a stale one. Raises RunError when held."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                raise RunError(
                    f"{self.path.parent}: another training run ({_who(owner)}) is writing this folder; "
                    "wait for it to end or use another train.run_id"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file between our open and flock: start over
                os.close(fd)
                continue
            stale = self._owner(fd)
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self._fd = fd
            if not stale:
                return None
            return (
                f"took over the stale lock {self.path.name} of {_who(stale)} (it ended without releasing it)"
            )

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before closing: a waiting opener then sees a new file
        os.close(self._fd)
        self._fd = None


# atomic_write's temporary names: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")
_ROOT_FILES = {"config.yaml", "run.json", "result.json", "metrics.jsonl"}
_CHECKPOINT_FILES = {"last.pt", "final_raw.pt", "final_ema.pt", "hessians.pt"}


class RunFiles:
    """The run folder; only rank 0 writes (and locks)."""

    def __init__(self, run_dir: Path, run_id: str, is_main: bool):
        self.root, self.is_main = Path(run_dir) / check_run_id(run_id), is_main
        self.ckpt_dir = self.root / "checkpoints"
        self.run_id, self.facts = run_id, {}
        self._lock = RunLock(self.root)
        if is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def take(self, broadcast: Callable[[str], str]) -> tuple[str | None, list[str]]:
        """Rank 0 locks the folder and removes orphan temporary files; ``broadcast`` (rank 0's string on
        every rank) tells the other ranks whether the folder was refused. Returns (lock note, removed)."""
        refused, note = "", None
        if self.is_main:
            try:
                note = self._lock.acquire()
            except RunError as e:
                refused = str(e)
        refused = broadcast(refused)
        if refused:
            raise RunError(refused)
        return note, self.remove_orphan_temps()

    def unlock(self) -> None:
        self._lock.release()

    def progress(self, total: int, initial: int, enabled: bool) -> tqdm:
        """The training progress bar (rank 0, when train.progress): plain ASCII, on stdout with the log."""
        return tqdm(
            total=total,
            initial=initial,
            desc="train",
            unit="step",
            mininterval=10,
            disable=not (self.is_main and enabled),
            file=sys.stdout,
            ascii=True,
        )

    def remove_orphan_temps(self) -> list[str]:
        """Temporary files of writes that a killed run left behind (only pgolf's own names, only here).

        Call with the lock held: then no writer of this folder is alive."""
        removed = []
        if not self.is_main:
            return removed
        for folder, targets in ((self.root, _ROOT_FILES), (self.ckpt_dir, _CHECKPOINT_FILES)):
            for path in sorted(folder.glob(".*.tmp")):
                m = _TEMP_NAME.fullmatch(path.name)
                if m and m["target"] in targets and path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(str(path.relative_to(self.root)))
        return removed

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

    def ended(self, exc: BaseException, started: bool, **extra) -> None:
        """Record how a run ended by ``exc``: interrupted (Ctrl-C, SIGTERM), diverged or failed.

        A start refused before the run began (``started`` False) leaves an earlier run's record alone,
        unless that record still says "running": its process is gone (this one holds the lock)."""
        if not self.is_main:
            return
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else getattr(exc, "status", "failed")
        reason = one_line(exc)
        path = self.root / "run.json"
        if not started:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                return
            if old.get("status") != "running":
                return
            self.facts = {k: v for k, v in old.items() if k not in ("run_id", "status", "error")}
        try:  # best effort: on a full disk these writes fail too, and the original error matters more
            self.log(f"{status.upper()}: {reason}")
            self.status(status, error=reason, **extra)
        except OSError as e:
            print(f"pgolf: could not record status {status!r} in {path}: {e}", file=sys.stderr)
