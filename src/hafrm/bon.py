"""`hafrm bon`: sample N responses per prompt, score them with reward models, pick the best, judge the picks.

    hafrm bon --prompts builtin:test --limit 50 --n 8 --reward runs/haf,runs/rm --output-dir runs/bon

Output directory:
    samples.meta.json   what drew the samples (policy, prompts, n, temperature, top-p, length, seed, batch)
    samples.jsonl       one line per prompt: {"index", "prompt", "responses": [N], "finished": [N]}
    scores/LABEL.json   one reward model's score of every sample (recomputed only when the samples change)
    judge-*.json(l)     the judge's score of every sample (the endpoint judge's file is resumable per prompt)
    report.json / .md   recall, win rates, agreement, the best-of-N curve; bon-curve.png

Sampling is resumable and exact: prompts are drawn in fixed batches, each batch from its own seed
(seed + index of its first prompt), and a rerun keeps the complete batches already written and
draws the rest. A samples file written with other settings or for other prompts is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from .config import BonConfig
from .sampling import Policy, read_prompts
from .scoring import RewardModel, reward_kind

SAMPLES, META = "samples.jsonl", "samples.meta.json"
SAMPLING_FIELDS = ("policy", "prompts", "n", "temperature", "top_p", "max_new_tokens", "seed", "batch_size")


# ---------------------------------------------------------------- sampling


def _meta(cfg: BonConfig) -> dict:
    return {name: getattr(cfg, name) for name in SAMPLING_FIELDS}


def _check_meta(directory: Path, meta: dict) -> None:
    path = directory / META
    if not path.is_file():
        if (directory / SAMPLES).is_file():
            raise ValueError(
                f"{directory / SAMPLES} has no {META}: it was not written by hafrm bon; use another --output-dir"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=2) + "\n")
        return
    stored = json.loads(path.read_text())
    changed = [f"{key} {stored.get(key)!r} -> {meta[key]!r}" for key in meta if stored.get(key) != meta[key]]
    if changed:
        raise ValueError(
            f"{directory / SAMPLES} was drawn with other settings ({'; '.join(changed)}); use another --output-dir "
            "or the same settings, so samples of two set-ups are never mixed"
        )


def read_samples(directory: Path, prompts: list | None = None) -> list[dict]:
    """The sample lines written so far (a last line cut by a crash is left out), checked against `prompts`."""
    path = directory / SAMPLES
    if not path.is_file():
        return []
    raw = path.read_text(encoding="utf-8").splitlines()
    lines = []
    for number, line in enumerate(raw):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(raw) - 1:
                raise ValueError(
                    f"{path}: line {number + 1} is not JSON (only a last line cut by a crash is skipped)"
                ) from None
    for number, line in enumerate(lines):
        if line.get("index") != number or (
            prompts is not None and number < len(prompts) and line["prompt"] != prompts[number]
        ):
            raise ValueError(
                f"{path}: line {number + 1} holds another prompt than --prompts gives; use another --output-dir"
            )
    return lines


def draw_samples(cfg: BonConfig, prompts: list) -> list[dict]:
    """Sample what `samples.jsonl` lacks, batch by batch (appended and flushed per batch) -> every line."""
    from tqdm.auto import tqdm

    directory = Path(cfg.output_dir)
    _check_meta(directory, _meta(cfg))
    lines = read_samples(directory, prompts)
    if len(lines) >= len(prompts):
        return lines[: len(prompts)]
    lines = lines[: len(lines) // cfg.batch_size * cfg.batch_size]  # every batch is drawn whole from its own seed
    path = directory / SAMPLES
    _rewrite(path, lines)
    policy = Policy(cfg.policy, cfg.backend)
    ids = [policy.prompt_ids(prompt, i) for i, prompt in enumerate(prompts)]
    starts = range(len(lines), len(prompts), cfg.batch_size)
    progress = tqdm(total=len(prompts), initial=len(lines), desc=f"sampling {cfg.n} per prompt", unit="prompt")
    with path.open("a", encoding="utf-8") as handle:
        for start in starts:
            members = list(range(start, min(start + cfg.batch_size, len(prompts))))
            texts, finished = policy.sample([ids[i] for i in members], cfg, cfg.seed + start)
            for i, responses, ended in zip(members, texts, finished):
                line = {"index": i, "prompt": prompts[i], "responses": responses, "finished": ended}
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                lines.append(line)
            handle.flush()
            os.fsync(handle.fileno())
            progress.update(len(members))
    progress.close()
    return lines


def _rewrite(path: Path, lines: list[dict]) -> None:
    if not path.is_file() and not lines:
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    temporary.replace(path)


# ---------------------------------------------------------------- scoring and judging


def samples_digest(lines: list[dict]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(json.dumps([line["prompt"], line["responses"]], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def reward_labels(specs: list[str]) -> dict[str, str]:
    """`--reward` entries (`DIR` or `NAME=DIR`, comma-separated too) -> {label: directory}; labels are unique."""
    entries = [part.strip() for spec in specs for part in spec.split(",") if part.strip()]
    named = {}
    for entry in entries:
        name, _, directory = entry.rpartition("=")
        parts = Path(directory).parts
        label = name or ("/".join(parts[-2:]) if len(parts) > 1 and parts[-1].startswith("seed") else parts[-1])
        if label in named:
            raise ValueError(f"--reward: two reward models are called {label!r}; name them with NAME=DIR")
        named[label] = directory
    return named


def _cached_grid(path: Path, digest: str, source: str, compute) -> list[list[float]]:
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("samples") == digest and stored.get("source") == source:
            return stored["scores"]
    scores = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"source": source, "samples": digest, "scores": scores}) + "\n")
    temporary.replace(path)
    return scores


def _flat_items(lines: list[dict]) -> list[tuple]:
    return [(line["prompt"], response) for line in lines for response in line["responses"]]


def _regrid(values: list[float], lines: list[dict]) -> list[list[float]]:
    grid, start = [], 0
    for line in lines:
        grid.append(values[start : start + len(line["responses"])])
        start += len(line["responses"])
    return grid


def reward_scores(directory: str, lines: list[dict], cfg: BonConfig, label: str) -> list[list[float]]:
    """One reward model's score of every sample, cached in scores/LABEL.json."""
    reward_kind(directory)  # a missing or unreadable directory is an error before any work

    def compute():
        model = RewardModel(directory, cfg.max_length, cfg.score_batch_size)
        items = _flat_items(lines)
        values = model.score(items, desc=f"scoring with {label} ({model.kind})")
        if model.truncated:
            print(f"note: {label}: {model.truncated} of {len(items)} samples exceed {model.max_length} tokens "
                  "and were cut as training cuts them")  # fmt: skip
        return _regrid(values, lines)

    return _cached_grid(scores_path(cfg.output_dir, label), samples_digest(lines), str(directory), compute)


