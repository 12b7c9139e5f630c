"""One dataclass per entry point. YAML files map one-to-one onto the fields; command-line flags override.

    cfg = parse_config(TrainConfig, ["--config", "configs/quickstart.yaml", "--lr", "1e-4"])

Every field is a flag in both spellings (`--max-length` and `--max_length`). YAML values are read the
way their flags are (`coerce`); `validate(cfg)` then checks types, choices and ranges and what the
config names (model, data, trackers) before anything heavy loads:

    validate(cfg)   # ConfigError: --batch-size must be at least 1, got 0
"""

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .default_model import DEFAULT_MODEL
from .fields import ConfigError, coerce
from .losses import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_POLICY_LOSS, DEFAULT_SIMPO_GAMMA


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """`hafrm train`: the hybrid reward model and its two baselines.

    Model: `model` is any hub causal LM, a local checkpoint, or the offline default SmolLM2-135M-Instruct.
    `finetune` picks what trains: `full`; `lora` (adapters + reward head, the usual choice on one GPU);
    `freeze` (top `trainable_layers` blocks, final norm and heads; the lower blocks run without grad,
    so a CPU can afford it).
    Data: the built-in set by default, or named sources, files (TRL, HH, sharegpt, PandaLM, LLMBar
    formats) and hub ids, mixed with weights. Validation (where the best checkpoint is chosen, never
    on test data): `eval_data`, else the source's validation split, else `val_fraction` of the
    training pairs held out with `seed`.
    Loss: `method` rm = reward head only (α = 0, lm_head never runs); dpo = policy head only, DPO used
    as a reward model; haf = reward + α · policy. α = 0.2 and β = 0.1 are the HAF-RM paper's values.
    Training: standard Trainer settings; the learning rate 1e-5 is the usual full fine-tuning rate for
    reward models (raise it ~10x for LoRA or freeze).
    """

    # model
    model: str = _help("hub id, local checkpoint, or the default model's alias", default=DEFAULT_MODEL)
    finetune: Literal["full", "lora", "freeze"] = _help("what trains", default="full")
    trainable_layers: int = _help("freeze mode: how many top transformer blocks train", default=4)
    prefix_cache: bool = _help(
        "freeze mode: run the frozen lower blocks once per sequence before training and feed their cached output to"
        " the trained top blocks in every epoch (RAM, or memory-mapped in output_dir when large); checked against the"
        " whole forward first; off with dropout kept or several processes",
        default=True,
    )
    share_prefix_cache: bool = _help(
        "freeze mode: keep the frozen blocks' output in the hafrm cache ($HAFRM_CACHE/frozen-prefix), named by the"
        " weights and tokens, so that other runs on the same base, frozen blocks and data (an experiment's methods and"
        " seeds) read it instead of computing it again",
        default=False,
    )
    lora_r: int = _help("LoRA rank", default=16)
    lora_alpha: int = _help("LoRA scaling numerator", default=32)
    lora_dropout: float = _help(
        "dropout on the LoRA adapters' input (0: none, like the model's own, see keep_dropout)", default=0.0
    )
    lora_target_modules: str = _help("comma-separated module names, or all-linear", default="all-linear")
    gradient_checkpointing: bool = _help("recompute trunk activations in backward", default=False)
    attn_implementation: str | None = _help(
        "transformers attention: sdpa, eager, flex_attention (GPU: shared-prompt rows then skip the masked blocks),"
        " flash_attention_2 (takes no shared-prompt mask: sharing turns itself off); default: the model's own",
        default=None,
    )
    keep_dropout: bool = _help(
        "train with the model's own dropout (default: set to 0 as TRL's reward and DPO trainers do, so chosen and "
        "rejected see one network and policy log-probs start equal to the reference's)",
        default=False,
    )
    # data
    data: str | None = _help(
        "training pairs: builtin (default), a named source, a file or a hub id, NAME[:SPLIT][:WEIGHT], comma-separated",
        default=None,
    )
    eval_data: str | None = _help("validation pairs (default: the source's validation split, or carved)", default=None)
    val_fraction: float = _help("share of --data held out for validation when no validation split exists", default=0.1)
    val_seed: int | None = _help(
        "seed of the --val-fraction hold-out (default: --seed); fixed, the seeds of an experiment share one validation"
        " set and vary only the initialisation and the order",
        default=None,
    )
    format: str = _help("row format: auto, trl, hh, sharegpt, pandalm, llmbar, or a named source", default="auto")
    skip_bad_rows: bool = _help("leave unusable rows out (counted per reason) instead of stopping", default=False)
    mixture: Literal["concat", "even"] = _help(
        "even: cut every --data item to the smallest one's size", default="concat"
    )
    max_length: int = _help("max tokens of prompt + response; truncation is counted and reported", default=512)
    padding_side: Literal["right", "left"] = _help("where batches are padded (without packing)", default="right")
    packing: bool = _help(
        "lay a batch's sequences end to end in rows as wide as its longest one (attention kept apart by restarting"
        " positions) instead of padding each: fewer tokens through the trunk; checked against the padded forward"
        " before training, and turned off with a note for a model whose attention does not keep them apart",
        default=True,
    )
    prompt_sharing: bool = _help(
        "run each pair's prompt through the trunk once: prompt, chosen and rejected in one unit whose attention mask"
        " keeps the two replies apart (exact; composes with packing); checked against the padded forward before"
        " training and turned off with a note for a model whose attention cannot take the mask",
        default=True,
    )
    # loss
    method: Literal["rm", "dpo", "haf"] = _help("rm, dpo (as a reward model) or haf", default="haf")
    reward_head_type: Literal["linear", "zero", "mlp"] = _help(
        "the reward head: linear (random normal start), zero (linear starting at 0, as the official HAF code) or mlp"
        " (GRM's: dropout 0.1, 1024 ReLU units; read by hafrm's loaders only, not by TRL / OpenRLHF / vLLM)",
        default="linear",
    )
    alpha: float = _help("weight of the policy loss in haf", default=DEFAULT_ALPHA)
    beta: float = _help("β of the policy loss (DPO temperature)", default=DEFAULT_BETA)
    policy_loss: Literal["dpo", "ipo", "hinge", "simpo", "sft", "grm-sft", "dpo-noref"] = _help(
        "policy-head loss; grm-sft and dpo-noref are GRM's regularisers (GRM's weight w is α = w / (1 - w))",
        default=DEFAULT_POLICY_LOSS,
    )
    simpo_gamma: float = _help("SimPO target margin γ", default=DEFAULT_SIMPO_GAMMA)
    center_rewards_coef: float = _help("weight of the reward-centering term", default=0.0)
    reference: Literal["cache", "adapters"] = _help(
        "reference log-probs: precomputed+cached, or LoRA off", default="cache"
    )
    # training
    batch_size: int = _help("pairs per device per step", default=8)
    eval_batch_size: int | None = _help("pairs per evaluation batch (default: batch size)", default=None)
    grad_accum: int = _help("gradient accumulation steps", default=1)
    sampling: Literal["random", "group_by_length", "sequential"] = _help(
        "training order: random; group_by_length (pairs of similar length batched together: less padding,"
        " faster steps, less random batches); sequential (file order, for benchmarks and debugging)",
        default="random",
    )
    lr: float = _help("peak learning rate", default=1e-5)
    lr_scheduler: str = _help("transformers scheduler name", default="linear")
    warmup_steps: int = _help("linear warm-up steps", default=0)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    max_steps: int = _help("stop after this many optimizer steps (-1: use epochs)", default=-1)
    epochs: float = _help("passes over the training pairs", default=1.0)
    eval_steps: int = _help("validate (and save a checkpoint) every K steps", default=50)
    eval_on_start: bool = _help("validate once before training, to show what training changed", default=True)
    logging_steps: int = _help("log training metrics every K steps", default=10)
    save_total_limit: int = _help("checkpoints kept; with validation at least 2: the best and the newest", default=2)
    seed: int = _help("seed for the reward-head init, data order and validation split", default=42)
    bf16: bool = _help("bf16 mixed precision (GPUs; slower on most CPUs)", default=False)
    output_dir: str = _help("where checkpoints and the final model go", default="runs/hafrm")
    resume: str | None = _help(
        "resume: a checkpoint dir, or `last` for the newest complete one in output_dir", default=None
    )
    overwrite: bool = _help("clear an output_dir that holds another run instead of refusing it", default=False)
    report_to: str = _help("comma-separated trackers (wandb, tensorboard, ...) or none", default="none")


