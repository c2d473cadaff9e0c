"""Checkpoint files: written atomically, read back with ``weights_only=True`` (tensors and plain values only).

A training run keeps ``checkpoints/last.pt`` (the full training state, for resume: ``training_state``
and ``restore_training_state``), ``final_raw.pt`` and
``final_ema.pt`` (weights) and ``hessians.pt`` (GPTQ calibration); the pipeline and the studies read them.
A checkpoint holds finite weights only (the trainer checks before it writes), so "the last checkpoint"
of a diverged run is one it can go back to. Failures are one-line CheckpointErrors naming the file.
"""

from __future__ import annotations

import errno
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from pgolf_core.atomic import atomic_write
from pgolf_core.config import to_yaml
from pgolf_core.runfolder import RunError

if TYPE_CHECKING:
    from pgolf_core.train import Trainer


class CheckpointError(RunError):
    """A checkpoint cannot be written or read."""


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save reports a failed write (a full disk) as a RuntimeError
    about its zip writer, with the OSError only in the exception's context."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def save_checkpoint(path: Path, state: dict) -> None:
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        err = _os_error(e)
        if err is None:
            raise
        code = f" ({errno.errorcode[err.errno]})" if err.errno in errno.errorcode else ""
        raise CheckpointError(
            f"{path}: could not write the checkpoint: {err.strerror or err}{code}; "
            f"an earlier {Path(path).name}, if any, is unchanged"
        ) from None


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        # torch's own message suggests weights_only=False, which would run the file's code: not repeated.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: holds a pickled Python object ({found[1]}), not only tensors and plain values; "
                "pgolf reads checkpoints as weights only and never runs code from a file"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, or not written by torch.save)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = line.split(". ")[0]  # torch's first sentence
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {first})") from None


def weights_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Every floating tensor free of NaN and inf (one device sync for all of them)."""
    checks = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _flat(tree: object, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_diff(saved: str, current: str) -> list[str]:
    """The keys where two resolved configs (YAML text) differ, as "key: saved -> current"."""
    a, b = _flat(yaml.safe_load(saved) or {}), _flat(yaml.safe_load(current) or {})
    missing = "<absent>"

    def show(v: object) -> str:
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."

    return [
        f"{k}: {show(a.get(k, missing))} -> {show(b.get(k, missing))}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, missing) != b.get(k, missing)
    ]


def check_same_config(path: Path, saved: str, current: str) -> None:
    """Resume only into the config that wrote the checkpoint; the error names the keys that differ."""
    diff = config_diff(saved, current)
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise RunError(
            f"{path} was written by a different config ({shown}); "
            "use a new train.run_id or set train.resume false"
        )


def training_state(t: Trainer) -> dict:
    """Everything a resumed run needs to continue bit for bit: counters, switches, weights, optimizer,
    EMA, data position, and the config that wrote it."""
    return {
        "step": t.step,
        "train_time": t.train_time,
        "stop_after": t.stop_after,
        **t.schedule.state_dict(),  # loops, QAT, sequence stage, calibration reserve
        "model": t.model.state_dict(),
        "optim": t.opt.state_dict(),
        "ema": t.ema.state_dict() if t.ema else None,
        "loader": t.loader.state_dict(),
        "config": to_yaml(t.cfg),
    }


def restore_training_state(t: Trainer, state: dict, path: Path) -> None:
    """Load ``training_state`` (read from ``path``) back into a trainer built from the same config."""
    check_same_config(path, state["config"], to_yaml(t.cfg))
    t.model.load_state_dict(state["model"])
    t.opt.load_state_dict(state["optim"])
    if t.ema:
        t.ema.load_state_dict(state["ema"])
    t.loader.load_state_dict(state["loader"])
    t.schedule.load_state_dict(state)
    t.step, t.train_time, t.stop_after = state["step"], state["train_time"], state["stop_after"]
