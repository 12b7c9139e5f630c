"""The length-only baseline: judge a pair by which response has more words.

    from hafrm.data.length_rule import longer_is_better_accuracy
    longer_is_better_accuracy(pairs)    # the bar a reward model has to clear on these pairs

Its own module so that the built-in set (which checks its pairs against it) and the statistics
(which read data through `load`, which reads the built-in set) do not import each other.
"""

from __future__ import annotations

from .formats import PreferencePair, Text
from .instructions import count_words


def _plain(text: Text) -> str:
    return text if isinstance(text, str) else "\n".join(message["content"] for message in text)


def word_count(text: Text) -> int:
    return count_words(_plain(text))


def longer_is_better_accuracy(pairs: list[PreferencePair]) -> float:
    """Accuracy of judging by length alone (more words wins, ties count half): the bar to clear."""
    wins = 0.0
    for pair in pairs:
        chosen, rejected = word_count(pair.chosen), word_count(pair.rejected)
        wins += 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
    return wins / len(pairs)
