"""Batch execution of the parameterized notebooks with papermill, and the suite manifest.

    pgolf run NOTEBOOK PARAMS.yaml        one notebook -> reports/<suite>/<run_id>/
    pgolf suite params/smoke              every notebook of params/smoke/suite.yaml, in order

A params file is a RunConfig YAML (validated by ``pgolf_core.config``) plus an optional ``notebook:``
mapping of values for the notebook's ``parameters`` cell. Both are validated before anything runs:
papermill itself only *warns* about an unknown parameter (notebooks.md 1.4), so pgolf compares the
keys with ``papermill.inspect_notebook`` and refuses.

Each run writes reports/<suite>/<run_id>/: executed.ipynb (kept even when a cell fails, times out or
the kernel dies), report.html (code hidden, figures embedded), the notebook's PNGs and stages.json, and
manifest.json (params, seed, git commit and dirty flag, package versions, hardware, attention backend,
status, timings). The driver sets the status itself: papermill's notebook metadata cannot be trusted
after a timeout or a dead kernel (notebooks.md 1.6). reports/index.html is rebuilt after every run.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pgolf_core.atomic import atomic_write_json
from pgolf_core.code_bytes import CodeFilesError, check_code_globs
from pgolf_core.config import (
    ConfigError,
    config_from_dict,
    deep_merge,
    parse_overrides,
    read_params_tree,
    to_dict,
    yaml_load,
)
from pgolf_core.nbparams import check_parameters, check_plain
from pgolf_core.report.provenance import provenance
from pgolf_core.report.runs import check_name

NOTEBOOK_SECTION = "notebook"
#: parameters every pgolf notebook declares; the driver fills them
DRIVER_PARAMS = ("params_file", "overrides", "run_dir", "source_run")
STATUSES = ("running", "completed", "failed", "timeout", "dead_kernel")


class SuiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(description="short name, unique in the suite (used in run ids)")
    notebook: str = Field(description="path of the notebook, relative to the repository root")
    params: str = Field(description="params file, relative to the suite folder")
    source: str | None = Field(None, description="name of an earlier entry whose run folder this one reads")
    parameters: dict[str, Any] = Field(default_factory=dict, description="notebook parameters for this entry (e.g. nproc: 8)")
    timeout: float | None = Field(None, gt=0, description="per-cell timeout in seconds (None: no limit)")


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    description: str = ""
    seeds: list[int] = Field(default_factory=list, description="run the suite once per seed (--seeds overrides)")
    runs: list[SuiteEntry]


@dataclass
class RunRecord:
    run_id: str
    run_dir: Path
    status: Literal["running", "completed", "failed", "timeout", "dead_kernel"]
    error: str | None = None


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def split_params(params_file: str | os.PathLike) -> tuple[dict, dict]:
    """(run config dict, notebook parameters) from a params file; ``extends`` is followed."""
    raw = read_params_tree(Path(params_file))
    nb = raw.pop(NOTEBOOK_SECTION, {}) or {}
    if not isinstance(nb, dict):
        raise ConfigError(f"{params_file}: '{NOTEBOOK_SECTION}' must be a mapping of notebook parameters")
    return raw, nb


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, dict]:
    """The notebook's declared parameters (name -> {inferred_type_name, default, help})."""
    import papermill as pm

    return pm.inspect_notebook(str(notebook))


