"""Sections, time budgets, error capture, and the supervised worker process.

A ``Section`` is one function ``fn(ctx)`` with a time budget. ``run_sections`` runs sections in this
process: a section that does not fit before the global deadline is skipped, one that raises is recorded
as failed (with what it measured before the error) and the next one runs. ``supervise`` runs the same
sections in a worker process (``python -m bench.devcheck.runner SPEC``) and kills it when a section
outlives its budget, a hang or a crashed CUDA context costing that section only: the next worker, a
fresh process, goes on with the rest. A worker also exits after any section that raised, since an
illegal memory access leaves the CUDA context unusable for whatever runs after it in that process.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MIN_BUDGET_FRACTION = 0.5  # a section still starts, with what is left, when half its budget is left
GRACE_S = 15.0  # the supervisor kills a section this long after its budget ran out
RESTART_EXIT = 3  # a worker's exit status after a section that raised: start a fresh process


@dataclass
class Check:
    """One judged measurement: ``value`` against ``limit`` (``passed`` None: recorded, not judged)."""

    name: str
    value: float | None
    limit: float | None
    passed: bool | None
    detail: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    budget_s: float
    target: str  # "module:function", called with a Context
    what: str  # one line for the plan
    needs_cuda: bool = True


@dataclass
class SectionResult:
    name: str
    title: str
    budget_s: float
    status: str = "pending"  # ok | failed | timeout | skipped
    reason: str = ""
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SectionResult:
        d = dict(d)
        d["checks"] = [Check(**c) for c in d.get("checks", [])]
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        return cls(**d)

    def finish(self) -> None:
        """The status of a section that ran: failed on any error or failed check, else ok."""
        if self.status in ("skipped", "timeout"):
            return
        failed = [c.name for c in self.checks if c.passed is False]
        if self.errors or failed:
            self.status = "failed"
            parts = ([f"{len(self.errors)} error(s)"] if self.errors else []) + (
                [f"failed checks: {', '.join(failed)}"] if failed else []
            )
            self.reason = "; ".join(parts)
        else:
            self.status = "ok"


def describe_error(where: str, exc: BaseException, limit: int = 2000) -> str:
    """``where: Type: message`` (shortened) and the innermost frames of the traceback."""
    msg = str(exc)
    if len(msg) > limit:
        msg = msg[:limit] + f" ... ({len(msg) - limit} more characters)"
    frames = traceback.format_tb(exc.__traceback__)[-3:]
    return f"{where}: {type(exc).__name__}: {msg}\n" + "".join(frames).rstrip()


class Context:
    """What a section function is given: its budget, the output folder, and the result it fills in.

    Every addition is flushed to the supervisor, so a section killed at its budget keeps what it had.
    ``step`` runs one independently guarded part: skipped when it does not fit, its error recorded.
    """

    def __init__(
        self,
        result: SectionResult,
        budget_s: float,
        out_dir: Path,
        flush: Callable[[SectionResult], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.result, self.budget_s, self.out_dir = result, budget_s, Path(out_dir)
        self._flush, self._clock = flush, clock
        self._t0 = clock()

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def flush(self) -> None:
        if self._flush is not None:
            self._flush(self.result)

    def check(self, name: str, value: float | None, limit: float | None, passed: bool | None, detail: str = ""):
        return self.add(Check(name, value, limit, passed, detail))

    def add(self, check: Check) -> Check:
        self.result.checks.append(check)
        self.flush()
        return check

    def table(self, title: str, columns: list[str], note: str = "") -> Table:
        t = Table(title, list(columns), note=note)
        self.result.tables.append(t)
        return t

    def row(self, table: Table, row: list[Any]) -> None:
        table.rows.append(list(row))
        self.flush()

    def note(self, text: str) -> None:
        self.result.notes.append(text)
        self.flush()

    def data(self, key: str, value: Any) -> None:
        self.result.data[key] = value
        self.flush()

    def error(self, where: str, exc: BaseException) -> None:
        self.result.errors.append(describe_error(where, exc))
        self.flush()

    def step(self, name: str, fn: Callable, *args, need_s: float = 0.0, **kwargs):
        """``fn(*args, **kwargs)``, or None when it raised (recorded) or needs more than is left."""
        if self.left() < need_s:
            self.note(f"skipped {name}: needs about {need_s:.0f} s, {max(self.left(), 0):.0f} s left")
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - one failing step is recorded, the rest still run
            self.error(name, e)
            return None


def resolve(target: str) -> Callable[[Context], Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def effective_budget(section: Section, now: float, deadline: float) -> float | None:
    """The section's budget, what is left when at least half of it is, or None (skip)."""
    left = deadline - now
    if left >= section.budget_s:
        return section.budget_s
    if left >= MIN_BUDGET_FRACTION * section.budget_s:
        return left
    return None


Sink = Callable[[dict], None]


