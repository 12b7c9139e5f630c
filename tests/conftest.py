"""A tiny random Llama with SmolLM2's real tokenizer (pad == eos, chat template), built offline.

The helpers the test files share are fixtures here: `train_argv` / `train_run` (a fast `hafrm train`),
`trainer_state` / `logged` (what a run logged), `collated_batches`, `reward_runs` (rm and dpo runs for the
reward-model users), `response_logp` (log-probs by hand) and `free_port`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_data import write_pairs  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a network this machine does not have
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Reference log-probs of tests go to a throw-away cache; the default model keeps the user's."""
    os.environ["HAFRM_CACHE"] = str(tmp_path_factory.mktemp("hafrm-cache"))
    yield


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from hafrm.default_model import gguf_path

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_model(tokenizer_dir: Path, directory: Path, tied: bool = True, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tokenizer_dir, tmp_path_factory) -> str:
    return str(build_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_untied_model(tokenizer_dir, tmp_path_factory) -> str:
    return str(build_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("tiny-llama-untied"), tied=False))


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 48)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a TCP port on 127.0.0.1 that nothing listens on now (for a server or launcher a test starts)."""

    def find() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    return find


# A fast `hafrm train` on the tiny model: short rows, small batches, a learning rate high enough that two
# steps move the weights, and a log entry every step (tests read the loss curve). A flag given again
# after these replaces it, as on the command line.
FAST_TRAIN_FLAGS = ("--max-length", "96", "--batch-size", "4", "--lr", "5e-3", "--logging-steps", "1")


@pytest.fixture(scope="session")
def train_argv():
    """train_argv(model, data, output_dir, *flags): `hafrm train` argv, FAST_TRAIN_FLAGS first (data None: builtin)."""

    def argv(model, data, output_dir, *flags) -> list[str]:
        data_flags = [] if data is None else ["--data", str(data)]
        return ["train", "--model", str(model), *data_flags, "--output-dir", str(output_dir), *FAST_TRAIN_FLAGS, *flags]

    return argv


@pytest.fixture(scope="session")
def train_run(train_argv):
    """train_run(model, data, output_dir, *flags) -> output_dir: a fast `hafrm train`, which must succeed."""
    from hafrm.cli import main

    def run(model, data, output_dir, *flags) -> Path:
        assert main(train_argv(model, data, output_dir, *flags)) == 0
        return Path(output_dir)

    return run


@pytest.fixture(scope="session")
def trainer_state():
    """trainer_state(run_directory) -> the trainer_state.json of the run's newest checkpoint."""
    from hafrm.rundir import RunDirectory

    def read(directory) -> dict:
        newest = RunDirectory(directory).checkpoints()[-1]
        return json.loads((newest / "trainer_state.json").read_text())

    return read


@pytest.fixture(scope="session")
def logged(trainer_state):
    """logged(run_directory, *keys) -> the values of these keys in the run's log history, entry by entry.

    logged(run, "loss", "grad_norm") is the training curve flattened: loss and gradient norm of each logged step.
    """

    def values(directory, *keys) -> list[float]:
        entries = trainer_state(directory)["log_history"]
        return [entry[key] for entry in entries for key in keys if key in entry]

    return values


@pytest.fixture(scope="session")
def response_logp():
    """response_logp(causal_lm, prompt_ids, response_ids) -> log π(response | prompt), summed over its tokens.

    One plain forward of the whole sequence: the by-hand value hafrm's log-probs are checked against.
    """

    def logp(model, prompt_ids: list[int], response_ids: list[int]) -> float:
        ids = torch.tensor([prompt_ids + response_ids])  # [1, T]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)  # [T-1, vocab]: token t+1 given the rest
        token_logps = logits.gather(1, ids[0, 1:, None])[:, 0]  # [T-1]
        return token_logps[len(prompt_ids) - 1 :].sum().item()

    return logp


@pytest.fixture
def collated_batches(monkeypatch) -> list[dict]:
    """Every batch a PairCollator builds during the test, in order; clear it between runs to compare them."""
    from hafrm.data.collator import PairCollator

    batches, collate = [], PairCollator.__call__

    def recording(self, rows):
        batch = collate(self, rows)
        batches.append(batch)
        return batch

    monkeypatch.setattr(PairCollator, "__call__", recording)
    return batches


@pytest.fixture(scope="session")
def reward_runs(tiny_model, pairs_file, train_run, tmp_path_factory) -> dict[str, Path]:
    """Two-step rm and dpo runs of the tiny model, read (never written) by the tests of reward-model users."""
    root = tmp_path_factory.mktemp("reward-runs")
    # --logging-steps 10 is the default these runs were always made with (it changes no weight)
    flags = ("--max-steps", "2", "--val-fraction", "0", "--logging-steps", "10")
    runs = {}
    for method in ("rm", "dpo"):
        runs[method] = train_run(tiny_model, pairs_file, root / method, "--method", method, *flags)
    return runs