def validate_run(
    notebook: str | os.PathLike, params_file: str | os.PathLike, overrides: dict | None = None,
    parameters: dict | None = None, parameters_source: str = "suite entry",
) -> tuple[dict, dict]:
    """Validate config and notebook parameters before launching; returns (resolved config, notebook params).

    ``parameters`` (a suite entry's, from ``parameters_source``) are merged over the params file's
    ``notebook:`` section. Every value must be plain and of its declared type (``pgolf_core.nbparams``).
    """
    notebook = Path(notebook)
    if not notebook.is_file():
        raise ConfigError(f"{notebook}: notebook not found")
    raw, file_nb = split_params(params_file)
    check_plain(dict(overrides or {}), "overrides", "overrides")  # the driver passes them to the notebook too
    cfg = config_from_dict(deep_merge(raw, parse_overrides(overrides or {})), str(params_file))
    _check_code_files(cfg, params_file)
    declared = notebook_parameters(notebook)
    # Each source is checked on its own so that the error names the file the bad value came from.
    check_parameters(file_nb, declared, str(params_file))
    check_parameters(dict(parameters or {}), declared, parameters_source, "parameters")
    nb = {**file_nb, **(parameters or {})}
    missing_driver = [p for p in DRIVER_PARAMS if p not in declared]
    if missing_driver:
        raise ConfigError(f"{notebook}: its parameters cell lacks the driver parameters {missing_driver}")
    unknown = sorted(set(nb) - set(declared))
    if unknown:
        valid = sorted(set(declared) - set(DRIVER_PARAMS))
        raise ConfigError(
            f"{params_file}: '{NOTEBOOK_SECTION}' has unknown parameter(s) {unknown} for {notebook.name}; "
            f"its parameters are: {', '.join(valid)}"
        )
    reserved = sorted(set(nb) & set(DRIVER_PARAMS))
    if reserved:
        raise ConfigError(f"{params_file}: {reserved} are set by the driver, not by params files")
    _validate_sweeps(nb, to_dict(cfg), params_file)
    return to_dict(cfg), nb


def _check_code_files(cfg, params_file) -> None:
    try:
        check_code_globs(cfg.quant.code_files)
    except CodeFilesError as e:
        raise ConfigError(f"{params_file}: {e}") from None


def _validate_sweeps(nb_params: dict, cfg: dict, params_file) -> None:
    """A notebook parameter that is a list of {name, <section>: overrides} (schemes, variants, settings)
    is a sweep over config variants: each variant must itself be a valid config."""
    from pgolf_core.config import SECTIONS

    for key, value in nb_params.items():
        if not (isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value)):
            continue
        for i, item in enumerate(value):
            sections = {k: v for k, v in item.items() if k != "name"}
            unknown = sorted(set(sections) - set(SECTIONS))
            if unknown:
                raise ConfigError(f"{params_file}: notebook.{key}[{i}] ({item['name']!r}) has keys {unknown}; "
                                  f"a variant is a name plus config sections ({', '.join(SECTIONS)})")
            config_from_dict(deep_merge(cfg, sections), f"{params_file}: notebook.{key}[{i}] ({item['name']!r})")


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
) -> RunRecord:
    """Execute one notebook with one params file; never raises for a notebook failure (see the record)."""
    import papermill as pm

    notebook, params_file = Path(notebook), Path(params_file)
    check_name(suite, "suite")
    if run_id is not None:
        check_name(run_id, "run id")
    cfg_dict, nb_params = validate_run(notebook, params_file, overrides, parameters)  # ConfigError: nothing ran
    run_id = run_id or f"{notebook.stem}-{params_file.stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    run_dir = Path(reports_root) / suite / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
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
        **provenance("."),
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
    parameters = {**nb_params, "params_file": params_file.as_posix(), "overrides": dict(overrides or {}),
                  "run_dir": run_dir.as_posix(), "source_run": source_run}
    executed = run_dir / "executed.ipynb"
    status, error = "completed", None
    try:
        pm.execute_notebook(
            str(notebook), str(executed), parameters=parameters, kernel_name=kernel_name, cwd=".",
            log_output=log_output, progress_bar=False, request_save_on_cell_execute=True,
            autosave_cell_every=30, execution_timeout=timeout, coalesce_streams=True,
        )
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, partial output kept
        status, error = _status_of(exc), _describe_error(exc)
        manifest["traceback"] = traceback.format_exc(limit=5)
    finished = time.time()
    outputs_file = run_dir / "outputs.json"
    outputs = json.loads(outputs_file.read_text()) if outputs_file.is_file() else {}
    manifest.update(
        status=status, error=error, finished_utc=_utc(finished), seconds=round(finished - started, 2),
        outputs=outputs, attn_backend=outputs.get("attn_backend"),
    )
    if executed.is_file():
        from pgolf_core.report.html import render_html

        try:
            render_html(executed, run_dir / "report.html", title=f"{run_id} ({status})")
        except Exception as exc:  # noqa: BLE001 - a rendering failure must not hide the run's own status
            manifest["render_error"] = f"{type(exc).__name__}: {exc}"
    manifest["files"] = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    atomic_write_json(run_dir / "manifest.json", manifest)
    if update_index:
        from pgolf_core.report.index import build_index

        build_index(reports_root)
    return RunRecord(run_id, run_dir, status, error)  # type: ignore[arg-type]


