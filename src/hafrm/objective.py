"""One batch -> (loss, metrics, per-pair scores) for a method: the only place a method's heads and losses meet.

    objective = Objective(method="haf", alpha=0.2, beta=0.1, policy_loss="dpo")
    loss, metrics, scores = objective(model, batch)

Methods: `rm` runs the reward head alone (Bradley-Terry), `dpo` the policy head alone (its reward is
the implicit one), `haf` both on one trunk pass, loss = reward loss + α · policy loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_POLICY_LOSS,
    DEFAULT_SIMPO_GAMMA,
    PolicyLogps,
    haf_loss,
    needs_reference,
    policy_loss,
    reward_loss,
)
from .model import hybrid_forward
from .reference import adapters_disabled

# method -> (reward head runs, policy head runs)
METHODS = {"rm": (True, False), "dpo": (False, True), "haf": (True, True)}


@dataclass
class Objective:
    method: str = "haf"
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    policy_loss: str = DEFAULT_POLICY_LOSS
    simpo_gamma: float = DEFAULT_SIMPO_GAMMA
    center_rewards_coef: float = 0.0
    reference: str = "cache"  # or "adapters": computed each step with LoRA disabled

    @property
    def uses_reward_head(self) -> bool:
        return METHODS[self.method][0]

    @property
    def uses_policy_head(self) -> bool:
        return METHODS[self.method][1]

    @property
    def needs_reference(self) -> bool:
        return self.uses_policy_head and needs_reference(self.policy_loss)

    def _reference_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        if not self.needs_reference:
            return None, None
        if self.reference == "adapters":
            with torch.no_grad(), adapters_disabled(model):
                ref = hybrid_forward(model, batch, need_rewards=False, need_logps=True)
            return ref.chosen_logps, ref.rejected_logps
        if "ref_chosen_logps" not in batch:
            raise ValueError("the policy loss needs reference log-probs, but the batch carries none")
        return batch["ref_chosen_logps"], batch["ref_rejected_logps"]

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """-> (loss, metrics, per-pair scores {chosen, rejected, implicit_chosen, implicit_rejected})."""
        ref_chosen, ref_rejected = self._reference_logps(model, batch)
        out = hybrid_forward(model, batch, self.uses_reward_head, self.uses_policy_head)
        metrics: dict[str, torch.Tensor] = {}
        scores: dict[str, torch.Tensor] = {}
        loss = None
        if self.uses_reward_head:
            loss, metrics = reward_loss(
                out.chosen_rewards, out.rejected_rewards, batch.get("margin"), self.center_rewards_coef
            )
            metrics["reward_loss"] = loss
            scores = {"chosen": out.chosen_rewards, "rejected": out.rejected_rewards}
        if self.uses_policy_head:
            logps = PolicyLogps(
                out.chosen_logps, out.rejected_logps, out.chosen_lengths, out.rejected_lengths, ref_chosen, ref_rejected
            )
            p_loss, p_metrics, implicit_chosen, implicit_rejected = policy_loss(
                self.policy_loss, logps, self.beta, self.simpo_gamma
            )
            metrics.update(p_metrics, policy_loss=p_loss)
            scores.update(implicit_chosen=implicit_chosen, implicit_rejected=implicit_rejected)
            loss = p_loss if loss is None else haf_loss(loss, p_loss, self.alpha)
        if not self.uses_reward_head:  # dpo: the method's reward is the implicit one
            scores.update(chosen=scores["implicit_chosen"], rejected=scores["implicit_rejected"])
            metrics.update(
                accuracy=metrics["implicit_accuracy"],
                margin=metrics["implicit_margin"],
                **{
                    "rewards/chosen": metrics["implicit_rewards/chosen"],
                    "rewards/rejected": metrics["implicit_rewards/rejected"],
                },
            )
        metrics["loss"] = loss
        return loss, metrics, scores
