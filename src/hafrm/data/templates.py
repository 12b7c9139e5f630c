"""How text becomes the token ids a reward is read from: the pad token, the rendered conversation, its end.

    from hafrm.data.templates import ensure_pad_token, render, canonical_text, encode_text
    how = ensure_pad_token(tokenizer)          # "own" | "reserved" | "added" (then resize the embeddings)
    prompt_text, full_text, templated = render(tokenizer, prompt, response)
    ids = encode_text(tokenizer, full_text)    # what hafrm, TRL, RewardBench and transformers all score

One rule for every loader. transformers' sequence classifiers (and so TRL's `reward_funcs`,
RewardBench, the text-classification pipeline, vLLM's classify runner) read the reward at the last
token that is not the pad token, so the pad token must be one that never occurs in a rendered
conversation or a response: the tokenizer's own pad token when it has a dedicated one; else an unused
reserved special token of its vocabulary (`<|reserved_special_token_0|>`, `<|finetune_right_pad_id|>`,
`<unused0>`, ...); else one added token, `<|pad|>`. Never the EOS or end-of-turn token (Llama 3 and
Mistral end a rendered conversation on exactly that token).

Tokenisation follows TRL and RewardBench: a conversation is rendered with the chat template to text
and tokenised with `add_special_tokens=False` (the template writes its own BOS); plain text is
`prompt + response`, tokenised with the tokenizer's defaults and no EOS appended (what TRL's GRPO
scores). Without a chat template, conversations are written as HH transcripts ("\\n\\nHuman: ...
\\n\\nAssistant: ..."), the prompt ending on the last "\\n\\nAssistant:".

`canonical_text` makes a text that RL rollouts send (OpenRLHF decodes prompt + response ids, ending on
the generated end-of-turn token, without the template's trailing newline; padding left in) read the
same as the fully rendered conversation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .formats import DataError, Text

ADDED_PAD = "<|pad|>"
# Names of vocabulary tokens set aside for no text: dedicated pads first, then reserved / unused slots.
_PAD_NAMES = (re.compile(r"pad", re.I), re.compile(r"reserved|unused", re.I))
# A conversation with every role, rendered to find the tokens a template writes.
_SAMPLE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
    {"role": "user", "content": "V"},
    {"role": "assistant", "content": "B"},
]
_HH_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
_CONTENT_MARK = "\x00hafrm-content\x00"


def _as_messages(text: Text, role: str) -> list[dict]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def _rendered_samples(tokenizer) -> list[str]:
    if not tokenizer.chat_template:
        return []
    samples = []
    for messages in (_SAMPLE, _SAMPLE[1:]):  # some templates refuse a system turn
        try:
            samples.append(tokenizer.apply_chat_template(messages, tokenize=False))
        except Exception:  # a template's own raise_exception (roles it does not take)
            continue
    return samples


def end_token_ids(tokenizer) -> set[int]:
    """Ids a pad must never be: BOS, EOS, UNK, and every special token a rendered conversation holds."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for text in _rendered_samples(tokenizer):
        ids.update(i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i in special)
    return {i for i in ids if i is not None}


def choose_pad_token(tokenizer) -> tuple[str, str]:
    """-> (pad token, how it was found: "own", "reserved" or "added") under the rule in the module docstring."""
    forbidden = end_token_ids(tokenizer)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in forbidden:
        return tokenizer.pad_token, "own"
    added = sorted(tokenizer.added_tokens_decoder.items())
    for pattern in _PAD_NAMES:
        for token_id, token in added:
            if token.special and token_id not in forbidden and pattern.search(token.content):
                return token.content, "reserved"
    name, n = ADDED_PAD, 0
    while name in tokenizer.get_vocab():
        n += 1
        name = f"<|pad_{n}|>"
    return name, "added"


def ensure_pad_token(tokenizer) -> str:
    """Give `tokenizer` its pad token under the rule; -> how ("added": the model's embeddings must grow by one)."""
    token, how = choose_pad_token(tokenizer)
    if how == "added":
        tokenizer.add_special_tokens({"pad_token": token})
    else:
        tokenizer.pad_token = token
    return how