def scores_path(output_dir: str | Path, label: str) -> Path:
    return Path(output_dir) / "scores" / f"{label.replace('/', '-')}.json"


def holds_scores(output_dir: str | Path, label: str, directory: str | Path) -> bool:
    """Whether scores/LABEL.json holds `directory`'s scores (of the samples it was computed on: a change of
    samples recomputes them, and that needs the model)."""
    path = scores_path(output_dir, label)
    return path.is_file() and json.loads(path.read_text()).get("source") == str(directory)


def judge_scores(cfg: BonConfig, lines: list[dict]) -> tuple[str, list[list[float]]]:
    """(judge name, the judge's score of every sample)."""
    from .judges import oracle_scores

    digest = samples_digest(lines)
    if cfg.judge == "oracle":
        prompts = [line["prompt"] for line in lines]
        return "oracle", oracle_scores(prompts, [line["responses"] for line in lines])
    if cfg.judge.startswith(("http://", "https://")):
        return f"endpoint {cfg.judge_model} at {cfg.judge}", _endpoint_scores(cfg, lines, digest)
    label = f"gold {Path(cfg.judge).name}"
    return label, reward_scores(cfg.judge, lines, cfg, "judge-" + Path(cfg.judge).name)


def _endpoint_scores(cfg: BonConfig, lines: list[dict], digest: str) -> list[list[float]]:
    """Pairwise judgements per prompt, appended to judge-endpoint.jsonl as they come (a rerun continues)."""
    from tqdm.auto import tqdm

    from .judges import EndpointJudge

    if not cfg.judge_model:
        raise ValueError(f"--judge {cfg.judge}: name the endpoint's model with --judge-model")
    judge = EndpointJudge(cfg.judge, cfg.judge_model, os.environ.get(cfg.judge_api_key_env), cfg.seed)
    path = Path(cfg.output_dir) / "judge-endpoint.jsonl"
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that prompt is judged again
            if (
                record.get("samples") == digest
                and record.get("url") == cfg.judge
                and record.get("model") == cfg.judge_model
            ):
                done[record["index"]] = record["scores"]
    with path.open("a") as handle:
        for line in tqdm(lines, desc="judging pairs", unit="prompt"):
            if line["index"] in done:
                continue
            scores = judge.scores(line["prompt"], line["responses"], line["index"])
            record = {
                "index": line["index"],
                "samples": digest,
                "url": cfg.judge,
                "model": cfg.judge_model,
                "scores": scores,
            }
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            done[line["index"]] = scores
    if judge.unreadable:
        print(f"note: {judge.unreadable} of {judge.calls} judge answers named neither A nor B; counted as ties")
    return [done[line["index"]] for line in lines]


