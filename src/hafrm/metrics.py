"""Pure figures of a scored preference set: accuracy with its interval, calibration, perplexity, λ.

    from hafrm.metrics import comparison, fit_combination
    figures = comparison(chosen_scores, rejected_scores)       # accuracy, ci95, ties, margin, ...
    lam = fit_combination(val_rewards, val_implicit)            # λ of r + λ·implicit, fitted on validation

Shapes: N pairs; chosen and rejected are float tensors [N]. A pair is right when chosen scores
strictly above rejected; ties are counted apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

Tensor = torch.Tensor
Z95 = 1.959964  # two-sided 95% normal quantile
# Candidate λ for r + λ·implicit: zero, and both signs over five orders of magnitude, since the two
# heads' scales differ by model and data.
LAMBDA_GRID = [0.0] + [sign * 2.0**k for k in range(-8, 9) for sign in (1, -1)]


def wilson_interval(successes: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at 0, 1 and small n)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return (centre - half, centre + half)


def finite_pairs(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float], int]:
    """Keep the positions where both x and y are finite; (xs, ys, dropped)."""
    if len(xs) != len(ys):
        raise ValueError(f"paired values differ in length: {len(xs)} and {len(ys)}")
    kept = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(x)) and math.isfinite(float(y))]
    return [x for x, _ in kept], [y for _, y in kept], len(xs) - len(kept)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + e^-x), without overflow warnings for large |x|


def calibration_bins(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], bins: int = 10) -> dict:
    """Reliability-diagram numbers over equal-width bins of p on [0, 1].

    Each pair is counted in both orientations: p = σ(r_c - r_r) with outcome 1 and 1 - p with
    outcome 0, so the diagram is symmetric about (0.5, 0.5). ECE = Σ_b (n_b / N) |mean p_b - freq_b|.
    Returns counts [bins], mean_predicted [bins], observed [bins] (NaN in empty bins), ece (NaN
    without data), pairs (kept), dropped (pairs with NaN/inf rewards).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    chosen, rejected, dropped = finite_pairs(chosen_rewards, rejected_rewards)
    margin = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    predicted = np.concatenate([_sigmoid(margin), _sigmoid(-margin)])  # [2N]
    outcome = np.concatenate([np.ones_like(margin), np.zeros_like(margin)])  # [2N]
    index = np.minimum((predicted * bins).astype(int), bins - 1)  # p = 1 goes in the last bin
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins -> NaN, on purpose
        mean_predicted = np.bincount(index, weights=predicted, minlength=bins) / counts
        observed = np.bincount(index, weights=outcome, minlength=bins) / counts
    filled = counts > 0
    ece = (
        float(np.sum(counts[filled] * np.abs(mean_predicted[filled] - observed[filled])) / counts.sum())
        if filled.any()
        else math.nan
    )
    return {
        "counts": counts.tolist(),
        "mean_predicted": mean_predicted.tolist(),
        "observed": observed.tolist(),
        "ece": ece,
        "pairs": len(chosen),
        "dropped": dropped,
    }


def expected_calibration_error(
    chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], bins: int = 10
) -> float:
    """ECE of p = σ(r_c - r_r) over both orientations of each pair (see calibration_bins); NaN without data."""
    return calibration_bins(chosen_rewards, rejected_rewards, bins)["ece"]


def comparison(chosen: Tensor, rejected: Tensor, calibration: bool = False) -> dict:
    """Accuracy (with its 95% interval), ties, margin and score moments of one scoring of N pairs."""
    margin = chosen - rejected
    right = (margin > 0).sum().item()
    n = margin.numel()
    scores = torch.cat([chosen, rejected])
    figures = {
        "accuracy": right / n,
        "ci95": list(wilson_interval(right, n)),
        "ties": int((margin == 0).sum().item()),
        "margin": margin.mean().item(),
        "chosen_mean": chosen.mean().item(),
        "rejected_mean": rejected.mean().item(),
        "mean": scores.mean().item(),
        "std": scores.std().item() if scores.numel() > 1 else 0.0,
    }
    if calibration:
        figures["ece"] = expected_calibration_error(chosen.tolist(), rejected.tolist())
    return figures


def perplexity(logps: Tensor, lengths: Tensor) -> dict:
    """Per-token perplexity exp(−log π(y|x)/|y|) of each response -> mean and variance over responses."""
    values = torch.exp(-logps.double() / lengths.double().clamp(min=1))
    return {"mean": values.mean().item(), "variance": values.var().item() if values.numel() > 1 else 0.0}


def fit_combination(reward_margins: Tensor, implicit_margins: Tensor) -> float:
    """λ maximising validation accuracy of (r_c − r_r) + λ·(i_c − i_r); ties go to the smaller |λ|.

    λ = 0 is a candidate, so the combination never does worse than the reward head on validation.
    """
    best, best_accuracy = 0.0, -1.0
    for candidate in sorted(LAMBDA_GRID, key=abs):
        accuracy = ((reward_margins + candidate * implicit_margins) > 0).double().mean().item()
        if accuracy > best_accuracy:
            best, best_accuracy = candidate, accuracy
    return best


def grouped(labels: list[str], heads: dict[str, tuple[Tensor, Tensor]]) -> dict:
    """{label: {"pairs": n, head: comparison}} for every distinct label ("" shown as "(none)")."""
    groups = {}
    for label in sorted(set(labels)):
        members = torch.tensor([i for i, value in enumerate(labels) if value == label])
        group = groups[label or "(none)"] = {"pairs": len(members)}
        for head, (chosen, rejected) in heads.items():
            group[head] = comparison(chosen[members], rejected[members])
    return groups


def normal_two_sided_p(z: float) -> float:
    """Two-sided p-value of a standard-normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def paired_difference(correct: Sequence[Sequence[bool]], baseline: Sequence[Sequence[bool]]) -> dict:
    """Accuracy difference of a method against a baseline on the same test pairs, with a paired test.

    `correct[s][i]` / `baseline[s][i]`: whether seed s of each got pair i right (seeds matched, same
    pairs in the same order). Each pair's outcome is averaged over seeds first, d_i = mean_s c[s][i]
    − mean_s b[s][i] ∈ [−1, 1]; the difference is mean(d), its 95% interval mean(d) ± 1.96·sd(d)/√N and
    the p-value that of z = mean(d)/(sd(d)/√N) (paired, over test pairs; seed-to-seed spread is in
    `per_seed`). `discordant` counts pairs the method alone got right in every seed, and the baseline alone.
    """
    a = np.asarray(correct, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"paired outcomes need the same [seeds, pairs] shape, got {a.shape} and {b.shape}")
    d = a.mean(axis=0) - b.mean(axis=0)  # [N]
    n = d.size
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if se > 0:
        p = normal_two_sided_p(mean / se)
    else:  # every pair differs by the same amount: no spread to test against
        p = 1.0 if mean == 0 else 0.0
    return {
        "difference": mean,
        "ci95": [mean - Z95 * se, mean + Z95 * se],
        "p_value": p,
        "pairs": n,
        "per_seed": (a.mean(axis=1) - b.mean(axis=1)).tolist(),
        "discordant": [int(((a == 1) & (b == 0)).all(axis=0).sum()), int(((a == 0) & (b == 1)).all(axis=0).sum())],
    }