def pad_problem(tokenizer) -> str | None:
    """Why this tokenizer's pad token breaks the one-reward rule (None when it is fine)."""
    pad = tokenizer.pad_token_id
    if pad is None:
        return "it has no pad token"
    if pad in end_token_ids(tokenizer):
        role = "the EOS token" if pad == tokenizer.eos_token_id else "a token that rendered conversations contain"
        return f"its pad token {tokenizer.pad_token!r} is {role}"
    return None


def _hh_transcript(messages: list[dict]) -> str:
    return "".join(f"\n\n{_HH_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


def _prompt_text(tokenizer, prompt: Text, plain: bool) -> str:
    """The prompt as it opens the full text: templated with the generation prompt, plain, or an HH transcript."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(_as_messages(prompt, "user"), tokenize=False, add_generation_prompt=True)
    if plain:
        return prompt
    return _hh_transcript(_as_messages(prompt, "user")) + "\n\nAssistant:"


def _full_text(tokenizer, prompt: Text, response: Text, plain: bool) -> str:
    if tokenizer.chat_template:
        messages = _as_messages(prompt, "user") + _as_messages(response, "assistant")
        return tokenizer.apply_chat_template(messages, tokenize=False)
    if plain:
        return prompt + response
    # No template: conversations become HH transcripts, the form base models were trained on.
    return _hh_transcript(_as_messages(prompt, "user") + _as_messages(response, "assistant"))


def _is_plain(tokenizer, prompt: Text, response: Text) -> bool:
    """No template and two strings: the text is prompt + response as given."""
    return not tokenizer.chat_template and isinstance(prompt, str) and isinstance(response, str)


def render(tokenizer, prompt: Text, response: Text, where: str = "text") -> tuple[str, str, bool]:
    """-> (prompt text, prompt + response text, templated) for one (prompt, response)."""
    plain = _is_plain(tokenizer, prompt, response)
    prompt_text = _prompt_text(tokenizer, prompt, plain)
    full_text = _full_text(tokenizer, prompt, response, plain)
    templated = bool(tokenizer.chat_template)
    if templated and not full_text.startswith(prompt_text):
        raise DataError(f"{where}: the chat template renders the prompt differently alone and with its response")
    return prompt_text, full_text, templated


def encode(tokenizer, text: str, templated: bool) -> list[int]:
    """Token ids as TRL makes them: a rendered template carries its own special tokens, plain text takes the defaults."""
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def turn_suffix(tokenizer) -> str:
    """What the chat template writes after an assistant reply's content ("<|im_end|>\\n", "<|eot_id|>", "</s>", ...)."""
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": _CONTENT_MARK}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return text[text.rindex(_CONTENT_MARK) + len(_CONTENT_MARK) :]


def _special_texts(tokenizer) -> list[str]:
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]


def _strip_repeats(text: str, tokens: list[str], keep_one: bool) -> str:
    """Drop runs of `tokens` at the end of `text` (one left when keep_one and the run was of a kept token)."""
    changed = True
    while changed:
        changed = False
        for token in tokens:
            if token and text.endswith(token) and (not keep_one or text[: -len(token)].endswith(token)):
                text, changed = text[: -len(token)], True
    return text


@dataclass(frozen=True)
class _EndRule:
    pad: str | None  # stripped at both ends (None when the pad is itself an end token)
    suffix: str  # the template's text after a reply's content ("" without a template)
    suffix_specials: tuple[str, ...]  # special tokens inside it: the end-of-turn token(s)
    bos: str | None  # put back when the template writes it (templated), dropped when the tokenizer adds it (plain)
    eos: str | None  # dropped from the end of plain text


_RULES: dict[tuple, _EndRule] = {}


def _end_rule(tokenizer) -> _EndRule:
    key = (id(tokenizer), tokenizer.pad_token, tokenizer.chat_template, len(tokenizer))
    if key not in _RULES:
        if len(_RULES) > 64:
            _RULES.clear()
        pad = tokenizer.pad_token if tokenizer.pad_token and not pad_problem(tokenizer) else None
        bos = tokenizer.bos_token
        if tokenizer.chat_template:
            suffix = turn_suffix(tokenizer)
            specials = tuple(t for t in _special_texts(tokenizer) if t in suffix)
            start = tokenizer.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False)
            _RULES[key] = _EndRule(pad, suffix, specials, bos if bos and start.startswith(bos) else None, None)
        else:
            adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
            _RULES[key] = _EndRule(pad, "", (), bos if adds_bos else None, tokenizer.eos_token)
    return _RULES[key]


