#!/usr/bin/env bash
# Set up, then train a HAF reward model on the default model (SmolLM2-135M-Instruct, offline) and the
# built-in verifiable-instruction set, print what it learned (validation accuracy before and after),
# evaluate it on the built-in test split beside the length-only rule, and score two replies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
hafrm train --config quickstart "$@"   # shipped in the package: configs/quickstart.yaml in a checkout
hafrm eval --model runs/quickstart --data builtin:test --json runs/quickstart/test.json
hafrm score --model runs/quickstart \
  --prompt "Describe a paper kite. Write your entire reply in capital letters only." \
  --response "A PAPER KITE IS LIGHT AND BRIGHT, AND IT DANCES ON THE WIND." \
  --response "A paper kite is light and bright, and it dances on the wind."
