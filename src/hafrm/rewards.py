"""Score (prompt, response) items with any reward model hafrm can read: one entry point for bon, rlhf and judges.

    from hafrm.rewards import RewardModel
    reward = RewardModel("runs/haf")                 # a hafrm run (any method) or a 1-label classifier
    reward.score([("Describe a kite.", "A kite flies."), ...])   # one float per item

Kinds, told apart by what the directory holds:
  reward head      a hafrm run with a reward head (rm, haf): the reward `hafrm score` prints
  implicit reward  a hafrm run without one (dpo): β·(log π(y|x) − log π_ref(y|x)), or what its policy
                   loss compares (simpo: β·mean log π; sft: mean log π), the reference being the base
                   model named in hafrm.json (or the LoRA model with its adapters off)
  classifier       any directory whose config.json has one label (a `*ForSequenceClassification`, or a
                   hafrm run without its hafrm.json), loaded by AutoModelForSequenceClassification, read with
                   its own tokenizer and transformers' own pooling (last non-pad token)
Items are tokenised as training tokenises pairs (`encode_response`) and cut to `max_length` by the
same rule (the prompt loses its start, down to half the budget, then the response its end).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch

from .checkpoint import load_base_model, load_trained, read_hafrm_config
from .data.templates import encode_response, encode_text
from .data.tokenize import fit_to_length
from .devices import to_scoring_device
from .losses import PolicyLogps, implicit_rewards, needs_reference
from .model import score_sequences
from .reference import adapters_disabled

KINDS = ("reward head", "implicit reward", "classifier")
# Reference log-probs by (base model, token ids): dpo runs of one base (seeds, say) scoring the same
# samples share one reference pass per process.
_REFERENCE_MEMO: dict[tuple[str, str], torch.Tensor] = {}


def _ids_digest(sequences: list[list[int]], prompt_lengths: list[int]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for ids, prompt_length in zip(sequences, prompt_lengths):
        digest.update(f"{prompt_length}:{','.join(map(str, ids))};".encode())
    return digest.hexdigest()


def reward_kind(directory: str | Path) -> str:
    """Which kind of reward model `directory` is; a clear error when it is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"reward model {directory}: no such directory")
    if (directory / "hafrm.json").is_file():
        return "reward head" if read_hafrm_config(directory)["reward_head"] else "implicit reward"
    config_path = directory / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        architectures = config.get("architectures") or []
        labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
        if labels == 1:  # a *ForSequenceClassification, or a causal LM saved with its 1-label score head (hafrm)
            return "classifier"
        raise ValueError(
            f"reward model {directory}: config.json describes {architectures or 'no architecture'} with "
            f"{labels} label(s); a reward model is a hafrm output directory or a 1-label *ForSequenceClassification"
        )
    raise ValueError(
        f"reward model {directory}: neither a hafrm output directory (hafrm.json) nor a model (config.json)"
    )