@dataclass
class EvalConfig:
    """`hafrm eval`: pairwise accuracy of a trained model's reward head and implicit reward."""

    model: str = _help("hafrm output directory", default="runs/hafrm")
    data: str = _help(
        "pairs to score: builtin, a named source (test split), a file or a hub id; comma-separated", default="builtin"
    )
    format: str = _help("row format (auto-detected by default)", default="auto")
    skip_bad_rows: bool = _help("leave unusable rows out (counted per reason) instead of stopping", default=False)
    max_length: int | None = _help("max tokens of prompt + response (default: the run's own)", default=None)
    batch_size: int = _help("pairs per batch", default=8)
    prompt_sharing: bool = _help(
        "score each pair's two replies with the prompt run once (checked to match padded scoring first)", default=True
    )
    dtype: Literal["float32", "bfloat16"] = _help(
        "weights and activations to score in (bfloat16: GPUs; fp32 on CPUs, where bf16 is slower)", default="float32"
    )
    prefix_cache: bool = _help(
        "freeze runs: keep the frozen blocks' output for these pairs on disk, shared by every run with those blocks",
        default=True,
    )
    implicit: bool = _help(
        "also score β·log π/π_ref for runs with a reward head (needs the reference model; dpo runs always score it)",
        default=True,
    )
    combine: bool = _help("also score r + λ·implicit, λ fitted on the run's validation data", default=True)
    perplexity: bool = _help("report per-token perplexity of chosen and rejected under the policy head", default=True)
    json: str | None = _help("write the report to this JSON file", default=None)
    plots: str | None = _help("write PNG plots (calibration, margins, perplexity) into this directory", default=None)
    save_scores: bool = _help("keep every pair's scores in the JSON report", default=False)
    rewardbench: str | None = _help(
        "score RewardBench v1/v2 from this local file or hub-layout directory instead", default=None
    )


