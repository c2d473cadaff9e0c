"""Report run folders: plain names, unique run ids, exclusive creation.

reports/<suite>/<run_id>/ is built from user input (``--suite``, a suite folder's name, its entries'
names), so each part must be a plain name: ``--suite ../..`` once wrote outside reports/. Run ids carry
sub-second time and a random suffix, and a folder is created exclusively (retried with a fresh id), so
two runs started in the same second never share one: the run id of one second's resolution once made
two runs write into one folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from pathlib import Path

from pgolf_core.config import ConfigError

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a plain folder name (letters, digits, ``._+-``, not starting with a dot)."""
    if not isinstance(value, str) or not _PLAIN.fullmatch(value) or value in (".", ".."):
        raise ConfigError(
            f"{what} {value!r}: expected a plain name (letters, digits, '._+-', not starting "
            "with '.' or '-', no '/'), used as a folder name under the reports root"
        )
    return value


def stamp(t: float | None = None) -> str:
    """UTC time to the microsecond plus 4 random hex digits, e.g. 20260101T120000.123456Z.3fa9."""
    t = time.time() if t is None else t
    micro = round((t % 1) * 1e6) % 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f".{micro:06d}Z.{secrets.token_hex(2)}"


def create_run_dir(parent: str | os.PathLike, make_id, attempts: int = 20) -> tuple[str, Path]:
    """(run id, new folder) under ``parent``: ``make_id()`` is called until its folder did not exist.

    ``mkdir`` without ``exist_ok`` is atomic: of two processes racing for one name, one gets it and
    the other tries a fresh id.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        run_id = make_id()
        path = parent / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return run_id, path
    raise ConfigError(f"{parent}: no new run folder after {attempts} attempts (last id {run_id!r})")


def driver_info() -> dict:
    """Who writes a run's manifest: a "running" manifest whose driver is gone was killed (kill -9)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def stale_reason(manifest: dict) -> str | None:
    """Why a "running" manifest is in fact over (its driver process on this host is gone), else None."""
    driver = manifest.get("driver") or {}
    if manifest.get("status") != "running" or driver.get("host") != socket.gethostname():
        return None
    pid = driver.get("pid")
    if not isinstance(pid, int) or _alive(pid):
        return None
    return f"the driver (pid {pid}) ended without recording a status (killed, or the machine went down)"


def settle_stale_runs(reports_root: str | os.PathLike) -> list[Path]:
    """Mark "running" manifests whose driver died ``interrupted`` with the reason; returns their folders."""
    from pgolf_core.atomic import atomic_write_json

    settled = []
    for path in sorted(Path(reports_root).glob("*/*/manifest.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the index names unreadable manifests
        reason = stale_reason(manifest) if isinstance(manifest, dict) else None
        if reason:
            manifest.update(status="interrupted", error=reason)
            atomic_write_json(path, manifest)
            settled.append(path.parent)
    return settled
