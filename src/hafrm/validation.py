"""Field checks of every entry point's config: types, choices and numeric ranges, before anything loads.

    from hafrm.validation import validate
    validate(cfg)      # ConfigError: --batch-size must be at least 1, got 0

`check_fields` checks a built config (types as `hafrm.fields` reads them, then ranges); `validate` adds
the checks of what the fields name (`hafrm.preflight`: data files, trackers, the model or run directory).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import typing

from .config import BonConfig, EvalConfig, RlhfConfig, ScoreConfig, ServeConfig, StatsConfig, TrainConfig
from .fields import (
    ConfigError,
    field_value,
    flag,
)
from .preflight import check_inputs

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
        "max_messages": _COUNT, "max_request_chars": _COUNT, "max_request_messages": _COUNT,
        "max_request_tokens": _COUNT, "request_timeout_s": _POSITIVE,
    },
}  # fmt: skip
_OPERATORS = {">=": (operator.ge, "at least"), ">": (operator.gt, "above"), "<": (operator.lt, "below"),
              "<=": (operator.le, "at most")}  # fmt: skip


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

    if cfg.max_steps == 0:
        raise ConfigError("--max-steps must be at least 1, or -1 to train for --epochs; got 0")
    if cfg.method == "dpo" and cfg.reward_head_type != "linear":
        raise ConfigError(
            f"--reward-head-type {cfg.reward_head_type}: a dpo run has no reward head (its reward is β·log π/π_ref); "
            "use it with --method rm or haf"
        )
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
    check_fields(cfg)
    check_inputs(cfg)
