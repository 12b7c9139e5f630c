"""Pure figures of best-of-N selection: recall of the judge's best, win rates, agreement, the best-of-N curve.

    from hafrm.selection import selected, top_k_recall, random_recall, head_to_head, bon_curve
    judge = [[1.0, 0.5, 0.0], ...]          # P prompts x N samples: the judge's score of each sample
    scores = [[0.2, 0.9, -1.0], ...]        # the same shape: a reward model's score of each sample
    top_k_recall(judge, scores, k=1)        # {"recall", "ci95", "hits", "prompts", ...}

Rules (docs/bon.md):
- The judge's best samples of a prompt are all those with its highest score, so ties in the judge's
  ranking all count as best. A prompt whose N samples all tie is a hit for every selector; those
  prompts are counted (`all_tied`) and the recall over the other prompts is given beside.
- A selector ranks samples by its score, highest first; equal scores (and NaN, ranked last) keep the
  order the samples were drawn in, so the ranking is deterministic.
- Intervals are 95%: Wilson for proportions, normal (mean ± 1.96 · sd / √P) for means over prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .metrics import Z95, wilson_interval

Grid = Sequence[Sequence[float]]


def _check(judge: Grid, scores: Grid) -> None:
    if len(judge) != len(scores):
        raise ValueError(f"judge scores {len(judge)} prompts, the selector {len(scores)}")
    for p, (j, s) in enumerate(zip(judge, scores)):
        if len(j) != len(s) or not j:
            raise ValueError(f"prompt {p}: the judge scores {len(j)} samples, the selector {len(s)}")


def ranking(scores: Sequence[float]) -> list[int]:
    """Sample indices from the selector's best to its worst; ties and NaN keep the drawing order."""

    def key(i: int) -> tuple:
        value = float(scores[i])
        return (1, 0.0, i) if math.isnan(value) else (0, -value, i)

    return sorted(range(len(scores)), key=key)


def selected(scores: Grid, n: int | None = None) -> list[int]:
    """The index each prompt's selector picks among its first `n` samples (all when None)."""
    return [ranking(list(row[:n]))[0] for row in scores]


def best_set(judge_row: Sequence[float]) -> set[int]:
    top = max(judge_row)
    return {i for i, value in enumerate(judge_row) if value == top}


def mean_interval(values: Sequence[float]) -> dict:
    """Mean of per-prompt values with a normal 95% interval."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "prompts": n}


def top_k_recall(judge: Grid, scores: Grid, k: int) -> dict:
    """Share of prompts where one of the judge's best samples is in the selector's top k (Table 4)."""
    _check(judge, scores)
    hits, informative_hits, all_tied = 0, 0, 0
    for j, s in zip(judge, scores):
        best = best_set(j)
        hit = bool(best & set(ranking(list(s))[:k]))
        hits += hit
        if len(best) == len(j):
            all_tied += 1
        else:
            informative_hits += hit
    prompts, informative = len(judge), len(judge) - all_tied
    return {
        "recall": hits / prompts,
        "ci95": list(wilson_interval(hits, prompts)),
        "hits": hits,
        "prompts": prompts,
        "all_tied": all_tied,
        "recall_untied": informative_hits / informative if informative else math.nan,
        "ci95_untied": list(wilson_interval(informative_hits, informative)),
    }


def random_recall(judge: Grid, k: int) -> dict:
    """Expected top-k recall of a selector that ranks at random: 1 − C(N−b, k)/C(N, k), b = judge-best samples."""
    chances, untied = [], []
    for j in judge:
        n, b = len(j), len(best_set(j))
        chance = 1.0 - math.comb(n - b, min(k, n)) / math.comb(n, min(k, n))
        chances.append(chance)
        if b < n:
            untied.append(chance)
    return {  # an expectation computed exactly from the judge's grid, not an estimate: it has no interval
        "recall": sum(chances) / len(chances),
        "ci95": None,
        "prompts": len(judge),
        "recall_untied": sum(untied) / len(untied) if untied else math.nan,
    }


def head_to_head(judge: Grid, picks_a: Sequence[int], picks_b: Sequence[int]) -> dict:
    """A's pick against B's pick by the judge, prompt by prompt (Figure 4); a tie counts half to each.

    win_rate = (wins + ties / 2) / prompts (Wilson interval on that count); decisive = wins / (wins + losses);
    agreement = share of prompts where both picked the same sample.
    """
    wins = ties = losses = same = 0
    for j, a, b in zip(judge, picks_a, picks_b, strict=True):
        same += a == b
        if j[a] > j[b]:
            wins += 1
        elif j[a] < j[b]:
            losses += 1
        else:
            ties += 1
    prompts = len(judge)
    decided = wins + losses
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": (wins + ties / 2) / prompts,
        "ci95": list(wilson_interval(wins + ties / 2, prompts)),
        "decisive_win_rate": wins / decided if decided else math.nan,
        "decisive_ci95": list(wilson_interval(wins, decided)),
        "agreement": same / prompts,
        "agreement_ci95": list(wilson_interval(same, prompts)),
    }


def curve_sizes(n: int) -> list[int]:
    """1, 2, 4, ... up to n, with n itself last."""
    sizes, size = [], 1
    while size < n:
        sizes.append(size)
        size *= 2
    return sizes + [n]


def bon_curve(judge: Grid, scores: Grid | None = None) -> dict:
    """{N': mean judge score of the pick among each prompt's first N' samples} for N' = 1, 2, 4, ..., N.

    `scores=None` gives the random pick (the mean of the first N' samples' judge scores); the first N'
    samples are a fair draw of N' because samples are drawn independently.
    """
    n = min(len(row) for row in judge)
    curve = {}
    for size in curve_sizes(n):
        if scores is None:
            values = [sum(row[:size]) / size for row in judge]
        else:
            values = [row[pick] for row, pick in zip(judge, selected(scores, size))]
        curve[size] = mean_interval(values)
    return curve


def oracle_curve(judge: Grid) -> dict:
    """The ceiling: the judge's own best among the first N' samples."""
    n = min(len(row) for row in judge)
    return {size: mean_interval([max(row[:size]) for row in judge]) for size in curve_sizes(n)}
