"""`hafrm data stats`: the HAF-RM paper's Table 1 for any data hafrm reads, plus what breaks training.

    hafrm data stats hh-harmless ../shared/data/pandalm/testset-v1.json --max-length 512

Per source: pairs kept, rows left out (by the source's rule, or bad), words per prompt and response,
tokens per prompt + response (with the model's chat template, as training sees them), the share of
pairs that `--max-length` would truncate, duplicates, and how often the longer response is chosen.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .formats import PreferencePair
from .length_rule import longer_is_better_accuracy, word_count
from .load import load_data
from .templates import encode_response


@dataclass
class SourceStats:
    source: str
    pairs: int
    left_out: dict = field(default_factory=dict)  # reason -> rows (rule + bad rows)
    prompt_words: float = 0.0
    response_words: float = 0.0
    tokens_mean: float = 0.0  # prompt + response, both sides
    tokens_p95: float = 0.0
    tokens_max: int = 0
    truncated_share: float = 0.0  # pairs with prompt + longer response over max_length
    duplicate_pairs: int = 0  # pairs identical to an earlier one
    duplicate_prompts: int = 0  # pairs whose prompt appeared earlier
    longer_chosen_share: float = 0.0  # "longer is better" accuracy, ties counted half


def _key(pair: PreferencePair) -> str:
    return json.dumps([pair.prompt, pair.chosen, pair.rejected], sort_keys=True)


def source_stats(source: str, pairs: list[PreferencePair], left_out: dict, tokenizer, max_length: int) -> SourceStats:
    stats = SourceStats(source, len(pairs), left_out)
    lengths, truncated, seen_pairs, seen_prompts = [], 0, set(), set()
    for pair in pairs:
        prompt_ids, chosen_ids = encode_response(tokenizer, pair.prompt, pair.chosen, source)
        _, rejected_ids = encode_response(tokenizer, pair.prompt, pair.rejected, source)
        lengths += [len(prompt_ids) + len(chosen_ids), len(prompt_ids) + len(rejected_ids)]
        truncated += len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length
        key, prompt_key = _key(pair), json.dumps(pair.prompt)
        stats.duplicate_pairs += key in seen_pairs
        stats.duplicate_prompts += prompt_key in seen_prompts
        seen_pairs.add(key)
        seen_prompts.add(prompt_key)
    stats.prompt_words = statistics.fmean(word_count(p.prompt) for p in pairs)
    stats.response_words = statistics.fmean(word_count(r) for p in pairs for r in (p.chosen, p.rejected))
    stats.tokens_mean = statistics.fmean(lengths)
    stats.tokens_p95 = sorted(lengths)[int(0.95 * (len(lengths) - 1))]
    stats.tokens_max = max(lengths)
    stats.truncated_share = truncated / len(pairs)
    stats.longer_chosen_share = longer_is_better_accuracy(pairs)
    return stats


def data_stats(specs: list[str], tokenizer, max_length: int, fmt: str = "auto") -> list[SourceStats]:
    """Stats of every item; bad rows are counted (never raised) so one command shows them all."""
    results = []
    for spec in specs:
        pairs, reports = load_data(spec, fmt, skip_bad_rows=True)
        for report in reports:
            members = [pair for pair in pairs if pair.source == report.source]
            left_out = {
                **{f"rule: {k}": v for k, v in report.filtered.items()},
                **{f"bad: {k}": v for k, v in report.bad.items()},
            }
            results.append(source_stats(report.source, members, left_out, tokenizer, max_length))
    return results


def print_table(results: list[SourceStats], max_length: int) -> None:
    header = (
        f"{'source':<32} {'pairs':>6} {'left out':>8} {'prompt w':>8} {'resp w':>7} {'tok mean':>8} "
        f"{'tok p95':>7} {'tok max':>7} {f'>{max_length}':>6} {'dup':>4} {'dup prm':>7} {'longer':>6}"
    )
    print(header)
    print("-" * len(header))
    for s in results:
        print(
            f"{s.source[:32]:<32} {s.pairs:>6} {sum(s.left_out.values()):>8} {s.prompt_words:>8.1f} "
            f"{s.response_words:>7.1f} {s.tokens_mean:>8.1f} {s.tokens_p95:>7.0f} {s.tokens_max:>7} "
            f"{s.truncated_share:>6.1%} {s.duplicate_pairs:>4} {s.duplicate_prompts:>7} {s.longer_chosen_share:>6.1%}"
        )
    for s in results:
        if s.left_out:
            print(f"{s.source} left out: " + ", ".join(f"{reason} {n}" for reason, n in s.left_out.items()))
    print(
        "w = words (mean); tok = tokens of prompt + response with the chat template; "
        f">{max_length} = pairs truncated at that length; dup = repeated pairs / prompts; "
        "longer = how often the longer response is the chosen one (a length-only rule's accuracy)"
    )


def write_json(results: list[SourceStats], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps([asdict(s) for s in results], indent=2) + "\n")
