"""Pure loss functions of hybrid reward-model training: `(loss, metrics)`, and the policy loss also its implicit rewards.

    from hafrm.losses import reward_loss, policy_loss, haf_loss, PolicyLogps
    r_loss, r_metrics = reward_loss(chosen_rewards, rejected_rewards)
    p_loss, p_metrics, implicit_chosen, implicit_rejected = policy_loss("dpo", PolicyLogps(...), beta=0.1)
    loss = haf_loss(r_loss, p_loss, alpha=0.2)

The hybrid alignment framework (HAF-RM, Liu et al. 2024, "HAF-RM: A Hybrid Alignment Framework for
Reward Model Training") trains one transformer trunk through two heads: a reward head F scored by
the Bradley-Terry loss, and the LM's own policy head K scored by a preference-optimisation loss,

    L = -log σ(r(x, y_c) - r(x, y_r)) + α · L_policy,    α = 0.2, β = 0.1 in the paper.

Shapes: B is the number of preference pairs. All "logps" are summed over response tokens. The
defaults below are the only place α, β and SimPO's γ are written; configs, the objective and the
readers of a run record take them from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Metrics = dict[str, Tensor]

DEFAULT_ALPHA = 0.2  # weight of the policy loss in haf: the HAF-RM paper's value
DEFAULT_BETA = 0.1  # β of the policy loss: the HAF-RM paper's, DPO's usual temperature
DEFAULT_SIMPO_GAMMA = 0.5  # SimPO's target margin γ: TRL's CPOConfig default
DEFAULT_POLICY_LOSS = "dpo"


def reward_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Bradley-Terry loss of the reward head: mean of -log σ(r_c - r_r - m).

    `margin` [B] is an optional per-pair required gap m (Llama 2's margin loss). `center_coef` adds
    c · mean((r_c + r_r)^2), which keeps rewards centred on zero (Eisenstein et al. 2023), so scores
    from different runs are comparable and usable as RLHF rewards without normalisation.
    """
    # chosen_rewards, rejected_rewards, margin: [B]
    reward_margin = chosen_rewards - rejected_rewards
    logits = reward_margin if margin is None else reward_margin - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    metrics = {
        "accuracy": (reward_margin > 0).float().mean(),
        "margin": reward_margin.mean(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
    }
    return loss, metrics


@dataclass
class PolicyLogps:
    """Log-probabilities of the policy head (and of the reference policy) for B pairs."""

    chosen_logps: Tensor  # [B] sum of log π(y_c | x) over response tokens
    rejected_logps: Tensor  # [B]
    chosen_lengths: Tensor  # [B] number of response tokens of y_c
    rejected_lengths: Tensor  # [B]
    ref_chosen_logps: Tensor | None = None  # [B] the same under π_ref, when the loss needs one
    ref_rejected_logps: Tensor | None = None

    def log_ratios(self) -> tuple[Tensor, Tensor]:
        """log π/π_ref of chosen and rejected, [B] each."""
        if self.ref_chosen_logps is None or self.ref_rejected_logps is None:
            raise ValueError("this policy loss needs reference log-probs, and none were given")
        return self.chosen_logps - self.ref_chosen_logps, self.rejected_logps - self.ref_rejected_logps


# A policy loss maps (logps, beta, gamma) to per-pair losses [B] and the scores it compares for
# chosen and rejected ([B] each), which are logged as the implicit rewards.
PolicyLossFn = Callable[[PolicyLogps, float, float], tuple[Tensor, Tensor, Tensor]]


def dpo(logps: PolicyLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023): -log σ(β[(log π_c - log π_ref,c) - (log π_r - log π_ref,r)])."""
    chosen_ratio, rejected_ratio = logps.log_ratios()
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio, beta * rejected_ratio


def ipo(logps: PolicyLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al. 2023): (h - 1/(2β))^2 with h the difference of per-token mean log-ratios.

    As in the IPO paper and TRL, log-ratios are averaged over response tokens, which keeps h on a
    scale where the target 1/(2β) is reachable.
    """
    chosen_ratio, rejected_ratio = logps.log_ratios()
    h = chosen_ratio / logps.chosen_lengths - rejected_ratio / logps.rejected_lengths
    losses = (h - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio, beta * rejected_ratio


def hinge(logps: PolicyLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """SLiC hinge (Zhao et al. 2023): max(0, 1 - β · h) with h the difference of log-ratios."""
    chosen_ratio, rejected_ratio = logps.log_ratios()
    losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio, beta * rejected_ratio


def simpo(logps: PolicyLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al. 2024), reference-free: -log σ(β/|y_c| log π_c - β/|y_r| log π_r - γ).

    SimPO's own paper uses β around 2 and γ around 1; hafrm's shared default β = 0.1 is DPO's.
    """
    chosen_scores = beta * logps.chosen_logps / logps.chosen_lengths
    rejected_scores = beta * logps.rejected_logps / logps.rejected_lengths
    losses = -F.logsigmoid(chosen_scores - rejected_scores - gamma)
    return losses, chosen_scores, rejected_scores


def sft(logps: PolicyLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Supervised fine-tuning on the chosen response: its per-token negative log-likelihood."""
    chosen_mean = logps.chosen_logps / logps.chosen_lengths
    rejected_mean = logps.rejected_logps / logps.rejected_lengths
    return -chosen_mean, chosen_mean, rejected_mean


def grm_sft(logps: PolicyLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """GRM's SFT regulariser (Yang et al. 2024, its default form): -log σ(β · log π(y_c | x)).

    log π summed over the chosen response's tokens, as GRM's trainer sums them; no reference, and the
    rejected response enters only through the logged score β · log π(y_r | x).
    """
    chosen_scores, rejected_scores = beta * logps.chosen_logps, beta * logps.rejected_logps
    return -F.logsigmoid(chosen_scores), chosen_scores, rejected_scores


def dpo_noref(logps: PolicyLogps, beta: float, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """DPO without the reference policy (GRM's reference-free DPO regulariser): -log σ(β (log π_c - log π_r))."""
    chosen_scores, rejected_scores = beta * logps.chosen_logps, beta * logps.rejected_logps
    return -F.logsigmoid(chosen_scores - rejected_scores), chosen_scores, rejected_scores


def grm_alpha(weight: float) -> float:
    """hafrm's α for GRM's weighting loss = (1 - w) · BT + w · reg: the same objective up to the factor 1 - w.

    (1 - w) · BT + w · reg = (1 - w) · (BT + α · reg) with α = w / (1 - w); GRM's default w = 0.01 is
    α ≈ 0.0101. The overall factor scales every gradient alike, which Adam's update normalises away
    (its ε and gradient clipping aside).
    """
    if not 0 <= weight < 1:
        raise ValueError(f"GRM's weight must be in [0, 1), got {weight}")
    return weight / (1 - weight)


# name -> (loss function, needs reference log-probs)
POLICY_LOSSES: dict[str, tuple[PolicyLossFn, bool]] = {
    "dpo": (dpo, True),
    "ipo": (ipo, True),
    "hinge": (hinge, True),
    "simpo": (simpo, False),
    "sft": (sft, False),
    "grm-sft": (grm_sft, False),
    "dpo-noref": (dpo_noref, False),
}


def needs_reference(name: str) -> bool:
    return POLICY_LOSSES[name][1]


def _policy_loss_fn(name: str) -> PolicyLossFn:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; choose from {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name][0]


def implicit_rewards(
    name: str, logps: PolicyLogps, beta: float = DEFAULT_BETA, gamma: float = DEFAULT_SIMPO_GAMMA
) -> tuple[Tensor, Tensor]:
    """The implicit reward of each response under policy loss `name`, [B] chosen and [B] rejected.

    The scores the loss itself compares: β·(log π - log π_ref) for the losses with a reference
    (dpo, ipo, hinge); β·mean log π for simpo; mean log π for sft; β·log π for grm-sft and dpo-noref.
    Training reads them from `policy_loss`, which returns them beside the loss; evaluation and
    scoring, which need no loss, from here.
    """
    _, chosen_scores, rejected_scores = _policy_loss_fn(name)(logps, beta, gamma)
    return chosen_scores, rejected_scores


def policy_loss(
    name: str, logps: PolicyLogps, beta: float = DEFAULT_BETA, gamma: float = DEFAULT_SIMPO_GAMMA
) -> tuple[Tensor, Metrics, Tensor, Tensor]:
    """-> (mean policy loss `name` over the batch, the implicit-reward metrics TRL users know, and the
    detached implicit rewards of chosen and rejected, [B] each: the ones `implicit_rewards` gives).

    One call computes the log-ratios once for the loss, its metrics and the per-pair scores (as
    torchtune's `DPOLoss.forward` returns losses and detached rewards together).
    """
    losses, chosen_scores, rejected_scores = _policy_loss_fn(name)(logps, beta, gamma)
    chosen_scores, rejected_scores = chosen_scores.detach(), rejected_scores.detach()
    metrics = {
        "implicit_accuracy": (chosen_scores > rejected_scores).float().mean(),
        "implicit_margin": (chosen_scores - rejected_scores).mean(),
        "implicit_rewards/chosen": chosen_scores.mean(),
        "implicit_rewards/rejected": rejected_scores.mean(),
        "logps/chosen": logps.chosen_logps.detach().mean(),
        "logps/rejected": logps.rejected_logps.detach().mean(),
    }
    return losses.mean(), metrics, chosen_scores, rejected_scores


def haf_loss(reward_part: Tensor, policy_part: Tensor, alpha: float = DEFAULT_ALPHA) -> Tensor:
    """The hybrid objective L = L_reward + α · L_policy (α = 0 is a plain reward model)."""
    return reward_part + alpha * policy_part
