"""Sections ``setup`` (the ``gpu`` extra's attention kernels, each pip install bounded in time) and
``env`` (GPU, driver, CUDA, torch, which attention backends import, what ``attn_backend: auto`` picks).

Each requirement of pyproject's ``gpu`` extra is installed on its own, so one that fails (no wheel for
this torch / CUDA, no network) neither blocks the others nor the check: its log is kept and the report
says what is missing. The installed torch is pinned by a constraints file: a kernel package must never
replace the machine's CUDA build of torch. flash-attn publishes only a source package whose setup
downloads a prebuilt wheel matching torch / CUDA / Python and compiles for an hour when none matches, so
its install is killed at PIP_TIMEOUT_S; flash-attn-4 is pure Python (CuTe DSL) and installed from
wheels only.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.devcheck.runner import REPO, Check, Context

PIP_TIMEOUT_S = 60.0
PIP_OPTIONS = {  # per distribution: what keeps pip from building for long
    "flash-attn": ["--no-build-isolation"],  # its setup imports the installed torch
    "flash-attn-4": ["--only-binary", ":all:"],
}
SETUP_ENV = "PGOLF_DEVICE_SETUP"  # "1": bench/device_check.py --setup was given (workers inherit it)
WHEELS = REPO / ".whl"  # make device-wheels (bench/device_wheels.py)
PACKAGES = ("torch", "triton", "flash-attn", "flash-attn-4", "flash_attn_3", "nvidia-cutlass-dsl")


def gpu_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The requirement strings of ``[project.optional-dependencies] gpu``."""
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib

        return list(tomllib.loads(text)["project"]["optional-dependencies"]["gpu"])
    except ModuleNotFoundError:  # Python 3.10: the one list, read by hand
        m = re.search(r"^gpu\s*=\s*\[(.*?)\]", text, flags=re.DOTALL | re.MULTILINE)
        return re.findall(r'"([^"]+)"', m.group(1)) if m else []


def dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0]


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def pip_command(requirement: str, constraints: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "0",
        "--timeout",
        "15",
        "-c",
        str(constraints),
        *PIP_OPTIONS.get(dist_name(requirement), []),
        *(["--find-links", str(WHEELS)] if WHEELS.is_dir() else []),  # wheels carried to an offline machine
        requirement,
    ]


def run_bounded(
    cmd: list[str], timeout: float, log: Path, env: dict | None = None
) -> tuple[int | None, float]:
    """(exit status, or None when killed at ``timeout``; seconds). Output to ``log``; on timeout the whole
    process group goes (pip's build children too)."""
    t0 = time.perf_counter()
    with log.open("wb") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        try:
            return proc.wait(timeout=max(timeout, 1.0)), time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, time.perf_counter() - t0


def section_setup(ctx: Context) -> None:
    import torch

    if os.environ.get(SETUP_ENV) != "1":
        ctx.note("not run: pass --setup (make device-check does) to install the gpu extra")
        return
    constraints = ctx.out_dir / "pip_constraints.txt"
    constraints.write_text(f"torch=={torch.__version__}\n")
    table = ctx.table(
        "pip install, one requirement of the gpu extra at a time", ["requirement", "result", "seconds", "log"]
    )
    env = {**os.environ, "MAX_JOBS": "4"}  # if flash-attn does start compiling, not on every core
    # wheel-only installs first: they are quick, and a flash-attn build must not leave them no time
    reqs = sorted(gpu_requirements(), key=lambda r: "--only-binary" not in PIP_OPTIONS.get(dist_name(r), []))
    for req in reqs:
        name = dist_name(req)
        have = installed_version(name)
        if have:
            ctx.row(table, [req, f"already installed: {have}", 0.0, ""])
            continue
        log = ctx.out_dir / f"pip_{name}.log"
        rc, seconds = run_bounded(pip_command(req, constraints), min(PIP_TIMEOUT_S, ctx.left() - 5), log, env)
        got = installed_version(name)
        result = (
            f"installed {got}"
            if got
            else ("killed at the time limit" if rc is None else f"failed (exit {rc})")
        )
        ctx.row(table, [req, result, seconds, log.name])
        if not got:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
            ctx.note(f"{req} not installed: " + " / ".join(tail))
    ctx.data("torch_after_setup", installed_version("torch"))


def nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"nvidia-smi": "not found"}
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as e:
        return {"nvidia-smi": f"{type(e).__name__}: {e}"}
    name, driver, memory = (
        ([p.strip() for p in out.splitlines()[0].split(",")] + ["", "", ""])[:3] if out else ("",) * 3
    )
    return {"driver": driver, "gpu (nvidia-smi)": name, "memory (nvidia-smi)": memory}


def section_env(ctx: Context) -> None:
    import torch

    from bench.devcheck.attention import fa4_unavailable
    from bench.devcheck.models import RECORD_PARAMS, build, device, load
    from pgolf_core.model import select_attention_backend

    device = device()
    props = torch.cuda.get_device_properties(device)
    facts = {
        "gpu": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory GiB": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        **nvidia_smi(),
        "cuda (torch)": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    facts.update({f"{p} version": installed_version(p) or "not installed" for p in PACKAGES})
    t = ctx.table("environment", ["item", "value"])
    for k, v in facts.items():
        ctx.row(t, [k, v])
    ctx.data("environment", facts)
    bt = ctx.table("attention backends", ["backend", "available", "why not"])
    for kind in ("fa3", "fa2"):
        try:
            select_attention_backend(kind, device)
            ctx.row(bt, [kind, True, ""])
        except (RuntimeError, ValueError) as e:
            ctx.row(bt, [kind, False, str(e)])
    why = fa4_unavailable(device)
    ctx.row(bt, ["fa4 (flash_attn.cute, not a pgolf backend)", why is None, why or ""])
    ctx.row(bt, ["sdpa", True, ""])
    auto = select_attention_backend("auto", device)
    model_pick = build(load(RECORD_PARAMS["baseline"]), device).attn_backend
    ctx.data("auto_backend", auto)
    ctx.add(
        Check(
            "model.attn_backend auto: select_attention_backend and build_model agree",
            None,
            None,
            auto == model_pick,
            f"auto picks {auto}; a model built here uses {model_pick}",
        )
    )
    if props.major == 9 and auto != "fa3":
        ctx.note(
            f"Hopper GPU but auto picks {auto}: the records ran FA3 (flash_attn_interface); "
            "see the setup section"
        )
