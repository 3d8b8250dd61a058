"""Strict, typed configuration: YAML files plus ``key=value`` overrides, validated by pydantic.

Every config class derives from :class:`StrictModel`, which rejects unknown keys. Errors are
turned into :class:`~lyco_bench.errors.BadInput` with the file and the dotted key path, e.g.
``experiments/demo.yaml: seeds.0: Input should be a valid integer``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from lyco_bench.errors import BadInput

T = TypeVar("T", bound=BaseModel)


# The largest float32: every setting that is a float ends up in float32 arithmetic somewhere
# (learning rates, multipliers, guidance, loss weights), where a larger value is inf.
FLOAT32_MAX = 3.4028234663852886e38


def check_finite32(value: Any, path: str = "") -> Any:
    """``value`` when every float in it (lists and maps too) is finite in float32, else ValueError
    (``<key path>: …`` for a value inside a list or map, which validation errors append)."""
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        where = f"{path}: " if path else ""
        raise ValueError(
            f"{where}must be a finite number within float32's range (|x| ≤ 3.4e38), not {value!r}"
        )
    items = (
        enumerate(value)
        if isinstance(value, list | tuple)
        else value.items()
        if isinstance(value, dict)
        else ()
    )
    for key, item in items:
        check_finite32(item, f"{path}.{key}" if path else str(key))
    return value


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, instances are immutable, and every float
    is finite in float32 (NaN, inf and 1e39 are refused where they are parsed)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _finite_floats(cls, value: Any) -> Any:
        return check_finite32(value)


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


_YAML_BOOLS = {"true", "false"}
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_override_value(raw: str) -> Any:
    """A ``key=value`` override's value as typed: YAML for lists, maps, numbers, true/false, null,
    but text where YAML 1.1 would mangle it — ``tiny:`` stays a string (not a mapping),
    ``no``/``off`` stay strings (not booleans), ``1e-4`` is a number (YAML 1.1 wants ``1.0e-4``)."""
    text = raw.strip()
    if text == "":
        return ""
    if _FLOAT_RE.match(text) and not text.lstrip("+-").isdigit():
        return float(text)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool) and text.lower() not in _YAML_BOOLS:
        return raw
    if isinstance(value, dict) and not text.startswith("{"):
        return raw
    if isinstance(value, list) and not text.startswith("["):
        return raw
    if value is not None and not isinstance(value, str | int | float | bool | list | dict):
        return raw  # dates, timestamps: keep the text
    return value


def apply_overrides(
    data: dict[str, Any], overrides: list[str], *, source: str = "override"
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict, returning a copy (values: parse_override_value)."""
    import copy

    data = copy.deepcopy(data) if data else {}
    for item in overrides:
        if "=" not in item:
            raise BadInput(f"{source} {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = parse_override_value(raw)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if part.isdigit() and isinstance(node, list):
                node = node[int(part)]
                continue
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = parts[-1]
        if last.isdigit() and isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def format_validation_error(exc: ValidationError, *, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if err["type"] == "value_error":
        # A validator's "<key>: <message>" names a key below loc (e.g. an algorithm's own setting).
        msg = msg.removeprefix("Value error, ")
        key, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[A-Za-z_][\w.]*", key):
            loc, msg = f"{loc}.{key}" if loc else key, rest
    loc = loc or "<root>"
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{extra}"


def validate(model_cls: type[T], data: Any, *, source: str) -> T:
    """Validate ``data`` against ``model_cls``; on failure raise BadInput naming source and key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"{source}: expected a mapping at the top level")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise BadInput(format_validation_error(exc, source=source)) from None


def load_config(model_cls: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    """Load a YAML file (or nothing) into ``model_cls``, after applying ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    if data is not None and not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data or {}, overrides or [], source=str(path or "override"))
    return validate(model_cls, data, source=str(path) if path is not None else "config")