@dataclass
class ScoreConfig:
    """`hafrm score`: rewards of responses to one prompt."""

    model: str = _help("hafrm output directory", default="runs/hafrm")
    prompt: str = _help("the prompt", default="")
    # `--response A --response B` and `--response A B` both give [A, B] (append of nargs lists).
    response: list[str] = field(
        default_factory=list, metadata={"help": "a response to score (repeatable)", "action": "extend"}
    )
    text: list[str] = field(
        default_factory=list,
        metadata={
            "help": "a full prompt + response text as a rollout sends it (chat template already applied; repeatable)",
            "action": "extend",
        },
    )
    max_length: int | None = _help("max tokens of prompt + response (default: the run's own)", default=None)
    prompt_sharing: bool = _help(
        "score the responses with their shared prompt run once (checked to match padded scoring first)", default=True
    )
    dtype: Literal["float32", "bfloat16"] = _help(
        "weights and activations to score in (bfloat16: GPUs; fp32 on CPUs, where bf16 is slower)", default="float32"
    )


@dataclass
class ServeConfig:
    """`hafrm serve`: the reward model over HTTP, for RL pipelines (OpenRLHF's `/get_reward`) and scripts (`/score`).

    Requests queue and are scored together: a batch closes at `max_batch_tokens` padded tokens or after
    `max_wait_ms`, whichever comes first, and runs as one length-sorted model call. Texts longer than
    `max_length` tokens lose their start (as in `hafrm score`) and are reported, or are refused with
    413 under `reject_long`. The server binds loopback unless `host` says otherwise.

    What one request may cost is bounded before any work starts (413 when too large, naming the limit):
    texts, characters and messages per text and per request, where a /score prompt counts once per
    response because it is rendered and tokenised with each; tokens per request are counted as texts are
    encoded. The defaults take any OpenRLHF batch and best-of-N request seen in practice while keeping a
    request's tokenisation under about a second of one CPU core (2M characters) and the model's share
    at 256k tokens; docs/security.md lists them. `request_timeout_s` runs from a request's arrival and
    covers encoding as well as the model call.
    """

    model: str = _help("hafrm output directory with a reward head (rm, haf, or an export of one)", default="runs/hafrm")
    host: str = _help("address to bind (0.0.0.0: every interface)", default="127.0.0.1")
    port: int = _help("TCP port", default=5000)
    max_length: int | None = _help("max tokens of a text (default: the run's own)", default=None)
    dtype: Literal["float32", "bfloat16"] = _help(
        "weights and activations to score in (bfloat16: GPUs; fp32 on CPUs, where bf16 is slower)", default="float32"
    )
    reject_long: bool = _help("refuse texts over max_length with 413 instead of truncating them", default=False)
    normalize: bool = _help("rewards as (r - mean) / std with the run's stored moments", default=False)
    batching: bool = _help("score queued requests together (off: one model call per request)", default=True)
    share_prompts: bool = _help(
        "texts that share 32+ leading tokens (one prompt's responses, a rollout group) run them once", default=True
    )
    max_batch_tokens: int = _help("padded tokens in one model call (texts x longest)", default=16384)
    max_wait_ms: float = _help(
        "how long a batch waits for requests still being encoded before it runs (none on their way: no wait)",
        default=5.0,
    )
    pass_tokens: int = _help(
        "padded tokens per forward pass: a batch runs longest first in passes of this size (less padding)",
        default=4096,
    )
    max_texts: int = _help("texts in one request: /score responses or /get_reward queries", default=1024)
    max_text_chars: int = _help(
        "characters in one text: a string or a message list's contents (longer: 413, before tokenising)",
        default=200_000,
    )
    max_messages: int = _help("messages in one text: a /score prompt or response given as messages", default=256)
    max_request_chars: int = _help(
        "characters one request has tokenised: its texts', a /score prompt's once per response", default=2_000_000
    )
    max_request_messages: int = _help(
        "messages one request has rendered: its texts', a /score prompt's once per response", default=65_536
    )
    max_request_tokens: int = _help(
        "tokens the model reads for one request: its texts' after the cut to max_length", default=262_144
    )
    max_body_mb: float = _help("request body size limit in MiB", default=32.0)
    request_timeout_s: float = _help(
        "a request without a result this long after it arrived gets 503: encoding and the model call both count "
        "(OpenRLHF's client waits 180 s)",
        default=170.0,
    )
    api_key_env: str = _help(
        "environment variable holding the bearer token clients must send (unset or empty: no token)",
        default="HAFRM_API_KEY",
    )


