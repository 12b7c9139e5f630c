"""The built wheel, installed without extras into a fresh environment, runs every command of the README's "Use"
block on the tiny model, from an empty directory (so nothing is read from this checkout).

Slow (a fresh environment: torch from the local wheel, the rest from the package index or pip's cache).
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> Path:
    """A new virtual environment holding torch 2.13.0 and the hafrm wheel, no extras -> its bin directory."""
    root = tmp_path_factory.mktemp("fresh")
    source = root / "source"  # a copy without the checkout's build outputs and venv
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "__pycache__")
    )
    quiet = ["--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *quiet, "--no-deps", "-w", root / "wheel", source], check=True
    )
    (wheel,) = (root / "wheel").glob("hafrm-*.whl")
    subprocess.run([sys.executable, "-m", "venv", root / "env"], check=True)
    pip = [root / "env" / "bin" / "python", "-m", "pip", "install", *quiet]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU build on this disk, as scripts/setup.sh takes it
    subprocess.run([*pip, wheel], check=True)
    return root / "env" / "bin"


def hafrm(bin_dir: Path, cwd: Path, *args: str, timeout: int = 600) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(
        [bin_dir / "hafrm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"hafrm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.mark.slow
def test_the_wheel_without_extras_runs_every_command(fresh_env, tiny_model, pairs_file, tmp_path):
    pip_list = subprocess.run([fresh_env / "python", "-m", "pip", "list", "--format", "json"], capture_output=True,
                              text=True, check=True)  # fmt: skip
    installed = {package["name"].lower() for package in json.loads(pip_list.stdout)}
    assert "trl" in installed and not {"pytest", "ruff", "hypothesis"} & installed  # trl is a dependency, dev is not
    work = tmp_path / "empty"
    work.mkdir()
    assert hafrm(fresh_env, work, "--version").startswith("hafrm 0.")
    assert "--reward" in hafrm(fresh_env, work, "rlhf", "--help")
    _readme_python_example_runs(fresh_env, work, tiny_model)
    run = [
        "--model",
        tiny_model,
        "--data",
        str(pairs_file),
        "--max-length",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
    ]
    hafrm(fresh_env, work, "train", *run, "--finetune", "lora", "--output-dir", "runs/haf")
    hafrm(fresh_env, work, "train", *run, "--method", "rm", "--output-dir", "runs/rm")
    hafrm(fresh_env, work, "eval", "--model", "runs/haf", "--data", str(pairs_file), "--json", "runs/haf/test.json")
    assert json.loads((work / "runs/haf/test.json").read_text())["pairs"] == 48
    scored = hafrm(fresh_env, work, "score", "--model", "runs/haf", "--prompt", "Hi", "--response", "Hello!",
                   "--response", "No.")  # fmt: skip
    assert len([line for line in scored.splitlines() if "\t" in line]) == 2
    hafrm(fresh_env, work, "score", "--model", "runs/haf", "--text", "Hi there")
    hafrm(fresh_env, work, "export", "--model", "runs/haf", "--output-dir", "runs/haf-merged")
    assert (work / "runs/haf-merged/model.safetensors").is_file()
    hafrm(fresh_env, work, "bon", "--policy", tiny_model, "--prompts", "builtin:test", "--limit", "2", "--n", "2",
          "--max-new-tokens", "4", "--reward", "haf=runs/haf,rm=runs/rm", "--output-dir", "runs/bon")  # fmt: skip
    assert (work / "runs/bon/report.json").is_file()
    rlhf = ["--policy", tiny_model, "--max-steps", "1", "--eval-steps", "1", "--eval-limit", "2", "--limit", "8",
            "--max-new-tokens", "4"]  # fmt: skip
    hafrm(fresh_env, work, "rlhf", *rlhf, "--reward", "runs/haf", "--output-dir", "runs/rlhf-haf")  # a LoRA reward
    hafrm(fresh_env, work, "rlhf", *rlhf, "--reward", "runs/rm", "--output-dir", "runs/rlhf-rm")
    hafrm(fresh_env, work, "rlhf", "--compare", "runs/rlhf-haf", "runs/rlhf-rm", "--output-dir", "runs/haf-vs-rm")
    assert "pairs" in hafrm(
        fresh_env, work, "data", "stats", str(pairs_file), "--max-length", "64", "--model", tiny_model
    )
    _serve_answers(fresh_env, work)


def _serve_answers(bin_dir: Path, work: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([bin_dir / "hafrm", "serve", "--model", "runs/haf", "--port", str(port)], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    assert json.loads(reply.read())["status"] == "ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/score", data=json.dumps({"prompt": "Hi", "responses": ["Hello!"]}).encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert len(json.loads(reply.read())["rewards"]) == 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def readme_python_example() -> str:
    """The README's Python block (the one that imports from hafrm)."""
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    (example,) = [block.split("```")[0] for block in blocks if block.startswith("from hafrm import")]
    return example


def _readme_python_example_runs(bin_dir: Path, work: Path, tiny_model: str) -> None:
    example = readme_python_example().replace('"smollm2-135m-instruct"', repr(tiny_model))
    assert tiny_model in example  # the example names its model, so the test can swap in the tiny one
    # then what the example left behind, in one line the test can read
    epilogue = (
        "\nimport json\nprint('RESULT', json.dumps({'steps': summary.get('steps'), 'rewards': len(reward.score("
        "[('a', 'b'), ('a', 'c')])), 'pairs': report['pairs'], 'accuracy': report['reward_head']['accuracy']}))\n"
    )
    result = subprocess.run(
        [bin_dir / "python", "-c", example + epilogue], cwd=work, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    figures = json.loads(line.removeprefix("RESULT "))
    assert figures["rewards"] == 2 and figures["pairs"] == 32 and 0 <= figures["accuracy"] <= 1
    assert (work / "runs" / "api-haf" / "hafrm.json").is_file()


def test_dependencies_are_ranges_whose_floors_and_tested_versions_are_listed():
    """pyproject.toml declares ranges; constraints-lowest.txt holds each floor, constraints.txt a version inside."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    declared = {
        canonicalize_name(Requirement(text).name): Requirement(text).specifier
        for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert all(">=" in str(specifier) and "==" not in str(specifier) for specifier in declared.values())

    def pins(name: str) -> dict:
        lines = (ROOT / name).read_text().splitlines()
        pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
        return {canonicalize_name(package): version for package, version in pairs}

    lowest, tested = pins("constraints-lowest.txt"), pins("constraints.txt")
    for name, specifier in declared.items():
        floor = next(Version(s.version) for s in specifier if s.operator == ">=")
        if name in lowest:  # the floor is the version the fast tests ran on in .venv-lowest
            assert Version(lowest[name]) == floor, (name, floor, lowest[name])
        assert specifier.contains(tested[name]), (name, tested[name])  # the tested version is allowed
    assert {"transformers", "peft", "trl", "accelerate", "datasets", "torch"} <= set(lowest)
