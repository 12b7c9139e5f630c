"""Prompt sharing end to end: training (every method and policy loss), the reference pass, scoring, the fallback.

The unit-level exactness checks (rewards, log-probs, every gradient; with and without packing) are in
test_model.py; the row layout itself in test_data.py.
"""

import json

import pytest
import torch

from hafrm.checkpoint import load_base_model
from hafrm.data import PairCollator, read_pairs, tokenize_pairs
from hafrm.inference import score_sequences


@pytest.mark.parametrize(
    "method, policy_loss",
    [
        ("rm", "dpo"),
        ("dpo", "dpo"),
        ("haf", "dpo"),
        ("haf", "ipo"),
        ("haf", "hinge"),
        ("haf", "simpo"),
        ("haf", "sft"),
        ("haf", "grm-sft"),
        ("haf", "dpo-noref"),
    ],
)
def test_training_with_shared_prompts_follows_the_unshared_run_on_fewer_tokens(
    method, policy_loss, tiny_model, pairs_file, tmp_path, monkeypatch, train_run, logged, collated_batches
):
    monkeypatch.setenv("HAFRM_CACHE", str(tmp_path / "cache"))
    curves, tokens = [], []
    for flags in (["--no-prompt-sharing"], []):
        collated_batches.clear()
        out = train_run(
            tiny_model,
            pairs_file,
            tmp_path / f"run{len(flags)}",
            *("--val-fraction", "0", "--method", method, "--policy-loss", policy_loss, "--max-steps", "3"),
            *("--sampling", "sequential", *flags),
        )
        curves.append(logged(out, "loss", "grad_norm"))
        tokens.append(sum(int((batch["sequence_ids"] >= 0).sum()) for batch in collated_batches))
        assert json.loads((out / "hafrm.json").read_text())["prompt_sharing"] is not bool(flags)
        assert all(("segment_ids" in batch) is not bool(flags) for batch in collated_batches)
    assert len(curves[0]) == 6
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
    assert tokens[1] < 0.8 * tokens[0], tokens  # the prompts ran once: far fewer real tokens


def test_reference_log_probs_from_shared_rows_equal_the_padded_ones(tiny_model, pairs_file, tmp_path, monkeypatch):
    from hafrm.reference import compute_reference_logps

    model, tokenizer = load_base_model(tiny_model, with_score_head=False)
    dataset, _ = tokenize_pairs(read_pairs(str(pairs_file))[:6], tokenizer, max_length=96)
    padded = compute_reference_logps(model, dataset, PairCollator(tokenizer.pad_token_id), batch_size=3)
    shared = compute_reference_logps(
        model, dataset, PairCollator(tokenizer.pad_token_id, prompt_sharing=True, packing=True), batch_size=3
    )
    for a, b in zip(shared, padded):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_scoring_runs_each_prompt_once_and_gives_the_padded_rewards(tiny_model, pairs_file):
    """Best-of-N style: N responses to each of a few prompts, scored shared and unshared."""
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    dataset, _ = tokenize_pairs(read_pairs(str(pairs_file))[:4], tokenizer, max_length=96)
    sequences, prompts = [], []
    for row in dataset:
        for ids in (row["chosen_input_ids"], row["rejected_input_ids"], row["chosen_input_ids"][:-3]):
            sequences.append(ids)
            prompts.append(row["prompt_length"])
    sequences.append(sequences[0][: prompts[0] + 2])  # the same prompt, much later in the list
    prompts.append(prompts[0])
    seen = []
    original = model.forward

    def counting(*args, **kwargs):
        seen.append(int((kwargs["input_ids"] != tokenizer.pad_token_id).sum()))
        return original(*args, **kwargs)

    model.forward = counting
    unshared = score_sequences(model.eval(), sequences, prompts, 4, tokenizer.pad_token_id, share_prompts=False)
    unshared_tokens, seen[:] = sum(seen), []
    shared = score_sequences(model, sequences, prompts, 4, tokenizer.pad_token_id, need_logps=True)
    check, passes = seen[:2], seen[2:]  # first the one-time check that sharing holds here: padded, then shared
    assert len(check) == 2 and len(passes) == 3  # units of 4, 3, 3, 3 sequences; about 4 sequences a pass
    assert sum(passes) == sum(len(s) for s in sequences) - sum(
        (len(group) - 1) * prompts[group[0]] for group in ([0, 1, 2, 12], [3, 4, 5], [6, 7, 8], [9, 10, 11])
    )
    assert sum(passes) < 0.6 * unshared_tokens
    torch.testing.assert_close(shared["rewards"], unshared["rewards"], rtol=1e-4, atol=1e-5)
    padded_logps = score_sequences(
        model, sequences, prompts, 4, tokenizer.pad_token_id, need_rewards=False, need_logps=True, share_prompts=False
    )
    torch.testing.assert_close(shared["logps"], padded_logps["logps"], rtol=1e-5, atol=1e-4)
    assert torch.equal(shared["lengths"], padded_logps["lengths"])


