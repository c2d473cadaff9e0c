"""Output folders that pgolf replaces: only ones it wrote itself, never a folder that holds the project.

``pgolf export G --out . --force`` once removed the working directory. A command that replaces a folder
now goes through ``staged_replace``: the target must not be the working directory, the project root, a
home directory, the filesystem root or any folder above the project (whatever --force says); an
existing non-empty target is replaced only with ``overwrite`` *and* when ``owned(target)`` recognises
the marker pgolf left in it. The new content is written beside the target first and swapped in with
renames, so a failure halfway leaves the old folder as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class UnsafeOutputDir(ValueError):
    """The output folder is one pgolf must not replace; the message says which and why."""


def _home_dirs() -> set[Path]:
    homes = {Path.home().resolve()}
    try:
        import pwd

        homes.update(Path(p.pw_dir).resolve() for p in pwd.getpwall() if p.pw_dir not in ("", "/"))
    except (ImportError, KeyError, OSError):  # pragma: no cover - not on POSIX
        pass
    return homes


def protected_reason(target: str | os.PathLike, project_root: str | os.PathLike = PROJECT_ROOT) -> str | None:
    """Why ``target`` may never be replaced (None: it may be, if pgolf owns it)."""
    t = Path(target).resolve()
    holders = {PROJECT_ROOT: "the project root", Path(project_root).resolve(): "the project root"}
    holders[Path.cwd().resolve()] = "the working directory"  # named so even where it is the project
    if t in holders:
        return holders[t]
    if t == Path(t.anchor):
        return "the filesystem root"
    if t in _home_dirs():
        return "a home directory"
    for inside, what in holders.items():
        if inside.is_relative_to(t):
            return f"a folder above {what} ({inside})"
    return None


def check_replaceable(
    target: str | os.PathLike,
    *,
    overwrite: bool,
    owned: Callable[[Path], bool],
    what: str,
    project_root: str | os.PathLike = PROJECT_ROOT,
) -> None:
    """Raise UnsafeOutputDir when ``target`` is protected, is a file, or is a non-empty folder that is
    not ``owned`` (or ``overwrite`` is off). ``what`` names the marker in the messages (e.g. "a
    submission.json written by pgolf export")."""
    target = Path(target)
    reason = protected_reason(target, project_root)
    if reason:
        raise UnsafeOutputDir(f"{target}: refusing to write into {reason}; give a new folder")
    if target.exists() and not target.is_dir():
        raise UnsafeOutputDir(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        if not owned(target):
            raise UnsafeOutputDir(
                f"{target}: exists, is not empty and has no {what}: pgolf replaces only folders it wrote; "
                "give a new folder"
            )
        if not overwrite:
            raise UnsafeOutputDir(f"{target}: exists (written by pgolf); pass --force to replace it")


@contextmanager
def staged_replace(
    target: str | os.PathLike,
    *,
    overwrite: bool,
    owned: Callable[[Path], bool],
    what: str,
    project_root: str | os.PathLike = PROJECT_ROOT,
) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it becomes ``target``. Nothing is
    written when ``check_replaceable`` refuses the target."""
    target = Path(target)
    check_replaceable(target, overwrite=overwrite, owned=owned, what=what, project_root=project_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        os.replace(target, old)  # the folder checked above, moved aside as a whole
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
