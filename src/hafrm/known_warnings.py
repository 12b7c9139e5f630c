"""Warnings and log lines a hafrm user cannot act on, silenced where hafrm's commands run, each with its reason.

    from hafrm.known_warnings import install
    install()      # `hafrm.cli.main` does this once; a library user's own warnings settings are left alone

Only messages that are expected for every run of a kind are here; anything else still reaches the user.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex, why it is expected)
FILTERS = (
    (
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        "peft's PeftModel reads transformers' old property name when it wraps a model; neither hafrm nor the "
        "user's command uses it (hafrm calls activation_checkpointing_enable)",
    ),
    (
        UserWarning,
        r"Setting `save_embedding_layers` to `True` as the embedding layer has been resized",
        "hafrm adds one embedding row for its pad token where the tokenizer has none of its own "
        "(docs/checkpoints.md); peft then saves the embeddings with the adapter, as it must, and says so at "
        "every save",
    ),
)
# Trainer's `load_best_model_at_end` reports a tied lm_head as missing from the checkpoint: safetensors stores a
# tied weight once (as the embeddings), and transformers ties it again on load.
TIED_HEAD_NOTICE = "There were missing keys in the checkpoint model loaded: ['lm_head.weight']"


class _TiedHeadFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TIED_HEAD_NOTICE)


def install() -> None:
    """Silence the expected messages above (idempotent)."""
    for category, message, _why in FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logger = logging.getLogger("transformers.trainer")
    if not any(isinstance(existing, _TiedHeadFilter) for existing in logger.filters):
        logger.addFilter(_TiedHeadFilter())
