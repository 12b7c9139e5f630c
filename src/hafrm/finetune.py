"""What trains: `full`, `lora` (peft adapters + the reward head) or `freeze` (top N blocks + heads).

model = prepare_finetuning(model, cfg, uses_policy_head=True)
"""

from __future__ import annotations

import logging

from torch import nn

from .model import SCORE_HEAD, transformer_blocks, trunk_of

logger = logging.getLogger(__name__)


def lm_head_is_tied(model: nn.Module) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _freeze_lower_blocks(model: nn.Module, trainable_layers: int, uses_policy_head: bool) -> None:
    trunk = trunk_of(model)
    blocks = transformer_blocks(model)
    if not 0 < trainable_layers <= len(blocks):
        raise ValueError(f"--trainable-layers must be in 1..{len(blocks)}, got {trainable_layers}")
    model.requires_grad_(False)
    for block in blocks[len(blocks) - trainable_layers :]:
        block.requires_grad_(True)
    # Trunk parameters outside the blocks that are not embeddings: the final norm, in every
    # architecture. Embeddings stay frozen so that nothing below the top blocks needs a graph.
    in_blocks = {id(p) for p in blocks.parameters()}
    for module in trunk.modules():
        if isinstance(module, nn.Embedding):
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in in_blocks:
                param.requires_grad_(True)
    if hasattr(model, SCORE_HEAD):
        getattr(model, SCORE_HEAD).requires_grad_(True)
    if uses_policy_head:
        if lm_head_is_tied(model):
            logger.info("freeze: lm_head is tied to the input embeddings, so it stays frozen with them")
        else:
            model.get_output_embeddings().requires_grad_(True)


def _wrap_lora(model: nn.Module, cfg):
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    with_score = hasattr(model, SCORE_HEAD)
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        # The reward head trains in full (no adapter on it or on any layer inside GRM's MLP head, which
        # "all-linear" would otherwise reach by their names "1" and "3") and is saved inside the adapter.
        exclude_modules=rf"(.*\.)?{SCORE_HEAD}(\..*)?" if with_score else None,
        modules_to_save=[SCORE_HEAD] if with_score else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def prepare_finetuning(model: nn.Module, cfg, uses_policy_head: bool) -> nn.Module:
    """Set requires_grad (or wrap in peft) per `cfg.finetune`; returns the model to train."""
    if cfg.finetune == "lora":
        model = _wrap_lora(model, cfg)
    elif cfg.finetune == "freeze":
        _freeze_lower_blocks(model, cfg.trainable_layers, uses_policy_head)
    elif not uses_policy_head and not lm_head_is_tied(model):
        # A plain reward model never runs lm_head: keep it out of the optimizer.
        model.get_output_embeddings().requires_grad_(False)
    if cfg.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs and DDP; transformers also makes the embedding
        # output require grad, so LoRA and freeze get gradients through checkpointed blocks.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "%s fine-tuning: %d of %d parameters train (%.2f%%)", cfg.finetune, trainable, total, 100 * trainable / total
    )
    return model
