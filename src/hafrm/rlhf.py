"""`hafrm rlhf`: train a policy with TRL's GRPO or RLOO trainer, a hafrm reward model as its reward.

    hafrm rlhf --reward runs/haf --prompts builtin:train --max-steps 50 --eval-steps 10 --output-dir runs/rlhf-haf
    hafrm rlhf --compare runs/rlhf-haf runs/rlhf-rm --output-dir runs/haf-vs-rm    # win rate over steps

The reward is the run's reward as every hafrm command reads it (`scoring.RewardModel`: the reward head,
a dpo run's implicit reward, or a 1-label classifier), normalised with the mean / std that `hafrm train` stored (`--no-normalize` for the raw score). TRL
does the rest: sampling `--num-generations` completions per prompt, group-relative (GRPO) or
leave-one-out (RLOO) advantages, and a KL penalty of weight `--beta` to the initial policy (the LoRA
model with its adapters off, or a frozen copy). Every `--eval-steps` steps (and before the first) the
policy answers the held-out `--eval-prompts` greedily; the oracle (built-in prompts) and the gold
reward model (`--gold-reward`) grade the answers. Output directory:

    eval/step-000010.jsonl   every held-out answer at that step, with its oracle and gold scores
    curve.jsonl              one line per evaluation: step, mean oracle score (95% interval), mean gold score
    curve.png                the same, plotted
    checkpoint-N/            TRL checkpoints (`--resume` continues from the newest); the final policy at the top
    rlhf.json                the settings, written last (a run that has it is finished)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .config import RlhfConfig
from .devices import on_cpu
from .fields import ConfigError
from .scoring import RewardModel, reward_kind

EVAL_DIR, CURVE = "eval", "curve.jsonl"


class RewardFunction:
    """TRL's reward-function interface over a hafrm reward model: (prompts, completions) -> one float each."""

    def __init__(self, directory: str, normalize: bool, max_length: int | None = None, batch_size: int = 16):
        self.model = RewardModel(directory, max_length, batch_size)
        self.model.serving = True  # new completions every step: a dpo run's base stays loaded, nothing cached on disk
        # loaded now, not at the first step: a load draws from the global RNG, which a resumed run must find as it was
        self.model.load()
        self.normalize = normalize and self.model.mean is not None and bool(self.model.std)
        if normalize and not self.normalize:
            print(f"note: {directory} stores no reward mean / std; the raw reward is used")
        self.__name__ = f"reward {Path(directory).name}"  # TRL logs each reward function under its name
        self.scored = self.truncated = 0  # items scored and items cut to max_length, over the run

    def __call__(self, prompts: list, completions: list, **_) -> list[float]:
        items = [
            (prompt, _completion_text(completion)) for prompt, completion in zip(prompts, completions, strict=True)
        ]
        values = self.model.score(items, normalize=self.normalize, desc="rewards")
        self.scored += len(items)
        self.truncated += self.model.truncated
        return values


