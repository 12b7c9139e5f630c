"""The `hafrm` command: thin parsing, then the command's main(cfg) from the `COMMANDS` table.

    hafrm train --data pairs.jsonl --method haf --finetune lora --output-dir runs/haf
    hafrm eval --model runs/haf --data test.jsonl --json runs/haf/eval.json
    hafrm score --model runs/haf --prompt "Hi" --response "Hello!" --response "Go away."
    hafrm export --model runs/haf --output-dir runs/haf-merged
    hafrm bon --prompts builtin:test --n 8 --reward runs/haf,runs/rm --output-dir runs/bon
    hafrm rlhf --reward runs/haf --max-steps 50 --output-dir runs/rlhf-haf
    hafrm serve --model runs/haf --port 5000

Every command takes `--config FILE.yaml` with the same field names; flags override the file.
"""

from __future__ import annotations

import difflib
import logging
import sys
import time
from pathlib import Path

from . import known_warnings
from .config import (
    BonConfig,
    EvalConfig,
    ExportConfig,
    RlhfConfig,
    ScoreConfig,
    ServeConfig,
    StatsConfig,
    TrainConfig,
    parse_config,
)
from .data import DataError
from .fields import ConfigError
from .guard import TrainingStopped
from .validation import validate
from .writes import FULL_ERRNOS, DiskFullError, disk_full_message

# Errors the user can act on: printed as one line, exit status 1. OSError: a file, a directory, a disk, a
# connection (a full disk, a checkpoint that could not be written, a link hafrm refuses to write through, ...).
USER_ERRORS = (DataError, ValueError, OSError, TrainingStopped)
# Exit status: 2 for a usage error (a flag, a value or a config file that cannot work: ConfigError, found before
# anything runs), 1 for an error while running (bad data rows, a full disk, a run directory in use).
USAGE_ERROR, RUNTIME_ERROR = 2, 1


def exit_status(error: BaseException) -> int:
    return USAGE_ERROR if isinstance(error, ConfigError) else RUNTIME_ERROR


def error_line(error: BaseException) -> str:
    """A user error as the one line printed after `hafrm COMMAND: error:`."""
    if isinstance(error, OSError) and not isinstance(error, DiskFullError) and error.errno in FULL_ERRNOS:
        where = error.filename or "a file"
        return disk_full_message(str(where), Path(str(where)).parent if error.filename else Path.cwd())
    if isinstance(error, OSError) and error.strerror and type(error).__str__ is OSError.__str__:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror  # no "[Errno 21]"
    return " ".join(str(error).split()) if isinstance(error, OSError) else str(error)


# Each command's main(cfg) imports its module when it runs, so that `--help` and a refused flag answer
# before transformers' models, TRL or vLLM load.
def train_main(cfg: TrainConfig) -> dict:
    from .train import train

    return train(cfg)


def eval_main(cfg: EvalConfig) -> dict:
    from .evaluate import evaluate

    return evaluate(cfg)


def score_main(cfg: ScoreConfig) -> list[float]:
    from .evaluate import score

    return score(cfg)


def export_main(cfg: ExportConfig):
    from .checkpoint import export

    path = export(cfg.model, cfg.output_dir)
    print(f"exported {cfg.model} to {path}")
    return path


def bon_main(cfg: BonConfig) -> dict:
    from .bon import run_bon

    return run_bon(cfg)


def rlhf_main(cfg: RlhfConfig) -> list[dict]:
    from .rlhf import run_rlhf

    return run_rlhf(cfg)


def serve_main(cfg: ServeConfig) -> None:
    from .serve import run_serve

    return run_serve(cfg)


def data_stats_main(cfg: StatsConfig) -> list:
    from .checkpoint import load_tokenizer
    from .data.stats import data_stats, print_table, write_json

    results = data_stats(cfg.data, load_tokenizer(cfg.model), cfg.max_length, cfg.format)
    print_table(results, cfg.max_length)
    if cfg.json:
        write_json(results, cfg.json)
    return results


