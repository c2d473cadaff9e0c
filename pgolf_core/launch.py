"""Starting pgolf processes: a module under torchrun from a notebook (or anywhere), streaming its output
live, and the entry of each training process (``python -m pgolf_core.train``: arguments, signals,
one-line errors, exit codes).

The robust way to run distributed torch from a notebook is torchrun as a subprocess with a real module
as the entry point (the same command reproduces it outside the notebook); never a bare ``!torchrun``
(papermill treats its failure as success) and never mp.spawn of notebook functions. The kernel itself
never touches CUDA, so GPU 0 holds no memory for it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path


def torchrun_command(module: str, args: list[str], nproc: int) -> list[str]:
    # -u: unbuffered, so lines stream live (pgolf's own loggers also flush every line).
    return [
        sys.executable,
        "-u",
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--local-ranks-filter=0",
        "--no-python",
        sys.executable,
        "-u",
        "-m",
        module,
        *args,
    ]


def run_module(
    module: str,
    args: list[str],
    *,
    nproc: int = 1,
    log_file: str | os.PathLike | None = None,
    echo: bool = True,
) -> int:
    """Run ``python -m module args`` (torchrun when nproc > 1), echo and tee its lines; raise on failure.

    A nonzero exit raises CalledProcessError so that papermill marks the cell failed. Interrupting the
    cell terminates the whole process group.
    """
    cmd = torchrun_command(module, args, nproc) if nproc > 1 else [sys.executable, "-u", "-m", module, *args]
    log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115 - closed below
    if log:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        log.write("$ " + " ".join(cmd) + "\n")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if log:
                log.write(line)
                log.flush()
            if echo:
                print(line, end="", flush=True)
        rc = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, 15)
        proc.wait()
        raise
    finally:
        if log:
            log.close()
    if rc != 0:
        raise subprocess.CalledProcessError(rc, cmd)
    return rc


class Interrupted(KeyboardInterrupt):
    """SIGTERM (torchrun stopping its workers, run_module's interrupt), handled as Ctrl-C: the run
    records "interrupted" in run.json."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _train_process(args: argparse.Namespace) -> int:
    from pgolf_core.config import ConfigError, load_config
    from pgolf_core.data.shards import ShardError
    from pgolf_core.data.tokenizer import TokenizerError
    from pgolf_core.dist import dist_info_from_env
    from pgolf_core.runfolder import RunError, one_line
    from pgolf_core.train import TrainingDiverged, train

    # What a user can fix from the message alone: one line on stderr, no traceback (--debug shows it).
    user_errors = (RunError, ConfigError, ShardError, TokenizerError, FileNotFoundError)
    dist = dist_info_from_env()
    where = f" (rank {dist.rank})" if dist.distributed else ""
    try:
        cfg = load_config(args.params, args.set)  # validated before anything heavy happens
        result = train(cfg, dist, final_stages=not args.no_final_stages)
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        print(
            f"pgolf train: interrupted{where} by {e or 'Ctrl-C'}; the same command resumes from the "
            "last checkpoint (train.resume)",
            file=sys.stderr,
        )
        return 130
    except user_errors as e:
        if args.debug:
            raise
        print(f"pgolf train: error{where}: {one_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, TrainingDiverged) else 2
    if dist.is_main:
        print(json.dumps({"event": "done", **asdict(result)}))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """``python -m pgolf_core.train PARAMS [--set K=V ...]``: exit 0 completed, 1 diverged, 2 a bad input
    or a failed run (one line on stderr), 130 interrupted."""
    from torch.distributed.elastic.multiprocessing.errors import record

    ap = argparse.ArgumentParser(prog="python -m pgolf_core.train", description="Train a pgolf model.")
    ap.add_argument("params", help="a YAML file under params/")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable"
    )
    ap.add_argument(
        "--no-final-stages",
        action="store_true",
        help="skip the final pre / ema evaluation (the caller runs the pipeline's stages next)",
    )
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        # record: an unexpected exception goes to torchrun's error file; a user error is one line here
        return record(_train_process)(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
