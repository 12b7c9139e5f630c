"""Which attention implementation runs shared-prompt rows fastest here: forward + backward of one batch.

    python benchmarks/attention.py                       # default model, 8 shared HH pairs at length 256
    python benchmarks/attention.py --implementations sdpa,eager,flex_attention --repeats 5

For each attention implementation transformers offers for the model (sdpa, eager; flex_attention
where torch can compile it for this device), one batch is run padded, packed and with prompts shared
(packed too), forward and backward through every parameter, timed over --repeats after one warm-up;
the rewards of each layout are checked against the padded ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, select_pairs, spread  # noqa: E402

LAYOUTS = {
    "padded": {},
    "packed": {"packing": True},
    "shared": {"prompt_sharing": True},
    "shared+packed": {"prompt_sharing": True, "packing": True},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--implementations", default="sdpa,eager")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    opts = parse_args(argv)
    from hafrm.checkpoint import load_base_model, load_tokenizer
    from hafrm.data import PairCollator, tokenize_pairs
    from hafrm.devices import scoring_device
    from hafrm.model import hybrid_forward

    tokenizer = load_tokenizer(opts.model)
    pairs, _ = select_pairs(opts.data or default_data(), tokenizer, opts.max_length, opts.batch_size)
    device = scoring_device()
    print(f"{opts.model}; {len(pairs)} pairs at most {opts.max_length} tokens; {device}; {opts.repeats} repeats")
    print(f"{'attention':<16} {'layout':<14} {'tokens':>7} {'s fwd+bwd (min/med/max)':>26} {'reward diff':>12}")
    for implementation in opts.implementations.split(","):
        model, tokenizer = load_base_model(opts.model, with_score_head=True)
        model.set_attn_implementation(implementation)
        model.to(device)
        dataset, _ = tokenize_pairs(pairs, tokenizer, opts.max_length)
        rows = [dataset[i] for i in range(len(dataset))]
        reference = None
        for layout, flags in LAYOUTS.items():
            batch = PairCollator(tokenizer.pad_token_id, **flags)(rows)
            batch = {key: value.to(device) for key, value in batch.items()}
            times = []
            try:
                for repeat in range(opts.repeats + 1):
                    model.zero_grad()
                    began = time.perf_counter()
                    out = hybrid_forward(model, batch, need_rewards=True, need_logps=False)
                    (out.chosen_rewards - out.rejected_rewards).sum().backward()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if repeat:
                        times.append(time.perf_counter() - began)
            except Exception as exc:  # an implementation this device or model cannot run
                print(f"{implementation:<16} {layout:<14} failed: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            rewards = torch.cat([out.chosen_rewards, out.rejected_rewards]).detach().float().cpu()
            reference = rewards if reference is None else reference
            tokens = batch["input_ids"].numel()
            difference = (rewards - reference).abs().max().item()
            print(
                f"{implementation:<16} {layout:<14} {tokens:>7} {spread(times):>26} {difference:12.1e}"
                f"  (median {statistics.median(times):.2f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
