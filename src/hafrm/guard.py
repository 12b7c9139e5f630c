"""The numerical guard: training stops at the first non-finite loss, gradient norm, reward or weight.

    guard = NumericalGuard(lr=cfg.lr, beta=cfg.beta, uses_policy_head=True, train_set=train_set)
    guard.stop(step, "the loss is nan", batch)  # from training_step, before the optimizer sees the gradients
    guard.check_grad_norm(grad_norm, step)     # before optimizer.step: inf / NaN never reach the weights
    guard.check_rewards(scores, step)          # validation rewards
    guard.check_weights(model, step)           # before every checkpoint: nothing non-finite is saved

A stop raises `TrainingStopped` with the step, what was non-finite and the likely cause (a margin
value, β, the learning rate, the reference log-probs). Gradients that are zero, or optimizer steps
that are skipped (fp16 overflow), for `STALL_STEPS` steps in a row are warned about once.
"""

from __future__ import annotations

import math

import torch

STALL_STEPS = 10
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
USUAL_BETA = 100.0  # DPO-style β is 0.01-1 in practice; far above, β·log-ratio overflows
USUAL_LR = 1e-2  # fine-tuning rates are 1e-6 - 1e-3


class TrainingStopped(RuntimeError):
    """Training stopped before a non-finite value was stepped into the weights or saved."""


class NumericalGuard:
    def __init__(self, lr: float, beta: float, uses_policy_head: bool, train_set=None, say=print):
        self.lr = lr
        self.beta = beta
        self.uses_policy_head = uses_policy_head
        self.train_set = train_set
        self.say = say
        self.zero_steps = 0
        self.skipped_steps = 0

    def likely_cause(self, batch: dict | None = None) -> str:
        """The most likely reason for a non-finite value at this step, as advice."""
        batch = batch or {}
        overflowing = self._overflowing_margins()
        if overflowing:
            return f"a margin value: {overflowing}"
        if "margin" in batch and not torch.isfinite(batch["margin"]).all():
            return "a margin value: a margin in this batch is not finite"
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in batch and not torch.isfinite(batch[key]).all():
                return (
                    "the reference log-probs: the base model gives non-finite log-probs for this batch "
                    "(a corrupt or overflowing base model; try fp32)"
                )
        if self.uses_policy_head and self.beta > USUAL_BETA:
            return f"β = {self.beta:g} (--beta) is far above the usual 0.01-1, so β·log π/π_ref overflows"
        if self.lr > USUAL_LR:
            return f"the learning rate {self.lr:g} (--lr) is far above the usual 1e-6-1e-3, so the weights diverged"
        return "the weights diverged or the forward pass overflowed: lower --lr, or train in fp32 instead of bf16/fp16"

    def _overflowing_margins(self) -> str:
        """Rows whose margin is beyond float32 (it becomes inf in the batch), named by source and row."""
        if self.train_set is None or "margin" not in self.train_set.column_names:
            return ""
        bad = [
            (source, index, margin)
            for source, index, margin in zip(
                self.train_set["source"], self.train_set["index"], self.train_set["margin"]
            )
            if not math.isfinite(margin) or abs(margin) > FLOAT32_MAX
        ]
        if not bad:
            return ""
        source, index, margin = bad[0]
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        return f"{source}: row {index} has margin {margin:g}, beyond float32 (±{FLOAT32_MAX:.3g}){more}"

    def stop(self, step: int, what: str, batch: dict | None = None) -> None:
        raise TrainingStopped(f"training stopped at step {step}: {what}; likely cause: {self.likely_cause(batch)}")

    def check_grad_norm(self, grad_norm, step: int, previous_step_skipped: bool = False) -> None:
        if grad_norm is None:
            return
        value = float(grad_norm)
        if not math.isfinite(value):
            self.stop(step, f"the gradient norm is {value} (the weights were not updated with it)")
        self.zero_steps = self.zero_steps + 1 if value == 0.0 else 0
        if self.zero_steps == STALL_STEPS:
            self.say(
                f"warning: the gradient norm has been 0 for {STALL_STEPS} steps in a row (steps "
                f"{step - STALL_STEPS + 1}-{step}): nothing is learning; check --finetune / --trainable-layers, "
                "the learning rate, and whether the loss saturated"
            )
        self.skipped_steps = self.skipped_steps + 1 if previous_step_skipped else 0
        if self.skipped_steps == STALL_STEPS:
            self.say(
                f"warning: the optimizer skipped {STALL_STEPS} steps in a row (up to step {step - 1}): the fp16 loss "
                "scale keeps overflowing; train in bf16 or fp32, or lower --lr"
            )

    def check_rewards(self, rewards: torch.Tensor, step: int) -> None:
        if not torch.isfinite(rewards).all():
            count = int((~torch.isfinite(rewards)).sum())
            self.stop(step, f"{count} validation rewards are not finite (evaluation of the weights after step {step})")

    def check_weights(self, model: torch.nn.Module, step: int) -> None:
        for name, param in model.named_parameters():
            if param.requires_grad and not torch.isfinite(param.detach()).all():
                self.stop(step, f"weight {name} is not finite after the update of step {step}; it was not saved")
