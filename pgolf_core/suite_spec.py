"""The suite.yaml schema, its loader, and ``pgolf config check`` of params files and suites.

A suite folder (params/smoke, params/h100x8, ...) holds suite.yaml: the ordered notebook runs, each with a
params file beside it, optional notebook parameters and the earlier run whose folder it reads. Everything
is checked before anything runs: the schema, run names (they become folder names), plain notebook
values (pgolf_core.nbparams), and sources that name an earlier run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pgolf_core.config import ConfigError, config_from_dict, yaml_load
from pgolf_core.nbparams import NOTEBOOK_SECTION, check_code_files, check_plain, split_params, validate_run
from pgolf_core.report.runs import check_name


class SuiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(description="short name, unique in the suite (used in run ids)")
    notebook: str = Field(description="path of the notebook, relative to the repository root")
    params: str = Field(description="params file, relative to the suite folder")
    source: str | None = Field(None, description="name of an earlier entry whose run folder this one reads")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="notebook parameters for this entry (e.g. nproc: 8)"
    )
    timeout: float | None = Field(None, gt=0, description="per-cell timeout in seconds (None: no limit)")


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    description: str = ""
    seeds: list[int] = Field(
        default_factory=list, description="run the suite once per seed (--seeds overrides)"
    )
    runs: list[SuiteEntry]


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
            raise ConfigError(
                f"{path}: run {r.name!r} reads source {r.source!r}, which is not an earlier run"
            )
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
    check_code_files(config_from_dict(raw, str(path)), path)
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
