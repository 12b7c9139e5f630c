"""Prompts and sampling from a policy: what best-of-N draws and RLHF evaluates.

    from hafrm.sampling import Policy, read_prompts
    prompts = read_prompts("builtin:test", limit=8)
    policy = Policy("smollm2-135m-instruct", backend="auto")      # HF generate, or vLLM on a GPU when installed
    texts, finished = policy.sample([policy.prompt_ids(p, i) for i, p in enumerate(prompts)], cfg, seed=0)

A prompt is rendered as training renders it (the chat template with the generation prompt, or plain
text); `cfg` gives n, temperature, top_p and max_new_tokens (a `BonConfig`, or anything with them).
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import DataError
from .devices import to_scoring_device


def read_prompts(spec: str, limit: int | None = None) -> list:
    """`builtin:SPLIT[@N]` or a JSON / JSONL file of rows with a `prompt` (text or chat messages) -> prompts."""
    if spec.startswith("builtin"):
        from .data.builtin import builtin_rows, split_and_count

        prompts = [row["prompt"] for row in builtin_rows(*split_and_count(spec.partition(":")[2] or "test"))]
    else:
        prompts = _file_prompts(Path(spec))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def _file_prompts(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file (or use builtin:SPLIT)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        numbered = list(enumerate(rows))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    numbered.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: line {number + 1}: not JSON ({error.msg})") from None
    prompts = []
    for number, row in numbered:
        where = f"{path}: row {number}" if path.suffix == ".json" else f"{path}: line {number + 1}"
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            prompts.append(prompt)
        elif (
            isinstance(prompt, list)
            and prompt
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt
            )
        ):
            prompts.append(prompt)
        else:
            raise DataError(f"{where}: field `prompt` must be non-empty text or a list of {{role, content}} messages")
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def policy_tokenizer(name: str):
    """(local path or hub id, tokenizer padding on the left) of a sampling policy; a pad is filled in from EOS."""
    from transformers import AutoTokenizer

    from .default_model import resolve_model_path

    path = resolve_model_path(name)
    if not Path(path).exists() and "/" not in name:
        raise FileNotFoundError(f"--policy {name}: no such directory, and not a hub id")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # generation only: the attention mask keeps pads out
    return path, tokenizer


def prompt_ids(tokenizer, prompt, index: int, policy: str) -> list[int]:
    """A prompt as training renders it (chat template with the generation prompt, or plain text)."""
    from .data.templates import encode, render

    if not tokenizer.chat_template and not isinstance(prompt, str):
        raise ValueError(f"prompt {index} is chat messages, but --policy {policy} has no chat template")
    text, _, templated = render(tokenizer, prompt, "", f"prompt {index}")
    return encode(tokenizer, text, templated)


class Policy:
    """The sampling model: HF `generate` (batched, left-padded) or vLLM when installed, a GPU present and asked for."""

    def __init__(self, name: str, backend: str):
        import torch

        self.path, self.tokenizer = policy_tokenizer(name)
        use_vllm = backend == "vllm" or (backend == "auto" and torch.cuda.is_available() and _has_vllm())
        if backend == "vllm" and not (torch.cuda.is_available() and _has_vllm()):
            raise ValueError(
                "--backend vllm needs a GPU and the vllm package (pip install 'hafrm[vllm]'); use --backend hf"
            )
        self.backend = "vllm" if use_vllm else "hf"
        if self.backend == "vllm":
            from vllm import LLM

            self.llm = LLM(model=self.path)
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
            to_scoring_device(self.model)

    def prompt_ids(self, prompt, index: int) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, index, self.path)

    def sample(self, prompt_ids: list[list[int]], cfg, seed: int) -> tuple[list[list[str]], list[list[bool]]]:
        """N responses per prompt and whether each ended by itself (False: cut at max_new_tokens)."""
        if self.backend == "vllm":
            return self._sample_vllm(prompt_ids, cfg, seed)
        import torch

        from .data.collator import pad_rows

        batch = pad_rows(prompt_ids, [0] * len(prompt_ids), self.tokenizer.pad_token_id, "left")
        device = next(self.model.parameters()).device
        torch.manual_seed(seed)
        sampling = (
            {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
            if cfg.temperature > 0
            else {"do_sample": False}
        )
        with torch.no_grad():
            output = self.model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=cfg.n,
                pad_token_id=self.tokenizer.pad_token_id,
                top_k=0,
                **sampling,
            )
        new = output[:, batch["input_ids"].shape[1] :].cpu()
        stops = set(_stop_ids(self.model, self.tokenizer))
        texts, finished = [], []
        for row in new.tolist():
            ended = next((i for i, token in enumerate(row) if token in stops), None)
            finished.append(ended is not None)
            texts.append(self.tokenizer.decode(row[:ended], skip_special_tokens=True))
        return _grouped(texts, cfg.n), _grouped(finished, cfg.n)

    def _sample_vllm(self, prompt_ids, cfg, seed: int):  # pragma: no cover - needs a GPU and vllm
        from vllm import SamplingParams

        params = SamplingParams(
            n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=seed
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        texts = [[choice.text for choice in out.outputs] for out in outputs]
        finished = [[choice.finish_reason == "stop" for choice in out.outputs] for out in outputs]
        return texts, finished


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _stop_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _grouped(values: list, n: int) -> list[list]:
    return [values[i : i + n] for i in range(0, len(values), n)]
