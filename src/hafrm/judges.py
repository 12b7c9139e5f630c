"""Judges of best-of-N samples: the built-in oracle, a gold reward model, an OpenAI-compatible chat endpoint.

    from hafrm.judges import oracle_scores, EndpointJudge
    oracle_scores(prompts, samples)                       # check(prompt, reply) of every sample, in [0, 1]
    EndpointJudge("http://127.0.0.1:8000/v1", "gpt-4o").scores(prompt, replies, index)   # wins / (N − 1)

The oracle is exact for built-in prompts (the fraction of the prompt's constraints a reply meets),
so its ties are frequent and real. A gold reward model (GRM's protocol: a stronger RM ranks the N
samples) gives each sample its reward. The endpoint judge compares every pair of a prompt's samples
once, in an order drawn from (seed, prompt, pair), as the HAF-RM paper asked GPT-4; a sample's score
is its wins over the N − 1 others, a tie or an answer that names neither counting half.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from .data.instructions import check

JUDGE_SYSTEM = "You compare two answers to one request and say which one follows the request better."
JUDGE_TEMPLATE = (
    "Request:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Which answer follows the request better, including every instruction it gives? Reply with the single letter "
    "A or B."
)


def prompt_text(prompt) -> str:
    """A prompt as plain text: a string as it is, chat messages as `role: content` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{message['role']}: {message['content']}" for message in prompt)


def oracle_scores(prompts: Sequence, samples: Sequence[Sequence[str]]) -> list[list[float]]:
    """The built-in checker's grade of every sample; a prompt it cannot read is an error naming it."""
    grades = []
    for index, (prompt, replies) in enumerate(zip(prompts, samples, strict=True)):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {index}: the oracle grades built-in prompts (plain text), not chat messages")
        try:
            grades.append([check(prompt, reply) for reply in replies])
        except ValueError as error:
            raise ValueError(f"prompt {index}: {error} (judge with --judge DIR or URL instead)") from None
    return grades


def verdict(answer: str) -> str | None:
    """'A' or 'B' from a judge's answer (its first letter A or B standing alone), else None."""
    for token in answer.replace("*", " ").replace(":", " ").replace(".", " ").split():
        if token.upper() in {"A", "B"}:
            return token.upper()
    return None


class EndpointJudge:
    """Pairwise comparisons by an OpenAI-compatible `/chat/completions` endpoint, order randomised."""

    def __init__(
        self, url: str, model: str, api_key: str | None = None, seed: int = 0, timeout: float = 60.0, retries: int = 2
    ):
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.api_key, self.seed, self.timeout, self.retries = model, api_key, seed, timeout, retries
        self.calls = 0
        self.unreadable = 0

    def _ask(self, text: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}],
                "temperature": 0,
                "max_tokens": 8,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = None
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read())
                self.calls += 1
                return str(reply["choices"][0]["message"]["content"])
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
                last_error = error
                if attempt < self.retries:
                    time.sleep(0.5 * 2**attempt)
            except (KeyError, IndexError, TypeError, ValueError) as error:
                raise ValueError(f"judge {self.url}: the reply is not a chat completion ({error!r})") from None
        reason = getattr(last_error, "reason", last_error)
        raise ValueError(f"judge {self.url} does not answer ({reason}) after {self.retries + 1} tries") from None

    def prefers_first(self, prompt, first: str, second: str, order_key: str) -> float:
        """1.0 when `first` wins, 0.0 when `second` does, 0.5 for a tie or an unreadable answer."""
        swap = random.Random(f"{self.seed}|{order_key}").random() < 0.5
        a, b = (second, first) if swap else (first, second)
        choice = verdict(self._ask(JUDGE_TEMPLATE.format(prompt=prompt_text(prompt), a=a, b=b)))
        if choice is None:
            self.unreadable += 1
            return 0.5
        first_won = (choice == "A") != swap
        return 1.0 if first_won else 0.0

    def scores(self, prompt, replies: Sequence[str], index: int) -> list[float]:
        """Each reply's wins over the others (ties and unreadable answers count half), divided by N − 1."""
        n = len(replies)
        if n < 2:
            return [0.5] * n
        wins = [0.0] * n
        for i in range(n):
            for j in range(i + 1, n):
                first = self.prefers_first(prompt, replies[i], replies[j], f"{index}|{i}|{j}")
                wins[i] += first
                wins[j] += 1.0 - first
        return [w / (n - 1) for w in wins]
