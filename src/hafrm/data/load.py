"""Turn a `--data` value into preference pairs: named sources, files, hub ids, mixtures, splits.

    from hafrm.data.load import load_data
    pairs, reports = load_data("hh-harmless:train,pairs.jsonl:0.5", skip_bad_rows=True)
    for report in reports:
        print(report.summary())

Grammar: a comma-separated list of items `TARGET[:SPLIT][:WEIGHT]`, where TARGET is
  - `builtin`, hafrm's own verifiable instruction-following set (splits train / validation / test);
  - a named source (`hh-harmless`, `hh-helpful`, `beaver-safe`, `alpaca-human-pref`, `chatbot-arena`,
    `pandalm`); a source with one split (`pandalm`: `test`) reads it when none is given;
  - a local json / jsonl(.gz) / parquet file: SPLIT `train` / `test` carves it 90% / 10% with a fixed
    seed, so one file can serve training and a held-out test;
  - a hub dataset id `org/name` (SPLIT is the hub split).
`SPLIT@N` keeps N of the split's pairs, drawn with a fixed seed (the same on every run, seed and machine, in
the split's order): `hh-harmless:train@1631` is a fixed 1,631-pair subset, as `builtin:train@250` is.
WEIGHT resamples that item: 0.5 keeps half its pairs, 2 uses every pair twice (seeded). With
`mixture="even"` every item is first cut to the size of the smallest, as in the paper's mixed
experiment. Every pair carries its item's name as `source`, which evaluation reports per.

Rows that cannot be used stop the load with one line naming file, row (and line), field and reason;
with `skip_bad_rows` they are left out, counted per reason, listed in `LoadReport.skipped`, and
`write_skipped_rows` saves them all. Rows a source's own rule leaves out (ties, ...) are always counted.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .builtin import SPLITS as BUILTIN_SPLITS
from .builtin import builtin_rows, split_and_count
from .converters import converter_for, detect_format
from .formats import (
    BadRow,
    DataError,
    FilteredRow,
    PreferencePair,
    bad_row_message,
    read_rows_and_lines,
    to_pair,
    undecodable_text,
)
from .sources import CARVE_SEED, SOURCES, carve_split, load_source

BUILTIN = "builtin"


@dataclass
class DataItem:
    target: str
    split: str | None = None
    weight: float | None = None

    @property
    def name(self) -> str:
        """The `source` tag of its pairs: the source name or the file name, with a non-default split."""
        base = Path(self.target).name if Path(self.target).is_file() else self.target
        return f"{base}:{self.split}" if self.split else base


@dataclass(frozen=True)
class SkippedRow:
    """A bad row left out with --skip-bad-rows: its index in the item's rows, and why."""

    row: int
    reason: str  # BadRow.reason, the category it is counted under
    field: str | None  # the column at fault, None for the row as a whole
    detail: str
    line: int | None = None  # 1-based line in a JSON-lines file, where known


SHOWN_ROWS = 5  # skipped row numbers a summary lists per reason; write_skipped_rows has them all


def _row_numbers(rows: list[int]) -> str:
    shown = ", ".join(str(row) for row in rows[:SHOWN_ROWS])
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}" + (", ..." if len(rows) > SHOWN_ROWS else "")


@dataclass
class LoadReport:
    source: str
    location: str
    rows: int = 0
    pairs: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)  # rows left out with --skip-bad-rows, in row order
    filtered: Counter = field(default_factory=Counter)  # reason -> rows the source's rule leaves out
    used: int | None = None  # pairs after mixture weighting, when it changed the count

    @property
    def bad(self) -> Counter:
        """reason -> rows skipped with --skip-bad-rows."""
        return Counter(skipped.reason for skipped in self.skipped)

    def summary(self) -> str:
        """One line: pairs, rows, what was left out; skipped rows show their first row numbers per reason.

        'd.jsonl: 4 pairs from 6 rows (d.jsonl); skipped bad rows: identical responses 1 (row 4), ...'
        """
        text = f"{self.source}: {self.pairs} pairs from {self.rows} rows ({self.location})"
        if self.filtered:
            text += "; left out by the source's rule: " + ", ".join(f"{r} {n}" for r, n in self.filtered.most_common())
        if self.skipped:
            rows_by_reason: dict[str, list[int]] = {}
            for skipped in self.skipped:
                rows_by_reason.setdefault(skipped.reason, []).append(skipped.row)
            text += "; skipped bad rows: " + ", ".join(
                f"{reason} {len(rows_by_reason[reason])} ({_row_numbers(rows_by_reason[reason])})"
                for reason, _ in self.bad.most_common()
            )
        if self.used is not None and self.used != self.pairs:
            text += f"; {self.used} used in the mixture"
        return text


