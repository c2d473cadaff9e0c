"""The supervised worker: the device check's sections in a child process with hard time limits.

``supervise`` starts ``python -m bench.devcheck.supervisor SPEC``, which runs the pending sections with
``runner.run_one`` and appends their events (start, partial results, end) to a JSON-lines file. The
supervisor kills the worker's whole process group when a section outlives its budget (plus a grace) or
the global deadline passes, records that section as a timeout with what it had measured, and starts a
fresh worker for the rest. A worker also exits after any section that raised, since an illegal memory
access leaves the CUDA context unusable for whatever runs after it in that process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench.devcheck.runner import REPO, Section, SectionResult, run_one

GRACE_S = 15.0  # the supervisor kills a section this long after its budget ran out
RESTART_EXIT = 3  # a worker's exit status after a section that raised: start a fresh process


class _EventReader:
    """New complete JSON lines of a file another process appends to."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def _kill_group(proc: subprocess.Popen) -> None:
    """End the worker and everything it started (compile workers, pip, nvcc): its own process group."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _ended(
    name: str, title: str, budget: float, status: str, reason: str, partial: dict | None
) -> SectionResult:
    res = SectionResult.from_dict(partial) if partial else SectionResult(name, title, budget)
    res.status, res.reason = status, reason
    return res


def supervise(
    sections: list[Section],
    *,
    deadline: float,
    out_dir: Path,
    work_dir: Path,
    python: str = sys.executable,
    grace_s: float = GRACE_S,
    poll_s: float = 0.25,
    log: Callable[[str], None] = print,
) -> list[SectionResult]:
    """Run ``sections`` in worker processes with hard per-section time limits; one result per section."""
    work_dir.mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in sections}
    results: dict[str, SectionResult] = {}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    attempt = 0
    while pending := [s for s in sections if s.name not in results]:
        attempt += 1
        spec, events, logfile = (
            work_dir / f"worker{attempt}{ext}" for ext in (".json", ".events.jsonl", ".log")
        )
        spec.write_text(
            json.dumps(
                {
                    "sections": [asdict(s) for s in pending],
                    "deadline": deadline,
                    "out_dir": str(out_dir),
                    "events": str(events),
                }
            )
        )
        with logfile.open("wb") as logf:
            proc = subprocess.Popen(
                [python, "-m", "bench.devcheck.supervisor", str(spec)],
                cwd=REPO,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            reader, progressed = _EventReader(events), False
            current: tuple[str, float, float] | None = None  # (name, started, budget)
            partial: dict[str, dict] = {}

            def handle(ev: dict, partial: dict = partial) -> None:
                nonlocal current
                if ev["event"] == "start":
                    current = (ev["name"], time.time(), float(ev["budget_s"]))
                    log(f"[{ev['name']}] started, budget {ev['budget_s']:.0f} s")
                elif ev["event"] == "partial":
                    partial[ev["result"]["name"]] = ev["result"]
                elif ev["event"] == "end":
                    r = SectionResult.from_dict(ev["result"])
                    results[r.name] = r
                    current = None
                    log(
                        f"[{r.name}] {r.status}"
                        + (f": {r.reason}" if r.reason else "")
                        + f" ({r.seconds:.1f} s)"
                    )

            while True:
                for ev in reader.new():
                    progressed = True
                    handle(ev)
                rc = proc.poll()
                if rc is not None:
                    for ev in reader.new():
                        progressed = True
                        handle(ev)
                    if current is not None:
                        name = current[0]
                        why = (
                            f"the worker process died (exit status {rc}); its last output:\n{_tail(logfile)}"
                        )
                        results[name] = _ended(
                            name,
                            by_name[name].title,
                            by_name[name].budget_s,
                            "failed",
                            why,
                            partial.get(name),
                        )
                        results[name].errors.append(why)
                    break
                now = time.time()
                over = current is not None and now > current[1] + current[2] + grace_s
                if over or now > deadline + grace_s:
                    _kill_group(proc)
                    if current is not None:
                        name, started, budget = current
                        why = f"killed after {now - started:.0f} s (budget {budget:.0f} s + {grace_s:.0f} s)"
                        results[name] = _ended(
                            name,
                            by_name[name].title,
                            by_name[name].budget_s,
                            "timeout",
                            why,
                            partial.get(name),
                        )
                        log(f"[{name}] timeout: {why}")
                    break
                time.sleep(poll_s)
        if not progressed:
            why = f"the worker process did not start (exit status {proc.returncode}):\n{_tail(logfile)}"
            for s in pending:
                results[s.name] = _ended(s.name, s.title, s.budget_s, "failed", why, None)
                results[s.name].errors.append(why)
    return [results[s.name] for s in sections]


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken torch install means no CUDA here
        return False


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    sections = [Section(**d) for d in spec["sections"]]
    cuda = any(s.needs_cuda for s in sections) and cuda_available()
    events = Path(spec["events"])

    def sink(event: dict) -> None:
        with events.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event, default=str) + "\n")

    for s in sections:
        res = run_one(s, deadline=spec["deadline"], out_dir=Path(spec["out_dir"]), cuda=cuda, sink=sink)
        if res.errors:
            return RESTART_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
