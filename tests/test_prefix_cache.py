"""Frozen-prefix cache (`--finetune freeze`): the cached path gives the whole forward's numbers, in every layout."""

import json
from pathlib import Path

import pytest
import torch

from hafrm.checkpoint import load_base_model
from hafrm.cli import main
from hafrm.config import TrainConfig
from hafrm.data import PairCollator, read_pairs, tokenize_pairs
from hafrm.finetune import prepare_finetuning
from hafrm.model import hybrid_forward, transformer_blocks
from hafrm.prefix_cache import FrozenPrefixCache

LAYOUTS = {"padded": {}, "packed": {"packing": True}, "shared": {"prompt_sharing": True, "packing": True}}


def _frozen_model(tiny_model):
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    cfg = TrainConfig(finetune="freeze", trainable_layers=1)
    return prepare_finetuning(model, cfg, uses_policy_head=True), tokenizer


def _outputs_and_gradients(model, batch):
    model.zero_grad()
    out = hybrid_forward(model, batch, need_rewards=True, need_logps=True)
    loss = (out.chosen_rewards - out.rejected_rewards).sum() + (out.chosen_logps - 0.5 * out.rejected_logps).sum()
    loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cached_states_give_the_whole_forwards_results_and_gradients(
    layout, on_disk, tiny_model, pairs_file, tmp_path, monkeypatch
):
    import hafrm.prefix_cache

    if on_disk:
        monkeypatch.setattr(hafrm.prefix_cache, "RAM_SHARE", 0.0)
    model, tokenizer = _frozen_model(tiny_model)
    train_set, _ = tokenize_pairs(read_pairs(str(pairs_file))[:6], tokenizer, max_length=96)
    eval_set, _ = tokenize_pairs(read_pairs(str(pairs_file))[6:9], tokenizer, max_length=96)
    cache, (train_rows, eval_rows) = FrozenPrefixCache.build(model, 1, [train_set, eval_set], tmp_path, batch_size=2)
    assert cache.on_disk is on_disk and (tmp_path / "frozen-prefix.f32").is_file() is on_disk
    assert train_rows["cache_row"] == list(range(6)) and eval_rows["cache_row"] == [6, 7, 8]
    calls = []
    transformer_blocks(model)[0].register_forward_hook(lambda *args: calls.append(1))
    for rows in ([train_rows[i] for i in (4, 0, 2)], [eval_rows[i] for i in (2, 1)]):
        collator = PairCollator(tokenizer.pad_token_id, **LAYOUTS[layout])
        whole, whole_grads = _outputs_and_gradients(model, collator(rows))
        calls.clear()
        collator.prefix_cache = cache
        batch = collator(rows)
        assert batch["frozen_states"].shape == (*batch["input_ids"].shape, 32)
        cached, cached_grads = _outputs_and_gradients(model, batch)
        assert not calls  # the frozen block did not run
        for field in ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps"):
            torch.testing.assert_close(getattr(cached, field), getattr(whole, field), rtol=1e-4, atol=1e-5)
        assert cached_grads.keys() == whole_grads.keys() and len(whole_grads) > 1
        for name in whole_grads:
            torch.testing.assert_close(cached_grads[name], whole_grads[name], rtol=1e-3, atol=1e-6, msg=name)
    assert isinstance(transformer_blocks(model)[0], type(transformer_blocks(model)[1]))  # the block is back
    cache.close()
    assert not (tmp_path / "frozen-prefix.f32").exists()


# a quarter held out for validation: the cache serves the evaluation rows too
VALIDATE = ("--val-fraction", "0.25")
HISTORY = ("loss", "grad_norm", "eval_loss")


def test_freeze_training_with_the_cache_follows_the_uncached_run(
    tiny_model, pairs_file, tmp_path, capsys, train_run, logged
):
    flags = (*VALIDATE, "--finetune", "freeze", "--trainable-layers", "1", "--epochs", "3", "--eval-steps", "4")
    runs = [
        train_run(tiny_model, pairs_file, tmp_path / name, *flags, *extra)
        for name, extra in (("whole", ["--no-prefix-cache"]), ("cached", []))
    ]
    printed = capsys.readouterr().out
    assert printed.count("frozen-prefix cache: blocks 1-1 run once over 96 sequences") == 1  # 36 + 12 pairs
    assert printed.count("epoch 3:") == 2
    # 3 epochs of 9 steps: each step's loss and norm; 8 validations (the start, every 4 steps, the last step)
    assert len(logged(runs[0], *HISTORY)) == 27 * 2 + 8
    assert logged(runs[1], *HISTORY) == pytest.approx(logged(runs[0], *HISTORY), rel=1e-4)
    assert json.loads((runs[1] / "hafrm.json").read_text())["prefix_cache"] is True
    assert not (runs[1] / "frozen-prefix.f32").exists()


