"""The Trainer subclass: one hybrid forward, the method's loss, TRL-style metrics. Little else.

    objective = Objective(method="haf", alpha=0.2, beta=0.1, policy_loss="dpo")
    trainer = HybridTrainer(model=model, args=args, objective=objective, run_config={...}, ...)

Logged metrics (train, and with an `eval_` prefix on validation):
    loss, reward_loss, policy_loss
    accuracy, margin, rewards/chosen, rewards/rejected   of the method's reward: the reward head for
                                                         rm and haf, β·log π/π_ref for dpo
    implicit_accuracy, implicit_margin, logps/chosen, logps/rejected   whenever the policy head runs
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Trainer

from .losses import PolicyLogps, haf_loss, needs_reference, policy_loss, reward_loss
from .model import hybrid_forward, write_hafrm_config
from .reference import adapters_disabled

# method -> (reward head runs, policy head runs)
METHODS = {"rm": (True, False), "dpo": (False, True), "haf": (True, True)}


@dataclass
class Objective:
    method: str = "haf"
    alpha: float = 0.2
    beta: float = 0.1
    policy_loss: str = "dpo"
    simpo_gamma: float = 0.5
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
            p_loss, p_metrics = policy_loss(self.policy_loss, logps, self.beta, self.simpo_gamma)
            metrics.update(p_metrics, policy_loss=p_loss)
            implicit = self.implicit_rewards(logps)
            scores.update(implicit_chosen=implicit[0], implicit_rejected=implicit[1])
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

    def implicit_rewards(self, logps: PolicyLogps) -> tuple[torch.Tensor, torch.Tensor]:
        """β·log π/π_ref per response when a reference exists, else β·mean log π (SimPO's reward)."""
        if logps.ref_chosen_logps is not None:
            chosen_ratio, rejected_ratio = logps.log_ratios()
            return self.beta * chosen_ratio, self.beta * rejected_ratio
        return (
            self.beta * logps.chosen_logps / logps.chosen_lengths,
            self.beta * logps.rejected_logps / logps.rejected_lengths,
        )


def pairwise_metrics(eval_prediction) -> dict[str, float]:
    """Exact accuracy over the whole validation set from per-pair scores (not a mean of batch means)."""
    scores = np.asarray(eval_prediction.predictions)  # [N, 4]: chosen, rejected, implicit c, implicit r
    margin = scores[:, 0] - scores[:, 1]
    rewards = scores[:, :2]
    metrics = {
        "accuracy": float((margin > 0).mean()),
        "margin": float(margin.mean()),
        # Moments of the reward over every validation response, kept so users can normalise (OpenRLHF's mean/std).
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
    }
    if not np.isnan(scores[:, 2]).any():
        metrics["implicit_accuracy"] = float((scores[:, 2] > scores[:, 3]).mean())
    return metrics


class HybridTrainer(Trainer):
    def __init__(self, *args, objective: Objective, run_config: dict, **kwargs):
        super().__init__(*args, compute_metrics=pairwise_metrics, **kwargs)
        # Our loss is a mean over pairs, not a token sum: let Trainer scale it for accumulation.
        self.model_accepts_loss_kwargs = False
        self.objective = objective
        self.run_config = run_config  # written as hafrm.json beside every checkpoint
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics, scores = self.objective(model, inputs)
        mode = "train" if model.training else "eval"
        for name, value in metrics.items():
            self._metrics[mode][name].append(value.detach().float().item())
        return (loss, scores) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, scores = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        nan = torch.full_like(scores["chosen"], float("nan"))
        columns = [
            scores["chosen"],
            scores["rejected"],
            scores.get("implicit_chosen", nan),
            scores.get("implicit_rejected", nan),
        ]
        predictions = torch.stack([c.detach().float() for c in columns], dim=1)  # [B, 4]
        return loss.detach(), predictions, torch.zeros(predictions.shape[0], device=predictions.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        names = sorted(self._metrics[mode])
        if names:
            # Means over this process's batches, then over processes (every process logs at the same step).
            means = torch.tensor([sum(self._metrics[mode][n]) / len(self._metrics[mode][n]) for n in names])
            means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean").cpu()
            for name, value in zip(names, means.tolist()):
                # Exact whole-set values from pairwise_metrics win over means of batch means.
                logs.setdefault(prefix + name, value)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_hafrm_config(output_dir or self.args.output_dir, self.run_config)
