#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, and run every test: the tiny-model suite and the default-model tests; then
# the fast tiny-model tests again on the lowest versions pyproject.toml allows (scripts/setup-lowest.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests benchmarks
python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then  # the whole run (not a selection passed through to pytest)
  bash scripts/setup-lowest.sh
  .venv-lowest/bin/python -m pip list --format=freeze 2>/dev/null \
    | grep -i -E "^(transformers|peft|trl|accelerate|datasets)==" | tr '\n' ' ' && echo "(lowest allowed)"
  .venv-lowest/bin/python -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_losses.py \
    tests/test_checkpoint.py tests/test_one_reward.py tests/test_train.py tests/test_config.py tests/test_data.py \
    tests/test_load.py tests/test_templates.py tests/test_reference.py tests/test_prompt_sharing.py \
    tests/test_reward_heads.py tests/test_serve.py tests/test_matrix.py tests/test_sources.py tests/test_plots.py \
    tests/test_grouped_scoring.py
fi
