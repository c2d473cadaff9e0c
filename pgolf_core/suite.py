"""Batch execution of the parameterized notebooks with papermill, and the suite manifest.

    pgolf run NOTEBOOK PARAMS.yaml        one notebook -> reports/<suite>/<run_id>/
    pgolf suite params/smoke              every notebook of params/smoke/suite.yaml, in order

A params file is a RunConfig YAML (validated by ``pgolf_core.config``) plus an optional ``notebook:``
mapping of values for the notebook's ``parameters`` cell. Both are validated before anything runs
(``pgolf_core.nbparams``): papermill itself only *warns* about an unknown parameter, and writes a value
that is not a plain one into the notebook as code.

Each run writes reports/<suite>/<run_id>/: executed.ipynb (kept even when a cell fails, times out or
the kernel dies), report.html (code hidden, figures embedded), the notebook's PNGs and stages.json, and
manifest.json (params, seed, git commit and dirty flag, package versions, hardware, attention backend,
status, timings). The driver sets the status itself: papermill's notebook metadata cannot be trusted
after a timeout or a dead kernel, and Ctrl-C is recorded as ``interrupted``; a manifest left "running"
by a driver that was killed is settled as ``interrupted`` by the next run. Run ids are unique
(``pgolf_core.report.runs``). reports/index.html is rebuilt after every run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pgolf_core.atomic import atomic_write_json
from pgolf_core.config import ConfigError
from pgolf_core.nbparams import (  # noqa: F401 - validation lives there; also this module's API
    DRIVER_PARAMS,
    NOTEBOOK_SECTION,
    check_code_files,
    check_plain,
    notebook_parameters,
    split_params,
    validate_run,
)
from pgolf_core.report.provenance import provenance
from pgolf_core.report.runs import check_name, create_run_dir, driver_info, settle_stale_runs, stamp
from pgolf_core.suite_plan import needed_sources, plan_seed, previous_runs
from pgolf_core.suite_spec import (  # noqa: F401 - the schema lives there; also this module's API
    SuiteEntry,
    SuiteSpec,
    check_params,
    load_suite,
)

#: a run's final status is one of these but "running"; "interrupted": Ctrl-C / SIGTERM, or a driver that died
STATUSES = ("running", "completed", "failed", "timeout", "dead_kernel", "interrupted")
Status = Literal["running", "completed", "failed", "timeout", "dead_kernel", "interrupted"]


@dataclass
class RunRecord:
    run_id: str
    run_dir: Path
    status: Status
    error: str | None = None
    reused: bool = False  # a suite step that used an earlier completed run instead of running


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM through the CLI) during a run; the message says what was recorded."""


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _status_of(exc: BaseException) -> str:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(exc, CellTimeoutError):
        return "timeout"
    if isinstance(exc, DeadKernelError):
        return "dead_kernel"
    return "failed"


