"""Best-of-N figures against values worked out by hand on a fixed 3-prompt x 4-sample grid."""

import math

import pytest

from hafrm.metrics import wilson_interval
from hafrm.selection import (
    bon_curve,
    curve_sizes,
    head_to_head,
    mean_interval,
    oracle_curve,
    random_recall,
    ranking,
    selected,
    top_k_recall,
)

JUDGE = [
    [1.0, 0.5, 0.5, 0.0],  # best: {0}
    [0.5, 0.5, 0.0, 0.0],  # best: {0, 1} (a tie in the judge's ranking)
    [1.0, 1.0, 1.0, 1.0],  # all tied: a hit for every selector
]
A = [
    [0.1, 0.9, 0.3, 0.2],  # ranks 1, 2, 3, 0: top-1 and top-2 miss
    [0.0, 0.0, 5.0, 1.0],  # ranks 2, 3, 0, 1 (0 and 1 tie: drawing order): miss, miss
    [0.0, 0.0, 0.0, 0.0],  # ranks 0, 1, 2, 3: hit
]
B = [
    [2.0, 1.0, math.nan, 0.0],  # ranks 0, 1, 3, 2 (NaN last): hit
    [0.0, 3.0, 2.0, 1.0],  # ranks 1, 2, 3, 0: hit
    [1.0, 2.0, 3.0, 4.0],  # hit
]


def test_ranking_breaks_ties_by_drawing_order_and_puts_nan_last():
    assert ranking([0.0, 0.0, 5.0, 1.0]) == [2, 3, 0, 1]
    assert ranking([2.0, 1.0, math.nan, 0.0]) == [0, 1, 3, 2]
    assert selected(A) == [1, 2, 0]
    assert selected(B) == [0, 1, 3]
    assert selected(A, n=2) == [1, 0, 0]


def test_top_k_recall_counts_any_judge_best_and_reports_all_tied_prompts():
    top1 = top_k_recall(JUDGE, A, 1)
    assert (top1["hits"], top1["prompts"], top1["all_tied"]) == (1, 3, 1)
    assert top1["recall"] == pytest.approx(1 / 3)
    assert top1["ci95"] == pytest.approx(list(wilson_interval(1, 3)))
    assert top1["recall_untied"] == 0.0
    assert top_k_recall(JUDGE, A, 2)["hits"] == 1
    best = top_k_recall(JUDGE, B, 1)
    assert (best["hits"], best["recall_untied"]) == (3, 1.0)
    assert top_k_recall(JUDGE, A, 4)["hits"] == 3  # every sample is in the top 4


def test_random_recall_is_one_minus_the_chance_of_missing_every_best():
    top1 = random_recall(JUDGE, 1)  # 1 - 3/4, 1 - 2/4, 1
    assert top1["recall"] == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert top1["recall_untied"] == pytest.approx(0.375)
    top2 = random_recall(JUDGE, 2)  # 1 - C(3,2)/C(4,2), 1 - C(2,2)/C(4,2), 1
    assert top2["recall"] == pytest.approx((0.5 + 5 / 6 + 1.0) / 3)


def test_head_to_head_counts_a_judge_tie_as_half():
    match = head_to_head(JUDGE, selected(A), selected(B))  # 0.5 vs 1, 0 vs 0.5, 1 vs 1
    assert (match["wins"], match["ties"], match["losses"]) == (0, 1, 2)
    assert match["win_rate"] == pytest.approx(0.5 / 3)
    assert match["ci95"] == pytest.approx(list(wilson_interval(0.5, 3)))
    assert match["decisive_win_rate"] == 0.0
    assert match["agreement"] == 0.0
    same = head_to_head(JUDGE, [0, 1, 2], [0, 1, 3])
    assert same["agreement"] == pytest.approx(2 / 3) and same["ties"] == 3


def test_curves_pick_among_the_first_samples():
    assert curve_sizes(8) == [1, 2, 4, 8] and curve_sizes(5) == [1, 2, 4, 5] and curve_sizes(1) == [1]
    curve = bon_curve(JUDGE, A)
    assert [curve[n]["mean"] for n in (1, 2, 4)] == pytest.approx([5 / 6, 2 / 3, 0.5])
    chance = bon_curve(JUDGE)
    assert [chance[n]["mean"] for n in (1, 2, 4)] == pytest.approx([5 / 6, 0.75, 1.75 / 3])
    ceiling = oracle_curve(JUDGE)
    assert [ceiling[n]["mean"] for n in (1, 2, 4)] == pytest.approx([5 / 6] * 3)
    # mean ± 1.96 sd / sqrt(3) of [1, 0.5, 1]: sd = sqrt(1/12)
    half = 1.959964 * math.sqrt(1 / 12) / math.sqrt(3)
    assert curve[1]["ci95"] == pytest.approx([5 / 6 - half, 5 / 6 + half])
    assert mean_interval([0.25]) == {"mean": 0.25, "ci95": [0.25, 0.25], "prompts": 1}


def test_mismatched_grids_are_refused():
    with pytest.raises(ValueError, match="prompt 1: the judge scores 4 samples, the selector 3"):
        top_k_recall(JUDGE, [A[0], A[1][:3], A[2]], 1)
