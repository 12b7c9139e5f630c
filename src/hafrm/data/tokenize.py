"""Turn preference pairs into token ids with the response marked, and count every truncation.

    from hafrm.data.tokenize import tokenize_pairs
    dataset, report = tokenize_pairs(pairs, tokenizer, max_length=512)
    print(report.summary())

Each sequence is the full text of prompt + response tokenised once, exactly as TRL and RewardBench
tokenise it (`hafrm.data.templates`: the chat template rendered to text, then `add_special_tokens=False`;
plain text with the tokenizer's defaults). The prompt part is the prefix that chosen and rejected
share with the prompt rendered alone (with the generation prompt); the response part is the rest,
the template's end-of-turn tokens included. A string prompt becomes one user turn.

Truncation never drops a pair. When prompt + response exceeds `max_length`, the prompt loses tokens
from its start (down to half the budget), then the response loses tokens from its end. Both are
counted and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from .formats import DataError, PreferencePair
from .templates import common_prefix_length, encode_response


@dataclass
class TruncationReport:
    pairs: int = 0
    prompt_truncated: int = 0  # pairs whose prompt lost tokens
    response_truncated: int = 0  # pairs with a response that lost tokens
    longest: int = 0  # longest sequence before truncation

    def summary(self) -> str:
        truncated = max(self.prompt_truncated, self.response_truncated)
        return (
            f"{self.pairs} pairs; prompt truncated in {self.prompt_truncated}, response truncated in "
            f"{self.response_truncated} (at least {truncated / max(self.pairs, 1):.1%} of pairs touched); "
            f"longest sequence {self.longest} tokens"
        )

    def warning(self, max_length: int) -> str | None:
        """One line when more than half the pairs lost tokens at `max_length` (the trainer prints it), else None.

        Past half, the reward is learnt mostly from cut responses, whose endings (where chosen and rejected
        usually differ) are gone. The share is a lower bound, the larger of the two counts: the report does not
        keep which pairs lost both prompt and response tokens.
        """
        truncated = max(self.prompt_truncated, self.response_truncated)
        if self.pairs == 0 or truncated * 2 <= self.pairs:
            return None
        whole = 1 << max(self.longest - 1, 1).bit_length()  # the power of two that holds the longest pair
        share = "all" if truncated == self.pairs else f"at least {truncated / self.pairs:.0%}"
        return (
            f"warning: {share} of the {self.pairs} pairs are truncated at "
            f"--max-length {max_length} (the longest has {self.longest} tokens); raise --max-length "
            f"({whole} keeps every pair whole)"
        )


def fit_to_length(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], max_length: int):
    """Cut the shared prompt from its start (to no less than half the budget), then responses from the end."""
    longest_response = max(len(chosen_ids), len(rejected_ids))
    keep = max(max_length - longest_response, min(len(prompt_ids), max_length // 2), 1)
    keep = min(keep, len(prompt_ids))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    budget = max_length - len(prompt_ids)
    return prompt_ids, chosen_ids[:budget], rejected_ids[:budget]


def tokenize_pair(tokenizer, pair: PreferencePair, max_length: int) -> tuple[dict, tuple[bool, bool, int]]:
    where = f"{pair.source}: row {pair.index}"
    chosen_prompt, chosen_ids = encode_response(tokenizer, pair.prompt, pair.chosen, where + " (chosen)")
    rejected_prompt, rejected_ids = encode_response(tokenizer, pair.prompt, pair.rejected, where + " (rejected)")
    # Each side's ids are its full text tokenised once; the shared prompt is the prefix both start with.
    shared = common_prefix_length(chosen_prompt, rejected_prompt)
    prompt_ids = chosen_prompt[:shared]
    chosen_ids, rejected_ids = chosen_prompt[shared:] + chosen_ids, rejected_prompt[shared:] + rejected_ids
    longest = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))
    fitted_prompt, fitted_chosen, fitted_rejected = fit_to_length(prompt_ids, chosen_ids, rejected_ids, max_length)
    flags = (
        len(fitted_prompt) < len(prompt_ids),
        len(fitted_chosen) < len(chosen_ids) or len(fitted_rejected) < len(rejected_ids),
        longest,
    )
    row = {
        "chosen_input_ids": fitted_prompt + fitted_chosen,
        "rejected_input_ids": fitted_prompt + fitted_rejected,
        "prompt_length": len(fitted_prompt),
        "length": len(fitted_prompt) + max(len(fitted_chosen), len(fitted_rejected)),  # a pair pads to this
        "source": pair.source,
        "subset": pair.subset or "",
        "index": pair.index,
    }
    if pair.margin is not None:
        row["margin"] = pair.margin
    return row, flags


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, max_length: int):
    """-> (datasets.Dataset of token ids, TruncationReport)."""
    import datasets

    if max_length < 8:
        raise ValueError(f"max_length {max_length} is too small to hold a prompt and a response")
    with_margin = [pair.margin is not None for pair in pairs]
    if any(with_margin) and not all(with_margin):
        first = pairs[with_margin.index(not with_margin[0])]
        raise DataError(f"{first.source}: row {first.index}: `margin` must be given for every row or for none")
    report = TruncationReport()
    rows = []
    for pair in pairs:
        row, (prompt_cut, response_cut, longest) = tokenize_pair(tokenizer, pair, max_length)
        rows.append(row)
        report.pairs += 1
        report.prompt_truncated += prompt_cut
        report.response_truncated += response_cut
        report.longest = max(report.longest, longest)
    return datasets.Dataset.from_list(rows), report


def pair_sequences(dataset) -> tuple[list[list[int]], list[int]]:
    """The 2N responses of a tokenised pair set, chosen then rejected, and their prompt lengths."""
    return list(dataset["chosen_input_ids"]) + list(dataset["rejected_input_ids"]), list(dataset["prompt_length"]) * 2
