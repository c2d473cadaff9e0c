"""YAML for params files: safe loading, duplicate keys rejected, 1e-3 read as a float (YAML 1.1 wants
"1.0e-3"), alias expansion capped; ``echo`` bounds any value that an error message repeats."""

from __future__ import annotations

import re
import reprlib
from typing import Any

import yaml

# A params file has a few hundred values; anchors and aliases (``b: &b [*a, *a, ...]``) can make a few
# hundred bytes expand to billions of them (the "billion laughs" bomb), which validation would then
# walk and an error message would repeat. The cap counts values with every alias expanded.
MAX_EXPANDED_VALUES = 100_000
ECHO_CHARS = 200

_echo = reprlib.Repr()
_echo.maxlevel, _echo.maxlist, _echo.maxtuple, _echo.maxdict = 3, 8, 8, 8
_echo.maxstring, _echo.maxother, _echo.maxlong = 80, 80, 40


def echo(value: Any) -> str:
    """repr(value), shortened (nested containers elided, at most ECHO_CHARS characters) for messages."""
    text = _echo.repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


class ConfigError(ValueError):
    """A params file (or override) is invalid. The message names the file, the key and the fix."""


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key {echo(key)} at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key].start_mark.line + 1})"
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_expansion(root: yaml.Node, limit: int = MAX_EXPANDED_VALUES) -> int:
    """The number of values of the document with every alias expanded; raises past ``limit`` or on an
    alias inside its own anchor. Each node is visited once (sizes are memoized), so a bomb costs nothing.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the ancestors of the node being visited
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > limit:
                raise ConfigError(
                    f"aliases expand to more than {limit:,} values (line {node.start_mark.line + 1}); "
                    "a params file holds a few hundred: is this an alias bomb?"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ConfigError(
                f"recursive alias at line {node.start_mark.line + 1}: a value that contains itself"
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def yaml_load(text: str, source: str) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return loader.construct_document(node)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()
