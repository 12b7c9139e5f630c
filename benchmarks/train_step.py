"""Training step time and peak memory: hafrm rm / dpo / haf against TRL's RewardTrainer and DPOTrainer.

    python benchmarks/train_step.py                                  # default model, shared HH pairs, 8 x 256
    python benchmarks/train_step.py --modes full,freeze --rounds 3 --steps 3 --json bench.json

Every configuration runs in its own process (so peak memory is its own), on the same pairs (the first
ones that fit --max-length untruncated), with the same batch, length, dtype, optimizer and seed;
`--warmup` steps are run and dropped, then `--steps` steps are timed. Every other round runs the
configurations in reverse order. Every configuration draws the
same batches in the same order (the pairs in file order, sequential sampling), so a run's figure is
its mean time over those steps. Rounds alternate all configurations (hafrm, TRL, hafrm, ...) so that
drift of the machine hits all of them alike, and every ratio hafrm / TRL is taken within one round;
the table prints min / median / max over rounds.

Configurations: hafrm-{rm,dpo,haf}-{full,lora,freeze}[-padded][-unshared] (hafrm's defaults: packed rows,
each prompt run once; -padded: padded rows; -unshared: each prompt run twice); trl-reward-{mode}: RewardTrainer on
AutoModelForSequenceClassification; trl-dpo-{mode}: DPOTrainer with its default reference (a copy of
the model; adapters disabled under LoRA). Freeze trains the same top blocks in both libraries, LoRA
uses the same rank and targets.

Achieved FLOP/s counts the work each step performs (estimate, see docs/benchmarks.md) over its time,
read against the machine's best fp32 matmul rate measured here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StepTimer, default_data, matmul_peak_flops, select_pairs, spread, write_trl_file  # noqa: E402

METHODS = ("rm", "dpo", "haf")
TARGETS = [  # (hafrm config, TRL config, step-time bound, memory bound): performance round 2's targets
    ("hafrm-haf-{m}", "trl-reward-{m}", 0.60, 0.90),
    ("hafrm-dpo-{m}", "trl-dpo-{m}", 0.35, None),
    ("hafrm-rm-{m}", "trl-reward-{m}", 0.55, None),
]
VARIANTS = ("", "-unshared", "-padded", "-padded-unshared")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=None, help="preference file (default: the shared HH-harmless pairs)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="full", help="comma-separated: full, lora, freeze")
    parser.add_argument("--methods", default="rm,dpo,haf")
    parser.add_argument("--no-trl", action="store_true", help="hafrm configurations only")
    parser.add_argument("--trainable-layers", type=int, default=4, help="freeze mode: top blocks that train")
    parser.add_argument(
        "--gradient-checkpointing",
        choices=("on", "off"),
        default="on",
        help="for every configuration alike (on: TRL's default for both trainers; off: hafrm's default)",
    )
    parser.add_argument(
        "--packing",
        choices=("on", "off", "both"),
        default="on",
        help="hafrm's packed rows (its default; TRL pads) or padded rows like TRL's (configurations named *-padded)",
    )
    parser.add_argument(
        "--prompt-sharing",
        choices=("on", "off", "both"),
        default="on",
        help="hafrm runs each pair's prompt once (its default) or twice like TRL (configurations named *-unshared)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision for every configuration (GPUs)")
    parser.add_argument(
        "--trl-liger", action="store_true", help="also run TRL with Liger's fused kernels (configurations *-liger)"
    )
    parser.add_argument("--json", default=None, help="also write every measurement here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.trl_liger:
        from hafrm.extras import missing_extra

        problem = missing_extra("liger", "--trl-liger")
        if problem:
            parser.error(problem)
    return opts


# ---- one configuration, in its own process ----------------------------------------------------


def freeze_like_hafrm(model, trainable_layers: int) -> None:
    from types import SimpleNamespace

    from hafrm.finetune import prepare_finetuning

    cfg = SimpleNamespace(finetune="freeze", trainable_layers=trainable_layers, gradient_checkpointing=False)
    prepare_finetuning(model, cfg, uses_policy_head=not hasattr(model, "score"))


def lora_config(task_type: str, with_score: bool):
    from peft import LoraConfig

    from hafrm.config import TrainConfig

    defaults = TrainConfig()
    return LoraConfig(
        r=defaults.lora_r,
        lora_alpha=defaults.lora_alpha,
        lora_dropout=defaults.lora_dropout,
        target_modules="all-linear",
        exclude_modules=["score"] if with_score else None,
        modules_to_save=["score"] if with_score else None,
        task_type=task_type,
    )


def run_hafrm(
    opts, method: str, mode: str, output_dir: str, timer: StepTimer, packing: bool = True, sharing: bool = True
) -> None:
    from hafrm.config import TrainConfig
    from hafrm.train import train

    cfg = TrainConfig(
        model=opts.model,
        data=opts.pairs_file,
        method=method,
        finetune=mode,
        trainable_layers=opts.trainable_layers,
        max_length=opts.max_length,
        batch_size=opts.batch_size,
        max_steps=opts.warmup + opts.steps,
        val_fraction=0.0,
        eval_steps=10**6,
        logging_steps=10**6,
        lr=1e-5 if mode == "full" else 1e-4,
        gradient_checkpointing=opts.gradient_checkpointing == "on",
        sampling="sequential",
        packing=packing,
        prompt_sharing=sharing,
        bf16=opts.bf16,
        output_dir=output_dir,
    )
    train(cfg, callbacks=[timer])


def trl_common(opts, mode: str, output_dir: str) -> dict:
    from hafrm.train import on_cpu

    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=opts.batch_size,
        max_steps=opts.warmup + opts.steps,
        max_length=opts.max_length,
        learning_rate=1e-5 if mode == "full" else 1e-4,
        lr_scheduler_type="linear",
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=on_cpu(),
        bf16=opts.bf16,
        seed=42,
        dataloader_pin_memory=False,
        gradient_checkpointing=opts.gradient_checkpointing == "on",
        train_sampling_strategy="sequential",
    )


def run_trl(opts, trainer_kind: str, mode: str, output_dir: str, timer: StepTimer, liger: bool = False) -> None:
    import copy

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hafrm.checkpoint import fit_embeddings, load_tokenizer
    from hafrm.default_model import resolve_model_path

    path = resolve_model_path(opts.model)
    tokenizer = load_tokenizer(opts.model)
    data = datasets.load_dataset("json", data_files=opts.pairs_file, split="train")
    peft_config = None
    if trainer_kind == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        if mode == "lora":
            peft_config = lora_config("SEQ_CLS", with_score=True)
        args, trainer_cls = RewardConfig(**trl_common(opts, mode, output_dir), use_liger_kernel=liger), RewardTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if mode == "lora":
            peft_config = lora_config("CAUSAL_LM", with_score=False)
        args = DPOConfig(**trl_common(opts, mode, output_dir), beta=0.1, use_liger_kernel=liger)
        trainer_cls = DPOTrainer
    fit_embeddings(model, tokenizer)  # the same pad token (and, where added, embedding row) as hafrm's model
    extra = {}
    if trainer_kind != "reward" and mode != "lora":
        # what DPOTrainer would load from the path itself, but with the embedding row hafrm's pad token needs
        extra["ref_model"] = copy.deepcopy(model).eval().requires_grad_(False)
    if mode == "freeze":
        freeze_like_hafrm(model, opts.trainable_layers)
    trainer = trainer_cls(
        model=model,
        **extra,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    if len(trainer.train_dataset) != len(data):
        raise SystemExit(f"TRL kept {len(trainer.train_dataset)} of {len(data)} pairs: the runs would not compare")
    trainer.train()


def worker(opts) -> None:
    """Run one configuration and print one JSON line of measurements."""
    import time

    started = time.perf_counter()
    timer = StepTimer()
    library, kind, mode, *variant = opts.worker.split("-")
    with tempfile.TemporaryDirectory() as output_dir:
        if library == "hafrm":
            run_hafrm(opts, kind, mode, output_dir, timer, "padded" not in variant, "unshared" not in variant)
        else:
            run_trl(opts, kind, mode, output_dir, timer, liger="liger" in variant)
    timed = timer.step_seconds[opts.warmup :]
    result = {
        "config": opts.worker,
        "step_seconds": timed,
        "mean_step_seconds": statistics.fmean(timed),
        "peak_gb": timer.peak_bytes / 2**30,
        "total_seconds": time.perf_counter() - started,
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---- the driver -----------------------------------------------------------------------------


def step_flops(config: str, model_config, pairs_report: dict, steps: int, opts) -> float:
    """Estimated FLOPs one step performs (the accounting is spelled out in docs/benchmarks.md)."""
    text = model_config.get_text_config()
    hidden, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    block_params = (decoder_params(text) - vocab * hidden) / layers  # embeddings left out
    tokens = pairs_report["tokens"] / steps  # real tokens per step, chosen + rejected
    response = pairs_report["response_tokens"] / steps
    library, kind, mode, *variant = config.split("-")
    if library == "hafrm" and "unshared" not in variant:  # each prompt runs once
        tokens -= (tokens - response) / 2
    trained_share = opts.trainable_layers / layers if mode == "freeze" else 1.0
    checkpointing = opts.gradient_checkpointing == "on"
    trunk = 2 * block_params * layers * tokens  # one forward pass
    # backward: 2x forward through trained blocks (activation + weight gradients); LoRA needs the
    # activation gradients only (~1x); checkpointing recomputes the forward of blocks backward reaches.
    backward = {"full": 2.0, "lora": 1.0, "freeze": 2.0 * trained_share}[mode]
    total = trunk * (1 + backward + (trained_share if checkpointing else 0))
    if kind in ("dpo", "haf"):
        head_trains = mode == "full"  # SmolLM2 ties lm_head to the embeddings: frozen under lora / freeze
        if library == "hafrm":  # response tokens only
            head = 2 * hidden * vocab * response
            # frozen head: logits + the prepared backward product; trainable: logits, backward (2),
            # and the per-chunk recompute under checkpointing
            total += head * (2 if not head_trains else 3 + checkpointing)
        else:  # TRL's DPOTrainer: every position, and a reference forward pass each step
            head = 2 * hidden * vocab * tokens
            total += head * (3 if head_trains else 2) + trunk + head
    return total


def decoder_params(text_config) -> float:
    """Parameter count of a Llama-style decoder from its config (untied embeddings counted once)."""
    hidden, inter, layers = text_config.hidden_size, text_config.intermediate_size, text_config.num_hidden_layers
    heads, kv_heads = text_config.num_attention_heads, getattr(text_config, "num_key_value_heads", None)
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    kv = (kv_heads or heads) * head_dim
    attention = hidden * heads * head_dim * 2 + hidden * kv * 2
    return layers * (attention + 3 * hidden * inter) + text_config.vocab_size * hidden


def configurations(opts) -> list[str]:
    modes = [m.strip() for m in opts.modes.split(",")]
    methods = [m.strip() for m in opts.methods.split(",")]
    packing = {"on": [""], "off": ["-padded"], "both": ["", "-padded"]}[opts.packing]
    sharing = {"on": [""], "off": ["-unshared"], "both": ["", "-unshared"]}[opts.prompt_sharing]
    configs = []
    for mode in modes:
        for pack, share in itertools.product(packing, sharing):
            configs += [f"hafrm-{method}-{mode}{pack}{share}" for method in methods]
        if not opts.no_trl:
            configs += [f"trl-reward-{mode}", f"trl-dpo-{mode}"]
            if opts.trl_liger:
                configs += [f"trl-reward-{mode}-liger", f"trl-dpo-{mode}-liger"]
    return configs


def run_worker(opts, config: str) -> dict:
    command = [sys.executable, __file__, "--worker", config, "--pairs-file", opts.pairs_file]
    for flag in ("model", "batch_size", "max_length", "warmup", "steps", "trainable_layers", "gradient_checkpointing"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(opts, flag))]
    command += ["--bf16"] if opts.bf16 else []
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{config} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> None:
    opts = parse_args(argv)
    if opts.worker:
        return worker(opts)
    import torch
    from transformers import AutoConfig

    from hafrm.checkpoint import load_tokenizer
    from hafrm.default_model import resolve_model_path

    tokenizer = load_tokenizer(opts.model)
    total_steps = opts.warmup + opts.steps
    pairs, report = select_pairs(opts.data or default_data(), tokenizer, opts.max_length, opts.batch_size * total_steps)
    with tempfile.TemporaryDirectory(prefix="hafrm-bench-") as workdir:
        opts.pairs_file = str(write_trl_file(pairs, Path(workdir) / "pairs.jsonl"))
        peak = matmul_peak_flops()
        model_config = AutoConfig.from_pretrained(resolve_model_path(opts.model))
        print(
            f"model {opts.model}; {report['kept']} pairs ({report['fitting']} of {report['read']} fit {opts.max_length} "
            f"tokens); batch {opts.batch_size} pairs; {opts.warmup} warm-up + {opts.steps} timed steps; "
            f"{opts.rounds} rounds; {'bf16' if opts.bf16 else 'fp32'}; gradient checkpointing {opts.gradient_checkpointing}; hafrm packing "
            f"{opts.packing}, prompt sharing {opts.prompt_sharing}; threads "
            f"{torch.get_num_threads()}; matmul peak {peak / 1e9:.1f} GFLOP/s",
            flush=True,
        )
        configs = configurations(opts)
        rounds: list[dict[str, dict]] = []
        for index in range(opts.rounds):
            results = {}
            # odd rounds run the configurations in reverse, so no one always goes first (or after TRL's DPO)
            for config in configs if index % 2 == 0 else configs[::-1]:
                results[config] = run_worker(opts, config)
                print(
                    f"  round {index + 1} {config:<24} step {results[config]['mean_step_seconds']:7.2f} s  "
                    f"peak {results[config]['peak_gb']:6.2f} GB",
                    flush=True,
                )
            rounds.append(results)
        print_table(opts, configs, rounds, report, model_config, peak, total_steps)
        if opts.json:
            Path(opts.json).write_text(
                json.dumps({"options": vars(opts), "pairs": report, "peak_flops": peak, "rounds": rounds}, indent=2)
            )


def print_table(opts, configs, rounds, report, model_config, peak, total_steps) -> None:
    print(
        f"\n{'configuration':<24} {'step s (min/med/max)':>24} {'peak GB (min/med/max)':>24} {'GFLOP/s':>8} {'of peak':>7}"
    )
    for config in configs:
        steps = [r[config]["mean_step_seconds"] for r in rounds]
        memory = [r[config]["peak_gb"] for r in rounds]
        flops = step_flops(config, model_config, report, total_steps, opts) / statistics.median(steps)
        print(f"{config:<24} {spread(steps):>24} {spread(memory):>24} {flops / 1e9:8.1f} {flops / peak:7.1%}")
    if opts.no_trl:
        return
    print(f"\n{'ratio (hafrm / TRL)':<44} {'step time':>20} {'target':>7} {'peak memory':>20} {'target':>7}")
    for mode in [m.strip() for m in opts.modes.split(",")]:
        for (ours, theirs, time_bound, memory_bound), suffix in itertools.product(TARGETS, VARIANTS):
            ours, theirs = ours.format(m=mode) + suffix, theirs.format(m=mode)
            if ours not in configs:
                continue
            times = [r[ours]["mean_step_seconds"] / r[theirs]["mean_step_seconds"] for r in rounds]
            memory = [r[ours]["peak_gb"] / r[theirs]["peak_gb"] for r in rounds]
            verdict = "ok" if statistics.median(times) <= time_bound else "MISSED"
            mem_bound = f"{memory_bound:.2f}" if memory_bound else "-"
            if memory_bound and statistics.median(memory) > memory_bound:
                verdict += " (memory MISSED)"
            print(
                f"{ours + ' / ' + theirs:<44} {spread(times):>20} {time_bound:7.2f} {spread(memory):>20} {mem_bound:>7}  {verdict}"
            )


if __name__ == "__main__":
    main()