def load_suite(suite_dir: str | os.PathLike) -> SuiteSpec:
    path = Path(suite_dir) / "suite.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no suite.yaml in {suite_dir}")
    raw = yaml_load(path.read_text(encoding="utf-8"), str(path))
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: invalid suite: {problems}") from None
    for r in spec.runs:
        check_name(r.name, f"{path}: run name")  # part of its run ids, hence of folder names
        check_plain(r.parameters, str(path), f"runs.{r.name}.parameters")
    names = [r.name for r in spec.runs]
    for r in spec.runs:
        if r.source is not None and r.source not in names[: names.index(r.name)]:
            raise ConfigError(f"{path}: run {r.name!r} reads source {r.source!r}, which is not an earlier run")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique, got {names}")
    return spec


def check_params(path: str | os.PathLike) -> str:
    """``pgolf config check``: a params file (config, its notebook section, and every entry of the
    suite.yaml beside it that uses it, against that entry's notebook) or a suite folder / suite.yaml
    (every entry). Raises ConfigError; returns what was checked."""
    path = Path(path)
    if path.is_dir() or path.name == "suite.yaml":
        suite_dir = path if path.is_dir() else path.parent
        spec = load_suite(suite_dir)
        for e in spec.runs:
            where = f"{suite_dir / 'suite.yaml'}: runs.{e.name}"
            validate_run(e.notebook, suite_dir / e.params, None, e.parameters, where)
        return f"suite {suite_dir}: {len(spec.runs)} entries"
    raw, nb = split_params(path)
    _check_code_files(config_from_dict(raw, str(path)), path)
    check_plain(nb, str(path), NOTEBOOK_SECTION)
    users = []
    if (path.parent / "suite.yaml").is_file():
        spec = load_suite(path.parent)
        for e in spec.runs:
            if (path.parent / e.params).resolve() == path.resolve() and Path(e.notebook).is_file():
                where = f"{path.parent / 'suite.yaml'}: runs.{e.name}"
                validate_run(e.notebook, path, None, e.parameters, where)
                users.append(Path(e.notebook).name)
    return str(path) + (f" (with {', '.join(users)})" if users else "")


def run_suite(
    suite_dir: str | os.PathLike,
    *,
    seeds: list[int] | None = None,
    reports_root: str | os.PathLike = "reports",
    only: list[str] | None = None,
    log_output: bool = True,
) -> list[RunRecord]:
    """Run every entry of ``suite_dir/suite.yaml`` (for each seed), validating all of them first."""
    suite_dir = Path(suite_dir)
    spec = load_suite(suite_dir)
    suite_name = check_name(suite_dir.resolve().name, f"{suite_dir}: suite folder name")
    entries = [e for e in spec.runs if not only or e.name in only]
    seed_list: list[int | None] = list(seeds or spec.seeds) or [None]
    for e in entries:  # validate every run before starting the first one
        for seed in seed_list:
            validate_run(e.notebook, suite_dir / e.params, {"train.seed": seed} if seed is not None else None,
                         e.parameters, f"{suite_dir / 'suite.yaml'}: runs.{e.name}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    records: list[RunRecord] = []
    for seed in seed_list:
        by_name: dict[str, RunRecord] = {}
        for e in entries:
            suffix = f"-s{seed}" if seed is not None else ""
            source = by_name[e.source].run_dir.as_posix() if e.source and e.source in by_name else ""
            rec = run_notebook(
                e.notebook, suite_dir / e.params, suite=suite_name, reports_root=reports_root,
                run_id=f"{stamp}-{e.name}{suffix}", overrides={"train.seed": seed} if seed is not None else None,
                source_run=source, parameters=e.parameters, group=f"{suite_name}/{e.name}", timeout=e.timeout,
                log_output=log_output,
            )
            by_name[e.name] = rec
            records.append(rec)
    return records
