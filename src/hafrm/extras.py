"""The optional extras of pyproject.toml, and the one line a user gets when the one a command needs is missing.

from hafrm.extras import missing_extra
problem = missing_extra("deepspeed", "configs/accelerate/zero2.yaml")   # None when deepspeed imports
"""

from __future__ import annotations

import importlib.util

# extra -> the module it installs (what is looked for)
EXTRAS = {"deepspeed": "deepspeed", "vllm": "vllm", "liger": "liger_kernel", "tracking": "tensorboard"}


def missing_extra(extra: str, needed_by: str) -> str | None:
    """None when the extra's module is importable here; else one line: what needs it and how to add it."""
    if importlib.util.find_spec(EXTRAS[extra]) is not None:
        return None
    return f"{needed_by} needs the {EXTRAS[extra]} package, not installed here: pip install 'hafrm[{extra}]'"


def accelerate_config_needs(path) -> str | None:
    """The extra an accelerate config file needs (`deepspeed` for DEEPSPEED configs), or None."""
    import yaml

    try:
        config = yaml.safe_load(open(path, encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return "deepspeed" if isinstance(config, dict) and config.get("distributed_type") == "DEEPSPEED" else None