# ---------------------------------------------------------------- report


RANDOM = "random (first sample)"


def bon_report(judge_name: str, judge: list[list[float]], selectors: dict[str, list[list[float]]]) -> dict:
    """Every figure of one best-of-N run from the judge's and the selectors' score grids."""
    from .selection import bon_curve, head_to_head, oracle_curve, random_recall, selected, top_k_recall

    picks = {label: selected(scores) for label, scores in selectors.items()}
    picks[RANDOM] = [0] * len(judge)  # the first sample is a uniformly random pick among N
    labels = list(picks)
    return {
        "judge": judge_name,
        "prompts": len(judge),
        "n": min(len(row) for row in judge),
        "judge_mean": sum(map(sum, judge)) / sum(map(len, judge)),
        "recall": {
            label: {"top1": top_k_recall(judge, scores, 1), "top2": top_k_recall(judge, scores, 2)}
            for label, scores in selectors.items()
        },
        "random_recall": {"top1": random_recall(judge, 1), "top2": random_recall(judge, 2)},
        "head_to_head": {
            f"{a} vs {b}": head_to_head(judge, picks[a], picks[b])
            for i, a in enumerate(labels)
            for b in labels[i + 1 :]
        },
        "curve": {
            **{label: bon_curve(judge, scores) for label, scores in selectors.items()},
            "random": bon_curve(judge),
            "judge's best": oracle_curve(judge),
        },
    }


def _interval(figures: dict, key: str = "recall", ci: str = "ci95") -> str:
    if figures[ci] is None:  # exact (the random selector's expected recall)
        return f"{figures[key]:.3f} (exact)"
    low, high = figures[ci]
    return f"{figures[key]:.3f} [{low:.3f}, {high:.3f}]"


