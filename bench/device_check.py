"""The device check: every GPU question of pgolf in one command, at most 8 minutes on one H100 / H200.

    make device-check [OUT=DIR]                 # the gpu extra, then the check (default: reports/device/)
    python bench/device_check.py --out DIR      # the check alone (--setup: install the gpu extra first)
    python bench/device_check.py --plan         # what it would run, each section with its budget

Writes DIR/device_check.md and DIR/device_check.json (plus the sections' logs and the quick run's report
under DIR/pipeline/). Each section has its own time budget inside a global deadline; a section runs in a
supervised worker process that is killed when it outlives its budget, what does not fit is skipped,
and a failing section (or a failing step inside one) is recorded while the rest still run. Without CUDA
it prints the plan, writes both reports with every section "skipped: no CUDA" and exits 0, so any CPU
machine can dry-run it. Exit status 1 when a section failed or timed out on a GPU machine.
Whenever it has run on a GPU, copy its figures into bench/README.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

START = time.time()
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is not a package of the installed project
    sys.path.insert(0, str(REPO))

from bench.devcheck.report import plan_lines, summary_counts, write_reports  # noqa: E402
from bench.devcheck.runner import Section, run_sections  # noqa: E402
from bench.devcheck.setup_env import SETUP_ENV  # noqa: E402
from bench.devcheck.supervisor import cuda_available, supervise  # noqa: E402

DEADLINE_S = 470.0  # 8 minutes less 10 s for the reports and the last worker's exit

SECTIONS = [
    Section(
        "setup",
        "the gpu extra's attention kernels",
        35,
        "bench.devcheck.setup_env:section_setup",
        "pip install each requirement of pyproject's gpu extra (flash-attn 2.8, flash-attn-4) on its own, "
        "time-bounded, the installed torch pinned (only with --setup)",
    ),
    Section(
        "env",
        "environment",
        15,
        "bench.devcheck.setup_env:section_env",
        "GPU, driver, CUDA, torch, versions; which attention backends import; what attn_backend auto picks",
    ),
    Section(
        "attention",
        "attention kernels against SDPA fp32",
        40,
        "bench.devcheck.attention:section",
        "fa3 / fa2 / fa4 / sdpa in bf16 vs SDPA fp32 on the same inputs, forward and backward, causal and "
        "windowed; varlen entry points; SDPA fp32 vs a float64 reference",
    ),
    Section(
        "train_compile",
        "50 steps compiled bf16 vs eager fp32",
        45,
        "bench.devcheck.training:section_train",
        "the smoke model on a synthetic Markov stream, torch.compile + bf16 autocast vs eager fp32, same "
        "batches and init: the losses agree and both fall",
    ),
    Section(
        "artifact",
        "artifact round trip, GPU-trained, loaded on CPU",
        20,
        "bench.devcheck.training:section_artifact",
        "build_artifact of the compiled run's weights, artifact.bin read back with load_artifact on the CPU, "
        "strict load; logits vs the same weights on the GPU; quantization gap; byte cap",
    ),
    Section(
        "records",
        "record configs: compiled vs eager, step time, memory",
        165,
        "bench.devcheck.records:section",
        "baseline, #1855, #2135 (varlen), #1493 at one rank's micro-batch of an 8-GPU run: compiled bf16 "
        "loss and gradients vs eager fp32; ms/step, tokens/s, peak memory vs the records' logs; the one-GPU "
        "step",
    ),
    Section(
        "pipeline",
        "the whole pipeline on one GPU",
        115,
        "bench.devcheck.pipeline_run:section",
        "pgolf suite params/h100x1 --only quick (subprocess, timeout): 20 s of training on the smoke corpus, "
        "every post-training stage, the rendered report",
    ),
    Section(
        "eval",
        "evaluation throughput",
        30,
        "bench.devcheck.evalspeed:section",
        "sliding-window (#1493), chunked TTT (#1493) and phased TTT (#1855) scored tokens/s vs the records",
    ),
]


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return (
            out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
            if out.returncode == 0
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def header(argv: list[str], cuda: bool, deadline_s: float) -> dict:
    import torch

    return {
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python bench/device_check.py", *argv]),
        "git_commit": _git_commit(),
        "host": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none",
        "cuda_available": cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "deadline_s": deadline_s,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="bench/device_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/device", help="report folder (default: %(default)s)")
    ap.add_argument("--setup", action="store_true", help="install the gpu extra first (section setup)")
    ap.add_argument("--plan", action="store_true", help="print the plan and exit")
    ap.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections (debugging)")
    ap.add_argument(
        "--deadline", type=float, default=DEADLINE_S, help="global deadline in seconds (%(default)s)"
    )
    args = ap.parse_args(argv)
    names = [s.name for s in SECTIONS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; the sections are: {', '.join(names)}")
    sections = [s for s in SECTIONS if not args.only or s.name in args.only]
    print("\n".join(plan_lines(sections, args.deadline)), flush=True)
    if args.plan:
        return 0
    out = Path(args.out).resolve()  # the workers run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    cuda = cuda_available()
    deadline = START + args.deadline
    if not cuda:
        print("no CUDA on this machine: every section is skipped (the plan above is what a GPU machine runs)")
        results = run_sections(sections, deadline=deadline, out_dir=out, cuda=False)
    else:
        if args.setup:
            os.environ[SETUP_ENV] = "1"
        results = supervise(sections, deadline=deadline, out_dir=out, work_dir=out / "workers")
    md, js = write_reports(out, header(argv, cuda, args.deadline), sections, results)
    counts = summary_counts(results)
    print(
        f"device check: {', '.join(f'{n} {k}' for k, n in counts.items() if n)} "
        f"in {time.time() - START:.0f} s"
    )
    print(f"reports: {md} and {js}")
    return 1 if counts["failed"] or counts["timeout"] else 0


if __name__ == "__main__":
    sys.exit(main())
