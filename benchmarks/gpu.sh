#!/usr/bin/env bash
# One prepared GPU run (about 10 minutes on one large GPU): tests on CUDA, bf16 step time and peak memory
# against TRL, scoring throughput, and a quality run at a GPU budget. Every table goes to one folder.
#
#   bash benchmarks/gpu.sh                       # on the GPU machine; tables in $OUT (or runs/gpu)
#   bash benchmarks/gpu.sh --dry-run --model DIR --data FILE --out DIR   # the same steps at toy sizes, on the CPU
#
# Steps, each writing OUT/<step>.txt (and .json where the script has one):
#   1. tests       the device-dependent tests, run where HAFRM_DEVICE / the accelerator puts them
#   2. train-step  bf16 step time and peak memory of hafrm rm / dpo / haf (prompt sharing on and off)
#                  against TRL RewardTrainer and DPOTrainer, length 1024, batch 32; TRL with Liger's fused
#                  kernels too where liger-kernel installs
#   3. score       scoring throughput, pairs and best-of-N (N = 4, 8)
#   4. quality     the two regime studies of issue 26 at a GPU budget (benchmarks/scale_study.py): full
#                  fine-tuning (study-full.yaml: rm, haf, haf + grm-sft, dpo at two training-set sizes) and
#                  LoRA on every block (study-lora.yaml: rm, haf), each with 4x the built-in training pairs,
#                  2x the test pairs, batch 16, length 1024, bf16, 3 seeds; results.md beside the runs
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out="${OUT:-runs/gpu}"
model="smollm2-135m-instruct"
data="../shared/data/hh-harmless/train.jsonl.gz"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out="$2"; shift ;;
    --model) model="$2"; shift ;;
    --data) data="$2"; shift ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
python=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then python=.venv/bin/python; fi

if [ "$dry_run" = 1 ]; then  # toy sizes: every step end to end in a few minutes on a CPU
  tests=(tests/test_devices.py -k environment)
  step=(--batch-size 2 --max-length 96 --warmup 1 --steps 1 --rounds 1 --modes full --methods rm,haf)
  score=(--pairs 8 --batch-size 2 --max-length 96 --rounds 1 --bon 2 --bon-prompts 2)
  scale=(--toy "$data")
  precision=""
else
  tests=(tests/test_devices.py tests/test_model.py tests/test_prompt_sharing.py tests/test_prefix_cache.py
         tests/test_reference.py tests/test_one_reward.py)
  step=(--batch-size 32 --max-length 1024 --warmup 1 --steps 3 --rounds 1 --modes full --bf16)
  score=(--pairs 256 --batch-size 32 --max-length 1024 --rounds 2)
  scale=(--scale 4 --test-scale 2 --batch-size 16 --max-length 1024 --bf16 --seeds 0,1,2)
  precision="bf16"
fi
liger=()
if "$python" -c "import liger_kernel" 2>/dev/null; then liger=(--trl-liger); fi

started=$(date +%s)
note() { echo "[gpu.sh $(( $(date +%s) - started )) s] $*"; }

note "device: $("$python" -c 'from hafrm.devices import scoring_device; print(scoring_device())')"
"$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" \
  > "$out/device.txt"

note "1/4 tests on the device"
"$python" -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tail -n 30 > "$out/tests.txt"

note "2/4 train step ${precision:-fp32}"
"$python" benchmarks/train_step.py --model "$model" --data "$data" "${step[@]}" --prompt-sharing both "${liger[@]}" \
  --gradient-checkpointing off --json "$out/train-step.json" > "$out/train-step.txt"

note "3/4 scoring"
"$python" benchmarks/score.py --model "$model" --data "$data" "${score[@]}" > "$out/score.txt"

note "4/4 quality"
: > "$out/quality-results.md"
for study in study-full study-lora; do
  config=$("$python" benchmarks/scale_study.py "configs/experiments/$study.yaml" --out "$out/quality" \
    --model "$model" "${scale[@]}")
  "$python" -m hafrm.cli experiment "$config" > "$out/quality-$study.txt"
  cat "$out/quality/$study-gpu/results.md" >> "$out/quality-results.md"
done
note "done: tables in $out"
