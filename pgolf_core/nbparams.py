"""Validation before launch: a params file's config and notebook section, a suite entry's parameters.

``validate_run`` checks the config, the code-file globs, the notebook's declared parameters (papermill's
``inspect_notebook``: an unknown parameter is refused, papermill would only warn) and every value.

papermill writes each parameter into the notebook's injected cell as Python source. It escapes str,
int, float, bool, None, list and dict; anything else (a tuple from YAML's ``!!pairs``, a set from
``!!set``, bytes, a date) is written with ``str()`` between quotes, unescaped, so a crafted params file
could close the quote and run code in the kernel. Every value that reaches papermill therefore passes
``check_parameters`` first: exact types (no subclasses, no tuples), string keys, bounded nesting, and
the type of the notebook's own declaration (``nproc: int = 1`` takes an int).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pgolf_core.code_bytes import CodeFilesError, check_code_globs
from pgolf_core.config import (
    ConfigError,
    config_from_dict,
    deep_merge,
    parse_overrides,
    read_params_tree,
    to_dict,
)
from pgolf_core.stages import STAGES

NOTEBOOK_SECTION = "notebook"
#: parameters every pgolf notebook declares; the driver fills them
DRIVER_PARAMS = ("params_file", "overrides", "run_dir", "source_run")

MAX_DEPTH = 16  # lists / mappings nested deeper than this are refused (a crafted file could nest far more)
_SCALARS = (str, int, float, bool, type(None))
#: papermill's inferred type name -> the exact Python types a value may have (int is a valid float)
_DECLARED = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """Why ``value`` is not a plain parameter value (None when it is one); ``where`` names it."""
    kind = type(value)
    if kind in _SCALARS:
        return None
    if depth >= MAX_DEPTH:
        return f"{where}: nested deeper than {MAX_DEPTH} levels"
    if kind is list:
        for i, item in enumerate(value):
            problem = plain_problem(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{where}: key {_short(key)} is a {type(key).__name__}; mapping keys must be strings"
            problem = plain_problem(item, f"{where}.{key}", depth + 1)
            if problem:
                return problem
        return None
    return (
        f"{where}: got a {kind.__name__} ({_short(value)}); a notebook parameter must be a str, int, "
        "float, bool, null, or a list / mapping of those (YAML tags such as !!pairs, !!set are refused)"
    )


def _declared_types(info: dict) -> tuple[type, ...] | None:
    name = str(info.get("inferred_type_name") or "")
    return _DECLARED.get(name.split("[", 1)[0].strip())  # "list[str]" -> list; unknown annotations: any plain


def _value_problem(key: str, value: Any, where: str) -> str | None:
    """Checks of what a value means, for parameters shared by the pgolf notebooks."""
    if key == "nproc" and (type(value) is not int or value < 1):
        return f"{where}: got {type(value).__name__} {_short(value)}; expected a process count (an int >= 1)"
    if key == "stages":
        if type(value) is not list:
            return f"{where}: got {type(value).__name__} {_short(value)}; expected a list of stage names"
        bad = [s for s in value if s not in STAGES]
        if bad:
            return f"{where}: unknown stage(s) {bad}; stages are {', '.join(STAGES)}"
    return None


def check_parameters(values: dict, declared: dict[str, dict], source: str, prefix: str = "notebook") -> None:
    """Raise ConfigError naming ``source``, the key and what was found, unless every value is plain, of
    its declared type (``declared``: papermill's ``inspect_notebook``) and meaningful."""
    if type(values) is not dict:
        raise ConfigError(
            f"{source}: {prefix!r} must be a mapping of notebook parameters, got {type(values).__name__}"
        )
    for key, value in values.items():
        where = f"{prefix}.{key}"
        problem = plain_problem({key: value}, prefix) if type(key) is not str else plain_problem(value, where)
        if problem is None and key in declared:
            want = _declared_types(declared[key])
            if want is not None and (type(value) not in want):
                problem = (
                    f"{where}: got {type(value).__name__} {_short(value)}; the notebook declares "
                    f"{declared[key]['inferred_type_name']}"
                )
        problem = problem or _value_problem(key, value, where)
        if problem:
            raise ConfigError(f"{source}: {problem}")


def check_plain(values: Any, source: str, prefix: str) -> None:
    """Only plainness (no declaration at hand), e.g. a params file's notebook section on its own."""
    problem = plain_problem(values, prefix)
    if problem is None and type(values) is dict:
        problem = next((p for k, v in values.items() if (p := _value_problem(k, v, f"{prefix}.{k}"))), None)
    if problem:
        raise ConfigError(f"{source}: {problem}")


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
    notebook: str | os.PathLike,
    params_file: str | os.PathLike,
    overrides: dict | None = None,
    parameters: dict | None = None,
    parameters_source: str = "suite entry",
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
    check_code_files(cfg, params_file)
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


def check_code_files(cfg, params_file) -> None:
    try:
        check_code_globs(cfg.quant.code_files)
    except CodeFilesError as e:
        raise ConfigError(f"{params_file}: {e}") from None


def _validate_sweeps(nb_params: dict, cfg: dict, params_file) -> None:
    """A notebook parameter that is a list of {name, <section>: overrides} (schemes, variants, settings)
    is a sweep over config variants: each variant must itself be a valid config."""
    from pgolf_core.config import SECTIONS

    for key, value in nb_params.items():
        if not (
            isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value)
        ):
            continue
        for i, item in enumerate(value):
            sections = {k: v for k, v in item.items() if k != "name"}
            unknown = sorted(set(sections) - set(SECTIONS))
            if unknown:
                raise ConfigError(
                    f"{params_file}: notebook.{key}[{i}] ({item['name']!r}) has keys {unknown}; "
                    f"a variant is a name plus config sections ({', '.join(SECTIONS)})"
                )
            config_from_dict(
                deep_merge(cfg, sections), f"{params_file}: notebook.{key}[{i}] ({item['name']!r})"
            )