@dataclass
class BonConfig:
    """`hafrm bon`: sample N responses per prompt, pick the best with each reward model, judge the picks.

    Samples are drawn once into output_dir/samples.jsonl (resumable); reward models and the judge then
    score them. The judge is `oracle` (the built-in checker; built-in prompts), a reward-model
    directory (the gold RM), or the URL of an OpenAI-compatible endpoint (pairwise, order randomised).
    """

    policy: str = _help("the sampling model: hub id, local causal LM or the default model", default=DEFAULT_MODEL)
    prompts: str = _help("builtin:SPLIT or a JSON / JSONL file of rows with a `prompt`", default="builtin:test")
    limit: int | None = _help("only the first K prompts", default=None)
    n: int = _help("samples per prompt", default=8)
    temperature: float = _help("sampling temperature (0: greedy, with --n 1)", default=1.0)
    top_p: float = _help("nucleus sampling mass", default=1.0)
    max_new_tokens: int = _help("longest response in tokens", default=128)
    seed: int = _help("sampling seed (each batch of prompts draws from seed + its first index)", default=0)
    batch_size: int = _help("prompts per generate call (each gives N sequences)", default=8)
    backend: Literal["auto", "hf", "vllm"] = _help(
        "sampler: vllm when installed with a GPU (auto), or HF generate", default="auto"
    )
    reward: list[str] = field(
        default_factory=list,
        metadata={"help": "reward models: DIR or NAME=DIR, comma-separated or repeated", "action": "extend"},
    )
    judge: str = _help(
        "oracle (built-in prompts), a gold reward-model DIR, or an OpenAI-compatible URL", default="oracle"
    )
    judge_model: str | None = _help("model name sent to the judge URL", default=None)
    judge_api_key_env: str = _help(
        "environment variable holding the judge URL's bearer token", default="OPENAI_API_KEY"
    )
    max_length: int | None = _help(
        "max tokens of prompt + response when scoring (default: each run's own)", default=None
    )
    score_batch_size: int = _help("sequences per scoring pass", default=16)
    output_dir: str = _help("samples, scores and the report go here", default="runs/bon")


