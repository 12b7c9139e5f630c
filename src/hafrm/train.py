"""`hafrm train`: load, tokenise, precompute the reference, fine-tune, keep the best checkpoint.

from hafrm.config import TrainConfig
from hafrm.train import train
summary = train(TrainConfig(data="pairs.jsonl", method="haf", finetune="lora", max_steps=100))
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import TrainingArguments, set_seed

from .checkpoint import load_base_model, update_config_json
from .config import TrainConfig
from .data import BUILTIN, PairCollator, load_data, split_validation, tokenize_pairs, write_skipped_rows
from .data.load import has_split, parse_spec
from .devices import on_cpu
from .finetune import prepare_finetuning
from .guard import NumericalGuard, TrainingStopped
from .layout import LAYOUT_TOLERANCE, layout_tolerance, packing_error, sharing_error
from .modelcard import validation_figures, write_model_card
from .objective import Objective
from .prefix_cache import FrozenPrefixCache, cache_error
from .reference import add_reference_logps, dataset_fingerprint, model_fingerprint
from .rundir import FINAL_PARTIAL, RunDirectory, RunDirectoryError, move_into_place, refused_files_message
from .runrecord import build_run_record, update_run_record
from .trainer import EpochTimer, HybridTrainer, saved_bytes
from .writes import writing

logger = logging.getLogger(__name__)
PACKING_TOLERANCE = SHARING_TOLERANCE = LAYOUT_TOLERANCE
SKIPPED_ROWS = "skipped-rows.jsonl"


def engines_ignored() -> list[str]:
    """Sharding engines an `accelerate launch` config asked for that accelerate drops on a CPU-only machine.

    There accelerate runs FSDP and DeepSpeed configs as plain data parallel (DDP on gloo) without a word.
    """
    if not on_cpu():
        return []
    asked = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}
    return [name for name, variable in asked.items() if os.environ.get(variable, "").lower() == "true"]


def say(*args) -> None:
    """print, once per run: on the main process only when several processes train together."""
    if PartialState().is_main_process:
        print(*args)


def objective_from(cfg: TrainConfig) -> Objective:
    if cfg.reference == "adapters" and cfg.finetune != "lora":
        raise ValueError("--reference adapters needs --finetune lora (the reference is the model with adapters off)")
    return Objective(
        method=cfg.method,
        alpha=cfg.alpha,
        beta=cfg.beta,
        policy_loss=cfg.policy_loss,
        simpo_gamma=cfg.simpo_gamma,
        center_rewards_coef=cfg.center_rewards_coef,
        reference=cfg.reference,
    )


def _validation_pairs(cfg: TrainConfig, train_pairs: list):
    """-> (train pairs, validation pairs or None, where validation came from, the validation load reports)."""
    load = dict(fmt=cfg.format, skip_bad_rows=cfg.skip_bad_rows, seed=cfg.seed)
    if cfg.eval_data:
        pairs, reports = load_data(cfg.eval_data, default_split="validation", **load)
        return train_pairs, pairs, "; ".join(r.summary() for r in reports), reports
    items = parse_spec(cfg.data or BUILTIN)
    if len(items) == 1 and items[0].split is None and has_split(items[0].target, "validation"):
        pairs, reports = load_data(f"{items[0].target}:validation", **load)
        return train_pairs, pairs, reports[0].summary(), reports
    if cfg.val_fraction > 0:
        seed = cfg.seed if cfg.val_seed is None else cfg.val_seed
        train_pairs, pairs = split_validation(train_pairs, cfg.val_fraction, seed)
        return train_pairs, pairs, f"{cfg.val_fraction:.0%} of the training pairs, seed {seed}", []
    return train_pairs, None, "", []


def validation_pairs(cfg: TrainConfig) -> list | None:
    """The validation pairs a run with this config trains against (rebuilt the same way, for evaluation)."""
    train_pairs, _ = load_data(cfg.data or BUILTIN, cfg.format, cfg.skip_bad_rows, "train", cfg.mixture, cfg.seed)
    return _validation_pairs(cfg, train_pairs)[1]


def load_datasets(cfg: TrainConfig, tokenizer):
    """-> (train set, validation set or None), each tokenised, with loading and truncation reported.

    Rows left out by --skip-bad-rows are listed, every one, in output_dir/skipped-rows.jsonl.
    """
    train_pairs, reports = load_data(cfg.data or BUILTIN, cfg.format, cfg.skip_bad_rows, "train", cfg.mixture, cfg.seed)
    for report in reports:
        say(f"train data {report.summary()}")
    train_pairs, eval_pairs, eval_origin, eval_reports = _validation_pairs(cfg, train_pairs)
    if any(report.skipped for report in reports + eval_reports) and PartialState().is_main_process:
        path = Path(cfg.output_dir) / SKIPPED_ROWS
        say(f"skipped rows: {write_skipped_rows(reports + eval_reports, path)} listed in {path}")
    train_set, truncation = tokenize_pairs(train_pairs, tokenizer, cfg.max_length)
    say(f"train tokens: {truncation.summary()}")
    warning = truncation.warning(cfg.max_length)
    if warning:
        say(warning)
    eval_set = None
    if eval_pairs:
        eval_set, truncation = tokenize_pairs(eval_pairs, tokenizer, cfg.max_length)
        say(f"validation data {eval_origin}\nvalidation tokens: {truncation.summary()}")
    return train_set, eval_set


def training_arguments(cfg: TrainConfig, has_eval: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        train_sampling_strategy=cfg.sampling,
        length_column_name="length",  # the longer side of each pair, written by tokenize_pairs
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        eval_on_start=has_eval and cfg.eval_on_start,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        # With validation, Trainer keeps the best checkpoint apart from the rotation; at least two
        # slots keep the newest one too, so that --resume continues from where the run stopped.
        save_total_limit=max(cfg.save_total_limit, 2) if has_eval else cfg.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        bf16=cfg.bf16,
        use_cpu=on_cpu(),
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=[] if cfg.report_to == "none" else cfg.report_to.split(","),
        logging_nan_inf_filter=False,  # a non-finite loss is shown as it is (and stops the run: hafrm.guard)
    )


def summarise(trainer: HybridTrainer) -> dict:
    """Validation accuracy before training and at the kept checkpoint."""
    evals = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    summary = {"best_checkpoint": trainer.state.best_model_checkpoint, "best_accuracy": trainer.state.best_metric}
    if evals:
        summary["start"] = {k: v for k, v in evals[0].items() if k.startswith("eval_")}
        summary["final"] = {k: v for k, v in evals[-1].items() if k.startswith("eval_")}
    return summary


def packing_matches_padded(model, row: dict, objective: Objective) -> bool:
    """Whether packed rows give this model's padded results (checked on one pair); says so when not."""
    return _layout_matches_padded(
        model,
        row,
        objective,
        packing_error,
        "packing",
        "two sequences packed in one row",
        "packed rows",
        "its attention does not keep packed sequences apart, so batches are padded",
    )


