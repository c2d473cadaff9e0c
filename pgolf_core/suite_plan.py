"""What a suite run does with each entry and seed, decided before anything runs and said first.

    new     no earlier run of this entry and seed: run it in a new folder
    redo    an earlier run exists: run again in a new folder (the earlier one is kept)
    resume  ``--resume`` and the earlier run did not complete (interrupted, failed, timed out) with the
            same config: run the notebook again in that folder (its training continues from the
            last checkpoint, train.resume)
    reuse   the earlier run completed with the same config (and, for an entry that reads a source,
            with the source reused too): use its folder, run nothing; with ``--resume`` for every
            entry, and without it for a source that ``--only`` did not select

An entry selected by ``--only`` reads its source's completed run rather than retraining silently;
where there is none, the source runs first and the plan says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Action = Literal["new", "redo", "resume", "reuse"]


@dataclass(frozen=True)
class Previous:
    run_dir: Path
    manifest: dict

    @property
    def status(self) -> str:
        return str(self.manifest.get("status"))


@dataclass
class Step:
    name: str  # the suite entry
    seed: int | None  # the --seeds value (None: the params file's own seed)
    action: Action
    previous: Previous | None
    note: str


def previous_runs(reports_root: str | os.PathLike, suite: str) -> dict[tuple[str, object], Previous]:
    """The latest run of each (entry, resolved train.seed) under reports/<suite>/ (manifest group
    "<suite>/<entry>"); unreadable manifests are skipped (the index names them)."""
    found: dict[tuple[str, object], Previous] = {}
    for path in sorted((Path(reports_root) / suite).glob("*/manifest.json")):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        group = m.get("group") if isinstance(m, dict) else None
        if not isinstance(group, str) or not group.startswith(f"{suite}/"):
            continue
        key = (group.split("/", 1)[1], m.get("seed"))
        old = found.get(key)
        order = (str(m.get("started_utc", "")), path.parent.name)
        if old is None or order > (str(old.manifest.get("started_utc", "")), old.run_dir.name):
            found[key] = Previous(path.parent, m)
    return found


def _same_config(prev: Previous, notebook: str, cfg: dict, nb: dict) -> bool:
    m = prev.manifest
    same_notebook = m.get("notebook") == Path(notebook).as_posix()
    return same_notebook and m.get("params") == cfg and m.get("notebook_params") == nb


def plan_seed(
    entries: list,
    selected: set[str],
    seed: int | None,
    resolved: dict[str, tuple[dict, dict]],
    previous: dict[tuple[str, object], Previous],
    resume: bool,
) -> list[Step]:
    """Steps for one seed over ``entries`` (suite order: the selected ones and the sources they need).

    ``resolved[name]``: (config dict, notebook parameters) as validate_run returns them.
    """
    steps: dict[str, Step] = {}
    for e in entries:
        cfg, nb = resolved[e.name]
        prev = previous.get((e.name, cfg["train"]["seed"]))
        same = prev is not None and _same_config(prev, e.notebook, cfg, nb)
        src = steps.get(e.source) if e.source else None
        # the earlier run read the very folder its source keeps now (reused, or resumed in place)
        source_kept = src is None or (
            src.action in ("reuse", "resume")
            and prev is not None
            and prev.manifest.get("source_run") == src.previous.run_dir.as_posix()
        )
        reusable = (
            same and source_kept and prev.status == "completed" and (src is None or src.action == "reuse")
        )
        # (a "running" one belongs to a live driver: never run a second notebook in its folder)
        resumable = same and source_kept and prev.status not in ("completed", "running")
        where = f"{prev.run_dir} ({prev.status})" if prev else ""
        if e.name not in selected:  # a source that --only left out
            if reusable:
                steps[e.name] = Step(e.name, seed, "reuse", prev, f"source of the selected entries: {where}")
            else:
                why = "its last run differs or did not complete" if prev else "it has no run yet"
                note = f"source of the selected entries, run first ({why})"
                steps[e.name] = Step(e.name, seed, "new", prev, note)
        elif resume and reusable:
            steps[e.name] = Step(e.name, seed, "reuse", prev, f"completed: {where}")
        elif resume and resumable:
            steps[e.name] = Step(e.name, seed, "resume", prev, f"continues {where} in its folder")
        elif prev is not None:
            changed = ", config changed" if prev.manifest.get("params") != cfg else ", inputs changed"
            why = "" if same else changed
            steps[e.name] = Step(e.name, seed, "redo", prev, f"earlier run {where}{why}; new folder")
        else:
            steps[e.name] = Step(e.name, seed, "new", None, "new folder")
    if not resume:  # say what --resume would do instead of redoing
        alt = {s.name: s.action for s in plan_seed(entries, selected, seed, resolved, previous, True)}
        for st in steps.values():
            if st.action == "redo" and alt[st.name] != "redo":
                st.note += f" (--resume would {'reuse' if alt[st.name] == 'reuse' else 'continue'} it)"
    return list(steps.values())


def needed_sources(spec_runs: list, selected: set[str]) -> set[str]:
    """Entries the selected ones read (transitively) that are not selected themselves."""
    by_name = {e.name: e for e in spec_runs}
    need: set[str] = set()
    todo = [by_name[n].source for n in selected if by_name[n].source]
    while todo:
        name = todo.pop()
        if name not in selected and name not in need:
            need.add(name)
            if by_name[name].source:
                todo.append(by_name[name].source)
    return need