def run_one(
    section: Section, *, deadline: float, out_dir: Path, cuda: bool, sink: Sink | None = None,
    clock: Callable[[], float] = time.time,
) -> SectionResult:
    """Run (or skip) one section in this process; exceptions never escape."""
    emit = sink or (lambda event: None)
    res = SectionResult(section.name, section.title, section.budget_s)
    budget = effective_budget(section, clock(), deadline)
    if section.needs_cuda and not cuda:
        res.status, res.reason = "skipped", "no CUDA"
        try:  # what a CPU machine can still catch: the section's code imports
            resolve(section.target)
        except Exception as e:  # noqa: BLE001
            res.status, res.reason = "failed", "its code does not import"
            res.errors.append(describe_error("import", e))
    elif budget is None:
        left = max(deadline - clock(), 0.0)
        res.status = "skipped"
        res.reason = f"needs {section.budget_s:.0f} s, {left:.0f} s left before the global deadline"
    if res.status != "pending":
        emit({"event": "end", "result": res.to_dict()})
        return res
    emit({"event": "start", "name": section.name, "budget_s": budget})
    ctx = Context(res, budget, out_dir, lambda r: emit({"event": "partial", "result": r.to_dict()}), clock)
    try:
        resolve(section.target)(ctx)
    except Exception as e:  # noqa: BLE001 - a section that raises is recorded as failed
        ctx.error("section", e)
    res.seconds = round(ctx.elapsed(), 2)
    if res.seconds > budget:
        res.notes.append(f"ran {res.seconds:.0f} s of its {budget:.0f} s budget")
    res.finish()
    emit({"event": "end", "result": res.to_dict()})
    return res


def run_sections(
    sections: list[Section], *, deadline: float, out_dir: Path, cuda: bool, sink: Sink | None = None,
    clock: Callable[[], float] = time.time,
) -> list[SectionResult]:
    """Every section in order, in this process."""
    return [run_one(s, deadline=deadline, out_dir=out_dir, cuda=cuda, sink=sink, clock=clock) for s in sections]


# --------------------------------------------------------------------------------------------------
# The supervised worker
# --------------------------------------------------------------------------------------------------


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


def _ended(name: str, title: str, budget: float, status: str, reason: str, partial: dict | None) -> SectionResult:
    res = SectionResult.from_dict(partial) if partial else SectionResult(name, title, budget)
    res.status, res.reason = status, reason
    return res


def supervise(
    sections: list[Section], *, deadline: float, out_dir: Path, work_dir: Path, python: str = sys.executable,
    grace_s: float = GRACE_S, poll_s: float = 0.25, log: Callable[[str], None] = print,
) -> list[SectionResult]:
    """Run ``sections`` in worker processes with hard per-section time limits; one result per section."""
    work_dir.mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in sections}
    results: dict[str, SectionResult] = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    attempt = 0
    while pending := [s for s in sections if s.name not in results]:
        attempt += 1
        spec, events, logfile = (work_dir / f"worker{attempt}{ext}" for ext in (".json", ".events.jsonl", ".log"))
        spec.write_text(json.dumps({"sections": [asdict(s) for s in pending], "deadline": deadline,
                                    "out_dir": str(out_dir), "events": str(events)}))
        with logfile.open("wb") as logf:
            proc = subprocess.Popen([python, "-m", "bench.devcheck.runner", str(spec)], cwd=REPO, env=env,
                                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            reader, progressed = _EventReader(events), False
            current: tuple[str, float, float] | None = None  # (name, started, budget)
            partial: dict[str, dict] = {}

            def handle(ev: dict) -> None:
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
                    log(f"[{r.name}] {r.status}" + (f": {r.reason}" if r.reason else "") + f" ({r.seconds:.1f} s)")

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
                        why = f"the worker process died (exit status {rc}); its last output:\n{_tail(logfile)}"
                        results[name] = _ended(name, by_name[name].title, by_name[name].budget_s, "failed", why,
                                               partial.get(name))
                        results[name].errors.append(why)
                    break
                now = time.time()
                over = current is not None and now > current[1] + current[2] + grace_s
                if over or now > deadline + grace_s:
                    _kill_group(proc)
                    if current is not None:
                        name, started, budget = current
                        why = f"killed after {now - started:.0f} s (budget {budget:.0f} s + {grace_s:.0f} s grace)"
                        results[name] = _ended(name, by_name[name].title, by_name[name].budget_s, "timeout", why,
                                               partial.get(name))
                        log(f"[{name}] timeout: {why}")
                    break
                time.sleep(poll_s)
        if not progressed:
            why = f"the worker process did not start (exit status {proc.returncode}):\n{_tail(logfile)}"
            for s in pending:
                results[s.name] = _ended(s.name, s.title, s.budget_s, "failed", why, None)
                results[s.name].errors.append(why)
    return [results[s.name] for s in sections]


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken torch install means no CUDA here
        return False


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    sections = [Section(**d) for d in spec["sections"]]
    cuda = any(s.needs_cuda for s in sections) and _cuda_available()
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
