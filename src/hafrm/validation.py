"""Field checks of every entry point's config: types, choices and numeric ranges, before anything loads.

    from hafrm.validation import validate
    validate(cfg)      # ConfigError: --batch-size must be at least 1, got 0

`coerce` reads YAML values as their flags would be read (so `method: hf` in a file is refused as
`--method hf` is); `check_fields` checks a built config; `validate` adds the checks of what the fields
name (`hafrm.preflight`: data files, trackers, the model or run directory).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from typing import Literal

from .config import BonConfig, EvalConfig, RlhfConfig, ScoreConfig, ServeConfig, StatsConfig, TrainConfig


class ConfigError(ValueError):
    """A field value that cannot work, found before anything loads; the message is one line naming the flag."""


MIN_LENGTH = 16
_LENGTH = ((">=", MIN_LENGTH, "a chat template's own tokens take about 10: no prompt and response fit in fewer"),)
_SEED = ((">=", 0), ("<", 2**32, "numpy, which training seeds too, takes seeds in [0, 2**32)"))
_COUNT = ((">=", 1),)
_POSITIVE = ((">", 0),)
_NON_NEGATIVE = ((">=", 0),)
_SHARE = ((">=", 0), ("<", 1))
_TOP_P = ((">", 0), ("<=", 1))
# Numeric ranges per entry point: field -> ((operator, bound[, reason]), ...). A field not named takes any
# value of its type (TrainConfig.alpha: the paper's α sweep goes below 0); None, where allowed, passes.
RANGES = {
    TrainConfig: {
        "trainable_layers": _COUNT, "lora_r": _COUNT, "lora_alpha": _COUNT, "lora_dropout": _SHARE,
        "val_fraction": _SHARE, "max_length": _LENGTH, "beta": _POSITIVE, "simpo_gamma": _NON_NEGATIVE,
        "center_rewards_coef": _NON_NEGATIVE, "batch_size": _COUNT, "eval_batch_size": _COUNT, "grad_accum": _COUNT,
        "lr": _POSITIVE, "warmup_steps": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE,
        "max_steps": ((">=", -1, "-1 means: use --epochs"),), "eval_steps": _COUNT, "logging_steps": _COUNT,
        "save_total_limit": _COUNT, "seed": _SEED,
    },
    EvalConfig: {"max_length": _LENGTH, "batch_size": _COUNT},
    ScoreConfig: {"max_length": _LENGTH},
    BonConfig: {
        "limit": _COUNT, "n": _COUNT, "temperature": _NON_NEGATIVE, "top_p": _TOP_P, "max_new_tokens": _COUNT,
        "seed": _SEED, "batch_size": _COUNT, "max_length": _LENGTH, "score_batch_size": _COUNT,
    },
    RlhfConfig: {
        "limit": _COUNT, "eval_limit": _COUNT, "eval_batch_size": _COUNT, "trainable_layers": _COUNT,
        "lora_r": _COUNT, "lora_alpha": _COUNT,
        "num_generations": ((">=", 2, "GRPO and RLOO compare the completions of one prompt with each other"),),
        "batch_size": _COUNT, "max_new_tokens": _COUNT,
        "temperature": ((">", 0, "a group sampled at temperature 0 is one completion repeated: nothing to learn"),),
        "top_p": _TOP_P, "beta": _NON_NEGATIVE, "lr": _POSITIVE, "max_steps": _COUNT, "eval_steps": _COUNT,
        "logging_steps": _COUNT, "max_length": _LENGTH, "seed": _SEED,
    },
    StatsConfig: {"max_length": _COUNT},
    ServeConfig: {
        "port": ((">=", 0), ("<", 65536)), "max_length": _LENGTH, "max_batch_tokens": _COUNT,
        "max_wait_ms": _NON_NEGATIVE, "pass_tokens": _COUNT, "max_texts": _COUNT, "max_text_chars": _COUNT, "max_body_mb": _POSITIVE,
        "request_timeout_s": _POSITIVE,
    },
}  # fmt: skip
_OPERATORS = {">=": (operator.ge, "at least"), ">": (operator.gt, "above"), "<": (operator.lt, "below"),
              "<=": (operator.le, "at most")}  # fmt: skip
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


def check_fields(cfg) -> None:
    """Types, choices and numeric ranges of every field of a config; nothing outside it is looked at."""
    hints = typing.get_type_hints(type(cfg))
    for item in dataclasses.fields(cfg):
        value = field_value(item.name, hints[item.name], getattr(cfg, item.name), strict=True)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag(item.name)} must be a finite number, got {value}")
    for name, rules in RANGES.get(type(cfg), {}).items():
        value = getattr(cfg, name)
        for op, bound, *reason in rules:
            test, words = _OPERATORS[op]
            if value is not None and not test(value, bound):
                because = f" ({reason[0]})" if reason else ""
                raise ConfigError(f"{flag(name)} must be {words} {bound}, got {value}{because}")
    if isinstance(cfg, TrainConfig):
        _check_train_choices(cfg)
    if hasattr(cfg, "format"):
        from .data.converters import FORMATS
        from .data.sources import SOURCES

        if cfg.format not in FORMATS and cfg.format not in SOURCES:
            raise ConfigError(
                f"--format: {cfg.format!r} is not one of {', '.join(dict.fromkeys([*FORMATS, *SOURCES]))}"
            )


def _check_train_choices(cfg: TrainConfig) -> None:
    from transformers.trainer_utils import SchedulerType

    if cfg.max_steps <= 0 and cfg.epochs <= 0:
        raise ConfigError(f"--epochs must be above 0 when --max-steps is not set, got {cfg.epochs}")
    schedulers = [scheduler.value for scheduler in SchedulerType]
    if cfg.lr_scheduler not in schedulers:
        raise ConfigError(f"--lr-scheduler: {cfg.lr_scheduler!r} is not one of {', '.join(schedulers)}")


def validate(cfg) -> None:
    """Check a parsed config before anything heavy loads; the first problem is a one-line ConfigError.

        cfg = parse_config(TrainConfig, argv)
        validate(cfg)   # ConfigError: --model ./x: no such directory

    Its fields (`check_fields`), then what they name (`hafrm.preflight.check_inputs`): data files, trackers,
    the model or run directory. No model, tokenizer or data is loaded.
    """
    from .preflight import check_inputs

    check_fields(cfg)
    check_inputs(cfg)
