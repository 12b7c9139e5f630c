"""Run by tests/test_fsdp.py under `torchrun --nproc-per-node 2`: hafrm's hybrid forward under FSDP2.

Each process shards a copy of the model with `torch.distributed.fsdp.fully_shard` (every block its own
unit, embeddings / lm_head / reward head in the root unit, as configs/accelerate/fsdp.yaml does), runs
its half of a batch of pairs through both heads and backpropagates a HAF-style loss. FSDP averages the
gradients over processes, so each full gradient must equal the one a single unsharded model gets from
the whole batch. Rank 0 writes one line per case to the JSON file named on the command line.

accelerate sends FSDP to GPUs only (on a CPU it becomes DDP), so this calls FSDP2 directly, on gloo.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState
from transformers import AutoModelForCausalLM, AutoTokenizer

import hafrm.model as hafrm_model
from hafrm.config import TrainConfig
from hafrm.data.collator import PairCollator
from hafrm.finetune import prepare_finetuning
from hafrm.model import attach_score_head, hybrid_forward, transformer_blocks, unwrap

# Which FSDP units ran their pre-backward hook (unshard, and on the root the end-of-backward callback
# that waits for the gradient reduce-scatters): torch internals, pinned with torch 2.13.0.
PRE_BACKWARD: list[nn.Module] = []
_pre_backward = FSDPState._pre_backward


def _recording_pre_backward(self, grad):
    PRE_BACKWARD.extend(self._modules)
    return _pre_backward(self, grad)


FSDPState._pre_backward = _recording_pre_backward

KEEP_ELEMENTS = hafrm_model.LOGIT_KEEP_ELEMENTS
CASES = [
    # (name, model dir key, finetune, packing, keep logits for backward, gradient checkpointing)
    ("full-padded", "tied", "full", False, True, False),
    ("full-packed-recompute", "tied", "full", True, False, False),
    ("full-untied-packed", "untied", "full", True, True, False),
    ("freeze-padded", "untied", "freeze", False, True, False),
    ("lora-packed", "tied", "lora", True, True, False),
    ("full-checkpointing", "tied", "full", True, True, True),
]


def pairs(n: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)

    def tokens(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high, (1,), generator=generator))
        return torch.randint(10, 1000, (length,), generator=generator).tolist()

    rows = []
    for _ in range(n):
        prompt = tokens(3, 9)
        rows.append(
            {
                "chosen_input_ids": prompt + tokens(2, 12),
                "rejected_input_ids": prompt + tokens(2, 12),
                "prompt_length": len(prompt),
            }
        )
    return rows


def build(directory: str, pad_token_id: int, cfg: TrainConfig) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    attach_score_head(model, pad_token_id, seed=0)
    torch.manual_seed(0)  # LoRA's random A matrices: the same in every copy
    return prepare_finetuning(model, cfg, uses_policy_head=True)


def hybrid_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    out = hybrid_forward(model, batch, need_rewards=True, need_logps=True)
    reward_part = -F.logsigmoid(out.chosen_rewards - out.rejected_rewards).mean()
    policy_part = -F.logsigmoid(0.1 * (out.chosen_logps - out.rejected_logps)).mean()
    return reward_part + 0.2 * policy_part


def full_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            grad = parameter.grad
            grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    return grads


def run_case(case, directories: dict, rank: int, world: int) -> dict:
    name, model_key, finetune, packing, keep_logits, checkpointing = case
    directory = directories[model_key]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    cfg = replace(TrainConfig(), finetune=finetune, trainable_layers=1, lora_r=4, gradient_checkpointing=checkpointing)
    hafrm_model.LOGIT_KEEP_ELEMENTS = KEEP_ELEMENTS if keep_logits else 0  # 0: recompute each chunk's logits
    collate = PairCollator(tokenizer.pad_token_id, "right", packing=packing)
    rows = pairs(4 * world)

    single = build(directory, tokenizer.pad_token_id, cfg).train()
    single_loss = hybrid_loss(single, collate(rows))
    single_loss.backward()
    expected = full_gradients(single)

    sharded = build(directory, tokenizer.pad_token_id, cfg).train()
    causal_lm = unwrap(sharded)
    for block in transformer_blocks(causal_lm):
        fully_shard(block)
    fully_shard(sharded)
    share = len(rows) // world
    PRE_BACKWARD.clear()
    loss = hybrid_loss(sharded, collate(rows[rank * share : (rank + 1) * share]))
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    got = full_gradients(sharded)

    errors = {
        key: ((got[key] - expected[key]).abs().max() / expected[key].abs().max().clamp_min(1e-12)).item()
        for key in expected
    }
    return {
        "case": name,
        "single_loss": single_loss.item(),
        "sharded_loss": mean_loss.item(),
        "trainable": sorted(expected),
        "sharded_trainable": sorted(got),
        "worst_relative_grad_error": max(errors.values()),
        "worst_parameter": max(errors, key=errors.get),
        "root_pre_backward": any(module is sharded for module in PRE_BACKWARD),
        "sharded": all(hasattr(p, "full_tensor") for p in sharded.parameters()),
    }


def main(argv: list[str]) -> int:
    tied, untied, output = argv
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = [run_case(case, {"tied": tied, "untied": untied}, rank, world) for case in CASES]
    if rank == 0:
        with open(output, "w") as handle:
            json.dump(results, handle, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
