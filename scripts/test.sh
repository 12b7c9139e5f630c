#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, and run every test: the tiny-model suite and the default-model tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests benchmarks
python -m pytest -q "$@"
