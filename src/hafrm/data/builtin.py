"""hafrm's built-in preference set: verifiable instructions, and the checker that grades any reply.

    from hafrm.data.builtin import builtin_rows, check
    rows = builtin_rows("train")                 # [{"prompt", "chosen", "rejected", "subset"}, ...]
    check(rows[0]["prompt"], "ANY REPLY TEXT")   # fraction of the prompt's constraints met, 1.0 = all

Each prompt asks for a short text about a topic under one or two constraints (in the spirit of
IFEval: case, keywords, word counts, bullets, paragraphs, JSON, first word, final phrase, commas,
quotes) written in fixed templates, so `parse_constraints` reads them back from the prompt and
`check` grades any reply: it is the oracle for best-of-N and RLHF without a judge. The chosen reply
meets every constraint; the rejected one is the same kind of text with exactly one constraint
broken, whose kind is the row's `subset`. A content sentence is added to one side or the other so
that the longer reply is the chosen one in half the pairs (`length_rule_accuracy` measures it).
Splits are fixed (seeded) and use disjoint topics. All text here is written for hafrm.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .formats import to_pair
from .instructions import INCOMPATIBLE, KINDS, LENGTH_KINDS, Constraint, check, count_words, parse_constraints
from .length_rule import longer_is_better_accuracy

__all__ = [
    "SOURCE",
    "SPLITS",
    "split_and_count",
    "Constraint",
    "builtin_rows",
    "check",
    "count_words",
    "length_rule_accuracy",
    "parse_constraints",
]

SOURCE = "builtin"
SPLITS = {"train": 1000, "validation": 100, "test": 200}
_SEEDS = {"train": 1001, "validation": 2002, "test": 3003}
_TOPIC_SEED = 7  # shuffles TOPICS once: test takes the first 12, validation the next 6, train the rest
_HELD_OUT_TOPICS = {"test": (0, 12), "validation": (12, 18), "train": (18, None)}

TOPICS = (
    "the night sky|a public library|the honey bee|a vegetable garden|the local market|a mountain trail|"
    "the city bus|a wooden bridge|the morning tide|a paper map|the school choir|a bicycle|the kitchen table|"
    "a rainy afternoon|the village bakery|an old lighthouse|a chess club|the river delta|a pocket notebook|"
    "the weather forecast|a street festival|the compost heap|a night train|the desert cactus|a sailing boat|"
    "the town square|a board game|the fire station|a winter coat|the coral reef|a sourdough loaf|"
    "the museum guide|a hiking boot|the garden pond|a paper kite|the recycling centre|a solar panel|"
    "the snow plough|a pottery class|the bird feeder|a tea kettle|the harbour crane|a science fair|"
    "the football pitch|a jigsaw puzzle|the bus timetable|a violin lesson|the apple orchard|a camping stove|"
    "the lunar eclipse|a wind turbine|the flower market|a fishing village|the hot spring|a rope swing|"
    "the clock tower|a handwritten letter|the spice rack|a rowing club|the tram line"
).split("|")
TASKS = (
    "Describe {topic}.|Explain why {topic} matters to people.|Write a short note about {topic}.|"
    "Give a brief overview of {topic}.|Tell a curious friend about {topic}.|Share a few thoughts on {topic}.|"
    "Write a few lines about {topic}."
).split("|")
# Every sentence has exactly one {adj}: keyword constraints add, swap or avoid that word.
SENTENCES = """
{Topic} is {adj} in more ways than one.
Many people find {topic} {adj}.
At first glance, {topic} may not seem {adj}.
A closer look shows that {topic} is {adj} and well worth the time.
Over the years, {topic} has become more {adj}.
Most guides describe {topic} as {adj}.
Learning about {topic} is {adj} for young and old alike.
For a beginner, {topic} can feel {adj}.
In everyday life, {topic} turns out to be {adj}.
People who know {topic} well call it {adj}.
Even a short visit shows how {adj} {topic} can be.
Some say {topic} is {adj}, and they have a point.
There is something {adj} about {topic}.
With a little patience, {topic} becomes {adj} to almost anyone.
Every season, {topic} feels {adj} in a new way.
Few things are as {adj} as {topic} on a good day.
It is easy to see why {topic} seems {adj}.
""".strip().splitlines()
COMMA_SENTENCES = [sentence for sentence in SENTENCES if "," in sentence]
ADJECTIVES = (
    "useful popular simple important interesting familiar surprising valuable helpful peaceful "
    "practical remarkable rewarding charming fascinating relaxing reliable lively"
).split()
ADJECTIVE_PATTERN = re.compile(r"\b(" + "|".join(ADJECTIVES) + r")\b")
START_WORDS = "Overall Briefly Honestly Clearly Basically Certainly Naturally Indeed".split()
END_PHRASES = (
    "Thanks for reading.|That is all for now.|Hope this helps.|Let me know if you have questions.|"
    "Enjoy the rest of your day."
).split("|")
JSON_KEYS = "answer summary description text reply note".split()


def length_rule_accuracy(rows: list[dict]) -> float:
    """Accuracy of "the longer response (in words) is the better one" on preference rows; ties count half.

    length_rule_accuracy([{"prompt": "p", "chosen": "a b", "rejected": "a"}, {"prompt": "p", "chosen": "a", "rejected": "b"}])  # 0.75
    """
    if not rows:
        raise ValueError("length_rule_accuracy needs at least one row")
    return longer_is_better_accuracy([to_pair(row, SOURCE, index) for index, row in enumerate(rows)])


@dataclass(frozen=True)
class Draft:
    """A reply before layout: sentences in groups (bullets or paragraphs; one group for prose), and
    an optional sentence after the laid-out body (text trailing a JSON object or the final phrase)."""

    groups: tuple[tuple[str, ...], ...]
    after: str = ""

    def with_groups(self, groups: Sequence[Sequence[str]]) -> Draft:
        return Draft(tuple(tuple(group) for group in groups), self.after)


def render(draft: Draft, constraints: Sequence[Constraint]) -> str:
    """Lay `draft` out as `constraints` ask (word limits and keywords are the draft's business)."""
    rule = {constraint.kind: constraint.value for constraint in constraints}
    groups = [list(group) for group in draft.groups]
    if "start_word" in rule:
        first = groups[0][0]
        groups[0][0] = f"{rule['start_word']} {first[0].lower()}{first[1:]}"
    if "end_phrase" in rule:
        groups[-1].append(rule["end_phrase"])
    blocks = [" ".join(group) for group in groups]
    if "bullets" in rule:
        body = "\n".join(f"- {block}" for block in blocks)
    elif "paragraphs" in rule:
        body = "\n\n".join(blocks)
    elif "json" in rule:
        body = json.dumps({rule["json"]: " ".join(blocks)})
    else:
        body = " ".join(blocks)
    body = f"{body} {draft.after}" if draft.after else body
    if "case" in rule:
        body = body.upper() if rule["case"] == "capital" else body.lower()
    if "no_commas" in rule:
        body = body.replace(",", "")
    return f'"{body}"' if "quotes" in rule else body


@dataclass
class _Writer:
    """Writes the sentences of one pair: about its topic, never repeating a template or adjective
    while fresh ones are left, never using the prompt's keywords unless asked to."""

    rng: random.Random
    topic: str
    avoid: frozenset[str]  # the prompt's include/exclude words
    used: set[str] = field(default_factory=set)

    def fresh(self, options: Sequence[str]) -> str:
        allowed = [option for option in options if option not in self.avoid]
        choice = self.rng.choice([option for option in allowed if option not in self.used] or allowed)
        self.used.add(choice)
        return choice

    def sentence(self, adjective: str | None = None, templates: Sequence[str] = SENTENCES) -> str:
        capitalised = self.topic[0].upper() + self.topic[1:]
        return self.fresh(templates).format(
            topic=self.topic, Topic=capitalised, adj=adjective or self.fresh(ADJECTIVES)
        )

    def insert(self, draft: Draft, sentence: str | None = None) -> Draft:
        """`draft` with `sentence` (default: a fresh one) at a random place in a random group."""
        groups = [list(group) for group in draft.groups]
        group = self.rng.choice(groups)
        group.insert(self.rng.randint(0, len(group)), sentence or self.sentence())
        return draft.with_groups(groups)


# A breaker: (writer, base draft, the constraint to break) -> (chosen draft, rejected draft, the
# constraints the rejected reply is rendered with in place of the broken one).
Broken = tuple[Draft, Draft, list[Constraint]]


def _break_case(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    opposite = Constraint("case", "lowercase" if rule.value == "capital" else "capital")
    return draft, draft, writer.rng.choice([[], [], [opposite]])  # natural case, or the other case


def _break_include_word(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    chosen = writer.insert(draft, writer.sentence(adjective=rule.value))
    if writer.rng.random() < 0.5:
        return chosen, draft, [rule]  # the rejected reply lacks the sentence with the word
    other = writer.fresh(ADJECTIVES)
    swapped = [[re.sub(rf"\b{rule.value}\b", other, sentence) for sentence in group] for group in chosen.groups]
    return chosen, chosen.with_groups(swapped), [rule]


def _break_exclude_word(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    if writer.rng.random() < 0.5:
        return draft, writer.insert(draft, writer.sentence(adjective=rule.value)), [rule]
    groups = [list(group) for group in draft.groups]
    group = writer.rng.choice(groups)
    index = writer.rng.randrange(len(group))
    group[index] = ADJECTIVE_PATTERN.sub(rule.value, group[index], count=1)  # its adjective becomes the word
    return draft, draft.with_groups(groups), [rule]


def _break_word_limit(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    longer = draft
    for _ in range(writer.rng.randint(1, 2)):
        longer = writer.insert(longer)
    return (draft, longer, [rule]) if rule.kind == "max_words" else (longer, draft, [rule])


def _break_group_count(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    """One bullet or paragraph too few (merged or dropped) or too many (split off or added)."""
    rng, groups = writer.rng, [list(group) for group in draft.groups]
    splittable = [index for index, group in enumerate(groups) if len(group) > 1]
    mode = rng.choice(["merge", "drop", "add"] + (["split"] if splittable else []))
    if mode == "merge":
        index = rng.randrange(len(groups) - 1)
        groups[index : index + 2] = [groups[index] + groups[index + 1]]
    elif mode == "drop":
        del groups[rng.randrange(len(groups))]
    elif mode == "add":
        groups.insert(rng.randint(0, len(groups)), [writer.sentence()])
    else:
        index = rng.choice(splittable)
        cut = rng.randint(1, len(groups[index]) - 1)
        groups[index : index + 1] = [groups[index][:cut], groups[index][cut:]]
    return draft, draft.with_groups(groups), [rule]


def _break_json(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    mode = writer.rng.choice(["plain", "other key", "trailing text"])
    if mode == "plain":
        return draft, draft, []
    if mode == "other key":
        return draft, draft, [Constraint("json", writer.rng.choice([key for key in JSON_KEYS if key != rule.value]))]
    return draft, Draft(draft.groups, writer.sentence()), [rule]


def _break_start_word(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    other = Constraint("start_word", writer.rng.choice([word for word in START_WORDS if word != rule.value]))
    return draft, draft, writer.rng.choice([[], [other]])  # no opening word, or another one


def _break_end_phrase(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    mode = writer.rng.choice(["missing", "followed", "early"])
    if mode == "missing":
        return draft, draft, []
    if mode == "followed":
        return draft, Draft(draft.groups, writer.sentence()), [rule]
    *first_groups, last = draft.groups
    last = last[:-1] + (rule.value,) + last[-1:]  # the phrase comes before the last sentence
    return draft, Draft((*first_groups, last), draft.after), []


def _break_no_commas(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    if not any("," in sentence for group in draft.groups for sentence in group):
        draft = writer.insert(draft, writer.sentence(templates=COMMA_SENTENCES))
    return draft, draft, []  # the chosen reply is rendered without its commas, the rejected one with


def _break_quotes(writer: _Writer, draft: Draft, rule: Constraint) -> Broken:
    return draft, draft, []


BREAKERS: dict[str, Callable[[_Writer, Draft, Constraint], Broken]] = {
    "case": _break_case,
    "include_word": _break_include_word,
    "exclude_word": _break_exclude_word,
    "max_words": _break_word_limit,
    "min_words": _break_word_limit,
    "bullets": _break_group_count,
    "paragraphs": _break_group_count,
    "json": _break_json,
    "start_word": _break_start_word,
    "end_phrase": _break_end_phrase,
    "no_commas": _break_no_commas,
    "quotes": _break_quotes,
}


def _choose_constraints(rng: random.Random, broken_kind: str) -> list[Constraint]:
    """`broken_kind` and, in 60% of prompts, one compatible kind; word limits are set after rendering."""
    kinds = [broken_kind]
    if rng.random() < 0.6:
        others = [kind for kind in KINDS if kind != broken_kind and frozenset((kind, broken_kind)) not in INCOMPATIBLE]
        kinds.append(rng.choice(others))
    rng.shuffle(kinds)
    include_word, exclude_word = rng.sample(ADJECTIVES, 2)
    values = {
        "case": rng.choice(["capital", "lowercase"]),
        "include_word": include_word,
        "exclude_word": exclude_word,
        "bullets": rng.randint(2, 5),
        "paragraphs": rng.randint(2, 4),
        "json": rng.choice(JSON_KEYS),
        "start_word": rng.choice(START_WORDS),
        "end_phrase": rng.choice(END_PHRASES),
    }
    return [Constraint(kind, values.get(kind)) for kind in kinds]


def _base_draft(writer: _Writer, constraints: list[Constraint]) -> Draft:
    value = {constraint.kind: constraint.value for constraint in constraints}
    n_groups = value.get("bullets") or value.get("paragraphs")
    if not n_groups:
        return Draft((tuple(writer.sentence() for _ in range(writer.rng.randint(2, 4))),))
    sizes = [writer.rng.choice([1, 1, 2]) for _ in range(n_groups)]
    return Draft(tuple(tuple(writer.sentence() for _ in range(size)) for size in sizes))


def _pad(writer: _Writer, chosen: Draft, rejected: Draft, rules: tuple[list, list], chosen_longer: bool):
    """Add content sentences to one side until it is the longer one in words, as `chosen_longer` asks."""
    while True:
        chosen_words, rejected_words = count_words(render(chosen, rules[0])), count_words(render(rejected, rules[1]))
        if chosen_words != rejected_words and (chosen_words > rejected_words) == chosen_longer:
            return chosen, rejected
        if chosen_longer:
            chosen = writer.insert(chosen)
        else:
            rejected = writer.insert(rejected)


def _word_limit(rng: random.Random, kind: str, broken_kind: str, chosen_words: int, rejected_words: int) -> int:
    """A limit the chosen reply meets, and the rejected one too unless `kind` is the broken rule."""
    if kind == broken_kind:  # max: chosen <= limit < rejected; min: rejected < limit <= chosen
        low, high = (chosen_words, rejected_words - 1) if kind == "max_words" else (rejected_words + 1, chosen_words)
        round_limits = [n for n in range(low, high + 1) if n % 5 == 0]
        return rng.choice(round_limits or list(range(low, high + 1)))
    if kind == "max_words":
        return 5 * math.ceil((max(chosen_words, rejected_words) + rng.randint(0, 8)) / 5)
    return max(1, 5 * ((min(chosen_words, rejected_words) - rng.randint(0, 8)) // 5))


def _make_row(rng: random.Random, topic: str, broken_kind: str, chosen_longer: bool) -> dict:
    constraints = _choose_constraints(rng, broken_kind)
    value = {constraint.kind: constraint.value for constraint in constraints}
    writer = _Writer(rng, topic, frozenset(value[k] for k in ("include_word", "exclude_word") if k in value))
    broken = next(constraint for constraint in constraints if constraint.kind == broken_kind)
    chosen, rejected, replacement = BREAKERS[broken_kind](writer, _base_draft(writer, constraints), broken)
    if "include_word" in value and broken_kind != "include_word":
        sentence = writer.sentence(adjective=value["include_word"])
        chosen, rejected = writer.insert(chosen, sentence), writer.insert(rejected, sentence)
    rejected_rules = [constraint for constraint in constraints if constraint.kind != broken_kind] + replacement
    if broken_kind not in LENGTH_KINDS:
        chosen, rejected = _pad(writer, chosen, rejected, (constraints, rejected_rules), chosen_longer)
    chosen_text, rejected_text = render(chosen, constraints), render(rejected, rejected_rules)
    counts = (count_words(chosen_text), count_words(rejected_text))
    constraints = [
        replace(c, value=_word_limit(rng, c.kind, broken_kind, *counts)) if c.kind in LENGTH_KINDS else c
        for c in constraints
    ]
    prompt = " ".join([rng.choice(TASKS).format(topic=topic)] + [c.instruction() for c in constraints])
    return {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text, "subset": broken_kind}


def split_topics(split: str) -> list[str]:
    """The topics of one split; no topic, hence no prompt, is in two splits."""
    order = list(TOPICS)
    random.Random(_TOPIC_SEED).shuffle(order)
    start, stop = _HELD_OUT_TOPICS[split]
    return order[start:stop]


def split_and_count(text: str) -> tuple[str, int | None]:
    """`test` -> ("test", None); `test@2000` -> ("test", 2000): a built-in split and how many pairs to make."""
    split, at, count = text.partition("@")
    if not at:
        return split, None
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"builtin:{text}: the pair count after @ must be a whole number of at least 1, got {count!r}")
    return split, int(count)


def builtin_rows(split: str = "train", count: int | None = None) -> list[dict]:
    """The rows of one split in TRL's standard format plus `subset`, the kind of the broken constraint.

    Deterministic: each split has its own seed. Broken kinds take turns so each is equally common,
    and each kind alternately gets the longer chosen reply and the longer rejected one. `count` pairs
    (default: the split's size in SPLITS), drawn from the split's own topics; rows come out in the
    same order whatever the count, so a smaller set is the start of a larger one.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of the built-in set; valid splits: {', '.join(SPLITS)}")
    count = SPLITS[split] if count is None else count
    if count < 1:
        raise ValueError(f"the built-in {split} split needs a pair count of at least 1, got {count}")
    rng, topics, kinds = random.Random(_SEEDS[split]), split_topics(split), list(KINDS)
    rows, prompts = [], set()
    for _ in range(count * 20):  # a repeated prompt is skipped; far fewer tries are needed
        index = len(rows)
        row = _make_row(rng, rng.choice(topics), kinds[index % len(kinds)], (index // len(kinds)) % 2 == 0)
        if row["prompt"] not in prompts:
            prompts.add(row["prompt"])
            rows.append(row)
        if len(rows) == count:
            return rows
    raise RuntimeError(f"could not make {count} distinct prompts for the {split} split")
