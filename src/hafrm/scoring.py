"""One way from a text to a reward, for every reader: `score`, `eval`, `serve`, `bon`, `rlhf` and the gold-RM judge.

    from hafrm.scoring import RewardModel
    reward = RewardModel("runs/haf")        # any hafrm run (full / LoRA / freeze; rm / haf / dpo) or a 1-label classifier
    reward.score([("Describe a kite.", "A kite flies."), "<a full rendered text>"])   # one float per item
    reward.truncated                        # how many items of that call were cut to max_length

Kinds, told apart by what the directory holds (`reward_kind`):
  reward head      a hafrm run with a reward head (rm, haf): the head `score` at the last non-pad token
  implicit reward  a hafrm run without one (dpo): β·(log π(y|x) − log π_ref(y|x)), or what its policy loss
                   compares (simpo: β·mean log π; sft: mean log π) - `losses.implicit_rewards`, the function
                   training logs it with; π_ref is the base model named in the run record (or the LoRA model
                   with its adapters off), its log-probs kept in the one reference cache (`reference.py`)
  classifier       any directory whose config.json has one label (a `*ForSequenceClassification`), read by
                   AutoModelForSequenceClassification with its own tokenizer and transformers' pooling

The rule for an item (docs/checkpoints.md, "One reward everywhere"), `encode_item`:
  tokenisation  a (prompt, response) item as training tokenises a pair's side (`encode_response`); a full
                text (a decoded rollout) made canonical first (`encode_text`); many responses to one prompt
                (`encode_responses_to`, the server's /score) give the same ids with the prompt rendered once
  truncation    the training rule (`data.tokenize.fit_to_length`): the prompt loses its start, down to half
                of max_length, then the response its end. A full text has no known prompt: it is all prompt,
                so it loses its start (the end, where the reward is read, stays)
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_base_model, load_trained, run_tokenizer
from .data.templates import encode_responses, encode_text
from .data.tokenize import fit_to_length
from .devices import to_scoring_device
from .inference import SHARED_UNIT_TOKENS, score_sequences
from .losses import PolicyLogps, implicit_rewards, needs_reference
from .model import forward_rows
from .reference import adapters_disabled, cached_reference_logps
from .runrecord import has_run_record, read_run_record

KINDS = ("reward head", "implicit reward", "classifier")
DEFAULT_MAX_LENGTH = 1024  # a classifier's, when its tokenizer gives no sane limit


def reward_kind(directory: str | Path) -> str:
    """Which kind of reward model `directory` is; a clear error when it is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"reward model {directory}: no such directory")
    if has_run_record(directory):
        return "reward head" if read_run_record(directory)["reward_head"] else "implicit reward"
    config_path = directory / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        architectures = config.get("architectures") or []
        labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
        if labels == 1:
            return "classifier"
        raise ValueError(
            f"reward model {directory}: config.json describes {architectures or 'no architecture'} with "
            f"{labels} label(s); a reward model is a hafrm output directory or a 1-label *ForSequenceClassification"
        )
    raise ValueError(
        f"reward model {directory}: neither a hafrm output directory (hafrm.json) nor a model (config.json)"
    )


class ScoringStopped(Exception):
    """A model call given up between passes (`RewardModel.rewards_in_passes`)."""


@dataclass
class EncodedItem:
    ids: list[int]  # what the model reads, cut to max_length
    prompt_length: int  # how many of `ids` are the prompt (0 for a full text)
    length: int  # tokens before the cut

    @property
    def cut(self) -> bool:  # the item lost tokens to max_length
        return len(self.ids) < self.length


def encode_item(tokenizer, item, max_length: int, where: str) -> EncodedItem:
    """A (prompt, response) item or a full text -> its token ids by the one tokenisation and truncation rule."""
    if isinstance(item, str):
        return _fitted(encode_text(tokenizer, item), [], max_length)
    prompt, response = item
    return next(encode_responses_to(tokenizer, prompt, [response], max_length, [where]))


def encode_responses_to(
    tokenizer, prompt, responses: list, max_length: int, wheres: list[str]
) -> Iterator[EncodedItem]:
    """`encode_item` of (prompt, response) for each response, in order and identical; the prompt alone is rendered
    and tokenised once (`templates.encode_responses`). A generator: a server stops between responses."""
    for prompt_ids, response_ids in encode_responses(tokenizer, prompt, responses, wheres):
        yield _fitted(prompt_ids, response_ids, max_length)


