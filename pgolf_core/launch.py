"""Launch a pgolf module under torchrun from a notebook (or anywhere), streaming its output live.

notebooks.md 5: the robust way to run distributed torch from a notebook is torchrun as a subprocess
with a real module as the entry point (the same command reproduces it outside the notebook); never a
bare ``!torchrun`` (papermill treats its failure as success) and never mp.spawn of notebook functions.
The kernel itself never touches CUDA, so GPU 0 holds no memory for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun_command(module: str, args: list[str], nproc: int) -> list[str]:
    # -u: unbuffered, so lines stream live (pgolf's own loggers also flush every line).
    return [sys.executable, "-u", "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--local-ranks-filter=0", "--no-python", sys.executable, "-u", "-m", module, *args]


def run_module(module: str, args: list[str], *, nproc: int = 1, log_file: str | os.PathLike | None = None,
               echo: bool = True) -> int:
    """Run ``python -m module args`` (torchrun when nproc > 1), echo and tee its lines; raise on failure.

    A nonzero exit raises CalledProcessError so that papermill marks the cell failed. Interrupting the
    cell terminates the whole process group.
    """
    cmd = torchrun_command(module, args, nproc) if nproc > 1 else [sys.executable, "-u", "-m", module, *args]
    log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115 - closed below
    if log:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        log.write("$ " + " ".join(cmd) + "\n")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
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