class RewardModel:
    """A reward model loaded once and scored many times (see the module docstring for the kinds)."""

    def __init__(
        self, directory: str | Path, max_length: int | None = None, batch_size: int = 16, share_prompts: bool = True
    ):
        self.directory = Path(directory)
        self.kind = reward_kind(self.directory)
        self.batch_size = batch_size
        self.share_prompts = share_prompts  # responses to one prompt (best-of-N samples) run it once
        self.run = read_hafrm_config(self.directory) if self.kind != "classifier" else {}
        self.max_length = max_length or self.run.get("max_length") or 1024
        config = json.loads((self.directory / "config.json").read_text()) if self.kind != "implicit reward" else {}
        self.mean, self.std = config.get("mean"), config.get("std")  # stored by hafrm train, when known
        self._model = None
        if self.kind != "implicit reward":  # the implicit reward needs two models, loaded in turn per call
            self._load()

    def _load(self):
        if self.kind == "classifier":
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.directory))
            model = AutoModelForSequenceClassification.from_pretrained(str(self.directory), dtype=torch.float32)
            to_scoring_device(model)
            self._model = model.eval()
            if self.tokenizer.pad_token_id is None:
                self.batch_size = 1  # no pad: one text per pass, so pooling never looks for one
        else:
            self._model, self.tokenizer, _ = load_trained(self.directory)

    def _sequences(self, items) -> tuple[list[list[int]], list[int], int]:
        """Items -> (token ids, prompt lengths, how many were truncated)."""
        sequences, prompt_lengths, truncated = [], [], 0
        for i, (prompt, response) in enumerate(items):
            prompt_ids, response_ids = encode_response(self.tokenizer, prompt, response, f"item {i}")
            fitted_prompt, fitted_response, _ = fit_to_length(prompt_ids, response_ids, response_ids, self.max_length)
            truncated += len(fitted_prompt) + len(fitted_response) < len(prompt_ids) + len(response_ids)
            sequences.append(fitted_prompt + fitted_response)
            prompt_lengths.append(len(fitted_prompt))
        return sequences, prompt_lengths, truncated

    @torch.no_grad()
    def score(self, items: list[tuple], normalize: bool = False, desc: str = "scoring") -> list[float]:
        """One reward per (prompt, response); `normalize` maps it with the stored mean / std (when stored)."""
        if not items:
            return []
        if self.kind == "implicit reward":
            values = self._implicit(items, desc)
        else:
            sequences, prompt_lengths, self.truncated = self._sequences(items)
            if self.kind == "classifier":
                values = self._classifier(sequences, desc)
            else:
                pad = self.tokenizer.pad_token_id
                values = score_sequences(
                    self._model,
                    sequences,
                    prompt_lengths,
                    self.batch_size,
                    pad,
                    "right",
                    desc=desc,
                    share_prompts=self.share_prompts,
                )["rewards"].tolist()
        if normalize and self.mean is not None and self.std:
            values = [(value - self.mean) / self.std for value in values]
        return values

    def _classifier(self, sequences: list[list[int]], desc: str) -> list[float]:
        from tqdm.auto import tqdm

        from .data.collator import pad_rows

        device = next(self._model.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        values = [0.0] * len(sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc=desc, unit="batch", disable=len(batches) <= 1):
            members = order[start : start + self.batch_size]
            batch = pad_rows([sequences[i] for i in members], [0] * len(members), pad, "right")
            logits = self._model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            for i, value in zip(members, logits[:, 0].float().cpu().tolist()):
                values[i] = value
        return values

    def _implicit(self, items, desc: str) -> list[float]:
        """β·log π/π_ref (or the run's policy loss's score) of each item: reference pass first, then the run."""
        from .checkpoint import run_tokenizer

        self.tokenizer = run_tokenizer(self.directory)
        sequences, prompt_lengths, self.truncated = self._sequences(items)
        pad = self.tokenizer.pad_token_id
        is_lora = (self.directory / "adapter_config.json").is_file()
        with_reference = needs_reference(self.run["policy_loss"])

        def logps(model, what):
            return score_sequences(
                model, sequences, prompt_lengths, self.batch_size, pad, "right", False, True, what, self.share_prompts
            )

        reference = None
        memo_key = (self.run["base_model"], _ids_digest(sequences, prompt_lengths))
        if with_reference and not is_lora and memo_key in _REFERENCE_MEMO:
            reference = _REFERENCE_MEMO[memo_key]
        elif with_reference and not is_lora:
            base, _ = load_base_model(self.run["base_model"], with_score_head=False)
            to_scoring_device(base)
            reference = _REFERENCE_MEMO[memo_key] = logps(base.eval(), f"{desc} (reference)")["logps"]
            del base
            gc.collect()
        model, _, _ = load_trained(self.directory)
        if with_reference and is_lora:
            with adapters_disabled(model):
                reference = logps(model, f"{desc} (reference)")["logps"]
        policy = logps(model, desc)
        del model
        gc.collect()
        # implicit_rewards scores pairs; each response is given as both sides of a pair with itself.
        pair = PolicyLogps(policy["logps"], policy["logps"], policy["lengths"], policy["lengths"], reference, reference)
        values, _ = implicit_rewards(self.run["policy_loss"], pair, self.run["beta"], self.run.get("simpo_gamma", 0.5))
        return values.tolist()


class RewardHead:
    """A hafrm run's reward head over token ids, for callers that tokenise and batch themselves (`hafrm serve`).

        head = RewardHead("runs/haf")
        ids = [head.text_ids(text) for text in texts]     # rollout texts, made canonical as `hafrm score --text`
        head.rewards(ids)                                  # one model call, longest first; [N] floats

    The same ids and the same forward as `hafrm score`, so both give the same rewards (to float rounding
    of a different batch).
    """

    def __init__(self, directory: str | Path, max_length: int | None = None, dtype: torch.dtype = torch.float32):
        self.directory = Path(directory)
        if reward_kind(self.directory) != "reward head":
            raise ValueError(f"{directory} has no reward head (a dpo run): serve an rm or haf run")
        self.model, self.tokenizer, self.run = load_trained(self.directory, dtype)
        self.max_length = max_length or self.run["max_length"]
        config = (
            json.loads((self.directory / "config.json").read_text())
            if (self.directory / "config.json").is_file()
            else {}
        )
        self.mean, self.std = (
            config.get("mean", self.run.get("reward_mean")),
            config.get("std", self.run.get("reward_std")),
        )
        self.device = str(next(self.model.parameters()).device)
        self.packed = bool(self.run.get("packing"))  # checked against padded scoring when the run trained

    def text_ids(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def response_ids(self, prompt, response, where: str) -> list[int]:
        prompt_ids, response_ids = encode_response(self.tokenizer, prompt, response, where)
        return prompt_ids + response_ids

    @torch.no_grad()
    def rewards(self, sequences: list[list[int]], pass_tokens: int = 4096) -> list[float]:
        """Rewards in input order, longest first, in forward passes of about `pass_tokens` tokens.

        A run trained with packing (it was checked to hold for its model) is scored packed: texts end
        to end in rows as wide as the longest, no padding. Otherwise each pass pads to its longest text.
        """
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        values = [0.0] * len(sequences)
        start = 0
        while start < len(order):
            longest = len(sequences[order[start]])
            count, tokens = 0, 0
            for i in order[start:]:  # packed: real tokens count; padded: every text costs the longest
                cost = len(sequences[i]) if self.packed else longest
                if count and tokens + cost > max(pass_tokens, longest):
                    break
                count, tokens = count + 1, tokens + cost
            members = order[start : start + count]
            for i, value in zip(members, self._pass([sequences[i] for i in members])):
                values[i] = value
            start += count
        return values  # raw: callers normalise with `mean` / `std` where they ask for it

    def _pass(self, sequences: list[list[int]]) -> list[float]:
        from .data.collator import pack_rows
        from .model import forward_rows

        pad = self.tokenizer.pad_token_id
        if not self.packed:
            rewards = score_sequences(
                self.model, sequences, [0] * len(sequences), len(sequences), pad, self.tokenizer.padding_side
            )
            return rewards["rewards"].tolist()
        batch = {key: value.to(self.device) for key, value in pack_rows(sequences, [0] * len(sequences), pad).items()}
        rewards, _, _ = forward_rows(self.model, batch, need_rewards=True, need_logps=False)
        return rewards.float().cpu().tolist()