def _describe_error(exc: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"cell {exc.cell_index} (execution {exc.exec_count}) raised {exc.ename}: {exc.evalue}"
    return f"{type(exc).__name__}: {exc}"


def run_notebook(
    notebook: str | os.PathLike,
    params_file: str | os.PathLike,
    *,
    suite: str = "adhoc",
    reports_root: str | os.PathLike = "reports",
    run_id: str | None = None,
    overrides: dict[str, Any] | None = None,
    source_run: str = "",
    parameters: dict[str, Any] | None = None,
    group: str | None = None,
    timeout: float | None = None,
    kernel_name: str = "python3",
    log_output: bool = True,
    update_index: bool = True,
    reuse_dir: bool = False,
) -> RunRecord:
    """Execute one notebook with one params file; never raises for a notebook failure (see the record).

    The folder reports/<suite>/<run_id>/ is new (``run_id`` default: notebook, params and a unique
    stamp); ``reuse_dir`` runs again in an existing one (a resumed suite entry). Ctrl-C (or SIGTERM
    through the CLI) records ``interrupted`` in the manifest, then propagates.
    """
    notebook, params_file = Path(notebook), Path(params_file)
    check_name(suite, "suite")
    if run_id is not None:
        check_name(run_id, "run id")
    cfg_dict, nb_params = validate_run(notebook, params_file, overrides, parameters)  # ConfigError: none ran
    src = Path(source_run) if source_run else None
    if src is not None and not ((src / "manifest.json").is_file() or (src / "train/config.yaml").is_file()):
        raise ConfigError(f"{source_run}: not a report folder (no manifest.json, train/config.yaml)")
    settle_stale_runs(reports_root)
    run_id, run_dir = _make_run_dir(
        Path(reports_root) / suite, run_id, f"{notebook.stem}-{params_file.stem}", reuse_dir
    )
    started = time.time()
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "suite": suite,
        "group": group or f"{suite}/{notebook.stem}/{params_file.stem}",
        "notebook": notebook.as_posix(),
        "params_file": params_file.as_posix(),
        "overrides": dict(overrides or {}),
        "params": cfg_dict,
        "notebook_params": nb_params,
        "seed": cfg_dict["train"]["seed"],
        "source_run": source_run,
        "status": "running",
        "started_utc": _utc(started),
        "driver": driver_info(),
        **provenance("."),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
    parameters = {
        **nb_params,
        "params_file": params_file.as_posix(),
        "overrides": dict(overrides or {}),
        "run_dir": run_dir.as_posix(),
        "source_run": source_run,
    }
    status, error, interrupted = "interrupted", "the driver stopped before the notebook finished", False
    try:
        _execute(notebook, run_dir / "executed.ipynb", parameters, kernel_name, log_output, timeout)
        status, error = "completed", None
    except KeyboardInterrupt:
        error, interrupted = "interrupted (Ctrl-C or SIGTERM) while the notebook ran", True
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, partial output kept
        status, error = _status_of(exc), _describe_error(exc)
        manifest["traceback"] = traceback.format_exc(limit=5)
    finally:  # whatever happened, the manifest ends in a final state
        _finish(manifest, run_dir, status, error, started, reports_root if update_index else None)
    if interrupted:
        raise RunInterrupted(f"{run_dir} recorded as interrupted")
    return RunRecord(run_id, run_dir, status, error)  # type: ignore[arg-type]


def _make_run_dir(parent: Path, run_id: str | None, prefix: str, reuse: bool) -> tuple[str, Path]:
    if run_id is None:  # unique by construction, and created exclusively
        return create_run_dir(parent, lambda: f"{prefix}-{stamp()}")
    if reuse:  # a resumed run: train/ stays (its checkpoints), the last attempt's outputs go
        (parent / run_id).mkdir(parents=True, exist_ok=True)
        (parent / run_id / "outputs.json").unlink(missing_ok=True)
        return run_id, parent / run_id
    try:
        return create_run_dir(parent, lambda: run_id, attempts=1)
    except ConfigError:
        raise ConfigError(f"{parent / run_id}: a run folder of that id exists; give another run id") from None


def _execute(
    notebook: Path,
    executed: Path,
    parameters: dict,
    kernel_name: str,
    log_output: bool,
    timeout: float | None,
) -> None:
    import papermill as pm

    pm.execute_notebook(
        str(notebook),
        str(executed),
        parameters=parameters,
        kernel_name=kernel_name,
        cwd=".",
        log_output=log_output,
        progress_bar=False,
        request_save_on_cell_execute=True,
        autosave_cell_every=30,
        execution_timeout=timeout,
        coalesce_streams=True,
    )


def _finish(
    manifest: dict,
    run_dir: Path,
    status: str,
    error: str | None,
    started: float,
    index_root: str | os.PathLike | None,
) -> None:
    """Record the final status first (a second Ctrl-C must not leave "running"), then the report."""
    finished = time.time()
    outputs_file = run_dir / "outputs.json"
    try:
        outputs = json.loads(outputs_file.read_text()) if outputs_file.is_file() else {}
    except (OSError, ValueError) as e:
        outputs = {}
        manifest["outputs_error"] = f"{outputs_file}: {e}"
    manifest.update(
        status=status,
        error=error,
        finished_utc=_utc(finished),
        seconds=round(finished - started, 2),
        outputs=outputs,
        attn_backend=outputs.get("attn_backend") if isinstance(outputs, dict) else None,
    )
    atomic_write_json(run_dir / "manifest.json", manifest)
    executed = run_dir / "executed.ipynb"
    if executed.is_file():
        from pgolf_core.report.html import render_html

        try:
            render_html(executed, run_dir / "report.html", title=f"{manifest['run_id']} ({status})")
        except Exception as exc:  # noqa: BLE001 - a rendering failure must not hide the run's own status
            manifest["render_error"] = f"{type(exc).__name__}: {exc}"
    manifest["files"] = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    atomic_write_json(run_dir / "manifest.json", manifest)
    if index_root is not None:
        from pgolf_core.report.index import build_index

        try:
            build_index(index_root)
        except Exception as exc:  # noqa: BLE001 - the run is recorded; an index problem is only reported
            print(f"pgolf: reports index not rebuilt: {type(exc).__name__}: {exc}", file=sys.stderr)


def run_suite(
    suite_dir: str | os.PathLike,
    *,
    seeds: list[int] | None = None,
    reports_root: str | os.PathLike = "reports",
    only: list[str] | None = None,
    log_output: bool = True,
    resume: bool = False,
    dry_run: bool = False,
    echo=print,
) -> list[RunRecord]:
    """Run every entry of ``suite_dir/suite.yaml`` (for each seed), validating all of them first.

    What happens to each entry and seed (new, redo, resume, reuse: ``pgolf_core.suite_plan``) is
    decided first and ``echo``-ed, one line each. ``only`` selects entries (an unknown name is an
    error); a source they read is reused when it has a completed run of the same config, else run.
    ``dry_run``: validate and say the plan, run nothing.
    """
    suite_dir = Path(suite_dir)
    spec = load_suite(suite_dir)
    suite_name = check_name(suite_dir.resolve().name, f"{suite_dir}: suite folder name")
    names = [e.name for e in spec.runs]
    unknown = [o for o in (only or []) if o not in names]
    if unknown:
        raise ConfigError(
            f"{suite_dir / 'suite.yaml'}: --only {', '.join(unknown)}: no such entry; "
            f"the entries are: {', '.join(names)}"
        )
    selected = set(only or names)
    wanted = selected | needed_sources(spec.runs, selected)
    entries = [e for e in spec.runs if e.name in wanted]
    seed_list: list[int | None] = list(seeds or spec.seeds) or [None]
    resolved: dict[int | None, dict[str, tuple[dict, dict]]] = {s: {} for s in seed_list}
    for e in entries:  # validate every run before starting the first one
        for seed in seed_list:
            resolved[seed][e.name] = validate_run(
                e.notebook,
                suite_dir / e.params,
                {"train.seed": seed} if seed is not None else None,
                e.parameters,
                f"{suite_dir / 'suite.yaml'}: runs.{e.name}",
            )
    settle_stale_runs(reports_root)
    previous = previous_runs(reports_root, suite_name)
    plans = {s: plan_seed(entries, selected, s, resolved[s], previous, resume) for s in seed_list}
    for seed, steps in plans.items():
        for st in steps:
            echo(f"{st.action:<7}{st.name}" + (f" seed {seed}" if seed is not None else "") + f": {st.note}")
    if dry_run:
        return []
    batch = stamp()  # one per suite run: its entries' run ids share it
    by_entry = {e.name: e for e in entries}
    records: list[RunRecord] = []
    for seed, steps in plans.items():
        by_name: dict[str, RunRecord] = {}
        for st in steps:
            e, prev = by_entry[st.name], st.previous
            if st.action == "reuse":
                rec = RunRecord(prev.run_dir.name, prev.run_dir, "completed", reused=True)
            else:
                run_id = (
                    prev.run_dir.name
                    if st.action == "resume"
                    else f"{batch}-{e.name}" + (f"-s{seed}" if seed is not None else "")
                )
                source = by_name[e.source].run_dir.as_posix() if e.source else ""
                try:
                    rec = run_notebook(
                        e.notebook,
                        suite_dir / e.params,
                        suite=suite_name,
                        reports_root=reports_root,
                        run_id=run_id,
                        overrides={"train.seed": seed} if seed is not None else None,
                        source_run=source,
                        parameters=e.parameters,
                        group=f"{suite_name}/{e.name}",
                        timeout=e.timeout,
                        log_output=log_output,
                        reuse_dir=st.action == "resume",
                    )
                except RunInterrupted as stop:
                    raise RunInterrupted(
                        f"{stop}; `pgolf suite {suite_dir} --resume` reuses the completed "
                        "entries and continues this one"
                    ) from None
            by_name[e.name] = rec
            records.append(rec)
    return records