def write_skipped_rows(reports: Iterable[LoadReport], path: str | Path) -> int:
    """Write every skipped row of `reports` to `path` as JSON lines -> how many rows were written.

        if any(report.skipped for report in reports):
            write_skipped_rows(reports, Path(output_dir) / "skipped-rows.jsonl")

    One line per row: {"source", "location", "row", "line", "field", "reason", "detail"} (`line` null
    outside JSON-lines files). The file is written under a temporary name and renamed, so a reader
    never sees half of it; with nothing skipped it is an empty file.
    """
    path = Path(path)
    lines = [
        json.dumps({"source": report.source, "location": report.location, **asdict(skipped)})
        for report in reports
        for skipped in report.skipped
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text("".join(line + "\n" for line in lines))
    os.replace(partial, path)
    return len(lines)


def _parse_weight(text: str) -> float | None:
    try:
        weight = float(text)
    except ValueError:
        return None
    if weight <= 0:
        raise DataError(f"mixture weight must be positive, got {text}")
    return weight


def parse_spec(text: str) -> list[DataItem]:
    """`a:train:0.5,b` -> [DataItem("a", "train", 0.5), DataItem("b")]."""
    items = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        pieces = part.split(":")
        weight = _parse_weight(pieces[-1]) if len(pieces) > 1 else None
        if weight is not None:
            pieces = pieces[:-1]
        if len(pieces) > 2:
            raise DataError(f"{part!r}: expected TARGET[:SPLIT][:WEIGHT]")
        items.append(DataItem(pieces[0], pieces[1] if len(pieces) == 2 else None, weight))
    if not items:
        raise DataError(f"--data {text!r} names no data")
    return items


def _carve_file(rows: list, lines: list[int] | None, split: str, location: str) -> tuple[list, list[int] | None]:
    if split not in ("train", "test"):
        raise DataError(f"{location}: a file's split is `train` (90%) or `test` (10%), not {split!r}")
    # The same fixed 90/10 carve as the single-split named sources; it depends on the count alone,
    # so carving the line numbers the same way keeps each row's line.
    return carve_split(rows, split), None if lines is None else carve_split(lines, split)


def split_count(item: DataItem) -> tuple[str | None, int | None]:
    """The split and the `@N` pair count of a named source's, file's or hub set's item (the built-in set reads
    its own `@N`)."""
    if item.target == BUILTIN or not item.split or "@" not in item.split:
        return item.split, None
    split, _, count = item.split.partition("@")
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"{item.target}:{item.split}: the pair count after @ must be a whole number of at least 1")
    return split or None, int(count)


def fixed_subset(pairs: list, count: int, location: str) -> list:
    """`count` of `pairs`, drawn with CARVE_SEED and kept in their order."""
    if count > len(pairs):
        raise DataError(f"{location}: @{count} asks for more pairs than its {len(pairs)}")
    keep = sorted(random.Random(CARVE_SEED).sample(range(len(pairs)), count))
    return [pairs[index] for index in keep]


def raw_rows(item: DataItem, default_split: str) -> tuple[list, list[int] | None, str, str]:
    """-> (rows, their 1-based lines in a JSON-lines file or None, location, format hint or "auto") for one item."""
    if item.target == BUILTIN:  # builtin[:SPLIT[@N]]
        try:
            split, count = split_and_count(item.split or default_split)
            rows = builtin_rows(split, count)
        except ValueError as error:
            raise DataError(str(error)) from None
        size = f", {count} pairs" if count else ""
        return rows, None, f"hafrm built-in set, {split} split{size}", "trl"
    split, _ = split_count(item)
    if item.target in SOURCES:
        splits = SOURCES[item.target].splits
        rows, location = load_source(item.target, split or (splits[0] if len(splits) == 1 else default_split))
        return rows, None, location, item.target
    if Path(item.target).is_file():
        rows, lines = read_rows_and_lines(item.target)
        if split:
            rows, lines = _carve_file(rows, lines, split, item.target)
        return rows, lines, item.target if not split else f"{item.target} ({split} part)", "auto"
    spec = f"{item.target}:{split}" if split else item.target
    rows, lines = read_rows_and_lines(spec)
    return rows, lines, spec, "auto"


