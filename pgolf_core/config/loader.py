"""The only door into a RunConfig: read a params file (following ``extends``), apply overrides, validate,
and translate pydantic's errors into lines that name the file, the dotted key and the fix.

- A params file may start with ``extends: other.yaml`` (a path relative to it, or a list of them);
  bases are deep-merged first, the file's own keys win.
- Overrides (``--set model.num_layers=11``) are parsed as YAML scalars and applied last.
- ``to_yaml(cfg)`` writes the fully resolved tree; loading it back gives an equal config.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pgolf_core.config.model import RENAMED_MODEL_KEYS
from pgolf_core.config.sections import SECTIONS, RunConfig
from pgolf_core.config.strict_yaml import ConfigError, echo, yaml_load

ECHO_KEY_CHARS = 200  # a dotted key as long as a YAML key can be is cut
# An error report lists at most this many problems (a bad list can hold thousands).
MAX_ERROR_LINES = 20


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for listing valid keys)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: dict) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)[:ECHO_KEY_CHARS] or "<top level>"
    kind, given = err["type"], err.get("input")
    if kind == "extra_forbidden":
        owner = _section_model(loc)
        valid = sorted(owner.model_fields) if owner else []
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), near[0]])!r}?)" if near else ""
        where = f"in {'.'.join(map(str, loc[:-1]))!r}" if len(loc) > 1 else "at the top level"
        return f"{key}: unknown key{hint}; valid keys {where}: {', '.join(valid)}"
    if kind == "literal_error":
        return f"{key}: got {echo(given)}; expected one of {err['ctx']['expected']}"
    if kind.endswith("_type") or kind in ("model_type", "model_attributes_type"):
        want = kind.removesuffix("_type").replace("model", "mapping").replace("_attributes", "")
        return f"{key}: expected {want}, got {type(given).__name__} {echo(given)}"
    if kind == "finite_number":
        return f"{key}: expected a finite number, got {echo(given)}"
    if kind == "value_error":
        return err["msg"].removeprefix("Value error, ")  # our validators name their keys themselves
    return f"{key}: {err['msg']} (got {echo(given)})"


def _refuse_renamed_keys(raw: dict, source: str) -> None:
    """One line for the flat model keys of the previous release, each with its new dotted key."""
    model = raw.get("model")
    old = [k for k in model if k in RENAMED_MODEL_KEYS] if isinstance(model, dict) else []
    if old:
        moves = "; ".join(f"model.{k} was renamed to model.{RENAMED_MODEL_KEYS[k]}" for k in old)
        raise ConfigError(f"{source}: {moves}")


def config_from_dict(raw: Any, source: str = "<dict>") -> RunConfig:
    """Validate a plain dict into a RunConfig; errors name ``source`` and every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}"
        )
    _refuse_renamed_keys(raw, source)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        lines = [_describe(err) for err in errors[:MAX_ERROR_LINES]]
        if len(errors) > MAX_ERROR_LINES:
            lines.append(f"... and {len(errors) - MAX_ERROR_LINES} more")
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines)) from None


def read_params_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: 'extends' cycle: {' -> '.join(map(str, (*chain, path)))}")
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: params file not found{where}")
    raw = yaml_load(path.read_text(encoding="utf-8"), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("extends", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'extends' must be a path or a list of paths, got {echo(bases)}")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, read_params_tree(path.parent / base, (*chain, path)))
    return deep_merge(merged, raw)


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict:
    """``["model.num_layers=11", "train.seed=7"]`` (or a dotted dict) -> nested dict, values as YAML."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else []
    if not isinstance(items, dict):
        parsed = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override {echo(item)}: expected KEY=VALUE, e.g. model.num_layers=11")
            k, v = item.split("=", 1)
            parsed.append((k.strip(), yaml_load(v, f"override {echo(item)}")))
        pairs = parsed
    out: dict = {}
    for dotted, value in pairs:
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {echo(dotted)}: {echo(p)} is set to a value and also used as a section"
                )
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Load ``path`` (following ``extends``), apply overrides, validate. The only door into a RunConfig."""
    path = Path(path)
    raw = read_params_tree(path)
    # A params file may carry values for a notebook's parameters cell; pgolf_core.suite validates them
    # against the notebook. They are not part of the run's config.
    notebook = raw.pop("notebook", {})
    if not isinstance(notebook, dict):
        raise ConfigError(
            f"{path}: 'notebook' must be a mapping of notebook parameters, got {type(notebook).__name__}"
        )
    over = parse_overrides(overrides)
    source = str(path) + (f" with overrides {echo(overrides)}" if over else "")
    return config_from_dict(deep_merge(raw, over), source)


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


def to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config, every key present, in section order: what reports and runs record."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def describe_schema() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, description) for every leaf field: the frozen key surface."""
    rows: list[tuple[str, str, Any, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            generic = typing.get_origin(ann) is not None  # list[float], Literal[...]: the full spelling
            tname = str(ann).replace("typing.", "") if generic else getattr(ann, "__name__", None) or str(ann)
            default = f.default_factory() if f.default_factory is not None else f.default
            rows.append((f"{prefix}{name}", tname, default, f.description or ""))

    walk(RunConfig, "")
    return rows
