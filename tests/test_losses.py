"""Each loss against numbers computed by hand (σ(x) = 1 / (1 + e^-x))."""

import math

import pytest
import torch

from hafrm.losses import PolicyLogps, haf_loss, policy_loss, reward_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x):  # -log σ(x)
    return math.log1p(math.exp(-x))


def test_reward_loss_bradley_terry():
    loss, metrics = reward_loss(t(1.0, 0.0), t(0.0, 1.0))
    assert loss.item() == pytest.approx((softplus(1.0) + softplus(-1.0)) / 2)
    assert loss.item() == pytest.approx(0.8132616875)
    assert metrics["accuracy"].item() == 0.5
    assert metrics["margin"].item() == 0.0
    assert metrics["rewards/chosen"].item() == 0.5


def test_reward_loss_margin_and_centering():
    loss, _ = reward_loss(t(1.0, 0.0), t(0.0, 1.0), margin=t(0.5, 0.5))
    assert loss.item() == pytest.approx((softplus(0.5) + softplus(-1.5)) / 2)
    centred, _ = reward_loss(t(1.0, 0.0), t(0.0, 1.0), center_coef=0.1)
    # (r_c + r_r)^2 is 1 for both pairs
    assert centred.item() == pytest.approx(0.8132616875 + 0.1)


# chosen: log π = -10 over 2 tokens, log π_ref = -11; rejected: log π = -12 over 4 tokens, log π_ref = -11.
LOGPS = PolicyLogps(t(-10.0), t(-12.0), t(2.0), t(4.0), t(-11.0), t(-11.0))


def test_dpo():
    loss, metrics, chosen_rewards, rejected_rewards = policy_loss("dpo", LOGPS, beta=0.1)
    # h = (-10 + 11) - (-12 + 11) = 2
    assert loss.item() == pytest.approx(softplus(0.2))
    assert metrics["implicit_rewards/chosen"].item() == pytest.approx(0.1)
    assert metrics["implicit_rewards/rejected"].item() == pytest.approx(-0.1)
    assert metrics["implicit_accuracy"].item() == 1.0
    # β·(log π - log π_ref) per pair: 0.1·(-10 + 11), 0.1·(-12 + 11)
    assert (chosen_rewards.item(), rejected_rewards.item()) == pytest.approx((0.1, -0.1))


def test_ipo_uses_per_token_log_ratios():
    loss, *_ = policy_loss("ipo", LOGPS, beta=0.1)
    # h = 1/2 - (-1)/4 = 0.75; target 1/(2β) = 5
    assert loss.item() == pytest.approx((0.75 - 5) ** 2)


def test_hinge():
    loss, *_ = policy_loss("hinge", LOGPS, beta=0.1)
    assert loss.item() == pytest.approx(1 - 0.1 * 2)
    far, *_ = policy_loss("hinge", LOGPS, beta=1.0)
    assert far.item() == 0.0


def test_simpo_is_reference_free_and_length_normalised():
    no_reference = PolicyLogps(t(-10.0), t(-12.0), t(2.0), t(4.0))
    loss, metrics, *_ = policy_loss("simpo", no_reference, beta=2.0, gamma=0.5)
    # 2 * (-10 / 2) = -10 against 2 * (-12 / 4) = -6
    assert loss.item() == pytest.approx(softplus(-10 + 6 - 0.5))
    assert metrics["implicit_accuracy"].item() == 0.0


def test_sft_is_chosen_per_token_nll():
    loss, *_ = policy_loss("sft", PolicyLogps(t(-10.0), t(-12.0), t(2.0), t(4.0)))
    assert loss.item() == pytest.approx(5.0)


def test_haf_weights_policy_by_alpha():
    assert haf_loss(t(1.0), t(2.0), alpha=0.2).item() == pytest.approx(1.4)
    assert haf_loss(t(1.0), t(2.0), alpha=0.0).item() == pytest.approx(1.0)


def test_reference_losses_refuse_missing_reference():
    with pytest.raises(ValueError, match="reference"):
        policy_loss("dpo", PolicyLogps(t(-10.0), t(-12.0), t(2.0), t(4.0)))


def test_unknown_policy_loss():
    with pytest.raises(ValueError, match="unknown policy loss"):
        policy_loss("kto", LOGPS)