def _gives_prompts(rows: list) -> bool:
    """Whether a TRL-format data set gives its prompts: then every row must (any row decides, so that
    a first row without one is caught as well as a later one)."""
    return any(isinstance(row, dict) and row.get("prompt") is not None for row in rows)


def _row_pair(row, convert, source: str, index: int, explicit_prompt: bool) -> PreferencePair:
    """One raw row -> PreferencePair, or BadRow / FilteredRow."""
    if not isinstance(row, dict):
        raise BadRow("not an object", f"expected a JSON object, got {type(row).__name__}")
    undecodable = undecodable_text(row)  # on the raw row, so the file's own column is named
    if undecodable:
        raise undecodable
    return to_pair(convert(row), source, index, explicit_prompt)


def convert_rows(rows: list, source: str, location: str, fmt: str, skip_bad_rows: bool, lines: list[int] | None = None):
    """Raw rows -> (pairs, LoadReport); a bad row raises a one-line DataError unless skipped.

    `lines[i]` is the line of `rows[i]` in a JSON-lines file, named in errors and skipped rows.
    """
    if not rows:
        raise DataError(f"{location}: no rows")
    fmt = detect_format(rows[0], location) if fmt == "auto" else fmt
    convert = converter_for(fmt)
    explicit_prompt = fmt != "trl" or _gives_prompts(rows)  # other formats' converters always give a prompt
    report = LoadReport(source, location, rows=len(rows))
    pairs = []
    for index, row in enumerate(rows):
        try:
            pairs.append(_row_pair(row, convert, source, index, explicit_prompt))
        except FilteredRow as rule:
            report.filtered[rule.reason] += 1
        except BadRow as error:
            line = lines[index] if lines is not None else None
            if not skip_bad_rows:
                hint = "--skip-bad-rows leaves such rows out"
                raise DataError(bad_row_message(location, index, error, line, hint)) from None
            report.skipped.append(SkippedRow(index, error.reason, error.field, error.detail, line))
    report.pairs = len(pairs)
    if not pairs:
        raise DataError(f"{location}: no usable pairs ({report.summary()})")
    return pairs, report


def _resample(pairs: list, count: int, rng: random.Random) -> list:
    if count <= len(pairs):
        return rng.sample(pairs, count)
    return pairs + [rng.choice(pairs) for _ in range(count - len(pairs))]


def load_data(
    text: str,
    fmt: str = "auto",
    skip_bad_rows: bool = False,
    default_split: str = "train",
    mixture: str = "concat",
    seed: int = 0,
) -> tuple[list[PreferencePair], list[LoadReport]]:
    """All items of a `--data` value, weighted and mixed -> (pairs, one report per item)."""
    if mixture not in ("concat", "even"):
        raise DataError(f"unknown mixture {mixture!r}; choose concat or even")
    items = parse_spec(text)
    loaded = []
    for item in items:
        rows, lines, location, hint = raw_rows(item, default_split)
        item_format = fmt if fmt != "auto" else hint
        pairs, report = convert_rows(rows, item.name, location, item_format, skip_bad_rows, lines)
        count = split_count(item)[1]
        if count is not None:
            pairs = fixed_subset(pairs, count, location)
            report.used = len(pairs)
        loaded.append((item, pairs, report))
    smallest = min(len(pairs) for _, pairs, _ in loaded)
    rng = random.Random(seed)
    mixed, reports = [], []
    for item, pairs, report in loaded:
        count = smallest if mixture == "even" else len(pairs)
        count = round(count * (item.weight or 1.0))
        if count != len(pairs):
            pairs = _resample(pairs, max(count, 1), rng)
            report.used = len(pairs)
        mixed.extend(pairs)
        reports.append(report)
    return mixed, reports


def read_pairs(text: str, fmt: str = "auto", skip_bad_rows: bool = False) -> list[PreferencePair]:
    """Pairs of a `--data` value without the reports (for scripts and tests)."""
    return load_data(text, fmt, skip_bad_rows)[0]


def has_split(target: str, split: str) -> bool:
    """Whether a single named source offers `split` (the built-in set has a validation split)."""
    if target == BUILTIN:
        return split_and_count(split)[0] in BUILTIN_SPLITS
    return target in SOURCES and split in SOURCES[target].splits
