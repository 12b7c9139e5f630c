"""The model card (README.md) of every hafrm output directory: hub metadata, what was trained and on what, its
figures with intervals, and the code that loads this very run in hafrm, transformers, TRL and OpenRLHF.

    write_model_card("runs/haf")                 # from its hafrm.json, tokenizer and adapter files
    record_evaluation("runs/haf", "builtin:test", report)   # `hafrm eval` adds its figures, and the card follows

Everything on the card comes from the run record (`hafrm.json`): the card is rewritten whenever the record
gains figures, so the two never disagree. The loading code depends on the run: a full directory loads in
one call everywhere; a LoRA run loads in transformers through its peft integration (with one more
embedding row where hafrm added the pad token) and in TRL / OpenRLHF once merged by `hafrm export`; GRM's
MLP head (`--reward-head-type mlp`) and a dpo run's implicit reward are read by hafrm only.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import __version__
from .data.sources import SOURCES
from .metrics import wilson_interval
from .runrecord import read_run_record, update_run_record
from .writes import atomic_write_text

CARD = "README.md"
METHODS = {
    "rm": "the plain reward model: Bradley-Terry loss on the reward head only (α = 0)",
    "dpo": "DPO used as a reward model: the reward is the implicit β·(log π − log π_ref); no reward head",
    "haf": "HAF: Bradley-Terry on the reward head + α · {policy_loss} on the policy head, one shared trunk",
}


def _is_lora(directory: Path) -> bool:
    return (directory / "adapter_config.json").is_file()


def _hub_datasets(data: str) -> list[str]:
    """The hub ids of the named sources a --data value reads (local files and the built-in set have none)."""
    ids = []
    for item in str(data).split(","):
        name = item.split(":")[0].strip()
        if name in SOURCES and SOURCES[name].on_hub and SOURCES[name].hub_id not in ids:
            ids.append(SOURCES[name].hub_id)
    return ids


def card_metadata(record: dict, lora: bool) -> dict:
    """The YAML front matter the hub reads."""
    metadata = {
        "library_name": "peft" if lora else "transformers",
        "pipeline_tag": "text-classification" if record["reward_head"] else "text-generation",
        "base_model": record["base_model"],
        "tags": ["hafrm", "reward-model", "haf-rm", f"hafrm-{record['method']}"],
    }
    datasets = _hub_datasets(record.get("data", ""))
    if datasets:
        metadata["datasets"] = datasets
    return metadata


def _render(tokenizer_has_template: bool) -> list[str]:
    if tokenizer_has_template:
        return [
            'messages = [{"role": "user", "content": "What is a kite?"}, '
            '{"role": "assistant", "content": "A toy that flies on a string."}]',
            "text = tokenizer.apply_chat_template(messages, tokenize=False)  # prompt + reply, rendered",
            'reward = model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()',
        ]
    return [  # a template-free tokenizer: plain text, tokenised with its defaults (docs/checkpoints.md, rule 2)
        'prompt, response = "What is a kite?", " A toy that flies on a string."',
        'reward = model(**tokenizer(prompt + response, return_tensors="pt")).logits[0, 0].item()',
    ]


def lora_loading_lines(directory: Path, run: str, tokenizer) -> tuple[list[str], str, str]:
    """(the code that loads a LoRA run as a 1-label classifier in transformers, the case it is in words, the base).

    Two cases: the pad token is one the base model's embeddings hold (the tokenizer's own, or a reserved token),
    and transformers' peft integration loads the run in one call; or hafrm added the pad (SmolLM2, Mistral), and
    the base model needs one more embedding row before the adapter loads. That row only ever meets padding, which
    no reward reads, so how it is initialised does not change a reward.
    """
    from transformers import AutoConfig

    base = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
    rows = AutoConfig.from_pretrained(base).get_text_config().vocab_size
    lines = [
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f"run, base = {run!r}, {base!r}",
        "tokenizer = AutoTokenizer.from_pretrained(run)",
    ]
    if tokenizer.pad_token_id >= rows:
        lines += [
            "model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)",
            f"model.resize_token_embeddings(len(tokenizer))  # the row of the pad token hafrm added ({tokenizer.pad_token!r})",
            "model.config.pad_token_id = tokenizer.pad_token_id",
            "model.load_adapter(run)  # LoRA adapters and the trained head `score` (transformers' peft integration)",
            "model.eval()",
        ]  # fmt: skip
        case = (
            f"hafrm added the pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) to the base model's "
            f"{rows} embedding rows, so the base model gets one more row before the adapter loads"
        )
    else:
        lines += [
            "model = AutoModelForSequenceClassification.from_pretrained(",
            "    run, num_labels=1, pad_token_id=tokenizer.pad_token_id",
            ").eval()  # the base model, then the adapter with the trained head `score` (transformers' peft integration)",
        ]  # fmt: skip
        case = (
            f"the pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) is one the base model already holds"
        )
    return lines, case, base


def loading_code(directory: Path, shown_as: str, record: dict) -> dict[str, str]:
    """{reader: code} that loads this run as a reward model: hafrm always; transformers, TRL and OpenRLHF where
    they can read it (directly, or after `hafrm export`)."""
    from transformers import AutoTokenizer

    run = shown_as
    code = {
        "hafrm": "\n".join([
            "from hafrm import RewardModel",
            "",
            f"reward = RewardModel({run!r})",
            'print(reward.score([("What is a kite?", "A toy that flies on a string.")]))  # one float per item',
        ])
    }  # fmt: skip
    if not record["reward_head"] or record.get("reward_head_type", "linear") == "mlp":
        return code  # the implicit reward, or GRM's MLP head: hafrm's readers only
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    rendered = _render(bool(tokenizer.chat_template))
    header = ["from transformers import AutoModelForSequenceClassification, AutoTokenizer", ""]
    if _is_lora(directory):
        lines, _, _ = lora_loading_lines(directory, run, tokenizer)
        merged = f"{run}-merged"  # TRL and OpenRLHF read full directories: `hafrm export` merges the adapters
        code["transformers"] = "\n".join([*lines, "", *rendered])
        code["trl"] = "\n".join(_trl_lines(merged))
        code["openrlhf"] = "\n".join(_openrlhf_lines(merged))
        return code
    lines = [*header, f"tokenizer = AutoTokenizer.from_pretrained({run!r})",
             f"model = AutoModelForSequenceClassification.from_pretrained({run!r}).eval()"]  # fmt: skip
    code["transformers"] = "\n".join([*lines, "", *rendered])
    code["trl"] = "\n".join(_trl_lines(run))
    code["openrlhf"] = "\n".join(_openrlhf_lines(run))
    return code


def _trl_lines(run: str) -> list[str]:
    return [
        "# TRL reads a reward model given by its path as AutoModelForSequenceClassification(num_labels=1)",
        "from trl import GRPOConfig, GRPOTrainer",
        "",
        f"trainer = GRPOTrainer(model=POLICY, reward_funcs={run!r}, args=GRPOConfig(...), train_dataset=PROMPTS)",
    ]


def _openrlhf_lines(run: str) -> list[str]:
    return [
        "# OpenRLHF: the reward head is `score` (config.json value_head_prefix); mean / std normalise it",
        f"deepspeed --module openrlhf.cli.train_ppo --reward_pretrain {run} --value_head_prefix score "
        "--normalize_reward ...",
    ]


def _budget(record: dict) -> str:
    length = f"{record['max_steps']} steps" if record.get("max_steps", -1) > 0 else f"{record.get('epochs')} epoch(s)"
    return (
        f"{length}, batch {record.get('batch_size')} × {record.get('grad_accum', 1)} accumulation, "
        f"lr {record.get('lr')} ({record.get('lr_scheduler')}), max length {record.get('max_length')}, "
        f"seed {record.get('seed')}"
    )


def _finetune(record: dict) -> str:
    kind = record.get("finetune")
    if kind == "lora":
        return (
            f"LoRA r {record.get('lora_r')}, α {record.get('lora_alpha')} on {record.get('lora_target_modules')}; "
            "the reward head trains in full"
        )
    if kind == "freeze":
        return f"the top {record.get('trainable_layers')} blocks and the heads train, the rest is frozen"
    if kind == "lora-merged":
        return "LoRA, merged into the base weights by `hafrm export`"
    return "full fine-tuning: every weight trains"


def _figure_rows(record: dict) -> list[str]:
    rows = []
    validation = record.get("validation")
    if validation:
        low, high = validation["ci95"]
        rows.append(
            f"| validation (the kept checkpoint) | {validation['pairs']} | {validation['accuracy']:.3f} "
            f"[{low:.3f}, {high:.3f}] |"
        )
    for data, figures in record.get("evaluations", {}).items():
        low, high = figures["ci95"]
        rows.append(
            f"| `{data}` ({figures['head']}) | {figures['pairs']} | {figures['accuracy']:.3f} [{low:.3f}, {high:.3f}] |"
        )
    return rows


def model_card(directory: Path, shown_as: str | None = None) -> str:
    """The card's text for the run in `directory` (named `shown_as` in its code: where it will live)."""
    import yaml

    record = read_run_record(directory)
    lora = _is_lora(directory)
    run = str(shown_as or directory)
    method = METHODS[record["method"]].format(policy_loss=record.get("policy_loss", "dpo"))
    head = record.get("reward_head_type", "linear")
    loss = (
        f"α = {record.get('alpha')}, β = {record.get('beta')}, policy loss `{record.get('policy_loss')}`"
        if record["method"] == "haf"
        else f"β = {record.get('beta')}"
        if record["method"] == "dpo"
        else "—"
    )
    validation = (
        f"`{record['eval_data']}`" if record.get("eval_data") else f"{record.get('val_fraction')} of the training data"
    )
    lines = [
        "---",
        yaml.safe_dump(card_metadata(record, lora), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {Path(run).name}: a reward model trained with hafrm",
        "",
        f"Trained with hafrm {record.get('hafrm_version', __version__)} from `{record['base_model']}`: {method}.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{record['method']}`; {loss} |",
        f"| reward head | {'none (implicit reward)' if not record['reward_head'] else f'`{head}`'} |",
        f"| data | `{record.get('data')}`"
        + (f" ({record['train_pairs']} training pairs)" if "train_pairs" in record else "")
        + " |",
        f"| validation | {validation} |",
        f"| fine-tuning | {_finetune(record)} |",
        f"| budget | {_budget(record)} |",
    ]
    figures = _figure_rows(record)
    if figures:
        lines += [
            "",
            "## Figures",
            "",
            "Pairwise accuracy (chosen scored strictly above rejected) with its 95% interval.",
            "",
            "| set | pairs | accuracy [95%] |",
            "|---|---|---|",
            *figures,
        ]
    lines += ["", "## Use", ""]
    code = loading_code(directory, run, record)
    titles = {"hafrm": "hafrm", "transformers": "transformers", "trl": "TRL", "openrlhf": "OpenRLHF"}
    if lora and "trl" in code:
        lines += [
            "TRL and OpenRLHF read full directories: merge the adapters first,",
            "",
            "```bash",
            f"hafrm export --model {run} --output-dir {run}-merged",
            "```",
            "",
        ]
    for reader, text in code.items():
        lines += [f"### {titles[reader]}", "", "```bash" if reader == "openrlhf" else "```python", text, "```", ""]
    if record["reward_head"] and head == "mlp":
        lines.append(
            "The reward head is GRM's MLP (`score.1.*`, `score.3.*`): transformers, TRL, RewardBench and OpenRLHF "
            "build a one-layer head instead, so this run is read by hafrm only."
        )
    elif not record["reward_head"]:
        lines.append("A dpo run's reward is β·(log π − log π_ref) against its base model: hafrm reads it.")
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(directory: str | Path, shown_as: str | Path | None = None) -> Path:
    """Write README.md into `directory` (over peft's empty template), from its run record."""
    directory = Path(directory)
    path = directory / CARD
    atomic_write_text(path, model_card(directory, str(shown_as) if shown_as else None))
    return path


def validation_figures(accuracy: float, pairs: int) -> dict:
    return {"accuracy": accuracy, "pairs": pairs, "ci95": list(wilson_interval(accuracy * pairs, pairs))}


def record_evaluation(directory: str | Path, data: str, report: dict) -> None:
    """Add an evaluation's headline figures to the run record and rewrite the card; skipped (with a note) where
    the directory cannot be written."""
    directory = Path(directory)
    head = "implicit_reward" if report["method"] == "dpo" else "reward_head"
    figures = report[head]
    entry = {"head": head.replace("_", " "), "pairs": report["pairs"], "accuracy": figures["accuracy"],
             "ci95": figures["ci95"]}  # fmt: skip
    record = read_run_record(directory, fill_in=False)
    try:
        update_run_record(directory, evaluations={**record.get("evaluations", {}), data: entry})
        write_model_card(directory)
    except OSError as error:
        print(f"note: {directory} is not writable ({error.strerror or error}): its card does not list {data}")