def _fitted(prompt_ids: list[int], response_ids: list[int], max_length: int) -> EncodedItem:
    """The training rule's cut (`fit_to_length`) of one item; a full text (no response ids) is all prompt."""
    fitted_prompt, fitted_response, _ = fit_to_length(prompt_ids, response_ids, response_ids, max_length)
    prompt_length = len(fitted_prompt) if response_ids else 0
    return EncodedItem(fitted_prompt + fitted_response, prompt_length, len(prompt_ids) + len(response_ids))


class RewardModel:
    """A reward model read once, scored many times (see the module docstring for the kinds and the rule)."""

    def __init__(
        self,
        directory: str | Path,
        max_length: int | None = None,
        batch_size: int = 16,
        share_prompts: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        self.directory = Path(directory)
        self.kind = reward_kind(self.directory)
        self.batch_size = batch_size
        self.share_prompts = share_prompts  # responses to one prompt (a pair, best-of-N samples) run it once
        self.dtype = dtype
        self.run = read_run_record(self.directory) if self.kind != "classifier" else {}
        self.is_lora = (self.directory / "adapter_config.json").is_file()
        self.tokenizer = self._tokenizer()
        self.max_length = max_length or self.run.get("max_length") or self._classifier_max_length()
        config_path = self.directory / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if self.kind == "classifier" and config.get("hafrm_reward_head"):
            raise ValueError(
                f"{self.directory}: config.json says its reward head is hafrm's {config['hafrm_reward_head']['type']} "
                f"head (hafrm_reward_head), which transformers' sequence classifier does not build, and there is no "
                f"hafrm.json run record to read it by: restore hafrm.json from the run it came from"
            )
        # stored by `hafrm train` in config.json (full runs) and in the run record (every run, LoRA too)
        self.mean = config.get("mean", self.run.get("reward_mean"))
        self.std = config.get("std", self.run.get("reward_std"))
        self.truncated = 0  # items cut in the last `encode`
        self._model = None
        # A server or an RL loop (`serving`) scores new texts many times: a dpo run's base model stays beside
        # it (twice the memory) instead of loading for every call, and its reference log-probs are not written
        # to the disk cache (such texts do not come back; the cache key alone would cost a pass over the weights).
        self.serving = False
        self._base = None

    # ------------------------------------------------------------ loading

    def _tokenizer(self):
        if self.kind == "classifier":
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(self.directory))
        return run_tokenizer(self.directory)

    def _classifier_max_length(self) -> int:
        limit = getattr(self.tokenizer, "model_max_length", None) or DEFAULT_MAX_LENGTH
        return limit if limit < 1_000_000 else DEFAULT_MAX_LENGTH  # transformers' "no limit" is 1e30

    @property
    def model(self):
        """The trained model (or the classifier), loaded on first use and kept."""
        if self._model is None:
            if self.kind == "classifier":
                from transformers import AutoModelForSequenceClassification

                model = AutoModelForSequenceClassification.from_pretrained(str(self.directory), dtype=self.dtype)
                to_scoring_device(model)
                self._model = model.eval()
            else:
                self._model, _, _ = load_trained(self.directory, self.dtype)
        return self._model

    def load(self) -> RewardModel:
        """Load the model now (a server does, before its first request)."""
        _ = self.model
        return self

    def release(self) -> None:
        """Free the loaded model (the next call loads it again)."""
        self._model = None
        gc.collect()

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    # ------------------------------------------------------------ items -> token ids

    def encode_one(self, item, where: str) -> EncodedItem:
        return encode_item(self.tokenizer, item, self.max_length, where)

    def encode_responses(self, prompt, responses: list, wheres: list[str]) -> Iterator[EncodedItem]:
        """`encode_one` of (prompt, response) for each response, the prompt rendered once."""
        return encode_responses_to(self.tokenizer, prompt, responses, self.max_length, wheres)

    def encode(self, items: list, where: str = "item") -> tuple[list[list[int]], list[int]]:
        """Items -> (token ids, prompt lengths); `self.truncated` counts the items that were cut."""
        encoded = [self.encode_one(item, f"{where} {i}") for i, item in enumerate(items)]
        self.truncated = sum(e.cut for e in encoded)
        return [e.ids for e in encoded], [e.prompt_length for e in encoded]

    # ------------------------------------------------------------ token ids -> rewards

    @torch.no_grad()
    def score(self, items: list, normalize: bool = False, desc: str = "scoring") -> list[float]:
        """One reward per (prompt, response) or full text; `normalize` maps it with the stored mean / std."""
        if not items:
            self.truncated = 0
            return []
        sequences, prompt_lengths = self.encode(items)
        values = self.rewards(sequences, prompt_lengths, desc)
        return self.normalized(values) if normalize else values

    def normalized(self, values: list[float]) -> list[float]:
        if self.mean is None or not self.std:
            return values
        return [(value - self.mean) / self.std for value in values]

    def rewards(self, sequences: list[list[int]], prompt_lengths: list[int], desc: str = "scoring") -> list[float]:
        """One reward per token sequence, in input order (the kind decides how it is read)."""
        if self.kind == "classifier":
            return self._classifier(sequences, desc)
        if self.kind == "implicit reward":
            return self.implicit_rewards(sequences, prompt_lengths, desc)
        return self.rewards_in_passes(sequences, prompt_lengths, SHARED_UNIT_TOKENS)

    def sequence_scores(
        self,
        sequences,
        prompt_lengths,
        need_rewards: bool = True,
        need_logps: bool = False,
        desc="scoring",
        frozen=None,
    ) -> dict[str, torch.Tensor]:
        """The run's heads over token sequences -> {"rewards", "logps", "lengths"} as asked, CPU [N] each."""
        return score_sequences(
            self.model,
            sequences,
            prompt_lengths,
            self.batch_size,
            self.tokenizer.pad_token_id,
            self.tokenizer.padding_side,
            need_rewards,
            need_logps,
            desc=desc,
            share_prompts=self.share_prompts,
            frozen=frozen,
        )

    def reference_logps(self, sequences, prompt_lengths, desc: str = "scoring", frozen=None) -> torch.Tensor:
        """log π_ref of each response [N] from the one reference cache: a full or freeze run's base model (loaded
        alone, the trained model freed first, unless `serving` or inside `base_kept`), or a LoRA run with adapters
        off.

        `frozen`: the base model's stored frozen-block states of these sequences (`prefix_cache`), or None.
        """
        if self.is_lora:

            def with_adapters_off():
                with adapters_disabled(self.model):
                    return self.sequence_scores(sequences, prompt_lengths, False, True, f"{desc} (reference)")["logps"]

            return cached_reference_logps(self.model, sequences, prompt_lengths, with_adapters_off, not self.serving)
        logps = self._base_reference(self._base_model(), sequences, prompt_lengths, desc, frozen)
        if self._base is None:
            gc.collect()  # the base model, loaded for this pass only, is gone
        return logps

    @contextlib.contextmanager
    def base_kept(self):
        """Yields the base model, kept loaded within the block (one load for several sets) and freed after."""
        kept = self._base is not None
        self._base = self._base_model()
        try:
            yield self._base
        finally:
            if not kept and not self.serving:
                self._base = None
                gc.collect()

    def _base_reference(self, base, sequences, prompt_lengths, desc, frozen) -> torch.Tensor:
        def base_pass():
            return score_sequences(
                base, sequences, prompt_lengths, self.batch_size, self.tokenizer.pad_token_id,
                self.tokenizer.padding_side, False, True, f"{desc} (reference)", self.share_prompts, frozen,
            )["logps"]  # fmt: skip

        return cached_reference_logps(base, sequences, prompt_lengths, base_pass, not self.serving)

    def _base_model(self):
        """The base model named in the run record; alone in memory unless `serving`."""
        if self._base is not None:
            return self._base
        if not self.serving:
            self.release()  # never the trained model and the base in memory at once
        base, _ = load_base_model(self.run["base_model"], with_score_head=False, dtype=self.dtype)
        to_scoring_device(base)
        base.eval()
        if self.serving:
            self._base = base
        return base

    def implicit_rewards(self, sequences, prompt_lengths, desc: str = "scoring") -> list[float]:
        """β·log π/π_ref (or the run's policy loss's own score) of each sequence's response."""
        reference = None
        if needs_reference(self.run["policy_loss"]):
            reference = self.reference_logps(sequences, prompt_lengths, desc)
        policy = self.sequence_scores(sequences, prompt_lengths, False, True, desc)
        return self.implicit_from(policy["logps"], policy["lengths"], reference).tolist()

    def implicit_from(self, logps: torch.Tensor, lengths: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """The implicit reward of responses from their log-probs [N] (each given as both sides of a pair)."""
        pair = PolicyLogps(logps, logps, lengths, lengths, reference, reference)
        values, _ = implicit_rewards(self.run["policy_loss"], pair, self.run["beta"], self.run["simpo_gamma"])
        return values

    def _classifier(self, sequences: list[list[int]], desc: str) -> list[float]:
        from tqdm.auto import tqdm

        from .data.collator import pad_rows

        pad = self.tokenizer.pad_token_id
        rows = self.batch_size if pad is not None else 1  # no pad: one text per pass, pooling never looks for one
        device = self.device
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        values = [0.0] * len(sequences)
        batches = range(0, len(order), rows)
        for start in tqdm(batches, desc=desc, unit="batch", disable=len(batches) <= 1):
            members = order[start : start + rows]
            batch = pad_rows(
                [sequences[i] for i in members], [0] * len(members), pad if pad is not None else 0, "right"
            )
            logits = self.model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            for i, value in zip(members, logits[:, 0].float().cpu().tolist()):
                values[i] = value
        return values

    @torch.no_grad()
    def rewards_in_passes(
        self, sequences: list[list[int]], prompt_lengths: list[int], pass_tokens: int = 4096, stop=None
    ) -> list[float]:
        """Rewards in input order, in passes of about `pass_tokens` tokens, largest first: what the server's batches
        (texts of many requests), `hafrm score` and the RL reward function run.

        A reward head's texts that share their leading tokens (one prompt's responses, a rollout group's full
        texts: `inference.prompt_groups`) run those tokens once into a KV cache that every member's own tokens
        attend to (`prefix_scoring`, checked once per model to score as padded rows, else no sharing); the other
        texts run packed end to end in rows as wide as the longest where the run trained packed, else padded to
        each pass's longest. Other kinds by `rewards`, where the prompt lengths place an implicit reward's
        response. `stop()`, asked before each pass of a reward head, True: `ScoringStopped` (nobody waits for
        these rewards any more)."""
        from .inference import prompt_groups
        from .prefix_scoring import cached_prefix_rewards, cached_prefix_verified

        if self.kind != "reward head":
            return self.rewards(sequences, prompt_lengths)
        groups = prompt_groups(sequences, prompt_lengths, max_tokens=pass_tokens) if self.share_prompts else []
        shared = [group for group in groups if len(group) > 1]
        if shared and not cached_prefix_verified(self.model, sequences, shared):
            shared = []
        in_groups = {i for group in shared for i in group}
        values = [0.0] * len(sequences)
        pad = self.tokenizer.pad_token_id
        # every member costs its whole length in a pass: its own tokens and its gathered copy of the prefix cache
        cost = {id(group): sum(len(sequences[i]) for i in group) for group in shared}
        shared.sort(key=lambda group: -cost[id(group)])
        done = 0
        while shared:
            if stop is not None and stop():
                raise ScoringStopped(f"stopped after {done} of {len(sequences)} texts: nobody waits for their rewards")
            count, tokens = 0, 0
            for group in shared:
                if count and tokens + cost[id(group)] > pass_tokens:
                    break
                count, tokens = count + 1, tokens + cost[id(group)]
            units, shared = shared[:count], shared[count:]
            local, members = iter(range(sum(len(unit) for unit in units))), [i for unit in units for i in unit]
            rewards = cached_prefix_rewards(
                self.model, [sequences[i] for i in members], [[next(local) for _ in unit] for unit in units], pad
            ).tolist()
            for i, value in zip(members, rewards):
                values[i] = value
            done += len(members)
        rest = [i for i in range(len(sequences)) if i not in in_groups]
        for i, value in zip(rest, self._plain_passes([sequences[i] for i in rest], pass_tokens, stop, done)):
            values[i] = value
        return values  # raw: callers normalise with `normalized` where they ask for it

    def _plain_passes(self, sequences: list[list[int]], pass_tokens: int, stop, done: int) -> list[float]:
        """A reward head's rewards of texts that share nothing: longest first, packed where the run trained packed."""
        from .data.collator import pack_rows

        packed = bool(self.run.get("packing"))
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        values = [0.0] * len(sequences)
        start = 0
        while start < len(order):
            if stop is not None and stop():
                total = done + len(sequences)
                raise ScoringStopped(f"stopped after {done + start} of {total} texts: nobody waits for their rewards")
            longest = len(sequences[order[start]])
            count, tokens = 0, 0
            for i in order[start:]:  # packed: real tokens count; padded: every text costs the longest
                cost = len(sequences[i]) if packed else longest
                if count and tokens + cost > max(pass_tokens, longest):
                    break
                count, tokens = count + 1, tokens + cost
            members = order[start : start + count]
            ids = [sequences[i] for i in members]
            if packed:
                batch = {key: value.to(self.device) for key, value in pack_rows(ids, [0] * len(ids), pad).items()}
                rewards = forward_rows(self.model, batch, need_rewards=True, need_logps=False)[0].float().cpu().tolist()
            else:
                rewards = score_sequences(
                    self.model, ids, [0] * len(ids), len(ids), pad, self.tokenizer.padding_side, share_prompts=False
                )
                rewards = rewards["rewards"].tolist()
            for i, value in zip(members, rewards):
                values[i] = value
            start += count
        return values  # raw: callers normalise with `normalized` where they ask for it
