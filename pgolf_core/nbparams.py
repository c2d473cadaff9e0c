"""Notebook parameters: plain values only, of the type the notebook declares, checked before launch.

papermill writes each parameter into the notebook's injected cell as Python source. It escapes str,
int, float, bool, None, list and dict; anything else (a tuple from YAML's ``!!pairs``, a set from
``!!set``, bytes, a date) is written with ``str()`` between quotes, unescaped, so a crafted params file
could close the quote and run code in the kernel. Every value that reaches papermill therefore passes
``check_parameters`` first: exact types (no subclasses, no tuples), string keys, bounded nesting, and
the type of the notebook's own declaration (``nproc: int = 1`` takes an int).
"""

from __future__ import annotations

from typing import Any

from pgolf_core.config import ConfigError
from pgolf_core.stages import STAGES

MAX_DEPTH = 16  # lists / mappings nested deeper than this are refused (a crafted file could nest far more)
_SCALARS = (str, int, float, bool, type(None))
#: papermill's inferred type name -> the exact Python types a value may have (int is a valid float)
_DECLARED = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "list": (list,),
             "dict": (dict,)}


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
    return (f"{where}: got a {kind.__name__} ({_short(value)}); a notebook parameter must be a str, int, "
            "float, bool, null, or a list / mapping of those (YAML tags such as !!pairs, !!set are refused)")


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
        raise ConfigError(f"{source}: {prefix!r} must be a mapping of notebook parameters, got "
                          f"{type(values).__name__}")
    for key, value in values.items():
        where = f"{prefix}.{key}"
        problem = plain_problem({key: value}, prefix) if type(key) is not str else plain_problem(value, where)
        if problem is None and key in declared:
            want = _declared_types(declared[key])
            if want is not None and (type(value) not in want):
                problem = (f"{where}: got {type(value).__name__} {_short(value)}; the notebook declares "
                           f"{declared[key]['inferred_type_name']}")
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
