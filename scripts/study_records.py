"""Keep a long experiment's records in git, and pick the experiment up from them in a new checkout.

    python scripts/study_records.py save study-full      # runs/experiments/study-full -> docs/results/
    python scripts/study_records.py restore study-full   # docs/results/study-full-runs -> runs/experiments/

`save` copies what a reader and a later run need, never weights: results.md as docs/results/NAME.md,
each plot as docs/results/NAME-PLOT.png, results.json and, per finished run and seed, hafrm.json,
README.md, trainer-log.json and every eval-SET.json into docs/results/NAME-runs/RUN/seedS/ (a best-of-N
design's samples and scores into docs/results/NAME-runs/bon/).

`restore` puts each saved finished run back where `hafrm experiment` looks for it (a directory with
hafrm.json is a finished run; an eval-SET.json is a finished evaluation), so the experiment trains and
evaluates only what is missing and rewrites its tables from every run. A restored run has no weights:
a design that loads the model again needs it trained again, except best-of-N, whose samples and scores
(bon/samples.jsonl, bon/scores/LABEL.json) are saved and restored too: a run whose scores of the samples
are kept is not loaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ("hafrm.json", "README.md", "trainer-log.json")
# a best-of-N design's samples and each reward model's scores of them: with these, the design tabulates
# again without loading a model (the oracle judges on the spot)
SCORED = ("bon/samples.jsonl", "bon/samples.meta.json", "bon/scores/*.json")


def save(name: str, runs: Path, docs: Path) -> list[Path]:
    source = runs / name
    if not source.is_dir():
        raise SystemExit(f"error: {source} does not exist: run `hafrm experiment {name}` first")
    written = []
    kept = docs / f"{name}-runs"
    for record in sorted(source.glob("*/seed*/hafrm.json")):
        run = record.parent
        target = kept / run.relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for path in [run / f for f in RECORDS] + sorted(run.glob("eval-*.json")):
            if path.is_file():
                shutil.copyfile(path, target / path.name)
                written.append(target / path.name)
    for pattern in SCORED:
        for path in sorted(source.glob(pattern)):
            target = kept / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
    if (source / "results.md").is_file():
        shutil.copyfile(source / "results.md", docs / f"{name}.md")
        written.append(docs / f"{name}.md")
    if (source / "results.json").is_file():
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "results.json", kept / "results.json")
        written.append(kept / "results.json")
    for plot in sorted(source.glob("*.png")):
        shutil.copyfile(plot, docs / f"{name}-{plot.name}")
        written.append(docs / f"{name}-{plot.name}")
    return written


def restore(name: str, runs: Path, docs: Path) -> list[Path]:
    kept = docs / f"{name}-runs"
    if not kept.is_dir():
        raise SystemExit(f"error: {kept} does not exist: nothing of {name} was saved")
    restored = []
    for record in sorted(kept.glob("*/seed*/hafrm.json")):
        target = runs / name / record.parent.relative_to(kept)
        if (target / "hafrm.json").is_file():
            continue  # finished here already: this checkout's own run wins
        if target.exists() and any(target.iterdir()):
            raise SystemExit(f"error: {target} holds an unfinished run; move it away before restoring over it")
        target.mkdir(parents=True, exist_ok=True)
        # hafrm.json last: it is what marks the run finished
        for path in sorted(p for p in record.parent.iterdir() if p.name != "hafrm.json") + [record]:
            shutil.copyfile(path, target / path.name)
        restored.append(target)
    for pattern in SCORED:
        for path in sorted(kept.glob(pattern)):
            target = runs / name / path.relative_to(kept)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                restored.append(target)
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("name", help="the experiment's name (its output_dir is runs/experiments/NAME)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "experiments")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args(argv)
    if args.action == "save":
        done = save(args.name, args.runs, args.docs)
        print(f"saved {len(done)} files of {args.name} under {args.docs}")
    else:
        done = restore(args.name, args.runs, args.docs)
        print(f"restored {len(done)} finished runs and kept files of {args.name}: " + ", ".join(str(p) for p in done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
