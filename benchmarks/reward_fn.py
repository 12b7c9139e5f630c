"""Reward time per GRPO step of `hafrm rlhf`'s reward function, rollout groups scored grouped and ungrouped.

    python benchmarks/reward_fn.py --model runs/rm-default                       # HH prompts, G = 4 and 8
    python benchmarks/reward_fn.py --model runs/rm-default --data builtin:test --prompts-per-step 4 --steps 3

Each step hands `hafrm.rlhf.RewardFunction` what TRL's GRPOTrainer hands a reward function: P prompts (chat
messages) each repeated G times and G completions per prompt (`--prompts-per-step`, `--group-size`), here the
next responses of the preference pairs' pool. The same steps run with the prompt of a group laid out once
(grouped, hafrm's default) and with every completion scored in full (ungrouped); printed per group size: the
median seconds per step of each, their ratio, and the largest difference between the two rewards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import as_messages, default_data  # noqa: E402


def steps(data: str, count: int, prompts_per_step: int, group_size: int) -> list[tuple[list, list]]:
    """`count` GRPO steps of (prompts, completions), G consecutive entries per prompt, as TRL lays them out."""
    from hafrm.data import read_pairs

    pairs = read_pairs(data, skip_bad_rows=True)
    pool = [response for pair in pairs for response in (pair.chosen, pair.rejected)]
    out, taken = [], 0
    for step in range(count):
        prompts, completions = [], []
        for p in range(prompts_per_step):
            prompt = as_messages(pairs[(step * prompts_per_step + p) % len(pairs)].prompt, "user")
            for _ in range(group_size):
                prompts.append(prompt)
                completions.append(as_messages(pool[taken % len(pool)], "assistant"))
                taken += 1
        out.append((prompts, completions))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hafrm run directory with a reward head")
    parser.add_argument("--data", default=None, help="preference pairs (default: the shared HH-harmless pairs)")
    parser.add_argument("--group-size", default="4,8", help="completions per prompt (TRL's num_generations)")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=512)
    opts = parser.parse_args(argv)

    from hafrm.rlhf import RewardFunction

    reward = RewardFunction(opts.model, normalize=False, max_length=opts.max_length)
    for g in (int(size) for size in opts.group_size.split(",")):
        traffic = steps(opts.data or default_data(), opts.steps, opts.prompts_per_step, g)
        reward(*traffic[0])  # warm-up: the first call checks the model's layouts once
        times, values = {}, {}
        for grouped in (True, False):
            reward.model.share_prompts = grouped
            times[grouped], values[grouped] = [], []
            for prompts, completions in traffic:
                started = time.perf_counter()
                values[grouped] += reward(prompts, completions)
                times[grouped].append(time.perf_counter() - started)
        reward.model.share_prompts = True
        on, off = statistics.median(times[True]), statistics.median(times[False])
        difference = max(abs(a - b) for a, b in zip(values[True], values[False]))
        print(f"G={g}, {opts.prompts_per_step} prompts per step: grouped {on:.3f} s/step, ungrouped {off:.3f} s/step, "
              f"ungrouped / grouped {off / on:.2f}; largest reward difference {difference:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