def test_the_cache_stays_off_where_it_would_not_hold(tiny_model, pairs_file, tmp_path, monkeypatch, capsys, train_run):
    import hafrm.prefix_cache

    base = (*VALIDATE, "--finetune", "freeze", "--trainable-layers", "1", "--max-steps", "1", "--method", "rm")
    out = train_run(tiny_model, pairs_file, tmp_path / "dropout", *base, "--keep-dropout")
    assert "note: frozen-prefix cache off: --keep-dropout makes" in capsys.readouterr().out
    assert json.loads((out / "hafrm.json").read_text())["prefix_cache"] is False
    every_block = (*VALIDATE, "--finetune", "freeze", "--trainable-layers", "2", "--max-steps", "1")
    train_run(tiny_model, pairs_file, tmp_path / "all", *every_block)
    assert "note: frozen-prefix cache off: every block trains" in capsys.readouterr().out
    # an architecture whose input is rescaled before the first block (Gemma scales its embeddings)
    monkeypatch.setattr(hafrm.model.SkippedBlock, "forward", lambda self, hidden, *a, **k: 2 * hidden)
    train_run(tiny_model, pairs_file, tmp_path / "scaled", *base)
    assert "note: frozen-prefix cache off: LlamaForCausalLM run from the cached states gives other results" in (
        capsys.readouterr().out
    )


def _stored_files() -> set:
    from hafrm.default_model import cache_root

    return set((cache_root() / "frozen-prefix").glob("*.npy"))


def _eval(run: Path, pairs_file, name: str, *flags) -> dict:
    out = run / f"{name}.json"
    argv = ["eval", "--model", str(run), "--data", str(pairs_file), "--json", str(out), "--save-scores", *flags]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_evaluation_reads_the_frozen_blocks_output_stored_by_the_first_run_of_that_base(
    tiny_model, pairs_file, tmp_path, capsys, monkeypatch, train_run
):
    flags = (*VALIDATE, "--finetune", "freeze", "--trainable-layers", "1", "--max-steps", "3", "--eval-steps", "3")
    haf = train_run(tiny_model, pairs_file, tmp_path / "haf", *flags)
    rm = train_run(tiny_model, pairs_file, tmp_path / "rm", *flags, "--method", "rm", "--seed", "7")
    before = _stored_files()
    whole = {run: _eval(run, pairs_file, "whole", "--no-prefix-cache", "--no-combine") for run in (haf, rm)}
    assert _stored_files() == before  # off: nothing stored
    capsys.readouterr()
    # a fresh cache: haf's reference log-probs come from the stored states too (the base's lower blocks are haf's)
    monkeypatch.setenv("HAFRM_CACHE", str(tmp_path / "cache"))
    before = _stored_files()
    stored = {run: _eval(run, pairs_file, "stored", "--no-combine") for run in (haf, rm)}
    printed = capsys.readouterr().out
    # the 48 pairs (96 sequences) run through block 1 once: by the base model, for haf's reference pass
    assert printed.count("frozen-prefix states: blocks 1-1 run over 96 sequences") == 1
    assert len(_stored_files() - before) == 1
    for run in (haf, rm):
        for head, values in whole[run]["scores"].items():
            assert stored[run]["scores"][head] == pytest.approx(values, rel=1e-4, abs=1e-5), (run.name, head)
        assert stored[run]["reward_head"]["accuracy"] == whole[run]["reward_head"]["accuracy"]
    assert whole[haf]["scores"]["reward_head"] != whole[rm]["scores"]["reward_head"]  # two different top blocks
    # a file that lost its end (a full disk, a copy cut short) is computed again, with a note
    (path,) = _stored_files() - before
    path.write_bytes(path.read_bytes()[:-100])
    again = _eval(haf, pairs_file, "again", "--no-combine")
    assert f"note: stored frozen-block states {path} are unreadable" in capsys.readouterr().out
    assert again["scores"]["reward_head"] == pytest.approx(whole[haf]["scores"]["reward_head"], rel=1e-4, abs=1e-5)


def test_evaluation_turns_stored_states_off_where_the_model_does_not_match_them(
    tiny_model, pairs_file, tmp_path, monkeypatch, capsys, train_run
):
    import hafrm.prefix_cache

    run = train_run(tiny_model, pairs_file, tmp_path / "rm", *VALIDATE, "--finetune", "freeze", "--trainable-layers",
                    "1", "--max-steps", "1", "--method", "rm")  # fmt: skip
    whole = _eval(run, pairs_file, "whole", "--no-prefix-cache")
    monkeypatch.setattr(hafrm.model.SkippedBlock, "forward", lambda self, hidden, *a, **k: 2 * hidden)
    capsys.readouterr()
    off = _eval(run, pairs_file, "off")
    assert "note: frozen-prefix states off: LlamaForCausalLM run from the stored states gives other results" in (
        capsys.readouterr().out
    )
    assert off["scores"] == whole["scores"]


def test_shared_cache_is_computed_by_the_first_run_and_read_by_the_next(
    tiny_model, pairs_file, tmp_path, capsys, train_run, logged
):
    flags = (*VALIDATE, "--finetune", "freeze", "--trainable-layers", "1", "--epochs", "2", "--eval-steps", "4")
    alone = train_run(tiny_model, pairs_file, tmp_path / "alone", *flags)
    capsys.readouterr()
    before = _stored_files()
    first = train_run(tiny_model, pairs_file, tmp_path / "first", *flags, "--share-prefix-cache")
    assert "frozen-prefix states: blocks 1-1 run over 96 sequences" in capsys.readouterr().out
    (stored,) = _stored_files() - before
    second = train_run(tiny_model, pairs_file, tmp_path / "second", *flags, "--share-prefix-cache")
    assert f"frozen-prefix cache: read from {stored} (96 sequences" in capsys.readouterr().out
    assert logged(first, *HISTORY) == pytest.approx(logged(alone, *HISTORY), rel=1e-4)
    assert logged(second, *HISTORY) == pytest.approx(logged(alone, *HISTORY), rel=1e-4)
    assert stored.is_file()  # closing a run leaves the shared file for the next