@dataclass
class RlhfConfig:
    """`hafrm rlhf`: a policy trained by TRL's GRPO or RLOO against a hafrm reward model, evaluated by the oracle.

    A step takes `batch_size` prompts and samples `num_generations` completions of each; the reward is
    the run's reward head (normalised with its stored mean / std); `beta` weighs the KL penalty to
    the initial policy. `--compare A B` reads two finished runs and prints the oracle win rate of A
    over B at every evaluated step instead of training.
    """

    policy: str = _help("the policy to train: hub id, local causal LM or the default model", default=DEFAULT_MODEL)
    reward: str | None = _help("hafrm output directory (rm or haf) or 1-label classifier: the reward", default=None)
    algorithm: Literal["grpo", "rloo"] = _help(
        "TRL trainer: GRPO (group-normalised) or RLOO (leave-one-out)", default="grpo"
    )
    prompts: str = _help(
        "training prompts: builtin:SPLIT or a JSON / JSONL file with `prompt`", default="builtin:train"
    )
    limit: int | None = _help("only the first K training prompts", default=None)
    eval_prompts: str = _help("held-out prompts the policy answers at each evaluation", default="builtin:test")
    eval_limit: int | None = _help("only the first K held-out prompts", default=50)
    eval_batch_size: int = _help("held-out prompts per generate call", default=16)
    gold_reward: str | None = _help("a reward-model directory that also grades the held-out answers", default=None)
    normalize: bool = _help("rewards as (r - mean) / std with the checkpoint's stored moments", default=True)
    finetune: Literal["full", "lora", "freeze"] = _help("what trains in the policy", default="lora")
    trainable_layers: int = _help("freeze mode: how many top blocks train", default=4)
    lora_r: int = _help("LoRA rank", default=16)
    lora_alpha: int = _help("LoRA scaling numerator", default=32)
    num_generations: int = _help("completions sampled per prompt (the group)", default=4)
    batch_size: int = _help("prompts per step", default=2)
    max_new_tokens: int = _help("longest completion in tokens", default=64)
    temperature: float = _help("sampling temperature of the completions", default=1.0)
    top_p: float = _help("nucleus sampling mass", default=1.0)
    beta: float = _help("KL coefficient to the initial policy (0: no reference model)", default=0.04)
    lr: float = _help("learning rate (constant)", default=1e-4)
    max_steps: int = _help("optimizer steps", default=50)
    eval_steps: int = _help("evaluate (and checkpoint) every K steps", default=10)
    logging_steps: int = _help("log TRL's metrics every K steps", default=5)
    max_length: int | None = _help("max tokens the reward models read (default: each run's own)", default=None)
    seed: int = _help("seed of prompt order and sampling", default=0)
    bf16: bool = _help("bf16 (GPUs)", default=False)
    report_to: str = _help("comma-separated trackers or none", default="none")
    output_dir: str = _help("checkpoints, evaluations, curve and the final policy", default="runs/rlhf")
    resume: str | None = _help("resume: a checkpoint dir, or `last` for the newest in output_dir", default=None)
    compare: list[str] = field(
        default_factory=list,
        metadata={
            "help": "two finished rlhf output dirs: oracle win rate of the first over the second per step",
            "action": "extend",
        },
    )


