"""Where hafrm runs: one rule, read from the environment, for training, scoring and the tests.

    from hafrm.devices import scoring_device, on_cpu
    model.to(scoring_device())     # HAFRM_DEVICE if set (cpu, cuda, cuda:1, mps, ...), else the accelerator, else cpu

Training leaves device placement to Trainer / accelerate (one process per GPU under `accelerate
launch`) and only says whether to run on the CPU: `on_cpu()` is true where no accelerator is present
or HAFRM_DEVICE=cpu asks for it.
"""

from __future__ import annotations

import os

import torch

ENV = "HAFRM_DEVICE"


def scoring_device() -> torch.device:
    """The device models are scored on: $HAFRM_DEVICE, else the current accelerator (CUDA, XPU, MPS), else the CPU."""
    asked = os.environ.get(ENV, "").strip()
    if asked:
        try:
            return torch.device(asked)
        except RuntimeError as error:
            raise ValueError(f"${ENV}={asked!r} is not a torch device ({error})") from None
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator if accelerator is not None else torch.device("cpu")


def on_cpu() -> bool:
    """Train on the CPU: no accelerator here, or $HAFRM_DEVICE=cpu (several processes join on gloo under accelerate)."""
    return scoring_device().type == "cpu"


def to_scoring_device(model: torch.nn.Module) -> torch.nn.Module:
    return model.to(scoring_device())
