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
from .data import DataError
from .devices import to_scoring_device

SAMPLES, META = "samples.jsonl", "samples.meta.json"
SAMPLING_FIELDS = ("policy", "prompts", "n", "temperature", "top_p", "max_new_tokens", "seed", "batch_size")


# ---------------------------------------------------------------- prompts


def read_prompts(spec: str, limit: int | None = None) -> list:
    """`builtin:SPLIT[@N]` or a JSON / JSONL file of rows with a `prompt` (text or chat messages) -> prompts."""
    if spec.startswith("builtin"):
        from .data.builtin import builtin_rows, split_and_count

        prompts = [row["prompt"] for row in builtin_rows(*split_and_count(spec.partition(":")[2] or "test"))]
    else:
        prompts = _file_prompts(Path(spec))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def _file_prompts(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file (or use builtin:SPLIT)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        numbered = list(enumerate(rows))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    numbered.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: line {number + 1}: not JSON ({error.msg})") from None
    prompts = []
    for number, row in numbered:
        where = f"{path}: row {number}" if path.suffix == ".json" else f"{path}: line {number + 1}"
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            prompts.append(prompt)
        elif (
            isinstance(prompt, list)
            and prompt
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt
            )
        ):
            prompts.append(prompt)
        else:
            raise DataError(f"{where}: field `prompt` must be non-empty text or a list of {{role, content}} messages")
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


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


def policy_tokenizer(name: str):
    """(local path or hub id, tokenizer padding on the left) of a sampling policy; a pad is filled in from EOS."""
    from transformers import AutoTokenizer

    from .default_model import resolve_model_path

    path = resolve_model_path(name)
    if not Path(path).exists() and "/" not in name:
        raise FileNotFoundError(f"--policy {name}: no such directory, and not a hub id")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # generation only: the attention mask keeps pads out
    return path, tokenizer


def prompt_ids(tokenizer, prompt, index: int, policy: str) -> list[int]:
    """A prompt as training renders it (chat template with the generation prompt, or plain text)."""
    from .data.templates import encode, render

    if not tokenizer.chat_template and not isinstance(prompt, str):
        raise ValueError(f"prompt {index} is chat messages, but --policy {policy} has no chat template")
    text, _, templated = render(tokenizer, prompt, "", f"prompt {index}")
    return encode(tokenizer, text, templated)


