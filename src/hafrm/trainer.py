"""The Trainer subclass: one hybrid forward, the method's loss, TRL-style metrics. Little else.

    objective = Objective(method="haf", alpha=0.2, beta=0.1, policy_loss="dpo")   # hafrm.objective
    trainer = HybridTrainer(model=model, args=args, objective=objective, run_config={...}, ...)

Logged metrics (train, and with an `eval_` prefix on validation):
    loss, reward_loss, policy_loss
    accuracy, margin, rewards/chosen, rewards/rejected   of the method's reward: the reward head for
                                                         rm and haf, β·log π/π_ref for dpo
    implicit_accuracy, implicit_margin, logps/chosen, logps/rejected   whenever the policy head runs
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from transformers import Trainer

from .checkpoint import update_config_json, write_adapter_note, write_hafrm_config
from .objective import Objective


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
            if self.run_config.get("reward_head"):
                update_config_json(output_dir or self.args.output_dir)
                write_adapter_note(output_dir or self.args.output_dir)