@pytest.mark.parametrize(
    "name, chosen, rejected",
    [
        ("dpo", 0.1, -0.1),  # β·(log π - log π_ref): 0.1·(−10 + 11), 0.1·(−12 + 11)
        ("ipo", 0.1, -0.1),
        ("hinge", 0.1, -0.1),
        ("simpo", -0.5, -0.3),  # β·mean log π: 0.1·(−10 / 2), 0.1·(−12 / 4)
        ("sft", -5.0, -3.0),  # mean log π, no β: the score the SFT loss itself uses
    ],
)
def test_one_implicit_reward_per_loss(name, chosen, rejected):
    from hafrm.losses import implicit_rewards

    chosen_reward, rejected_reward = implicit_rewards(name, LOGPS, beta=0.1)
    assert (chosen_reward.item(), rejected_reward.item()) == pytest.approx((chosen, rejected))
    # the training logs read the same numbers
    _, metrics, *_ = policy_loss(name, LOGPS, beta=0.1)
    assert metrics["implicit_rewards/chosen"].item() == pytest.approx(chosen)


@pytest.mark.parametrize("name", ["dpo", "ipo", "hinge", "simpo", "sft", "grm-sft", "dpo-noref"])
def test_the_policy_loss_returns_the_implicit_rewards_detached(name):
    from hafrm.losses import implicit_rewards

    chosen_logps = t(-10.0, -3.0).requires_grad_()
    logps = PolicyLogps(chosen_logps, t(-12.0, -4.0), t(2.0, 3.0), t(4.0, 1.0), t(-11.0, -5.0), t(-11.0, -2.0))
    loss, _, chosen_rewards, rejected_rewards = policy_loss(name, logps, beta=0.1, gamma=0.5)
    expected_chosen, expected_rejected = implicit_rewards(name, logps, beta=0.1, gamma=0.5)
    assert torch.equal(chosen_rewards, expected_chosen.detach())
    assert torch.equal(rejected_rewards, expected_rejected.detach())
    assert chosen_rewards.shape == rejected_rewards.shape == (2,)  # [B], one per pair
    assert loss.requires_grad and not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_grm_sft_is_the_log_sigmoid_of_the_chosen_log_prob():
    # β · log π(y_c) = 0.1 · -10 = -1: loss -log σ(-1) = log(1 + e) = 1.3133; the rejected side is only scored
    loss, metrics, *_ = policy_loss("grm-sft", PolicyLogps(t(-10.0, -30.0), t(-12.0, -1.0), t(2.0, 2.0), t(4.0, 4.0)))
    assert loss.item() == pytest.approx((math.log1p(math.e) + math.log1p(math.exp(3.0))) / 2)
    assert loss.item() == pytest.approx((1.313262 + 3.048587) / 2, abs=1e-6)
    assert metrics["implicit_rewards/chosen"].item() == pytest.approx((-1.0 - 3.0) / 2)
    assert metrics["implicit_accuracy"].item() == 0.5  # -1 > -1.2, -3 < -0.1


def test_dpo_noref_is_dpo_with_a_zero_reference():
    logps = PolicyLogps(t(-10.0), t(-14.0), t(2.0), t(4.0))
    loss, *_ = policy_loss("dpo-noref", logps, beta=0.5)
    assert loss.item() == pytest.approx(softplus(0.5 * (-10 + 14)))  # -log σ(2) = 0.126928
    assert loss.item() == pytest.approx(0.126928, abs=1e-6)
    zero_reference = PolicyLogps(t(-10.0), t(-14.0), t(2.0), t(4.0), t(0.0), t(0.0))
    assert loss.item() == pytest.approx(policy_loss("dpo", zero_reference, beta=0.5)[0].item())


def test_grm_weighting_maps_onto_alpha():
    from hafrm.losses import grm_alpha

    assert grm_alpha(0.01) == pytest.approx(0.01 / 0.99)
    assert grm_alpha(0.0) == 0.0
    bt, reg, w = t(0.7), t(2.0), 0.2
    # (1 - w) · BT + w · reg == (1 - w) · (BT + α · reg)
    assert ((1 - w) * bt + w * reg).item() == pytest.approx(((1 - w) * haf_loss(bt, reg, grm_alpha(w))).item())
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        grm_alpha(1.0)
