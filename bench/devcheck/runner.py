"""Sections, time budgets and error capture, in this process.

A ``Section`` is one function ``fn(ctx)`` with a time budget. ``run_sections`` runs sections in order: a
section that does not fit before the global deadline is skipped, one that raises is recorded as failed
(with what it measured before the error) and the next one runs; inside a section, ``Context.step``
guards each part the same way. ``bench.devcheck.supervisor`` runs the same sections in a worker process
with hard time limits.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MIN_BUDGET_FRACTION = 0.5  # a section still starts, with what is left, when half its budget is left


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

    def check(
        self, name: str, value: float | None, limit: float | None, passed: bool | None, detail: str = ""
    ):
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
    section: Section,
    *,
    deadline: float,
    out_dir: Path,
    cuda: bool,
    sink: Sink | None = None,
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
    sections: list[Section],
    *,
    deadline: float,
    out_dir: Path,
    cuda: bool,
    sink: Sink | None = None,
    clock: Callable[[], float] = time.time,
) -> list[SectionResult]:
    """Every section in order, in this process."""
    return [
        run_one(s, deadline=deadline, out_dir=out_dir, cuda=cuda, sink=sink, clock=clock) for s in sections
    ]
