"""Accuracy intervals, calibration, perplexity and the fitted combination against hand-computed values."""

import math

import pytest
import torch

from hafrm.metrics import comparison, expected_calibration_error, fit_combination, grouped, perplexity, wilson_interval


def test_wilson_interval_textbook_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_comparison_counts_ties_apart():
    figures = comparison(torch.tensor([2.0, 1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert figures["accuracy"] == 0.5 and figures["ties"] == 1
    assert figures["margin"] == pytest.approx(0.25)
    assert figures["mean"] == pytest.approx(0.875)


@pytest.mark.parametrize(
    "margin, ece",
    [
        (0.0, 0.0),  # p = 0.5, outcome mean 0.5 in the shared bin
        (50.0, 0.0),  # certain and right
        (math.log(3), 0.25),  # p = 0.75 but always right: |1 - 0.75| and |0 - 0.25|, half the mass each
        (-math.log(3), 0.75),  # p = 0.25 for winners: |1 - 0.25| and |0 - 0.75|
    ],
)
def test_expected_calibration_error(margin, ece):
    assert expected_calibration_error([margin] * 20, [0.0] * 20) == pytest.approx(ece, abs=1e-9)


def test_perplexity_per_token():
    figures = perplexity(torch.tensor([-2.0, -4.0]), torch.tensor([2, 2]))
    assert figures["mean"] == pytest.approx((math.e + math.e**2) / 2)
    assert figures["variance"] == pytest.approx(((math.e - math.e**2) ** 2) / 2)


def test_fit_combination_uses_the_implicit_reward_only_when_it_helps():
    reward = torch.tensor([1.0, 1.0, -0.5, -0.5])  # wrong on the last two pairs
    implicit = torch.tensor([0.0, 0.0, 1.0, 1.0])  # right exactly there
    lam = fit_combination(reward, implicit)
    assert ((reward + lam * implicit) > 0).all() and lam > 0.5
    assert fit_combination(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 1.0])) == 0.0


def test_grouped_by_label():
    chosen, rejected = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])
    groups = grouped(["a", "b", ""], {"reward_head": (chosen, rejected)})
    assert {k: g["pairs"] for k, g in groups.items()} == {"(none)": 1, "a": 1, "b": 1}
    assert groups["b"]["reward_head"]["accuracy"] == 0.0


def test_paired_difference_by_hand():
    from hafrm.metrics import paired_difference

    # two seeds x four pairs; per pair, seed-averaged: method [1, .5, 0, 1], baseline [.5, 0, .5, 0]
    figures = paired_difference([[1, 1, 0, 1], [1, 0, 0, 1]], [[1, 0, 0, 0], [0, 0, 1, 0]])
    # d = [.5, .5, -.5, 1]: mean .375; sd = sqrt(1.1875 / 3); se = sd / 2; z = 1.19208
    se = math.sqrt(1.1875 / 3) / 2
    assert figures["difference"] == 0.375
    assert figures["ci95"] == pytest.approx([0.375 - 1.959964 * se, 0.375 + 1.959964 * se])
    assert figures["p_value"] == pytest.approx(0.233230, abs=1e-6)
    assert figures["per_seed"] == [0.5, 0.25]
    assert figures["discordant"] == [1, 0]  # pair 4: the method right and the baseline wrong in both seeds
    assert figures["pairs"] == 4
    same = paired_difference([[1, 0, 1]], [[1, 0, 1]])
    assert (same["difference"], same["p_value"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="same \\[seeds, pairs\\] shape"):
        paired_difference([[1, 0]], [[1, 0, 1]])