def canonical_text(tokenizer, text: str) -> str:
    """A full prompt + response text as a rollout sends it -> the text the reward model was trained to read.

    Pad tokens at either end are dropped. With a chat template: a text ending on the end-of-turn token
    (once or repeated, as left-over padding) gets the template's trailing text ("\\n" for ChatML and
    Gemma), and a missing leading BOS that the template writes is put back. Without one: trailing EOS
    tokens are dropped (hafrm scores plain text without EOS) and so is a leading BOS that the tokenizer
    adds by itself. A text that stops before any end-of-turn token (a reply cut by max_new_tokens) is
    scored as it is.
    """
    rule = _end_rule(tokenizer)
    if rule.pad:
        while text.startswith(rule.pad):
            text = text[len(rule.pad) :]
        text = _strip_repeats(text, [rule.pad], keep_one=False)
    if not tokenizer.chat_template:
        text = _strip_repeats(text, [rule.eos or ""], keep_one=False)
        return text[len(rule.bos) :] if rule.bos and text.startswith(rule.bos) else text
    text = _strip_repeats(text, list(rule.suffix_specials), keep_one=True)
    if not text.endswith(rule.suffix):
        for cut in range(len(rule.suffix) - 1, 0, -1):
            head = rule.suffix[:cut]
            if text.endswith(head) and any(head.endswith(s) for s in rule.suffix_specials):
                text += rule.suffix[cut:]
                break
    if rule.bos and not text.startswith(rule.bos):
        text = rule.bos + text
    return text


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of a full text after `canonical_text`, tokenised as its kind is (see `encode`)."""
    return encode(tokenizer, canonical_text(tokenizer, text), bool(tokenizer.chat_template))


def encode_response(tokenizer, prompt: Text, response: Text, where: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) whose concatenation is exactly the tokenised full text.

    The full text is tokenised once, so the ids are those every other loader makes from it; the
    prompt part is the longest prefix it shares with the prompt tokenised alone.
    """
    return next(encode_responses(tokenizer, prompt, [response], [where]))


def encode_responses(tokenizer, prompt: Text, responses: list[Text], wheres: list[str]) -> Iterator[tuple[list, list]]:
    """`encode_response` of each response to one prompt, in order and with the same ids (and errors, at the
    same response); the prompt alone is rendered and tokenised once, not once per response.

    Each prompt + response is still rendered and tokenised whole: a chat template renders a conversation
    in one piece, and tokens can merge across the prompt's end, so only the whole text gives the ids
    every other loader makes. A generator: a caller may stop between responses.
    """
    prompts: dict[bool, tuple[str, list[int]]] = {}  # plain or not (no template: a string prompt is both)
    templated = bool(tokenizer.chat_template)
    for response, where in zip(responses, wheres):
        plain = _is_plain(tokenizer, prompt, response)
        if plain not in prompts:
            prompt_text = _prompt_text(tokenizer, prompt, plain)
            prompts[plain] = prompt_text, encode(tokenizer, prompt_text, templated)
        prompt_text, prompt_ids = prompts[plain]
        full_text = _full_text(tokenizer, prompt, response, plain)
        if templated and not full_text.startswith(prompt_text):
            raise DataError(f"{where}: the chat template renders the prompt differently alone and with its response")
        full_ids = encode(tokenizer, full_text, templated)
        cut = common_prefix_length(prompt_ids, full_ids)
        if cut == len(full_ids):
            raise DataError(f"{where}: the response has no tokens")
        if full_ids[-1] == tokenizer.pad_token_id:
            raise DataError(
                f"{where}: the text ends on the pad token {tokenizer.pad_token!r}, where no reward can be read"
            )
        yield full_ids[:cut], full_ids[cut:]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    shorter = min(len(a), len(b))
    if a[:shorter] == b[:shorter]:  # the usual case (a prompt's ids open its full text's), compared in C
        return shorter
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