# command -> (its config dataclass, its main(cfg))
COMMANDS = {
    "train": (TrainConfig, train_main),
    "eval": (EvalConfig, eval_main),
    "score": (ScoreConfig, score_main),
    "export": (ExportConfig, export_main),
    "bon": (BonConfig, bon_main),
    "rlhf": (RlhfConfig, rlhf_main),
    "serve": (ServeConfig, serve_main),
    "data": (StatsConfig, data_stats_main),
}
USAGE = (
    "usage: hafrm {train,eval,score,export,bon,rlhf,serve} [--config FILE.yaml] [--flags ...]\n"
    "       hafrm data stats NAME... [--max-length L] [--model M]\n"
    "       hafrm experiment CONFIG.yaml|NAME [--dry-run] [--runs A,B] [--seeds 0,1] [--set KEY=VALUE]\n"
    "       hafrm configs [NAME]\n"
    "       hafrm --version\n"
    "(hafrm COMMAND --help lists the flags)"
)


def version_line() -> str:
    """`hafrm --version`: hafrm's version and the versions of the libraries whose behaviour it depends on."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("torch", "transformers", "peft", "trl"))
    return f"hafrm {__version__} ({libraries})"


def unknown_command(name: str) -> str:
    """The lines printed for a command that does not exist: the closest one, when a typo is likely, and the list."""
    commands = [*COMMANDS, "experiment", "configs"]
    close = difflib.get_close_matches(name, commands, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"hafrm: unknown command {name!r}{guess}\ncommands: {', '.join(commands)}\n(hafrm COMMAND --help lists the flags)"


def _bare_resume(argv: list[str]) -> list[str]:
    """Let `--resume` stand alone (meaning the newest checkpoint), as users of other trainers expect."""
    fixed = []
    for i, arg in enumerate(argv):
        fixed.append(arg)
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            fixed.append("last")
    return fixed


def _data_stats_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """`stats NAME... --flags` -> (flags, names)."""
    if not argv or argv[0] != "stats":
        raise ConfigError("the data command has one subcommand: hafrm data stats NAME...")
    names = []
    rest = argv[1:]
    while rest and not rest[0].startswith("--"):
        names.append(rest.pop(0))
    return rest, names


def _experiment(argv: list[str]) -> int:
    """`hafrm experiment CONFIG.yaml [--dry-run]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="hafrm experiment", description="train and compare methods, resumable")
    parser.add_argument("config", help="experiment YAML, or the name of a shipped one (hafrm configs lists them)")
    parser.add_argument("--dry-run", action="store_true", help="check the config and print the plan only")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace one value of the config (dotted key, YAML value), e.g. --set evaluate.pandalm=FILE.json "
        "--set base.data=pairs.jsonl --set runs.haf.lr=1e-5; repeatable",
    )
    parser.add_argument("--runs", help="only these runs (comma-separated); tables go to OUTPUT_DIR/part-...")
    parser.add_argument("--seeds", help="only these seeds (comma-separated); tables go to OUTPUT_DIR/part-...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .experiment import run_experiment

    try:
        runs = args.runs.split(",") if args.runs else None
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else None
        started = time.monotonic()
        run_experiment(args.config, dry_run=args.dry_run, runs=runs, seeds=seeds, settings=args.set)
        if not args.dry_run:
            print(f"hafrm experiment: done in {took(time.monotonic() - started)}")
    except USER_ERRORS as error:
        print(f"hafrm experiment: error: {error_line(error)}", file=sys.stderr)
        return exit_status(error)
    return 0


def _configs(argv: list[str]) -> int:
    """`hafrm configs [NAME]`: the configs hafrm ships, or one's path (for `accelerate launch --config_file`)."""
    from .config import config_path, shipped_configs

    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        if argv and argv[0] in {"-h", "--help"}:
            print("usage: hafrm configs [NAME]   (no NAME: list the shipped configs; NAME: print its path)")
            return 0
        print("usage: hafrm configs [NAME]", file=sys.stderr)
        return 2
    if argv:
        from .extras import accelerate_config_needs, missing_extra

        try:
            path = config_path(argv[0], "accelerate" if "/" not in argv[0] else "").resolve()
        except USER_ERRORS as error:
            print(f"hafrm configs: error: {error_line(error)}", file=sys.stderr)
            return exit_status(error)
        print(path)  # alone on stdout, for `accelerate launch --config_file "$(hafrm configs zero2)"`
        extra = accelerate_config_needs(path)
        problem = extra and missing_extra(extra, f"{argv[0]} (distributed_type DEEPSPEED)")
        if problem:
            print(f"note: {problem}", file=sys.stderr)
        return 0
    for name, path in shipped_configs().items():
        print(f"{name:<32} {path}")
    return 0


def took(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s" if minutes else f"{rest} s"


def closing_lines(command: str, cfg, result, seconds: float) -> list[str]:
    """What a finished command says last: how long it took, where its output is, what to run next."""
    if command == "train":
        if isinstance(result, dict) and result.get("finished"):
            return []  # a finished run resumed: it said so, nothing ran
        out = cfg.output_dir
        lines = [f"hafrm train: done in {took(seconds)}; the model is in {out} (its card: {out}/README.md)", "next:"]
        if cfg.method == "dpo":
            lines.append(f"  hafrm eval --model {out} --data builtin:test      # accuracy of its implicit reward")
        else:
            lines.append(f"  hafrm eval --model {out} --data builtin:test      # test accuracy with an interval")
        lines.append(f'  hafrm score --model {out} --prompt "..." --response "..." --response "..."')
        lines.append(f"  hafrm serve --model {out}                          # a reward server for RLHF")
        if cfg.finetune == "lora":
            lines.append(f"  hafrm export --model {out} --output-dir {out}-merged   # one directory for TRL / OpenRLHF")
        return lines
    if command == "eval":
        where = f"; figures in {cfg.json}" if cfg.json else ""
        return [f"hafrm eval: done in {took(seconds)}{where}; the run's card ({cfg.model}/README.md) lists them"]
    if command == "bon":
        return [f"hafrm bon: done in {took(seconds)}; report in {cfg.output_dir}/report.md and report.json"]
    if command == "rlhf":
        if cfg.compare:
            return [f"hafrm rlhf --compare: done in {took(seconds)}; results in {cfg.output_dir}"]
        return [
            f"hafrm rlhf: done in {took(seconds)}; the policy is in {cfg.output_dir}, its oracle curve beside it",
            f"next: hafrm rlhf --compare {cfg.output_dir} OTHER_POLICY_DIR --output-dir runs/compare",
        ]
    return []


def run(command: str, cfg) -> object:
    """Call `command`'s main(cfg) -> what it returns."""
    if command not in COMMANDS:
        raise ValueError(unknown_command(command))
    _, command_main = COMMANDS[command]
    return command_main(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    known_warnings.install()  # expected library messages a user cannot act on (each with its reason there)
    if argv and argv[0] == "experiment":
        return _experiment(argv[1:])
    if argv and argv[0] == "configs":
        return _configs(argv[1:])
    if argv and argv[0] in {"--version", "-V"}:
        print(version_line())
        return 0
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(unknown_command(argv[0]), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, rest = argv[0], _bare_resume(argv[1:])
    try:
        if command == "data":
            rest, names = _data_stats_arguments(rest)
        config_class, _ = COMMANDS[command]
        cfg = parse_config(config_class, rest)
        if command == "data":
            cfg.data = names + cfg.data
            if not cfg.data:
                raise ConfigError("name the data to describe: hafrm data stats NAME...")
        validate(cfg)  # a bad value or a missing model stops here, before any model, data or reference pass
        started = time.monotonic()
        result = run(command, cfg)
        for line in closing_lines(command, cfg, result, time.monotonic() - started):
            print(line)
    except USER_ERRORS as error:
        print(f"hafrm {command}: error: {error_line(error)}", file=sys.stderr)
        return exit_status(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