def shared_prompt_matches_padded(model, row: dict, objective: Objective) -> bool:
    """Whether a pair run with its prompt shared gives this model's padded results (checked on one pair);
    says so when not. (`hafrm.model.sharing_holds` is scoring's cached, silent check of shared-prompt rows.)"""
    return _layout_matches_padded(
        model,
        row,
        objective,
        sharing_error,
        "prompt sharing",
        "a pair with its prompt shared",
        "shared-prompt rows",
        "its attention ignores the shared-rows mask, so each prompt runs twice",
    )


def _layout_matches_padded(model, row, objective, error_of, what, laid_out, rows_name, consequence) -> bool:
    name = type(model).__name__
    try:
        error = error_of(
            model,
            row["chosen_input_ids"],
            row["rejected_input_ids"],
            row["prompt_length"],
            need_rewards=objective.uses_reward_head,
            need_logps=objective.uses_policy_head,
        )
    except Exception as exc:  # a model that cannot run without an attention mask, with restarting positions, a 4-D mask
        fallback = "batches are padded" if what == "packing" else "each prompt runs twice"
        say(f"note: {what} off: {name} failed on {rows_name} ({type(exc).__name__}: {exc}), so {fallback}")
        return False
    if error <= layout_tolerance(model):
        return True
    say(
        f"note: {what} off: {name} scores {laid_out} differently from padded (relative difference {error:.2g}); {consequence}"
    )
    return False