class Policy:
    """The sampling model: HF `generate` (batched, left-padded) or vLLM when installed, a GPU present and asked for."""

    def __init__(self, name: str, backend: str):
        import torch

        self.path, self.tokenizer = policy_tokenizer(name)
        use_vllm = backend == "vllm" or (backend == "auto" and torch.cuda.is_available() and _has_vllm())
        if backend == "vllm" and not (torch.cuda.is_available() and _has_vllm()):
            raise ValueError("--backend vllm needs the vllm package and a GPU; use --backend hf")
        self.backend = "vllm" if use_vllm else "hf"
        if self.backend == "vllm":
            from vllm import LLM

            self.llm = LLM(model=self.path)
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32).eval()
            to_scoring_device(self.model)

    def prompt_ids(self, prompt, index: int) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, index, self.path)

    def sample(
        self, prompt_ids: list[list[int]], cfg: BonConfig, seed: int
    ) -> tuple[list[list[str]], list[list[bool]]]:
        """N responses per prompt and whether each ended by itself (False: cut at max_new_tokens)."""
        if self.backend == "vllm":
            return self._sample_vllm(prompt_ids, cfg, seed)
        import torch

        from .data.collator import pad_rows

        batch = pad_rows(prompt_ids, [0] * len(prompt_ids), self.tokenizer.pad_token_id, "left")
        device = next(self.model.parameters()).device
        torch.manual_seed(seed)
        sampling = (
            {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
            if cfg.temperature > 0
            else {"do_sample": False}
        )
        with torch.no_grad():
            output = self.model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=cfg.n,
                pad_token_id=self.tokenizer.pad_token_id,
                top_k=0,
                **sampling,
            )
        new = output[:, batch["input_ids"].shape[1] :].cpu()
        stops = set(_stop_ids(self.model, self.tokenizer))
        texts, finished = [], []
        for row in new.tolist():
            ended = next((i for i, token in enumerate(row) if token in stops), None)
            finished.append(ended is not None)
            texts.append(self.tokenizer.decode(row[:ended], skip_special_tokens=True))
        return _grouped(texts, cfg.n), _grouped(finished, cfg.n)

    def _sample_vllm(self, prompt_ids, cfg: BonConfig, seed: int):  # pragma: no cover - needs a GPU and vllm
        from vllm import SamplingParams

        params = SamplingParams(
            n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=seed
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        texts = [[choice.text for choice in out.outputs] for out in outputs]
        finished = [[choice.finish_reason == "stop" for choice in out.outputs] for out in outputs]
        return texts, finished


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _stop_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _grouped(values: list, n: int) -> list[list]:
    return [values[i : i + n] for i in range(0, len(values), n)]


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
    from .rewards import RewardModel, reward_kind

    reward_kind(directory)  # a missing or unreadable directory is an error before any work

    def compute():
        model = RewardModel(directory, cfg.max_length, cfg.score_batch_size)
        values = model.score(_flat_items(lines), desc=f"scoring with {label} ({model.kind})")
        if getattr(model, "truncated", 0):
            print(f"note: {model.truncated} samples exceed {model.max_length} tokens for {label}; they were cut")
        return _regrid(values, lines)

    safe = label.replace("/", "-")
    return _cached_grid(
        Path(cfg.output_dir) / "scores" / f"{safe}.json", samples_digest(lines), str(directory), compute
    )


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
    from .rewards import reward_kind

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


# ---------------------------------------------------------------- the bon-builtin experiment


def experiment_bon_config(spec, rewards: dict) -> BonConfig:
    """The experiment's `bon:` block as a BonConfig whose rewards are the trained runs."""
    known = {f.name for f in dataclasses.fields(BonConfig)}
    unknown = sorted(set(spec.bon) - known)
    if unknown:
        raise ValueError(f"experiment {spec.name!r}: unknown bon field(s) {unknown}; valid: {sorted(known)}")
    values = {"policy": spec.base.get("model", BonConfig.policy), **spec.bon}
    values["reward"] = [f"{label}={directory}" for label, directory in rewards.items()]
    values["output_dir"] = str(Path(spec.output_dir) / "bon")
    return BonConfig(**values)


def _pooled(judge, grids_a: list, grids_b: list) -> dict:
    """Head-to-head counts summed over seeds (seed s of A against seed s of B, on the same prompts)."""
    from .metrics import wilson_interval
    from .selection import head_to_head, selected

    totals = {"wins": 0, "ties": 0, "losses": 0, "same": 0, "prompts": 0}
    for a, b in zip(grids_a, grids_b, strict=True):
        picks_a = selected(a) if a is not None else [0] * len(judge)
        picks_b = selected(b) if b is not None else [0] * len(judge)
        match = head_to_head(judge, picks_a, picks_b)
        for key in ("wins", "ties", "losses"):
            totals[key] += match[key]
        totals["same"] += round(match["agreement"] * len(judge))
        totals["prompts"] += len(judge)
    n = totals["prompts"]
    score = totals["wins"] + totals["ties"] / 2
    return totals | {
        "win_rate": score / n,
        "ci95": list(wilson_interval(score, n)),
        "agreement": totals["same"] / n,
        "agreement_ci95": list(wilson_interval(totals["same"], n)),
    }


def summarise_bon(spec, judge: list[list[float]], selectors: dict[str, list[list[float]]]) -> dict:
    """Per method, over seeds: recall, the pick's judge score, the curve; head-to-head pooled over seeds."""
    import statistics

    from .selection import bon_curve, oracle_curve, random_recall, top_k_recall

    def mean_std(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "per_seed": values}  # fmt: skip

    by_method = {run: [selectors[f"{run}/seed{seed}"] for seed in spec.seeds] for run in spec.runs}
    n = min(len(row) for row in judge)
    table = {}
    for run, grids in by_method.items():
        curves = [bon_curve(judge, grid) for grid in grids]
        top1 = [top_k_recall(judge, grid, 1) for grid in grids]
        table[run] = {
            "top1": mean_std([figures["recall"] for figures in top1]),
            "top2": mean_std([top_k_recall(judge, grid, 2)["recall"] for grid in grids]),
            "top1_untied": mean_std([figures["recall_untied"] for figures in top1]),
            "pick": mean_std([curve[n]["mean"] for curve in curves]),
            "curve": {size: mean_std([curve[size]["mean"] for curve in curves]) for size in curves[0]},
        }
    chance, chance_top1 = bon_curve(judge), random_recall(judge, 1)
    seeds = len(spec.seeds)
    runs = list(by_method)
    matches = {
        f"{a} vs {b}": _pooled(judge, by_method[a], by_method[b]) for i, a in enumerate(runs) for b in runs[i + 1 :]
    }
    matches |= {f"{run} vs {RANDOM}": _pooled(judge, by_method[run], [None] * seeds) for run in runs}
    return {
        "prompts": len(judge),
        "n": n,
        "judge_mean": sum(map(sum, judge)) / sum(map(len, judge)),
        "all_tied": top_k_recall(judge, judge, 1)["all_tied"],
        "table": table,
        "random": {
            "top1": chance_top1["recall"],
            "top2": random_recall(judge, 2)["recall"],
            "top1_untied": chance_top1["recall_untied"],
            "pick": chance[n]["mean"],
            "curve": {size: figures["mean"] for size, figures in chance.items()},
        },
        "ceiling": {size: figures["mean"] for size, figures in oracle_curve(judge).items()},
        "head_to_head": matches,
    }


def bon_summary_markdown(spec, summary: dict, config_path: Path, cfg: BonConfig) -> str:
    import yaml

    def cell(figures):
        return f"{figures['mean']:.3f} ± {figures['std']:.3f}"

    n = summary["n"]
    lines = [
        f"# {spec.name}", "", spec.description.strip(), "",
        f"{summary['prompts']} prompts, N = {n} samples each from `{cfg.policy}` (temperature {cfg.temperature}, "
        f"top-p {cfg.top_p}, at most {cfg.max_new_tokens} new tokens, seed {cfg.seed}); judge: the built-in oracle "
        f"(fraction of a prompt's constraints met). Mean judge score of all samples {summary['judge_mean']:.3f}; "
        f"{summary['all_tied']} prompts have all N samples tied (a hit for every selector); {summary['finished']:.0%} "
        f"of the replies ended by themselves (the rest were cut at the length limit). Mean ± std over seeds "
        f"{spec.seeds} of the reward models.", "",
        f"| selector | top-1 recall | top-2 recall | top-1 recall, untied prompts | judge score of the pick (N = {n}) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for run, row in summary["table"].items():
        lines.append(
            f"| {run} | {cell(row['top1'])} | {cell(row['top2'])} | {cell(row['top1_untied'])} | {cell(row['pick'])} |"
        )
    chance = summary["random"]
    lines.append(
        f"| random | {chance['top1']:.3f} | {chance['top2']:.3f} | {chance['top1_untied']:.3f} | {chance['pick']:.3f} |"
    )
    lines += ["", "Head to head, by the judge, seed s of one against seed s of the other, counts summed over seeds "
              "(the same prompts in every seed, so the interval is optimistic):", "",
              "| A vs B | A wins / ties / B wins | win rate of A [95%] | same pick [95%] |", "|---|---|---|---|"]  # fmt: skip
    for name, match in summary["head_to_head"].items():
        low, high = match["ci95"]
        a_low, a_high = match["agreement_ci95"]
        lines.append(f"| {name} | {match['wins']} / {match['ties']} / {match['losses']} | {match['win_rate']:.3f} "
                     f"[{low:.3f}, {high:.3f}] | {match['agreement']:.3f} [{a_low:.3f}, {a_high:.3f}] |")  # fmt: skip
    sizes = list(summary["ceiling"])
    lines += ["", "Best-of-N curve: the judge's mean score of the pick among each prompt's first N' samples "
              "(mean over seeds).", "", "| selector | " + " | ".join(f"N' = {size}" for size in sizes) + " |",
              "|---|" + "---|" * len(sizes)]  # fmt: skip
    for run, row in summary["table"].items():
        lines.append(f"| {run} | " + " | ".join(f"{row['curve'][size]['mean']:.3f}" for size in sizes) + " |")
    lines.append("| random | " + " | ".join(f"{summary['random']['curve'][size]:.3f}" for size in sizes) + " |")
    lines.append("| judge's best | " + " | ".join(f"{summary['ceiling'][size]:.3f}" for size in sizes) + " |")
    lines += ["", "## Budget and command", "", f"`hafrm experiment {config_path}`", "", "```yaml",
              yaml.safe_dump({"base": spec.base, "runs": spec.runs, "seeds": spec.seeds, "bon": spec.bon},
                             sort_keys=False).rstrip(), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_bon_experiment(spec, config_path: Path) -> dict:
    """Train every run and seed, sample once, let each run pick, judge; results.md / .json / bon-curve.png."""
    from . import plots
    from .experiment import train_all

    rewards = train_all(spec)
    cfg = experiment_bon_config(spec, rewards)
    lines, judge_name, judge, selectors = score_all(cfg)
    report = bon_report(judge_name, judge, selectors) | {"finished": finished_share(lines)}
    write_report(Path(cfg.output_dir), report, f"{spec.name}: every seed")
    summary = summarise_bon(spec, judge, selectors) | {"finished": report["finished"]}
    output = Path(spec.output_dir)
    (output / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "results.md").write_text(bon_summary_markdown(spec, summary, config_path, cfg))
    curves = {
        run: [(size, f["mean"], (f["mean"] - f["std"], f["mean"] + f["std"])) for size, f in row["curve"].items()]
        for run, row in summary["table"].items()
    }
    curves["random"] = [(size, value, (value, value)) for size, value in summary["random"]["curve"].items()]
    curves["judge's best"] = [(size, value, (value, value)) for size, value in summary["ceiling"].items()]
    plots.bon_curve_plot(curves, output / "bon-curve.png", f"{spec.name}: oracle score of the pick",
                         band="bands: ± std over seeds")  # fmt: skip
    print((output / "results.md").read_text())
    return summary