def test_sharing_turns_itself_off_for_attention_that_ignores_the_mask(
    tiny_model, pairs_file, tmp_path, monkeypatch, capsys, train_run, collated_batches
):
    from hafrm import masks as masks_module

    def causal_only(groups, segments, dtype):  # an attention that reads the whole row causally
        length = groups.shape[1]
        mask = torch.zeros(length, length, dtype=dtype).masked_fill(
            ~torch.ones(length, length, dtype=torch.bool).tril(), torch.finfo(dtype).min
        )
        return mask.expand(groups.shape[0], 1, length, length)

    monkeypatch.setattr(masks_module, "shared_attention_mask", causal_only)
    out = train_run(
        tiny_model, pairs_file, tmp_path / "run", "--val-fraction", "0", "--method", "haf", "--max-steps", "1"
    )
    printed = capsys.readouterr().out
    assert "note: prompt sharing off: LlamaForCausalLM scores a pair with its prompt shared differently" in printed
    assert collated_batches and all("segment_ids" not in batch for batch in collated_batches)
    assert json.loads((out / "hafrm.json").read_text())["prompt_sharing"] is False
    # scoring checks once per model and falls back the same way
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    ids = [[1, 5, 6, 7], [1, 5, 6, 9, 9]]
    shared = score_sequences(model.eval(), ids, [3, 3], 4, tokenizer.pad_token_id)
    assert "note: prompt sharing off: LlamaForCausalLM does not score shared-prompt rows" in capsys.readouterr().out
    padded = score_sequences(model, ids, [3, 3], 4, tokenizer.pad_token_id, share_prompts=False)
    torch.testing.assert_close(shared["rewards"], padded["rewards"])


def test_sharing_turns_itself_off_for_a_model_that_cannot_take_the_mask(
    tiny_model, pairs_file, tmp_path, monkeypatch, capsys, train_run, collated_batches
):
    import hafrm.train

    def fails(*args, **kwargs):
        raise RuntimeError("flash attention takes no 4-D mask")

    monkeypatch.setattr(hafrm.train, "sharing_error", fails)
    train_run(tiny_model, pairs_file, tmp_path / "run", "--val-fraction", "0", "--method", "rm", "--max-steps", "1")
    printed = capsys.readouterr().out
    assert (
        "note: prompt sharing off: LlamaForCausalLM failed on shared-prompt rows (RuntimeError: flash attention takes"
        in printed
    )
    assert collated_batches and all("segment_ids" not in batch for batch in collated_batches)


def test_flex_attention_takes_the_shared_rows_as_a_block_mask(tiny_model, pairs_file):
    """With FlexAttention the mask is a BlockMask (its kernel skips masked blocks); same results as padded."""
    from hafrm.model import hybrid_forward

    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    dataset, _ = tokenize_pairs(read_pairs(str(pairs_file))[:3], tokenizer, max_length=96)
    rows = [dataset[i] for i in range(3)]
    with torch.no_grad():
        padded = hybrid_forward(model.eval(), PairCollator(tokenizer.pad_token_id)(rows), True, True)
        model.set_attn_implementation("flex_attention")
        batch = PairCollator(tokenizer.pad_token_id, prompt_sharing=True, packing=True)(rows)
        try:
            shared = hybrid_forward(model, batch, True, True)
        except Exception as exc:  # torch cannot compile FlexAttention for this machine
            pytest.skip(f"FlexAttention does not run here: {type(exc).__name__}: {exc}")
    for field in ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps"):
        torch.testing.assert_close(getattr(shared, field), getattr(padded, field), rtol=1e-4, atol=1e-4)
