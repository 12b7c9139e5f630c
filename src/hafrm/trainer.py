"""The Trainer subclass: one hybrid forward, the method's loss, TRL-style metrics. Little else.

    objective = Objective(method="haf", alpha=0.2, beta=0.1, policy_loss="dpo")   # hafrm.objective
    trainer = HybridTrainer(model=model, args=args, objective=objective, run_record={...}, ...)

Logged metrics (train, and with an `eval_` prefix on validation):
    loss, reward_loss, policy_loss
    accuracy, margin, rewards/chosen, rewards/rejected   of the method's reward: the reward head for
                                                         rm and haf, β·log π/π_ref for dpo
    implicit_accuracy, implicit_margin, logps/chosen, logps/rejected   whenever the policy head runs
"""

from __future__ import annotations

import errno
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from .checkpoint import update_config_json, write_adapter_note
from .guard import NumericalGuard
from .objective import Objective
from .rundir import FINAL_PARTIAL, CheckpointWriteError, write_manifest
from .runrecord import write_run_record
from .writes import DiskFullError, disk_full_message, is_disk_full


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


class EpochTimer(TrainerCallback):
    """Says how long each epoch took (training steps and the validation inside it), and keeps the times."""

    def __init__(self, say=print):
        self.say = say
        self.seconds: list[float] = []
        self._began = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._began is not None:
            self.seconds.append(time.perf_counter() - self._began)
            self.say(f"epoch {len(self.seconds)}: {self.seconds[-1]:.1f} s (step {state.global_step})")


class HybridTrainer(Trainer):
    def __init__(self, *args, objective: Objective, run_record: dict, guard: NumericalGuard | None = None, **kwargs):
        super().__init__(*args, compute_metrics=self._pairwise_metrics, **kwargs)
        # Our loss is a mean over pairs, not a token sum: let Trainer scale it for accumulation.
        self.model_accepts_loss_kwargs = False
        self.objective = objective
        self.run_record = run_record  # written beside every checkpoint and the final model (hafrm.runrecord)
        self.guard = guard or NumericalGuard(self.args.learning_rate, objective.beta, objective.uses_policy_head)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _pairwise_metrics(self, eval_prediction) -> dict[str, float]:
        rewards = torch.as_tensor(np.asarray(eval_prediction.predictions)[:, :2])
        self.guard.check_rewards(rewards, self.state.global_step)
        return pairwise_metrics(eval_prediction)

    def _all_processes(self, flag: bool) -> bool:
        """Whether `flag` holds on any process (so that every process stops together)."""
        if self.accelerator.num_processes == 1:
            return flag
        total = self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), reduction="sum")
        return bool(total.item() > 0)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = bool(torch.isfinite(loss.detach()).all())
        if self._all_processes(not finite):
            what = f"the loss is {loss.item()}" if not finite else "the loss is not finite on another process"
            self.guard.stop(self.state.global_step + 1, what, inputs)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Called after backward and clipping, before optimizer.step: a non-finite norm stops the run here.
        grad_norm = super()._get_grad_norm(model, grad_norm)
        skipped = self.state.global_step > 0 and self.accelerator.optimizer_step_was_skipped
        self.guard.check_grad_norm(grad_norm, self.state.global_step + 1, previous_step_skipped=skipped)
        return grad_norm

    def _save_checkpoint(self, model, trial) -> None:
        """Save only finite weights; mark the checkpoint complete (manifest) before older ones are rotated away."""
        self.guard.check_weights(self.model, self.state.global_step)
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        folder = f"{self._get_output_dir(trial=trial)}/checkpoint-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError, SafetensorError) as error:  # torch.save's full disk is a RuntimeError
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)  # half a checkpoint: its space back, nothing to resume from
            after = "; the earlier checkpoints are untouched: free space and run again with --resume"
            if is_disk_full(error, folder):
                raise DiskFullError(
                    errno.ENOSPC, disk_full_message(f"checkpoint {folder}", folder, checkpoint_bytes(self.model), after)
                ) from error
            raise CheckpointWriteError(f"could not write {folder} ({type(error).__name__}: {error}){after}") from error
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_manifest(folder)
            rotate_checkpoints(
                output_dir=self._get_output_dir(trial=trial),
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _run_epoch(self, *args, **kwargs):
        # Trainer starts an epoch and checks its step count only after a step; a run resumed at its last
        # step would train one step more. Never exceed the step count: stop before the epoch instead.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

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
            output_dir = Path(output_dir or self.args.output_dir)
            write_run_record(output_dir, self.run_record)
            if self.run_record["reward_head"]:
                update_config_json(output_dir)
                # the final save is written in output_dir/.final-partial and moved up: the note names the run
                write_adapter_note(output_dir, output_dir.parent if output_dir.name == FINAL_PARTIAL else None)


def checkpoint_bytes(model) -> int:
    """About what a checkpoint takes: the saved weights, and Adam's two moments of every trained parameter."""
    return saved_bytes(model) + 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def saved_bytes(model) -> int:
    """About what saving `model` writes: the trained parameters of a LoRA run (adapters, head), else every one."""
    parameters = list(model.parameters())
    if hasattr(model, "peft_config"):
        parameters = [p for p in parameters if p.requires_grad]
    return sum(p.numel() * p.element_size() for p in parameters)