def _completion_text(completion) -> str:
    """TRL gives a completion as text, or (conversational prompts) as a list with one assistant message."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def _prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _as_row(prompt, templated: bool) -> dict:
    if not templated:
        if not isinstance(prompt, str):
            raise ValueError("the policy has no chat template, but the prompts are chat messages")
        return {"prompt": prompt}
    return {"prompt": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt}


def _oracle_readable(prompts: list) -> bool:
    from .data.instructions import parse_constraints

    return all(isinstance(p, str) and parse_constraints(p) for p in prompts)


class PolicyEvaluation:
    """Greedy answers to the held-out prompts, graded by the oracle and the gold RM, written per step."""

    def __init__(self, cfg: RlhfConfig, prompts: list, gold):
        self.cfg, self.prompts, self.gold = cfg, prompts, gold
        self.oracle = _oracle_readable(prompts)
        self.directory = Path(cfg.output_dir)
        (self.directory / EVAL_DIR).mkdir(parents=True, exist_ok=True)

    def done_steps(self) -> set[int]:
        path = self.directory / CURVE
        if not path.is_file():
            return set()
        return {json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()}

    def __call__(self, model, tokenizer, step: int) -> dict | None:
        import torch

        from .data.collator import pad_rows
        from .sampling import prompt_ids
        from .selection import mean_interval

        if step in self.done_steps():
            return None
        was_training = model.training
        model.eval()
        answers = []
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for start in range(0, len(self.prompts), self.cfg.eval_batch_size):
            members = self.prompts[start : start + self.cfg.eval_batch_size]
            ids = [prompt_ids(tokenizer, prompt, start + i, self.cfg.policy) for i, prompt in enumerate(members)]
            batch = pad_rows(ids, [0] * len(ids), pad, "left")
            with torch.no_grad():
                output = model.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=self.cfg.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
            new = output[:, batch["input_ids"].shape[1] :]
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
        if was_training:
            model.train()
        records = [{"index": i, "prompt": p, "response": a} for i, (p, a) in enumerate(zip(self.prompts, answers))]
        point = {"step": step, "prompts": len(records)}
        if self.oracle:
            from .data.instructions import check

            for record in records:
                record["oracle"] = check(record["prompt"], record["response"])
            point["oracle"] = mean_interval([r["oracle"] for r in records])
        if self.gold is not None:
            gold = self.gold.score([(r["prompt"], r["response"]) for r in records], desc="gold rewards")
            for record, value in zip(records, gold):
                record["gold"] = value
            point["gold"] = mean_interval(gold)
        path = self.directory / EVAL_DIR / f"step-{step:06d}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        with (self.directory / CURVE).open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        shown = "  ".join(f"{k} {point[k]['mean']:.3f}" for k in ("oracle", "gold") if k in point)
        print(f"step {step}: held-out {shown}")
        return point


def _callback(evaluation: PolicyEvaluation, eval_steps: int):
    from transformers import TrainerCallback

    class Evaluate(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.is_world_process_zero:
                evaluation(model, processing_class, state.global_step)

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.is_world_process_zero and state.global_step % eval_steps == 0:
                evaluation(model, processing_class, state.global_step)

        def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.is_world_process_zero:
                evaluation(model, processing_class, state.global_step)

    return Evaluate()


def _policy(cfg: RlhfConfig):
    import torch
    from transformers import AutoModelForCausalLM

    from .sampling import policy_tokenizer

    path, tokenizer = policy_tokenizer(cfg.policy)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    peft_config = None
    if cfg.finetune == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    elif cfg.finetune == "freeze":
        from .finetune import _freeze_lower_blocks

        _freeze_lower_blocks(model, cfg.trainable_layers, uses_policy_head=True)
    return model, tokenizer, peft_config


def trainer_arguments(cfg: RlhfConfig):
    """GRPOConfig / RLOOConfig from the flags: a step takes `batch_size` prompts x `num_generations` completions."""
    from trl import GRPOConfig, RLOOConfig

    config_class = GRPOConfig if cfg.algorithm == "grpo" else RLOOConfig
    return config_class(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.batch_size * cfg.num_generations,
        gradient_accumulation_steps=1,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        beta=cfg.beta,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        use_cpu=on_cpu(),
        report_to=[] if cfg.report_to == "none" else cfg.report_to.split(","),
        disable_dropout=True,
        activation_checkpointing=False,  # TRL turns it on by default; a 135M policy fits without, and steps are faster
        log_completions=False,
        shuffle_dataset=True,
    )


def check_settings(cfg: RlhfConfig) -> None:
    if not cfg.reward:
        raise ValueError("--reward DIR is required: the reward model the policy is trained against")
    reward_kind(cfg.reward)
    if cfg.gold_reward:
        reward_kind(cfg.gold_reward)
    for name in ("num_generations", "batch_size", "max_steps", "eval_steps", "max_new_tokens"):
        if getattr(cfg, name) < (2 if name == "num_generations" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be at least {2 if name == 'num_generations' else 1}, "
                             f"got {getattr(cfg, name)}")  # fmt: skip


def run_rlhf(cfg: RlhfConfig) -> list[dict]:
    """Train (or resume) a policy; -> the evaluation curve."""
    import datasets

    from .sampling import read_prompts

    if cfg.compare:
        return compare(cfg.compare, cfg.output_dir)
    check_settings(cfg)
    directory = Path(cfg.output_dir)
    if (directory / "rlhf.json").is_file():
        print(f"{directory} holds a finished rlhf run; its curve is {directory / CURVE}")
        return read_curve(directory)
    prompts = read_prompts(cfg.prompts, cfg.limit)
    eval_prompts = read_prompts(cfg.eval_prompts, cfg.eval_limit)
    reward = RewardFunction(cfg.reward, cfg.normalize, cfg.max_length)
    gold = RewardModel(cfg.gold_reward, cfg.max_length).load() if cfg.gold_reward else None
    evaluation = PolicyEvaluation(cfg, eval_prompts, gold)
    if not evaluation.oracle and gold is None:
        raise ValueError(f"--eval-prompts {cfg.eval_prompts}: the oracle cannot grade them; give --gold-reward DIR")
    model, tokenizer, peft_config = _policy(cfg)
    templated = bool(tokenizer.chat_template)
    train_set = datasets.Dataset.from_list([_as_row(prompt, templated) for prompt in prompts])
    from trl import GRPOTrainer, RLOOTrainer

    trainer_class = GRPOTrainer if cfg.algorithm == "grpo" else RLOOTrainer
    trainer = trainer_class(
        model=model,
        reward_funcs=[reward],
        args=trainer_arguments(cfg),
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_callback(evaluation, cfg.eval_steps)],
    )
    resume = _resume_point(cfg, directory)
    if resume:
        print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    if reward.truncated:
        print(f"note: {reward.truncated} of {reward.scored} completions scored exceed {reward.model.max_length} tokens "
              "and were cut as training cuts them")  # fmt: skip
    trainer.save_model(cfg.output_dir)
    tokenizer.save_pretrained(cfg.output_dir)
    curve = read_curve(directory)
    write_curve_plot(directory, curve, f"{cfg.algorithm} with {Path(cfg.reward).name}")
    (directory / "rlhf.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return curve


def _resume_point(cfg: RlhfConfig, directory: Path) -> str | None:
    checkpoints = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if cfg.resume in (None, "", "none"):
        if checkpoints:
            raise ValueError(
                f"{directory} holds checkpoints of an unfinished run: pass --resume, or use another --output-dir"
            )
        return None
    if cfg.resume == "last":
        if not checkpoints:
            raise ValueError(f"--resume: no checkpoint-* in {directory}")
        return str(checkpoints[-1])
    return cfg.resume


def read_curve(directory: Path) -> list[dict]:
    path = Path(directory) / CURVE
    points = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                point = json.loads(line)
                points[point["step"]] = point
    return [points[step] for step in sorted(points)]


def write_curve_plot(directory: Path, curve: list[dict], title: str) -> None:
    from . import plots

    series = {
        f"{key} (held-out)": [(p["step"], p[key]["mean"], p[key]["ci95"]) for p in curve if key in p]
        for key in ("oracle", "gold")
        if any(key in p for p in curve)
    }
    if series:
        plots.curve_plot(series, directory / "curve.png", title, "training step", "mean score of greedy answers",
                         limits=(0.0, 1.0) if all(key.startswith("oracle") for key in series) else None)  # fmt: skip


def compare(directories: list[str], output_dir: str | None = None) -> list[dict]:
    """Win rate of policy A over policy B by the oracle at every step both evaluated (Figure 5)."""
    from .selection import head_to_head

    if len(directories) != 2:
        raise ConfigError(f"--compare takes two rlhf output directories, got {len(directories)}")
    a, b = (Path(d) for d in directories)
    steps_a = {int(p.stem.split("-")[1]): p for p in (a / EVAL_DIR).glob("step-*.jsonl")}
    steps_b = {int(p.stem.split("-")[1]): p for p in (b / EVAL_DIR).glob("step-*.jsonl")}
    common = sorted(set(steps_a) & set(steps_b))
    if not common:
        raise ValueError(f"{a} and {b} share no evaluated step (eval/step-*.jsonl)")
    points = []
    for step in common:
        ra = [json.loads(line) for line in steps_a[step].read_text().splitlines()]
        rb = [json.loads(line) for line in steps_b[step].read_text().splitlines()]
        if [r["prompt"] for r in ra] != [r["prompt"] for r in rb]:
            raise ValueError(f"step {step}: {a} and {b} were evaluated on different prompts")
        if "oracle" not in ra[0]:
            raise ValueError(f"{a}: its held-out prompts have no oracle grades")
        judge = [[x["oracle"], y["oracle"]] for x, y in zip(ra, rb)]
        match = head_to_head(judge, [0] * len(judge), [1] * len(judge))
        points.append({"step": step, **{k: match[k] for k in ("wins", "ties", "losses", "win_rate", "ci95")}})
        print(f"step {step}: {a.name} vs {b.name}: {match['wins']} / {match['ties']} / {match['losses']}, "
              f"win rate {match['win_rate']:.3f} [{match['ci95'][0]:.3f}, {match['ci95'][1]:.3f}]")  # fmt: skip
    if output_dir:
        from . import plots

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps({"a": str(a), "b": str(b), "points": points}, indent=2) + "\n")
        series = {f"{a.name} over {b.name}": [(p["step"], p["win_rate"], p["ci95"]) for p in points]}
        plots.curve_plot(series, out / "win-rate.png", f"Oracle win rate of {a.name} over {b.name}",
                         "training step", "win rate (ties count half)", reference=0.5, reference_label="even (0.5)",
                         limits=(0.0, 1.0))  # fmt: skip
    return points