def report_markdown(report: dict) -> str:
    n = report["n"]
    lines = [
        f"Judge: {report['judge']}; {report['prompts']} prompts, N = {n}; mean judge score of all samples "
        f"{report['judge_mean']:.3f}."
        + (
            f" {report['finished']:.0%} of the replies ended by themselves (the rest were cut at the length limit)."
            if "finished" in report
            else ""
        ),
        "",
        f"| selector | top-1 recall | top-2 recall | judge score of the pick at N = {n} |",
        "|---|---|---|---|",
    ]
    for label, recall in report["recall"].items():
        pick = report["curve"][label][n]
        lines.append(
            f"| {label} | {_interval(recall['top1'])} | {_interval(recall['top2'])} | {_interval(pick, 'mean')} |"
        )
    chance = report["random_recall"]
    pick = report["curve"]["random"][n]
    lines.append(f"| random | {_interval(chance['top1'])} | {_interval(chance['top2'])} | {_interval(pick, 'mean')} |")
    some = next(iter(report["recall"].values()), None)
    if some:
        lines += ["", f"{some['top1']['all_tied']} of {report['prompts']} prompts have all N samples tied by the judge "
                  "(a hit for every selector)."]  # fmt: skip
    lines += ["", "| A vs B | A wins / ties / B wins | win rate of A [95%] | agreement [95%] |", "|---|---|---|---|"]
    for name, match in report["head_to_head"].items():
        lines.append(
            f"| {name} | {match['wins']} / {match['ties']} / {match['losses']} | {_interval(match, 'win_rate')} | "
            f"{_interval(match, 'agreement', 'agreement_ci95')} |"
        )
    sizes = list(report["curve"]["random"])
    lines += ["", "Best-of-N curve: the judge's mean score of the pick among the first N' samples.", "",
              "| selector | " + " | ".join(f"N' = {size}" for size in sizes) + " |", "|---|" + "---|" * len(sizes)]  # fmt: skip
    for label, curve in report["curve"].items():
        lines.append(f"| {label} | " + " | ".join(f"{curve[size]['mean']:.3f}" for size in sizes) + " |")
    return "\n".join(lines) + "\n"


def write_report(directory: Path, report: dict, title: str) -> None:
    from . import plots

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (directory / "report.md").write_text(f"# {title}\n\n" + report_markdown(report))
    curves = {
        label: [(int(size), f["mean"], f["ci95"]) for size, f in curve.items()]
        for label, curve in report["curve"].items()
    }
    plots.bon_curve_plot(
        curves, directory / "bon-curve.png", title=f"{title}: judge score of the pick ({report['judge']})"
    )


def check_settings(cfg: BonConfig) -> dict[str, str]:
    """Every flag, reward directory and judge checked before any work -> {label: reward directory}."""

    if cfg.n < 1:
        raise ValueError(f"--n must be at least 1, got {cfg.n}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.temperature == 0 and cfg.n > 1:
        raise ValueError("--temperature 0 (greedy) draws N identical samples; give --n 1 or a temperature above 0")
    rewards = reward_labels(cfg.reward)
    for directory in rewards.values():
        reward_kind(directory)
    if cfg.judge != "oracle" and not cfg.judge.startswith(("http://", "https://")):
        reward_kind(cfg.judge)
    return rewards


def score_all(cfg: BonConfig) -> tuple[list[dict], str, list[list[float]], dict[str, list[list[float]]]]:
    """Sample (or resume), score with every reward model, judge -> (lines, judge name, judge grid, {label: grid})."""
    rewards = check_settings(cfg)
    prompts = read_prompts(cfg.prompts, cfg.limit)
    if cfg.judge == "oracle":
        from .judges import oracle_scores

        oracle_scores(prompts, [[""] for _ in prompts])  # a prompt the oracle cannot read stops before sampling
    lines = draw_samples(cfg, prompts)
    selectors = {label: reward_scores(directory, lines, cfg, label) for label, directory in rewards.items()}
    judge_name, judge = judge_scores(cfg, lines)
    return lines, judge_name, judge, selectors


def finished_share(lines: list[dict]) -> float:
    """The share of replies that ended by themselves (the rest were cut at max_new_tokens)."""
    return sum(sum(line["finished"]) for line in lines) / sum(len(line["finished"]) for line in lines)


def run_bon(cfg: BonConfig) -> dict:
    lines, judge_name, judge, selectors = score_all(cfg)
    report = bon_report(judge_name, judge, selectors)
    report["finished"] = sum(map(sum, (line["finished"] for line in lines))) / sum(
        len(line["finished"]) for line in lines
    )
    report["settings"] = dataclasses.asdict(cfg)
    write_report(Path(cfg.output_dir), report, f"best-of-{cfg.n} on {cfg.prompts}")
    print((Path(cfg.output_dir) / "report.md").read_text())
    return report
