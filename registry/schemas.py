"""JSON Schemas of model inputs and outputs: inference from samples, checks, and diffs.

Schemas describe one instance (input) and one prediction (output). The diff between two
versions says, in words a data scientist understands, what changed and which changes break
existing callers: callers send what the old input schema accepted (so the new one must
accept all of it) and rely on what the old output schema promised (so the new one must not
promise less).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import re2
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError
from referencing import Registry

from core.errors import InvalidInput

_ORDER = ["null", "boolean", "integer", "number", "string", "array", "object"]

# What a registration may carry, so that every gateway can walk each route it is given (a
# schema in a route is compiled by the one process every service goes through). A level of
# data is two levels of its schema ("properties" and the field's schema), so an instance at
# the limit still has an inferred schema within the schema limit.
INSTANCE_MAX_DEPTH = 24
SCHEMA_MAX_DEPTH = 64
SCHEMA_MAX_BYTES = 64 * 1024


# ---------------------------------------------------------------- inference


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _normal(schema: Any) -> dict:
    """Boolean subschemas (draft 2020-12) as objects: true accepts anything, false nothing."""
    if schema is True or schema is None:
        return {}
    if schema is False:
        return {"not": {}}
    return schema


def _types(schema: dict) -> set[str]:
    schema = _normal(schema)
    if schema.get("not") == {}:
        return set()
    t = schema.get("type")
    if t is None:
        return set(_ORDER)
    return {t} if isinstance(t, str) else set(t)


def _with_types(schema: dict, types: set[str]) -> dict:
    # A sample's 3 says little about whether 3.5 is fine; numeric features are numbers.
    if "integer" in types:
        types = (types - {"integer"}) | {"number"}
    ordered = [t for t in _ORDER if t in types]
    return {"type": ordered[0] if len(ordered) == 1 else ordered, **schema}


def infer(values: list[Any]) -> dict:
    """A simple schema that every value in `values` satisfies (integers are inferred as numbers)."""
    if not values:
        return {}
    types = {_type_of(v) for v in values}
    schema: dict[str, Any] = {}
    objects = [v for v in values if isinstance(v, dict)]
    arrays = [v for v in values if isinstance(v, list)]
    if objects:
        keys: list[str] = []
        for obj in objects:
            keys += [k for k in obj if k not in keys]
        schema["properties"] = {k: infer([o[k] for o in objects if k in o]) for k in keys}
        schema["required"] = [k for k in keys if all(k in o for o in objects)]
    if arrays:
        schema["items"] = infer([item for a in arrays for item in a])
        lengths = {len(a) for a in arrays}
        if len(lengths) == 1:
            schema["minItems"] = schema["maxItems"] = lengths.pop()
    return _with_types(schema, types)


def instances_from_sample(sample: Any) -> list[Any]:
    """A sample input is `{"instances": [...]}` or a bare list of instances."""
    if isinstance(sample, dict) and "instances" in sample:
        sample = sample["instances"]
    if not isinstance(sample, list) or not sample:
        raise ValueError('A sample input is a non-empty list of instances, or {"instances": [...]}.')
    return sample


def field_order(schema: dict) -> list[str] | None:
    """The fields that make up an array model's feature row: the required properties, in
    the order of the schema's `required` list. Optional fields are context, not features.

    The order comes from the `required` list, never from the keys of `properties`: JSON
    objects have no order, and PostgreSQL's jsonb does not keep the one they were sent in.
    """
    props = schema.get("properties")
    if not isinstance(props, dict):
        return None
    return [name for name in schema.get("required") or [] if name in props]


# ---------------------------------------------------------------- checks


def _patterns(schema: Any) -> tuple[list[str], bool]:
    """The `pattern` values in a schema, and whether it uses `patternProperties`."""
    patterns, pattern_properties = [], False
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.append(node["pattern"])
            pattern_properties = pattern_properties or "patternProperties" in node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return patterns, pattern_properties


# Patterns are matched with RE2, in time linear in the input, here and in every gateway: a
# pattern such as ^(a+)+$ would otherwise let one request hold a gateway for minutes.
def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not re2.compile(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


LinearValidator = validators.extend(Draft202012Validator, {"pattern": _pattern})


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolves(schema: dict, ref: str) -> bool:
    node: Any = schema
    for part in ref[1:].lstrip("/").split("/") if ref not in ("#", "") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def depth(value: Any) -> int:
    """How deeply JSON arrays and objects nest in `value` (a number or string is 0), found
    without recursion, so any value that was parsed can be measured."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node)
    return deepest