def train(cfg: TrainConfig, callbacks: list | None = None) -> dict:
    """Run one training job; `callbacks` are extra `transformers.TrainerCallback`s (timers, trackers).

    The output directory is locked for the run (`hafrm.rundir`); training stops with `TrainingStopped`
    at the first non-finite loss, gradient norm, reward or weight (`hafrm.guard`).
    """
    state = PartialState(cpu=on_cpu())
    run_dir = RunDirectory(cfg.output_dir)
    # One process holds the lock; under `accelerate launch` the others follow the main process.
    existed = run_dir.path.exists()
    try:
        with run_dir.hold() if state.is_main_process else contextlib.nullcontext():
            if state.is_main_process:
                for note in run_dir.prepare(cfg.resume, cfg.overwrite):
                    say(note)
            before = run_dir.entries()
            try:
                return _train(cfg, run_dir, state, callbacks)
            except BaseException:
                if state.is_main_process:  # failed before anything was saved: leave the directory as it was
                    run_dir.undo_unstarted(before)
                raise
    except BaseException:
        if state.is_main_process and not existed and run_dir.path.is_dir() and not any(run_dir.path.iterdir()):
            run_dir.path.rmdir()  # it was made for this run, which left nothing in it
        raise


def data_fingerprint(dataset) -> str:
    """Token ids, prompt lengths and margins of a tokenised set: what a resumed run must train on again."""
    margins = dataset["margin"] if "margin" in dataset.column_names else []
    return hashlib.sha256(f"{dataset_fingerprint(dataset)}|{margins}".encode()).hexdigest()[:16]


def run_record(cfg: TrainConfig, objective: Objective, model, tokenizer, train_set, eval_set) -> dict:
    """The run record (`hafrm.runrecord`), with fingerprints of the base weights, the tokenizer's pad and the data."""
    fingerprints = {
        "base_weights": model_fingerprint(model),
        "pad_token_id": tokenizer.pad_token_id,
        "train_data": data_fingerprint(train_set),
        "validation_data": data_fingerprint(eval_set) if eval_set is not None else None,
    }
    record = build_run_record(replace(cfg, data=cfg.data or BUILTIN), objective.uses_reward_head, fingerprints)
    record["train_pairs"] = len(train_set)  # what a learning curve is drawn against (`study.train_pairs`)
    return record


