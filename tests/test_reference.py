"""Reference log-probs: computed once, cached on disk by weights + token ids, reused; LoRA-off on the fly."""

import pytest
import torch

from hafrm import reference
from hafrm.checkpoint import load_base_model
from hafrm.config import TrainConfig
from hafrm.data import PairCollator, read_pairs, tokenize_pairs
from hafrm.data.tokenize import pair_sequences
from hafrm.finetune import prepare_finetuning
from hafrm.model import hybrid_forward
from hafrm.objective import Objective


@pytest.fixture()
def setup(tiny_model, pairs_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HAFRM_CACHE", str(tmp_path))
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    dataset, _ = tokenize_pairs(read_pairs(str(pairs_file))[:5], tokenizer, max_length=96)
    return model, dataset, PairCollator(tokenizer.pad_token_id)


def test_values_are_the_models_response_logps(setup):
    model, dataset, collator = setup
    with_reference = reference.add_reference_logps(model, dataset, collator, batch_size=2)
    with torch.no_grad():
        out = hybrid_forward(model.eval(), collator([dataset[i] for i in range(5)]), False, True)
    torch.testing.assert_close(torch.tensor(with_reference["ref_chosen_logps"]), out.chosen_logps, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        torch.tensor(with_reference["ref_rejected_logps"]), out.rejected_logps, atol=1e-4, rtol=1e-5
    )


def test_second_run_reuses_the_cache(setup, tmp_path, monkeypatch):
    model, dataset, collator = setup
    first = reference.add_reference_logps(model, dataset, collator, batch_size=2)
    assert len(list((tmp_path / "reference").glob("*.pt"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(reference, "compute_reference_logps", must_not_run)
    second = reference.add_reference_logps(model, dataset, collator, batch_size=2)
    assert second["ref_chosen_logps"] == first["ref_chosen_logps"]


def test_cache_key_follows_weights_and_tokens_not_the_reward_head(setup):
    model, dataset, _ = setup
    weights = reference.model_fingerprint(model)
    with torch.no_grad():
        model.score.weight.add_(1.0)
    assert reference.model_fingerprint(model) == weights
    with torch.no_grad():
        next(model.model.layers[0].parameters()).add_(1e-3)
    assert reference.model_fingerprint(model) != weights
    tokens = reference.dataset_fingerprint(dataset)
    assert reference.dataset_fingerprint(dataset.select(range(4))) != tokens


def _damage(path, how: str) -> str:
    """Spoil a cache file in one of the ways a crash, a disk or a user does -> the reason the note gives."""
    cached = torch.load(path, weights_only=True)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:300])
        return "it cannot be read (RuntimeError: "
    if how == "nan":  # well formed, with its checksum: only the values are wrong
        cached["logps"] = torch.full_like(cached["logps"], float("nan"))
        cached["sha256"] = reference._tensor_digest(cached["logps"])
        torch.save(cached, path)
        return "it holds non-finite log-probs"
    if how == "bit-flip":
        cached["logps"][0] += 1.0
        torch.save(cached, path)
        return "its checksum does not match"
    cached["logps"] = cached["logps"][:3]  # "short"
    torch.save(cached, path)
    return "it holds (3,) log-probs for 10 sequences"


@pytest.mark.parametrize("how", ["truncated", "nan", "bit-flip", "short"])
def test_a_damaged_cache_is_recomputed_with_a_note(how, setup, tmp_path, capsys):
    model, dataset, collator = setup
    first = reference.add_reference_logps(model, dataset, collator, batch_size=2)
    (path,) = (tmp_path / "reference").glob("*.pt")
    reason = _damage(path, how)
    capsys.readouterr()
    second = reference.add_reference_logps(model, dataset, collator, batch_size=2)
    note = capsys.readouterr().out
    assert note.startswith(f"note: reference cache {path} is unusable ({reason}")
    assert note.rstrip().endswith("; recomputing it") and note.count("\n") == 1
    assert second["ref_chosen_logps"] == first["ref_chosen_logps"]
    key = reference.reference_key(model, *pair_sequences(dataset))
    rewritten = reference.read_cache(path, 2 * len(dataset), key)  # chosen then rejected, as pair_sequences
    assert rewritten.tolist() == list(first["ref_chosen_logps"]) + list(first["ref_rejected_logps"])


def test_a_failed_cache_write_keeps_the_values(setup, tmp_path, monkeypatch, capsys):
    model, dataset, collator = setup

    def full_disk(obj, file):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")  # torch's ENOSPC

    monkeypatch.setattr(reference.torch, "save", full_disk)
    with_reference = reference.add_reference_logps(model, dataset, collator, batch_size=2)
    assert len(with_reference["ref_chosen_logps"]) == 5
    warning = capsys.readouterr().out.splitlines()[0]
    assert warning.startswith("warning: the disk is full: could not write the reference cache ")
    assert warning.endswith(f"free on the disk of {tmp_path / 'reference'}); going on without caching it")
    assert list((tmp_path / "reference").iterdir()) == []  # no partial file is left behind


def test_lora_reference_with_adapters_disabled_matches_the_base(setup):
    model, dataset, collator = setup
    cached = reference.add_reference_logps(model, dataset, collator, batch_size=5)
    lora = prepare_finetuning(model, TrainConfig(finetune="lora"), uses_policy_head=True)
    with torch.no_grad():  # move the adapters away from zero so that "disabled" matters
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_()
    batch = collator([dataset[i] for i in range(5)])
    ref_chosen, _ = Objective(reference="adapters")._reference_logps(lora, batch)
    torch.testing.assert_close(ref_chosen, torch.tensor(cached["ref_chosen_logps"]), atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        adapted = hybrid_forward(lora, batch, False, True).chosen_logps
    assert not torch.allclose(adapted, ref_chosen, atol=1e-3)
