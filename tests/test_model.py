"""The hybrid forward pass: pooling, response log-probs, heads that do (not) run, the checkpoint."""

import pytest
import torch

from hafrm.checkpoint import load_base_model
from hafrm.data import PairCollator, read_pairs, tokenize_pairs
from hafrm.model import forward_rows, hybrid_forward, reward_index
from hafrm.objective import Objective


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    torch.manual_seed(0)
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def dataset(model_and_tokenizer, pairs_file):
    _, tokenizer = model_and_tokenizer
    return tokenize_pairs(read_pairs(str(pairs_file))[:6], tokenizer, max_length=128)[0]


def test_reward_index_is_the_last_token_that_is_not_the_pad():
    pad = 9
    input_ids = torch.tensor([[5, 2, 7, pad, pad], [5, 2, 7, 2, 2], [pad, pad, 5, 2, 2]])
    assert reward_index(input_ids, pad).tolist() == [2, 4, 4]  # right padding, none, left padding
    # the end-of-turn token (2 here) is read like any other: only the pad is skipped
    assert reward_index(torch.tensor([[5, 2, pad]]), pad).tolist() == [1]


def test_the_model_pads_with_a_token_that_is_not_eos(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # SmolLM2's tokenizer has pad == eos and no reserved token: hafrm adds `<|pad|>` and one embedding row
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == 49152 != tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == 49153
    assert model.config.pad_token_id == 49152


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_rewards_equal_unpadded(model_and_tokenizer, dataset, padding_side):
    """The reward must come from the last real token, never from a pad."""
    model, tokenizer = model_and_tokenizer
    collator = PairCollator(tokenizer.pad_token_id, padding_side)
    rows = [dataset[i] for i in range(len(dataset))]
    with torch.no_grad():
        batched = hybrid_forward(model, collator(rows), need_rewards=True, need_logps=True)
        for i, row in enumerate(rows):
            alone = hybrid_forward(model, collator([row]), need_rewards=True, need_logps=True)
            torch.testing.assert_close(batched.chosen_rewards[i], alone.chosen_rewards[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.rejected_rewards[i], alone.rejected_rewards[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.chosen_logps[i], alone.chosen_logps[0], atol=1e-4, rtol=1e-5)
    # The batch really was padded after (or before) shorter rows.
    batch = collator(rows)
    assert (batch["attention_mask"] == 0).any()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_response_logps_match_full_logits(model_and_tokenizer, dataset):
    model, tokenizer = model_and_tokenizer
    batch = PairCollator(tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    with torch.no_grad():
        _, logps, lengths = forward_rows(model, batch, need_rewards=False, need_logps=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = logits[:, :-1].log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    mask = batch["response_mask"][:, 1:].float()
    torch.testing.assert_close(logps, (token_logps * mask).sum(1), atol=1e-4, rtol=1e-5)
    assert lengths.tolist() == mask.sum(1).long().tolist()


def test_rm_never_runs_lm_head(model_and_tokenizer, dataset):
    model, tokenizer = model_and_tokenizer
    calls = []  # positions lm_head is run on, per call

    def count_positions(_module, inputs, _output):
        if inputs[0].numel():
            calls.append(inputs[0].numel())

    hook = model.get_output_embeddings().register_forward_hook(count_positions)
    try:
        batch = PairCollator(tokenizer.pad_token_id)([dataset[i] for i in range(2)])
        Objective(method="rm")(model, batch)
        assert calls == []
        batch.update(ref_chosen_logps=torch.zeros(2), ref_rejected_logps=torch.zeros(2))
        Objective(method="haf")(model, batch)
        assert calls  # the same hook does see the policy head in haf
    finally:
        hook.remove()


def test_haf_with_alpha_zero_has_the_gradients_of_rm(tiny_model, dataset):
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    batch = PairCollator(tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    batch.update(ref_chosen_logps=torch.full((4,), -50.0), ref_rejected_logps=torch.full((4,), -40.0))

    def gradients(objective):
        model.zero_grad()
        objective(model, batch)[0].backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    rm = gradients(Objective(method="rm"))
    haf = gradients(Objective(method="haf", alpha=0.0))
    haf_nonzero = gradients(Objective(method="haf", alpha=0.2))
    assert rm.keys() == haf.keys()
    for name in rm:
        torch.testing.assert_close(haf[name], rm[name], atol=1e-7, rtol=0)
    # ...and α > 0 does change them, so the comparison above can fail.
    assert any(not torch.allclose(haf_nonzero[name], rm[name]) for name in rm)


def test_margin_column_reaches_the_reward_loss(model_and_tokenizer, tmp_path):
    import json

    model, tokenizer = model_and_tokenizer
    rows = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "margin": 2.0}] * 2
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset, _ = tokenize_pairs(read_pairs(str(path)), tokenizer, max_length=64)
    batch = PairCollator(tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert batch["margin"].tolist() == [2.0, 2.0]
    with torch.no_grad():
        with_margin = Objective(method="rm")(model, batch)[1]["reward_loss"]
        batch.pop("margin")
        without = Objective(method="rm")(model, batch)[1]["reward_loss"]
    # -log σ(x - 2) > -log σ(x) for any reward gap x
    assert with_margin > without + 0.5


def test_reward_head_init_depends_on_the_seed_alone(tiny_model):
    first, _ = load_base_model(tiny_model, with_score_head=True, seed=7)
    torch.rand(1000)  # anything else drawing from the global RNG must not matter
    second, _ = load_base_model(tiny_model, with_score_head=True, seed=7)
    other, _ = load_base_model(tiny_model, with_score_head=True, seed=8)
    assert torch.equal(first.score.weight, second.score.weight)
    assert not torch.equal(first.score.weight, other.score.weight)


def test_packed_rows_give_the_padded_results_and_gradients(tiny_model, dataset):
    """Rewards, log-probs, lengths, loss and every gradient: packed equals padded."""
    rows = [dict(dataset[i]) for i in range(6)]
    for row in rows[3:]:  # prompts cut short, so that two short sequences share a row
        row["chosen_input_ids"], row["rejected_input_ids"] = (
            row["chosen_input_ids"][30:],
            row["rejected_input_ids"][30:],
        )
        row["prompt_length"] -= 30
    results = []
    for packing in (False, True):
        model, tokenizer = load_base_model(tiny_model, with_score_head=True)
        batch = PairCollator(pad_token_id=tokenizer.pad_token_id, packing=packing)(rows)
        out = hybrid_forward(model, batch, need_rewards=True, need_logps=True)
        loss = (out.chosen_rewards - out.rejected_rewards).sum() + (out.chosen_logps - out.rejected_logps).sum()
        loss.backward()
        grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
        results.append((batch, out, grads))
    (padded_batch, padded, padded_grads), (packed_batch, packed, packed_grads) = results
    assert packed_batch["input_ids"].numel() < padded_batch["input_ids"].numel()  # it did pack
    for field in ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps"):
        torch.testing.assert_close(getattr(packed, field), getattr(padded, field), rtol=1e-4, atol=1e-5)
    assert torch.equal(packed.chosen_lengths, padded.chosen_lengths)
    assert torch.equal(packed.rejected_lengths, padded.rejected_lengths)
    assert packed_grads.keys() == padded_grads.keys()
    for name in padded_grads:
        torch.testing.assert_close(packed_grads[name], padded_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_packing_error_catches_attention_that_ignores_sequence_boundaries(tiny_model, dataset, monkeypatch):
    import transformers.masking_utils

    from hafrm.layout import packing_error
    from hafrm.train import PACKING_TOLERANCE

    model, _ = load_base_model(tiny_model, with_score_head=True)
    row = dataset[0]
    pair = (row["chosen_input_ids"], row["rejected_input_ids"], row["prompt_length"])
    assert packing_error(model, *pair, need_rewards=True, need_logps=True) < PACKING_TOLERANCE / 100
    # an attention that reads the whole row causally, across sequences
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    assert packing_error(model, *pair, need_rewards=True, need_logps=True) > PACKING_TOLERANCE


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_the_three_log_prob_paths_give_equal_values_and_gradients(softcap, monkeypatch):
    """Frozen-head fused function, kept logits, and per-chunk recompute: same numbers both ways."""
    from types import SimpleNamespace

    from hafrm import model as model_module

    torch.manual_seed(0)
    n_rows, length, hidden_size, vocab = 3, 7, 16, 50
    input_ids = torch.randint(0, vocab, (n_rows, length))
    response_mask = torch.zeros(n_rows, length, dtype=torch.long)
    response_mask[:, 3:] = 1
    response_mask[1, 5:] = 0  # rows of different response lengths
    weight = torch.randn(vocab, hidden_size)
    upstream = torch.randn(n_rows)  # the loss's gradient per row

    def run(trainable_head: bool, keep_elements: int):
        monkeypatch.setattr(model_module, "LOGIT_CHUNK", 4)  # several chunks
        monkeypatch.setattr(model_module, "LOGIT_KEEP_ELEMENTS", keep_elements)
        lm_head = torch.nn.Linear(hidden_size, vocab, bias=False)
        lm_head.weight.data.copy_(weight)
        lm_head.weight.requires_grad_(trainable_head)
        config = SimpleNamespace(vocab_size=vocab, final_logit_softcapping=softcap)
        causal_lm = SimpleNamespace(
            get_output_embeddings=lambda: lm_head, config=SimpleNamespace(get_text_config=lambda: config)
        )
        hidden = torch.randn(
            n_rows, length, hidden_size, generator=torch.Generator().manual_seed(1), requires_grad=True
        )
        logps, lengths = model_module.response_logps(causal_lm, hidden, input_ids, response_mask)
        (logps * upstream).sum().backward()
        return logps.detach(), lengths, hidden.grad

    fused = run(trainable_head=False, keep_elements=1 << 26)
    kept = run(trainable_head=True, keep_elements=1 << 26)
    recomputed = run(trainable_head=True, keep_elements=0)
    for other in (kept, recomputed):
        torch.testing.assert_close(fused[0], other[0])
        assert fused[1].tolist() == other[1].tolist() == [4, 2, 4]
        torch.testing.assert_close(fused[2], other[2], atol=1e-5, rtol=1e-4)
    assert fused[2].abs().sum() > 0


def _outputs_and_gradients(tiny_model, rows, **collator_flags):
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    batch = PairCollator(pad_token_id=tokenizer.pad_token_id, **collator_flags)(rows)
    out = hybrid_forward(model, batch, need_rewards=True, need_logps=True)
    loss = (out.chosen_rewards - out.rejected_rewards).sum() + (out.chosen_logps - 0.5 * out.rejected_logps).sum()
    loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return batch, out, grads


@pytest.mark.parametrize("packing", [False, True])
def test_shared_prompts_give_the_padded_results_and_gradients(tiny_model, dataset, packing):
    """Prompt, chosen and rejected in one unit: rewards, log-probs, lengths and every gradient as padded."""
    rows = [dict(dataset[i]) for i in range(6)]
    for row in rows[3:]:  # shorter pairs, so that with packing two units share a row
        row["chosen_input_ids"], row["rejected_input_ids"] = (
            row["chosen_input_ids"][30:],
            row["rejected_input_ids"][30:],
        )
        row["prompt_length"] -= 30
    padded_batch, padded, padded_grads = _outputs_and_gradients(tiny_model, rows)
    shared_batch, shared, shared_grads = _outputs_and_gradients(tiny_model, rows, prompt_sharing=True, packing=packing)
    # each prompt ran once: the shared rows hold exactly the pairs' tokens less one copy of each prompt
    real = int((shared_batch["sequence_ids"] >= 0).sum())
    assert real == sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) - r["prompt_length"] for r in rows)
    n_rows = shared_batch["input_ids"].shape[0]
    assert n_rows == len(rows) if not packing else n_rows < len(rows)  # packing put two units in one row
    for field in ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps"):
        torch.testing.assert_close(getattr(shared, field), getattr(padded, field), rtol=1e-4, atol=1e-5)
    assert torch.equal(shared.chosen_lengths, padded.chosen_lengths)
    assert torch.equal(shared.rejected_lengths, padded.rejected_lengths)
    assert shared_grads.keys() == padded_grads.keys()
    for name in padded_grads:
        torch.testing.assert_close(shared_grads[name], padded_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_a_rejected_reply_that_could_see_the_chosen_one_changes_its_results(tiny_model, dataset, monkeypatch):
    """The mask matters: with the chosen reply visible to the rejected one, the rejected results move."""
    from hafrm import masks as masks_module

    rows = [dict(dataset[i]) for i in range(2)]
    _, honest, _ = _outputs_and_gradients(tiny_model, rows, prompt_sharing=True)

    def causal_only(groups, segments, dtype):  # plain causal attention over the whole row
        length = groups.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = torch.zeros(length, length, dtype=dtype).masked_fill(~causal, torch.finfo(dtype).min)
        return mask.expand(groups.shape[0], 1, length, length)

    monkeypatch.setattr(masks_module, "shared_attention_mask", causal_only)
    _, leaky, _ = _outputs_and_gradients(tiny_model, rows, prompt_sharing=True)
    torch.testing.assert_close(leaky.chosen_rewards, honest.chosen_rewards, rtol=1e-4, atol=1e-5)
    assert (leaky.rejected_rewards - honest.rejected_rewards).abs().max() > 1e-3


def test_shared_attention_mask_lets_each_reply_see_the_prompt_and_itself():
    from hafrm.masks import shared_attention_mask

    # one unit: prompt (2 tokens), reply A (2), reply B (1); then one pad
    groups = torch.tensor([[0, 0, 0, 0, 0, -1]])
    segments = torch.tensor([[0, 0, 1, 1, 2, 0]])
    allowed = (shared_attention_mask(groups, segments, torch.float32)[0, 0] == 0).int()
    assert allowed.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # reply B: the prompt and itself, not reply A
        [0, 0, 0, 0, 0, 1],  # the pad: itself only
    ]