def instances_problem(instances: list[Any], *, what: str = "An instance") -> str | None:
    """None if every instance nests within the limit, else what is wrong."""
    for n, instance in enumerate(instances):
        if (levels := depth(instance)) > INSTANCE_MAX_DEPTH:
            return (
                f"{what} ({n}) nests {levels} levels deep; at most {INSTANCE_MAX_DEPTH} are allowed. "
                "Flatten the input, or send a nested part as a string."
            )
    return None


def schema_problem(schema: Any) -> str | None:
    """None if `schema` is a usable JSON Schema (draft 2020-12) within the registry's limits,
    else what is wrong."""
    if not isinstance(schema, dict):
        return "A schema must be a JSON object."
    if (levels := depth(schema)) > SCHEMA_MAX_DEPTH:
        return f"The schema nests {levels} levels deep; at most {SCHEMA_MAX_DEPTH} are allowed."
    if (size := len(json.dumps(schema, separators=(",", ":")))) > SCHEMA_MAX_BYTES:
        return f"The schema is {size} bytes as JSON; at most {SCHEMA_MAX_BYTES} are allowed."
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top level"
        return f"Not a valid JSON Schema at {where}: {exc.message}"
    except RecursionError:
        return "The schema is nested too deeply."
    patterns, pattern_properties = _patterns(schema)
    if pattern_properties:
        return (
            "patternProperties is not supported: property names would be matched by a backtracking regex "
            "engine. List the properties, or describe the rest with additionalProperties."
        )
    for pattern in patterns:
        try:
            re2.compile(pattern)
        except re2.error:
            return (
                f"The pattern {pattern[:100]!r} needs a backtracking regex engine (a backreference or a "
                "lookaround); patterns are matched in linear time (RE2 syntax). Rewrite it without them."
            )
    for ref in _refs(schema):
        # Only references inside the schema itself: the portal never fetches schemas from
        # elsewhere (that would let a schema make the server call any URL).
        if not ref.startswith("#"):
            return f"$ref {ref!r} points outside the schema; only local references like '#/$defs/name' are allowed."
        if not _resolves(schema, ref):
            return f"$ref {ref!r} does not point to anything in the schema."
    return None


def validation_errors(schema: dict, instances: list[Any], *, limit: int = 10) -> list[str]:
    # An empty registry: no $ref is ever fetched from outside the schema.
    validator = LinearValidator(schema, registry=Registry())
    errors = []
    for n, instance in enumerate(instances):
        for error in validator.iter_errors(instance):
            path = ".".join(str(p) for p in error.absolute_path)
            errors.append(f"instance {n}{' field ' + path if path else ''}: {error.message}")
            if len(errors) >= limit:
                return errors
    return errors


# ---------------------------------------------------------------- diffs


@dataclass(frozen=True)
class Change:
    side: str  # "input" or "output"
    path: str
    message: str
    breaking: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label(side: str, path: str) -> str:
    if not path:
        return "The input" if side == "input" else "The output"
    if path == "[]":  # an instance that is an array: its values have no names
        return "Each value of an instance" if side == "input" else "Each value of a prediction"
    return f"{side.capitalize()} field `{path}`"


def _values(n: int) -> str:
    return f"{n} value{'s' if n != 1 else ''}"


def _length(schema: dict) -> str:
    """How many values an array schema takes, in words."""
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and low == high:
        return f"exactly {_values(low)}"
    if low is not None and high is not None:
        return f"{low} to {_values(high)}"
    if high is not None:
        return f"at most {_values(high)}"
    if low is not None:
        return f"at least {_values(low)}"
    return "any number of values"


