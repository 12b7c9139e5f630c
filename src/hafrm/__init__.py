"""hafrm: reward models trained with the Hybrid Alignment Framework (HAF-RM).

One causal-LM trunk, two heads: a scalar reward head trained with the Bradley-Terry loss and the
LM's own policy head trained with a preference-optimisation loss (DPO by default), weighted by α.

    from hafrm import TrainConfig, train, RewardModel, EvalConfig, evaluate
    train(TrainConfig(method="haf", data="builtin", output_dir="runs/haf", max_steps=20))
    RewardModel("runs/haf").score([("What is a kite?", "A kite is a toy that flies on a string.")])
    evaluate(EvalConfig(model="runs/haf", data="builtin:test@200"))["reward_head"]["accuracy"]

The names below load on first use, so `import hafrm` (and `hafrm --help`) stays fast: torch and
transformers are imported by the function or class that needs them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "TrainConfig": "config",
    "EvalConfig": "config",
    "ScoreConfig": "config",
    "BonConfig": "config",
    "RlhfConfig": "config",
    "ServeConfig": "config",
    "train": "train",
    "evaluate": "evaluate",
    "RewardModel": "scoring",
    "load_trained": "checkpoint",
    "export": "checkpoint",
    "run_experiment": "experiment",
    "ConfigError": "fields",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'hafrm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
