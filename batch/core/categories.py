"""The categorical fields of a JSON Schema: where a reply picks one of a few allowed values.

An `enum`, a `const` (pydantic's one-value `Literal`), a boolean, or an `anyOf`/`oneOf` of those
(and null: `Optional[Literal[...]]`). Nested objects are followed, their fields named by dotted
path (`address.country`); `$ref`s into the schema's own `$defs` are resolved, as pydantic writes
them for nested models and `Enum` classes. Arrays are not followed: a list of labels is not one
label.
"""

from __future__ import annotations

from typing import Any

JsonSchema = dict[str, Any]
Allowed = tuple[Any, ...]  # the values a field may take, in the schema's order
Path = tuple[str, ...]  # a field's names from the top object down: ("address", "country")
MAX_DEPTH = 8  # nesting followed; deeper (or recursive) schemas stop here


def categorical_fields(schema: JsonSchema) -> dict[Path, Allowed]:
    """Path -> allowed values, for every categorical field of `schema`'s object."""
    fields: dict[Path, Allowed] = {}
    _collect(schema, schema, (), fields, 0)
    return fields


def dotted(path: Path) -> str:
    return ".".join(path)


def _collect(
    root: JsonSchema, node: Any, prefix: Path, out: dict[Path, Allowed], depth: int
) -> None:
    node = _resolved(root, node)
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return
    for name, child in properties.items():
        path = (*prefix, str(name))
        allowed = allowed_values(root, child)
        if allowed is not None:
            out[path] = allowed
        else:
            _collect(root, child, path, out, depth + 1)


def allowed_values(root: JsonSchema, node: Any) -> Allowed | None:
    """The values a categorical schema allows; None for any other schema."""
    node = _resolved(root, node)
    if not isinstance(node, dict):
        return None
    if isinstance(node.get("enum"), list) and node["enum"]:
        return _unique(node["enum"])
    if "const" in node:
        return (node["const"],)
    kind = node.get("type")
    if kind == "boolean" or kind == ["boolean", "null"] or kind == ["null", "boolean"]:
        return (True, False) if kind == "boolean" else (True, False, None)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            return _union(root, node[key])
    return None


def _union(root: JsonSchema, branches: list[Any]) -> Allowed | None:
    values: list[Any] = []
    for branch in branches:
        resolved = _resolved(root, branch)
        if isinstance(resolved, dict) and resolved.get("type") == "null" and len(resolved) == 1:
            values.append(None)
            continue
        allowed = allowed_values(root, resolved)
        if allowed is None:
            return None  # one open branch (any string, say) and the field is not categorical
        values.extend(allowed)
    return _unique(values)


def _unique(values: list[Any] | tuple[Any, ...]) -> Allowed:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(value_key(value), value)
    return tuple(seen.values())


def _resolved(root: JsonSchema, node: Any) -> Any:
    """`node` with a local `$ref` (or pydantic's one-item `allOf` around one) followed."""
    for _ in range(MAX_DEPTH):
        if not isinstance(node, dict):
            return node
        if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            node = node["allOf"][0]
            continue
        ref = node.get("$ref")
        if not (isinstance(ref, str) and ref.startswith("#/")):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), None)
            if not isinstance(target, dict):
                return None
        node = target
    return None


def value_key(value: Any) -> str:
    """How a value is named in counts: a string as itself, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def value_at(output: Any, path: Path) -> tuple[bool, Any]:
    """(found, value) at `path` inside a reply."""
    for part in path:
        if not isinstance(output, dict) or part not in output:
            return False, None
        output = output[part]
    return True, output