def _diff_length(old: dict, new: dict, path: str, out: list[Change]) -> None:
    """An array's minItems/maxItems, said as a number of values: an instance that is an
    array (a row of features) has no field name to report."""
    low_old, low_new = old.get("minItems") or 0, new.get("minItems") or 0
    high_old, high_new = old.get("maxItems"), new.get("maxItems")
    stricter = low_new > low_old or (high_new is not None and (high_old is None or high_new < high_old))
    looser = low_new < low_old or (high_old is not None and (high_new is None or high_new > high_old))
    if not stricter and not looser:
        return
    subject = "Each instance" if not path else _label("input", path)
    fixed_old = old.get("minItems") is not None and old.get("minItems") == high_old
    fixed_new = new.get("minItems") is not None and new.get("minItems") == high_new
    if fixed_old and fixed_new:
        message = f"{subject} now has {_values(high_new)} instead of {high_old}."
    else:
        message = f"{subject} now takes {_length(new)} (before: {_length(old)})."
    out.append(Change("input", path, message, stricter))


def _describe(types: set[str]) -> str:
    return " or ".join(t for t in _ORDER if t in types) or "nothing"


def _accepted(types: set[str]) -> set[str]:
    # An integer is also a number: a schema of type number accepts integers.
    return types | ({"integer"} if "number" in types else set())


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# (keyword, True if a larger value is stricter): a stricter bound refuses input that was fine.
_BOUNDS = (
    ("minimum", True),
    ("exclusiveMinimum", True),
    ("minLength", True),
    ("maximum", False),
    ("exclusiveMaximum", False),
    ("maxLength", False),
)


def _diff_input(old: Any, new: Any, path: str, out: list[Change]) -> None:
    old, new = _normal(old), _normal(new)
    label = _label("input", path)
    old_t, new_t = _types(old), _types(new)
    lost = _accepted(old_t) - _accepted(new_t)
    if lost:
        out.append(
            Change("input", path, f"{label} now accepts only {_describe(new_t)} (before: {_describe(old_t)}).", True)
        )
    elif _accepted(new_t) - _accepted(old_t):
        out.append(Change("input", path, f"{label} now also accepts {_describe(new_t - old_t)}.", False))
    if ("enum" in new and set(map(repr, old.get("enum", []))) - set(map(repr, new["enum"]))) or (
        "enum" in new and "enum" not in old
    ):
        out.append(Change("input", path, f"{label} now accepts only the values {new['enum']}.", True))
    for key, grows_breaks in _BOUNDS:
        if key in new and new[key] != old.get(key):
            before = old.get(key)
            narrower = before is None or (new[key] > before if grows_breaks else new[key] < before)
            if narrower:
                out.append(Change("input", path, f"{label} has a stricter {key}: {new[key]} (before: {before}).", True))
    _diff_length(old, new, path, out)
    if "pattern" in new and new["pattern"] != old.get("pattern"):
        out.append(Change("input", path, f"{label} must now match the pattern {new['pattern']!r}.", True))

    old_props, new_props = old.get("properties") or {}, new.get("properties") or {}
    old_req, new_req = set(old.get("required") or []), set(new.get("required") or [])
    removed = [k for k in old_props if k not in new_props]
    added = [k for k in new_props if k not in old_props]
    for key in sorted(new_req - old_req - set(new_props) - set(old_props)):
        sub = _join(path, key)
        out.append(Change("input", sub, f"New required input field `{sub}`: every caller must now send it.", True))
    for key in removed:
        hint = ""
        same_type = [a for a in added if _types(new_props[a]) == _types(old_props[key])]
        if len(removed) == 1 and len(same_type) == 1:
            hint = f" It may have been renamed to `{_join(path, same_type[0])}`."
        out.append(Change("input", _join(path, key), f"{_label('input', _join(path, key))} was removed.{hint}", True))
    for key in added:
        sub = _join(path, key)
        if key in new_req:
            out.append(Change("input", sub, f"New required input field `{sub}`: every caller must now send it.", True))
        else:
            out.append(Change("input", sub, f"New optional input field `{sub}`.", False))
    for key in old_props:
        if key in new_props:
            sub = _join(path, key)
            if key in new_req and key not in old_req:
                out.append(Change("input", sub, f"{_label('input', sub)} is now required.", True))
            elif key in old_req and key not in new_req:
                out.append(Change("input", sub, f"{_label('input', sub)} is now optional.", False))
            _diff_input(old_props[key], new_props[key], sub, out)
    if (
        "additionalProperties" in new
        and new["additionalProperties"] is not True
        and (old.get("additionalProperties", True) is True and "object" in new_t)
    ):
        out.append(Change("input", path, f"{label} no longer accepts every field beyond those listed.", True))
    for key in ("const", "multipleOf", "format", "not", "oneOf", "anyOf", "allOf"):
        if key in new and new[key] != old.get(key):
            out.append(Change("input", path, f"{label} has a new or changed '{key}' rule.", True))
    if "items" in old or "items" in new:
        _diff_input(old.get("items", True), new.get("items", True), f"{path}[]" if path else "[]", out)


