"""T6, the data tripwire: no validation shard opened while training or quantizing, no training shard
while evaluating."""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pgolf_core.stages import Verdict

#: file-name patterns that must not be opened in each phase: no validation data while training or
#: quantizing (the challenge README; GPTQ calibration on validation was ruled out, #593/#576), no
#: training data during evaluation (the README: only what the artifact pays for)
FORBIDDEN_FILES = {
    "train": ("fineweb_val_*",),
    "quant": ("fineweb_val_*",),
    "eval": ("fineweb_train_*",),
}


class DataTripwire(RuntimeError):
    """A forbidden data file was opened. Not an OSError, so ``except OSError`` cannot swallow it."""


@dataclass
class TripLog:
    phase: str
    trips: list[tuple[str, str]] = field(default_factory=list)  # (function, path)


def _path_of(obj) -> str | None:
    if isinstance(obj, int):
        return None  # a file descriptor: whoever opened it went through the tripwire
    name = getattr(obj, "name", None) if not isinstance(obj, (str, bytes, os.PathLike)) else obj
    if name is None or isinstance(name, int):
        return None
    try:
        path = os.fspath(name)
    except TypeError:
        return None
    return os.fsdecode(path)


@contextmanager
def data_tripwire(phase: str) -> Iterator[TripLog]:
    """Make open / io.open / os.open / numpy.fromfile / numpy.memmap / numpy.load raise
    ``DataTripwire`` on files whose name matches ``FORBIDDEN_FILES[phase]``; every trip is also logged
    (so a trip swallowed by the code under test still fails the check).

    Patches module attributes process-wide for the duration: code that bound these functions before
    (``from numpy import fromfile``) is not covered, and neither are other processes.
    """
    if phase not in FORBIDDEN_FILES:
        raise ValueError(f"phase must be one of {sorted(FORBIDDEN_FILES)}, got {phase!r}")
    patterns = FORBIDDEN_FILES[phase]
    log = TripLog(phase)

    def guard(fname: str, obj) -> None:
        path = _path_of(obj)
        if path is None:
            return
        base = os.path.basename(path)
        if any(fnmatch.fnmatchcase(base, p) for p in patterns):
            log.trips.append((fname, path))
            raise DataTripwire(
                f"{fname}({path!r}) during {phase}: files matching {patterns} are off limits in this phase"
            )

    orig_open, orig_io_open, orig_os_open = builtins.open, io.open, os.open
    orig_fromfile, orig_memmap, orig_load = np.fromfile, np.memmap, np.load

    def t_open(file, *a, **k):
        guard("open", file)
        return orig_open(file, *a, **k)

    def t_os_open(path, *a, **k):
        guard("os.open", path)
        return orig_os_open(path, *a, **k)

    def t_fromfile(file, *a, **k):
        guard("numpy.fromfile", file)
        return orig_fromfile(file, *a, **k)

    def t_load(file, *a, **k):
        guard("numpy.load", file)
        return orig_load(file, *a, **k)

    class TMemmap(orig_memmap):  # a subclass keeps isinstance(x, np.memmap) true
        def __new__(cls, filename, *a, **k):
            guard("numpy.memmap", filename)
            return orig_memmap.__new__(cls, filename, *a, **k)

    builtins.open = io.open = t_open
    os.open = t_os_open
    np.fromfile, np.memmap, np.load = t_fromfile, TMemmap, t_load
    try:
        yield log
    finally:
        builtins.open, io.open, os.open = orig_open, orig_io_open, orig_os_open
        np.fromfile, np.memmap, np.load = orig_fromfile, orig_memmap, orig_load


def check_data_access(fn: Callable[[], object], *, phase: str) -> Verdict:
    """T6: run ``fn`` under ``data_tripwire(phase)``; fail if it opened (or tried to) a forbidden file."""
    with data_tripwire(phase) as log, contextlib.suppress(DataTripwire):  # trips are logged
        fn()
    pats = FORBIDDEN_FILES[phase]
    if log.trips:
        fname, path = log.trips[0]
        more = f" (and {len(log.trips) - 1} more)" if len(log.trips) > 1 else ""
        return Verdict(
            "T6",
            False,
            f"during {phase}, {fname} opened {path}{more}: files matching {pats} are forbidden in this phase",
            float(len(log.trips)),
            0.0,
        )
    return Verdict("T6", True, f"{phase}: no file matching {pats} was opened", 0.0, 0.0)
