"""A config field's value read as its flag reads it, or refused with a one-line ConfigError naming the flag.

    from hafrm.fields import ConfigError, coerce
    coerce(TrainConfig, {"lr": "1e-4", "method": "hf"})   # ConfigError: --method: 'hf' is not one of rm, dpo, haf

The lowest layer of the configs: `hafrm.config` reads YAML values through `coerce`, `hafrm.validation`
checks built configs with `field_value`, and `hafrm.preflight` raises `ConfigError`. It imports none of them.
"""

from __future__ import annotations

import types
import typing
from typing import Literal


class ConfigError(ValueError):
    """A field value that cannot work, found before anything loads; the message is one line naming the flag."""


_BOOLEANS = {
    "true": True,
    "yes": True,
    "y": True,
    "t": True,
    "1": True,
    "false": False,
    "no": False,
    "n": False,
    "f": False,
    "0": False,
}  # HfArgumentParser's string_to_bool
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_value(name: str, annotation, value, strict: bool = False):
    """`value` as field `name` (of type `annotation`) holds it, converted as its flag's parser converts text.

    strict: no conversion, only the check (a config built in Python must hold the right types already).
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        (annotation,) = [arg for arg in args if arg is not type(None)]
        return field_value(name, annotation, value, strict)
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{flag(name)}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        items = [value] if isinstance(value, str) and not strict else value
        if not isinstance(items, list):
            raise ConfigError(f"{flag(name)}: expected a list of {_TYPE_NAMES[args[0]]}, got {value!r}")
        return [field_value(name, args[0], item, strict) for item in items]
    converted = _converted(annotation, value, strict)
    if converted is None:
        raise ConfigError(f"{flag(name)}: expected {_TYPE_NAMES[annotation]}, got {value!r}")
    return converted


def _converted(annotation: type, value, strict: bool):
    """`value` as an `annotation` (bool, int, float or str), or None when it is not one."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        return _BOOLEANS.get(value.lower()) if isinstance(value, str) and not strict else None
    if annotation is float and is_number:
        return value if strict else float(value)
    if annotation is int and is_number:
        return value if isinstance(value, int) else None  # 8.0 is refused, as `--batch-size 8.0` is
    if annotation is str and (isinstance(value, str) or (is_number and not strict)):
        return str(value)
    if isinstance(value, str) and not strict and annotation in (int, float):
        try:
            return annotation(value)  # "1e-4": YAML reads it as text, the flag as a number
        except ValueError:
            return None
    return None


def coerce(config_class, values: dict) -> dict:
    """YAML values converted as their flags would be; ConfigError naming the flag. Unknown keys pass through."""
    hints = typing.get_type_hints(config_class)
    return {key: field_value(key, hints[key], value) if key in hints else value for key, value in values.items()}