def _diff_output(old: Any, new: Any, path: str, out: list[Change]) -> None:
    old, new = _normal(old), _normal(new)
    label = _label("output", path)
    old_t, new_t = _types(old), _types(new)
    extra = _accepted(new_t) - _accepted(old_t)
    if extra:
        out.append(Change("output", path, f"{label} may now be {_describe(new_t)} (before: {_describe(old_t)}).", True))
    elif old_t != new_t:
        out.append(
            Change("output", path, f"{label} is now only {_describe(new_t)} (before: {_describe(old_t)}).", False)
        )
    if "enum" in old and set(map(repr, new.get("enum", [object()]))) - set(map(repr, old["enum"])):
        out.append(Change("output", path, f"{label} may now take values beyond {old['enum']}.", True))
    old_props, new_props = old.get("properties") or {}, new.get("properties") or {}
    old_req, new_req = set(old.get("required") or []), set(new.get("required") or [])
    for key in old_props:
        sub = _join(path, key)
        if key not in new_props:
            out.append(Change("output", sub, f"{_label('output', sub)} was removed.", True))
        else:
            if key in old_req and key not in new_req:
                out.append(Change("output", sub, f"{_label('output', sub)} may now be missing.", True))
            _diff_output(old_props[key], new_props[key], sub, out)
    for key in new_props:
        if key not in old_props:
            sub = _join(path, key)
            out.append(Change("output", sub, f"New output field `{sub}`.", False))
    if "items" in old or "items" in new:
        _diff_output(old.get("items", True), new.get("items", True), f"{path}[]" if path else "[]", out)


def diff(*, old_input: dict, new_input: dict, old_output: dict, new_output: dict) -> list[Change]:
    changes: list[Change] = []
    _diff_input(old_input or {}, new_input or {}, "", changes)
    _diff_output(old_output or {}, new_output or {}, "", changes)
    return changes


TASKS = ("classification", "regression")


def task_of(output_schema: Any, predictions: Any = None, *, declared: str = "") -> str:
    """The task a version's live quality is measured as: as declared, else from one
    prediction's type (strings, booleans, integers: classification; numbers: regression,
    unless every sample prediction is a whole number, as a classifier's labels are), else ''."""
    if declared:
        if declared not in TASKS:
            raise InvalidInput(f"task must be one of {', '.join(TASKS)} (or left out to infer it).", field="task")
        return declared
    kind = output_schema.get("type") if isinstance(output_schema, dict) else None
    if kind in ("integer", "string", "boolean"):
        return "classification"
    if kind == "number":
        whole = (
            isinstance(predictions, list)
            and predictions
            and all(isinstance(p, int) and not isinstance(p, bool) for p in predictions)
        )
        return "classification" if whole else "regression"
    return ""