def _train(cfg: TrainConfig, run_dir: RunDirectory, state: PartialState, callbacks: list | None) -> dict:
    set_seed(cfg.seed)
    objective = objective_from(cfg)
    for engine in engines_ignored():
        say(f"note: no GPU here: accelerate runs this {engine} config as plain data parallel on the CPU (no sharding)")
    # Under `accelerate launch` the main process converts the default model, reads the data, picks the
    # checkpoint to resume from and fills the reference cache first; the others then read all of it.
    with state.main_process_first():
        model, tokenizer = load_base_model(
            cfg.model,
            with_score_head=objective.uses_reward_head,
            seed=cfg.seed,
            keep_dropout=cfg.keep_dropout,
            attn_implementation=cfg.attn_implementation,
            reward_head_type=cfg.reward_head_type,
        )
        tokenizer.padding_side = cfg.padding_side
        train_set, eval_set = load_datasets(cfg, tokenizer)
        collator = PairCollator(pad_token_id=tokenizer.pad_token_id, padding_side=cfg.padding_side)
        collator.packing = cfg.packing and packing_matches_padded(model, train_set[0], objective)
        collator.prompt_sharing = cfg.prompt_sharing and shared_prompt_matches_padded(model, train_set[0], objective)
        # the run record records what ran
        cfg = replace(cfg, packing=collator.packing, prompt_sharing=collator.prompt_sharing)
        record = run_record(cfg, objective, model, tokenizer, train_set, eval_set)
        checkpoint, notes = run_dir.resume_point(cfg.resume, main_process=state.is_main_process)
        for note in notes:
            say(note)
        length_notes = run_dir.check_same_run(record, checkpoint)
        for note in length_notes:
            say(note)
        finished = run_dir.finished_at(checkpoint) if not length_notes else None
        if finished is not None:
            say(
                f"--resume: {cfg.output_dir} is a finished run (step {finished} of {finished}; its final model is "
                "saved): nothing to train. To train longer, pass a larger --max-steps or --epochs with --resume"
            )
            return {"finished": True, "steps": finished}
        if state.is_main_process:
            run_dir.start(record)
        prefix_cache, train_set, eval_set = frozen_prefix_cache(
            cfg, model, objective, collator, train_set, eval_set, state
        )
        collator.prefix_cache = prefix_cache
        record["prefix_cache"] = prefix_cache is not None  # the run record records what ran
        if objective.needs_reference and cfg.reference == "cache":
            batch = cfg.eval_batch_size or cfg.batch_size
            train_set = add_reference_logps(model, train_set, collator, batch)
            if eval_set is not None:
                eval_set = add_reference_logps(model, eval_set, collator, batch)
    model = prepare_finetuning(model, cfg, objective.uses_policy_head)
    trainer = HybridTrainer(
        model=model,
        args=training_arguments(cfg, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        objective=objective,
        run_record=record,
        guard=NumericalGuard(cfg.lr, cfg.beta, objective.uses_policy_head, train_set, say),
        callbacks=[epoch_timer := EpochTimer(say), *(callbacks or [])],
    )
    try:
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except TrainingStopped as stop:
            raise TrainingStopped(f"{stop}. {kept_so_far(trainer)}") from None
        except pickle.UnpicklingError as error:  # torch.load(weights_only=True) met more than tensors
            if checkpoint is None:
                raise
            raise RunDirectoryError(refused_files_message(checkpoint, error)) from None
        if eval_set is not None:
            trainer.evaluate()  # log the kept (best) checkpoint's figures last
    finally:
        if prefix_cache is not None:
            prefix_cache.close()
    save_final(trainer, cfg.output_dir)
    summary = summarise(trainer)
    summary["epoch_seconds"] = epoch_timer.seconds
    summary["prefix_cache_build_seconds"] = prefix_cache.build_seconds if prefix_cache is not None else None
    if objective.uses_reward_head and "final" in summary and trainer.args.should_save:
        record_reward_moments(cfg.output_dir, summary["final"]["eval_reward_mean"], summary["final"]["eval_reward_std"])
    if trainer.args.should_save:
        if "final" in summary and eval_set is not None:  # the kept checkpoint's figures, logged last
            final = summary["final"]
            accuracy = final["eval_accuracy"] if objective.uses_reward_head else final["eval_implicit_accuracy"]
            update_run_record(cfg.output_dir, validation=validation_figures(accuracy, len(eval_set)))
        write_model_card(cfg.output_dir)
    print_summary(summary, cfg)
    return summary


def save_final(trainer: HybridTrainer, output_dir: str) -> None:
    """The final model, written in output_dir/.final-partial and renamed into place with its run record last.

    A save cut short (a full disk, a kill) leaves no half-written model beside the checkpoints, which stay
    as they were: `--resume` finishes the run from the last one without training a step more.
    """
    partial = Path(output_dir) / FINAL_PARTIAL
    if trainer.args.should_save:
        shutil.rmtree(partial, ignore_errors=True)
    after = "; the checkpoints are untouched: free space and run again with --resume"
    try:
        with writing(f"the final model {output_dir}", output_dir, saved_bytes(trainer.model), after):
            trainer.save_model(str(partial))
    except BaseException:
        if trainer.args.should_save:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        move_into_place(partial, Path(output_dir))


def frozen_prefix_cache(cfg: TrainConfig, model, objective: Objective, collator, train_set, eval_set, state):
    """`--finetune freeze`: the frozen blocks' output for every sequence, computed once -> (cache or None, sets).

    The sets come back with a `cache_row` column when the cache is used. Checked on one pair against the
    whole forward; off, with a note, where it would not give the same numbers or cannot run.
    """
    if cfg.finetune != "freeze" or not cfg.prefix_cache:
        return None, train_set, eval_set
    n_frozen = model.config.get_text_config().num_hidden_layers - cfg.trainable_layers
    reason = None
    if n_frozen < 1:
        reason = "every block trains"
    elif cfg.keep_dropout:
        reason = "--keep-dropout makes the frozen blocks' output differ from epoch to epoch"
    elif state.num_processes > 1:
        reason = "it runs in one process only"
    if reason:
        say(f"note: frozen-prefix cache off: {reason}")
        return None, train_set, eval_set
    sets = [train_set] + ([eval_set] if eval_set is not None else [])
    batch = cfg.eval_batch_size or cfg.batch_size
    cache, numbered = FrozenPrefixCache.build(model, n_frozen, sets, cfg.output_dir, batch, say, cfg.share_prefix_cache)
    heads = {"need_rewards": objective.uses_reward_head, "need_logps": objective.uses_policy_head}
    try:
        error = cache_error(model, cache, collator, numbered[0][0], **heads)
    except Exception as exc:  # an architecture whose forward does not take inputs_embeds with blocks handed through
        error, failure = float("inf"), f"failed ({type(exc).__name__}: {exc})"
    else:
        failure = f"gives other results (relative difference {error:.2g})"
    if error > layout_tolerance(model):
        cache.close()
        say(f"note: frozen-prefix cache off: {type(model).__name__} run from the cached states {failure}")
        return None, train_set, eval_set
    return cache, numbered[0], numbered[1] if eval_set is not None else None


def kept_so_far(trainer: HybridTrainer) -> str:
    """Where a stopped run's last good weights are."""
    state = trainer.state
    if state.best_model_checkpoint:
        return (
            f"Nothing from this step on was saved; the best checkpoint is {state.best_model_checkpoint} "
            f"(validation accuracy {state.best_metric:.4f})"
        )
    saved = RunDirectory(trainer.args.output_dir).checkpoints()
    if saved:
        return f"Nothing from this step on was saved; the newest checkpoint is {saved[-1]}"
    return "No checkpoint had been saved yet"


def record_reward_moments(output_dir: str, mean: float, std: float) -> None:
    """Write the validation reward mean/std where OpenRLHF (config.json `mean`, `std`) and the run record look."""
    update_config_json(output_dir, {"mean": mean, "std": std})
    update_run_record(output_dir, reward_mean=mean, reward_std=std)


def print_summary(summary: dict, cfg: TrainConfig) -> None:
    say(f"\nhafrm {cfg.method} run saved to {cfg.output_dir}")
    if "start" in summary:
        start, final = summary["start"], summary["final"]
        for name in ("eval_accuracy", "eval_implicit_accuracy", "eval_margin", "eval_loss"):
            if name in final:
                say(f"  {name[5:]:<18} {start.get(name, float('nan')):8.4f} -> {final[name]:8.4f}")
        say(f"  kept checkpoint: {summary['best_checkpoint']} (validation accuracy {summary['best_accuracy']:.4f})")