@dataclass
class StatsConfig:
    """`hafrm data stats NAME...`: Table 1 of the paper for any data hafrm reads."""

    data: list[str] = field(
        default_factory=list, metadata={"help": "data to describe (also positional)", "action": "extend"}
    )
    model: str = _help("whose tokenizer and chat template count the tokens", default=DEFAULT_MODEL)
    max_length: int = _help("report the share of pairs truncated at this length", default=512)
    format: str = _help("row format (auto-detected by default)", default="auto")
    json: str | None = _help("also write the figures to this JSON file", default=None)


@dataclass
class ExportConfig:
    """`hafrm export`: merge a LoRA run into a full directory both Auto classes load."""

    model: str = _help("hafrm LoRA output directory", default="runs/hafrm")
    output_dir: str = _help("where the merged model goes", default="runs/hafrm-merged")


SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """{name: path} of the configs in the package: `quickstart`, `experiments/NAME`, `accelerate/NAME`."""
    return {
        str(path.relative_to(SHIPPED_CONFIGS).with_suffix("")): path for path in sorted(SHIPPED_CONFIGS.rglob("*.yaml"))
    }


def config_path(value: str, folder: str = "") -> Path:
    """A config given as a file, or by the name of one the package ships (in `folder`, or anywhere by its path).

    `quickstart` -> hafrm/configs/quickstart.yaml; `study-builtin` with folder `experiments` ->
    hafrm/configs/experiments/study-builtin.yaml; `accelerate/zero2` -> hafrm/configs/accelerate/zero2.yaml.
    An existing file always wins; a name that is neither gets a ConfigError listing what ships.
    """
    path = Path(value)
    if path.is_file() or path.suffix in (".yaml", ".yml") or path.is_dir():
        return path  # a file (read_yaml says so when it cannot be read)
    shipped = shipped_configs()
    for name in (f"{folder}/{value}" if folder else value, value):
        if name in shipped:
            return shipped[name]
    names = sorted(name for name in shipped if not folder or name.startswith(f"{folder}/"))
    shown = ", ".join(name.removeprefix(f"{folder}/") for name in names)
    close = difflib.get_close_matches(value, [name.removeprefix(f"{folder}/") for name in names], n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{value}: no such file, and no config of that name ships with hafrm{guess}; shipped: {shown}")


def config_name(path: str | Path, folder: str = "") -> str:
    """How a user names `path` on the command line: a shipped config by its name (`study-lora`, the inverse of
    `config_path`), any other file as it was given."""
    for name, shipped in shipped_configs().items():
        if Path(path).resolve() == shipped.resolve():
            return name.removeprefix(f"{folder}/") if folder else name
    return str(path)


def _tidy_help(parser, config_class) -> None:
    """The parser as a user reads it: `hafrm COMMAND [options]`, dashed flags only (the underscore forms still
    parse), one line per on/off pair (`--packing` says how to turn it off), `BOOL` for a flag's optional value,
    and no abbreviations (`--max-step` is not `--max-steps`)."""
    import argparse

    class Formatter(argparse.ArgumentDefaultsHelpFormatter):
        def _split_lines(self, text, width):  # a flag named in a help text is never cut at its hyphens
            import textwrap

            return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    command = COMMAND_OF.get(config_class, "COMMAND")
    parser.formatter_class = Formatter
    parser.prog = f"hafrm {command}"
    parser.usage = f"hafrm {command} [--config FILE|NAME] [options]"
    parser.allow_abbrev = False
    negatives = {}
    for action in parser._actions:
        dashed = [option for option in action.option_strings if "_" not in option]
        if dashed:
            action.option_strings = dashed  # `_option_string_actions` keeps the underscore forms for parsing
        if isinstance(action, argparse._StoreFalseAction):
            negatives[action.dest] = dashed[0]
            action.help = argparse.SUPPRESS
    for action in parser._actions:
        if action.nargs == "?" and action.const is True:
            action.metavar = "BOOL"
            if action.dest in negatives and action.help:
                action.help = f"{action.help} ({negatives[action.dest]} turns it off)"


def _unknown_flags_error(parser, remaining: list[str]) -> ConfigError:
    """One line for flags no field has, with the closest real flag where a typo is likely."""
    known = sorted(
        {option for option in parser._option_string_actions if option.startswith("--") and "_" not in option}
    )
    flags = [arg for arg in remaining if arg.startswith("-")]
    if not flags:
        return ConfigError(f"{parser.prog}: unexpected value(s) {' '.join(remaining)} (every value follows its flag)")
    parts = []
    for flag in flags:
        close = difflib.get_close_matches(flag.split("=")[0], known, n=1)
        parts.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
    return ConfigError(
        f"unknown flag{'s' if len(flags) > 1 else ''} {', '.join(parts)}; {parser.prog} --help lists them"
    )


def parse_config(config_class, argv: list[str]):
    """Dataclass from an optional YAML `--config FILE` with flags overriding it; unknown keys are errors."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(config_class)
    parser.add_argument(
        "--config", default=None, help="a YAML file whose keys are this command's fields, or a shipped one by name"
    )
    _tidy_help(parser, config_class)
    known = {f.name for f in dataclasses.fields(config_class)}
    given = _peek_config(argv)
    if given:
        path = config_path(given)  # a file, or a shipped config's name
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of field names to values")
        values = {key.replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        # argparse applies neither `type` nor `choices` checks to defaults it is not given as text (and a text
        # default outside a Literal's choices is a KeyError), so the YAML values are converted and checked here.
        try:
            values = coerce(config_class, values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        parser.set_defaults(**values)
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    cfg, remaining = parsed[0], parsed[-1]  # between them: a namespace holding --config
    if remaining:
        raise _unknown_flags_error(parser, remaining)
    return cfg


def read_yaml(path: str | Path):
    """A YAML file's value, or a one-line ConfigError naming the file, the line and what is wrong.

    Only plain YAML is read (`yaml.safe_load`): a tag such as `!!python/object` is refused, never run.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(f"{path}: cannot read it ({reason})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        if isinstance(error, yaml.constructor.ConstructorError) and "tag" in str(problem):
            problem = f"{problem} (hafrm reads plain YAML only: no tags)"
        context = getattr(error, "context", None)
        what = f"{context}: {problem}" if context and not problem.startswith(str(context)) else problem
        raise ConfigError(f"{path}: not valid YAML at {where}{what}".replace("\n", " ")) from None


def _peek_config(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


# Each settings class's command, for its usage line.
COMMAND_OF = {
    TrainConfig: "train",
    EvalConfig: "eval",
    ScoreConfig: "score",
    ExportConfig: "export",
    BonConfig: "bon",
    RlhfConfig: "rlhf",
    ServeConfig: "serve",
    StatsConfig: "data stats",
}
