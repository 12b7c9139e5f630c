"""PNG figures of `hafrm eval --plots DIR` and `hafrm experiment`: plain floats in, one file out.

    from hafrm import plots
    plots.calibration_plot(chosen_rewards, rejected_rewards, "out/calibration.png")
    plots.accuracy_bars({"rm": {"hh": (0.71, 0.02)}, "haf": {"hh": (0.74, 0.01)}}, "out/accuracy.png")

Every function takes lists / dicts of floats (no torch), writes the PNG (parent folders are made),
closes the figure and returns the path. NaN and ±inf entries are dropped and the figure says how
many. Matplotlib runs on the Agg backend, so no display is ever needed; only import this module
when plots are asked for (it selects that backend for the whole process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never opens a window, works on a headless server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import calibration_bins, expected_calibration_error, finite_pairs  # noqa: E402

__all__ = ["calibration_bins", "expected_calibration_error"]  # re-exported: the figures show these numbers

DPI = 120
FIGURE_INCHES = {  # (width, height); saved without bbox cropping, so PNG pixels = inches · DPI
    "calibration": (6.4, 7.2),
    "margins": (7.2, 4.8),
    "accuracy": (8.0, 5.0),
    "alpha_sweep": (7.2, 6.4),
    "agreement": (7.2, 6.8),
    "perplexity": (8.0, 5.0),
    "curve": (8.0, 5.0),
    "paired": (8.0, 5.0),
}
METHOD_COLOURS = {"rm": "tab:blue", "dpo": "tab:orange", "haf": "tab:green"}  # same method, same colour everywhere
_SPARE_COLOURS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]


# ---- plain-number helpers -------------------------------------------------------------------------


def _finite(values: Sequence[float]) -> tuple[list[float], int]:
    """(the finite values as floats, how many NaN / ±inf were dropped)."""
    kept = [float(v) for v in values if math.isfinite(float(v))]
    return kept, len(values) - len(kept)


def pearson_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson r of paired finite values; NaN when undefined (< 2 points or one side constant)."""
    if len(xs) != len(ys):
        raise ValueError(f"paired values differ in length: {len(xs)} and {len(ys)}")
    if len(xs) < 2 or min(xs) == max(xs) or min(ys) == max(ys):  # exact test: no rounding-noise "correlation"
        return math.nan
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.clip((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)), -1.0, 1.0))


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span (as Spearman's ρ needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman ρ = Pearson r of the tie-averaged ranks; NaN when undefined."""
    return pearson_correlation(_average_ranks(xs), _average_ranks(ys))


def _format(value: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _colours(labels: Sequence[str]) -> dict[str, str]:
    """A fixed colour for rm / dpo / haf, the spare palette in order for any other label."""
    spare = iter(_SPARE_COLOURS * (len(labels) // len(_SPARE_COLOURS) + 1))
    return {label: METHOD_COLOURS.get(label) or next(spare) for label in labels}


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _dropped_note(dropped: int, noun: str) -> str:
    """'3 pairs with NaN/inf dropped', or '' when nothing was dropped."""
    return f"{_plural(dropped, noun)} with NaN/inf dropped" if dropped else ""


def _legend_reference_last(ax, reference, **kwargs) -> None:
    """Legend with the data series first and the reference line (chance, zero) last."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(handles)), key=lambda i: handles[i] is reference)  # stable: data keep their order
    ax.legend([handles[i] for i in order], [labels[i] for i in order], **kwargs)


def _subtitle(*parts: str) -> str:
    return " · ".join(part for part in parts if part)


def _fit_titles(fig) -> None:
    """Wrap the figure's and the axes' titles to the width they have, so that none is cut at either end (a title
    naming several data files is long)."""
    import textwrap

    width_points = fig.get_figwidth() * 72
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts.append(ax.title)
        width = width_points * ax.get_position().width
        if ax.title.get_text():
            chars = max(20, int(width / (ax.title.get_fontsize() * 0.55)))
            ax.title.set_text(textwrap.fill(" ".join(ax.title.get_text().split()), chars))
    if fig._suptitle is not None and fig._suptitle.get_text():
        chars = max(20, int(width_points * 0.95 / (fig._suptitle.get_fontsize() * 0.55)))
        fig._suptitle.set_text(textwrap.fill(" ".join(fig._suptitle.get_text().split()), chars))


def _band(lows: Sequence[float], highs: Sequence[float], limits: tuple[float, float] | None):
    """A shaded band's edges, held inside the metric's range (an accuracy's normal interval can pass 1)."""
    if limits is None:
        return list(lows), list(highs)
    return [min(max(v, limits[0]), limits[1]) for v in lows], [min(max(v, limits[0]), limits[1]) for v in highs]


def _integer_ticks_if_counts(ax, xs: Sequence[float]) -> None:
    """Steps and counts are whole numbers: no tick at 0.25 between them."""
    from matplotlib.ticker import MaxNLocator

    if xs and all(float(x).is_integer() for x in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: str | Path) -> Path:
    """Lay out, write the PNG at DPI, close the figure (always), return the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _fit_titles(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


# ---- calibration ----------------------------------------------------------------------------------


def calibration_plot(
    chosen_rewards: Sequence[float],
    rejected_rewards: Sequence[float],
    path: str | Path,
    title: str = "Reward-head calibration",
    bins: int = 10,
) -> Path:
    """Reliability diagram (top) and predictions per bin (bottom); the ECE is in the legend."""
    stats = calibration_bins(chosen_rewards, rejected_rewards, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=FIGURE_INCHES["calibration"], sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="Perfect calibration")
    top.plot(
        stats["mean_predicted"],
        stats["observed"],
        "o-",
        color="tab:blue",
        label=f"Observed frequency (ECE = {_format(stats['ece'])})",
    )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Observed frequency chosen wins (probability)")
    top.set_title(
        _subtitle(f"{stats['pairs']} pairs, each counted both ways", _dropped_note(stats["dropped"], "pair")),
        fontsize=9,
    )
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(
        edges[:-1], stats["counts"], width=np.diff(edges), align="edge", color="tab:blue", alpha=0.6, edgecolor="white"
    )
    bottom.set(xlabel="Predicted P(chosen wins) = σ(r_c − r_r) (probability)", ylabel="Predictions (count)")
    bottom.set_ylim(bottom=0)
    if stats["pairs"] == 0:
        top.text(
            0.5, 0.5, "no finite pairs", ha="center", va="center", transform=top.transAxes, backgroundcolor="white"
        )
    fig.suptitle(title)
    return _save(fig, path)


# ---- margins and accuracy -------------------------------------------------------------------------


def margin_histogram(
    margins_by_label: dict[str, Sequence[float]],
    path: str | Path,
    title: str = "Reward margin r_c − r_r on evaluation pairs",
) -> Path:
    """Overlaid histograms of chosen-minus-rejected margins, one per head/method, on shared bins."""
    cleaned = {label: _finite(values) for label, values in margins_by_label.items()}
    pooled = [v for values, _ in cleaned.values() for v in values]
    edges = np.histogram_bin_edges(pooled, bins=min(60, max(10, int(math.sqrt(len(pooled)))))) if pooled else None
    colours = _colours(list(cleaned))
    fig, ax = plt.subplots(figsize=FIGURE_INCHES["margins"])
    for label, (values, _) in cleaned.items():
        if values:
            above_zero = 100 * sum(v > 0 for v in values) / len(values)
            legend = f"{label} (n={len(values)}, mean {np.mean(values):.2f}, {above_zero:.0f}% > 0)"
            ax.hist(values, bins=edges, color=colours[label], alpha=0.2)
            ax.hist(values, bins=edges, color=colours[label], histtype="step", linewidth=1.6, label=legend)
        else:
            ax.plot([], [], color=colours[label], label=f"{label} (no data)")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1, label="margin 0 (tie)")
    ax.set(xlabel="Reward margin r_c − r_r (reward units)", ylabel="Pairs (count)")
    ax.set_title(_dropped_note(sum(d for _, d in cleaned.values()), "margin"), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def _value_labels(ax, xs: list[float], means: list[float]) -> None:
    """Each bar's value at its foot (clear of whiskers and the chance line); above it when the bar is too short."""
    for x, mean in zip(xs, means):
        tall = mean >= 0.1
        y, colour = (0.02, "white") if tall else (mean + 0.01, "black")
        ax.text(x, y, f"{mean:.2f}", ha="center", va="bottom", fontsize=7, color=colour)


def accuracy_bars(
    table: dict[str, dict[str, tuple[float, float]]],
    path: str | Path,
    title: str = "Pairwise accuracy by dataset",
    ylabel: str = "Pairwise accuracy",
) -> Path:
    """Grouped bars: one group per dataset, one colour per method, error bars = the given half-widths."""
    datasets = list(dict.fromkeys(dataset for row in table.values() for dataset in row))
    methods, colours = list(table), _colours(list(table))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=FIGURE_INCHES["accuracy"])
    dropped = 0
    for position, method in enumerate(methods):
        xs, means, errors = [], [], []
        for group, dataset in enumerate(datasets):
            if dataset not in table[method]:
                continue
            mean, half_width = (float(v) for v in table[method][dataset])
            if not math.isfinite(mean):
                dropped += 1
                continue
            xs.append(group - 0.4 + width * (position + 0.5))
            means.append(mean)
            errors.append(half_width)  # NaN (one seed: no spread) draws no whisker
        ax.bar(xs, means, width, yerr=errors, capsize=3, color=colours[method], label=method)
        _value_labels(ax, xs, means)
    chance = ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="chance (0.5)")
    long_names = max(map(len, datasets), default=0) > 12  # slant long names so neighbours do not overlap
    ax.set_xticks(
        range(len(datasets)), datasets, rotation=20 if long_names else 0, ha="right" if long_names else "center"
    )
    ax.set(ylim=(0, 1), xlabel="Evaluation set", ylabel=f"{ylabel} (fraction of pairs)")
    ax.set_title(_subtitle("bars: mean, whiskers: ± given half-width", _dropped_note(dropped, "cell")), fontsize=9)
    _legend_reference_last(ax, chance, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


# ---- α sweep --------------------------------------------------------------------------------------


def _sweep_points(alphas: Sequence[float], stats: Sequence[tuple[float, float]]) -> tuple[list, list, list, int]:
    """(alphas, means, errors) sorted by α, keeping finite (α, mean); a NaN spread becomes 0."""
    if len(alphas) != len(stats):
        raise ValueError(f"{len(alphas)} alphas but {len(stats)} (mean, std) entries")
    kept = sorted(
        (float(a), float(m), float(s) if math.isfinite(float(s)) else 0.0)
        for a, (m, s) in zip(alphas, stats)
        if math.isfinite(float(a)) and math.isfinite(float(m))
    )
    return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept], len(alphas) - len(kept)


def _sweep_panel(ax, alphas, stats, reference: float, reference_label: str, colour: str, what: str) -> None:
    """One α-sweep panel: mean ± std against α, a dashed reference line, a dotted line at α = 0."""
    xs, means, errors, dropped = _sweep_points(alphas, stats)
    ax.errorbar(xs, means, yerr=errors, fmt="o-", capsize=3, color=colour, label=f"{what} (mean ± std)")
    line = ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label)
    ax.axvline(0.0, color="gray", linestyle=":", linewidth=1)  # α = 0 is the plain reward model
    ax.set_title(_subtitle(_plural(len(xs), f"{what} point"), _dropped_note(dropped, "point")), fontsize=9)
    _legend_reference_last(ax, line, fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def alpha_sweep_plot(
    alphas: Sequence[float],
    accuracy: Sequence[tuple[float, float]],
    margin: Sequence[tuple[float, float]],
    path: str | Path,
    title: str = "Accuracy and reward margin against α",
) -> Path:
    """Two panels sharing α: accuracy (mean ± std) over chance 0.5, mean margin (mean ± std) over 0."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=FIGURE_INCHES["alpha_sweep"], sharex=True)
    _sweep_panel(
        top, alphas, accuracy, reference=0.5, reference_label="chance (0.5)", colour="tab:green", what="accuracy"
    )
    top.set(ylim=(0, 1), ylabel="Pairwise accuracy (fraction)")
    _sweep_panel(
        bottom, alphas, margin, reference=0.0, reference_label="margin 0", colour="tab:purple", what="mean margin"
    )
    bottom.set(xlabel="α, weight of the policy loss (α = 0: plain reward model)")
    bottom.set(ylabel="Mean margin r_c − r_r (reward units)")
    fig.suptitle(title)
    return _save(fig, path)


def paired_differences_plot(
    differences: dict[str, dict[str, tuple[float, Sequence[float]]]],
    path: str | Path,
    title: str = "Accuracy difference against the baseline (95% intervals)",
) -> Path:
    """Points with 95% interval whiskers: one group per dataset, one colour per run, a line at 0 (no difference)."""
    datasets = list(dict.fromkeys(dataset for row in differences.values() for dataset in row))
    runs, colours = list(differences), _colours(list(differences))
    step = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=FIGURE_INCHES["paired"])
    for position, run in enumerate(runs):
        xs, ys, low, high = [], [], [], []
        for group, dataset in enumerate(datasets):
            if dataset not in differences[run]:
                continue
            value, (lower, upper) = differences[run][dataset]
            xs.append(group - 0.4 + step * (position + 0.5))
            ys.append(value)
            low.append(value - lower)
            high.append(upper - value)
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3, color=colours[run], label=run)
    zero = ax.axhline(0.0, color="black", linestyle="--", linewidth=1, label="no difference")
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set(ylabel="Accuracy difference (fraction of pairs)", title=title)
    _legend_reference_last(ax, zero, fontsize="small")
    return _save(fig, path)


def alpha_curve_plot(
    curves: dict[str, Sequence[tuple[float, float, Sequence[float]]]],
    path: str | Path,
    title: str = "Accuracy against α",
) -> Path:
    """One line per dataset of (α, accuracy) with a shaded 95% interval, over chance 0.5; α on a symlog axis."""
    labels, colours = list(curves), _colours(list(curves))
    fig, ax = plt.subplots(figsize=FIGURE_INCHES["curve"])
    for label in labels:
        points = sorted(curves[label])
        alphas = [a for a, _, _ in points]
        accuracy = [m for _, m, _ in points]
        ax.plot(alphas, accuracy, "o-", color=colours[label], label=label)
        low, high = _band([c[0] for _, _, c in points], [c[1] for _, _, c in points], (0.0, 1.0))
        ax.fill_between(alphas, low, high, color=colours[label], alpha=0.15)
    chance = ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set(xlabel="α, weight of the policy loss (α = 0: plain reward model)", ylabel="Pairwise accuracy", title=title)
    _legend_reference_last(ax, chance, fontsize="small")
    return _save(fig, path)


# ---- head agreement and perplexity ----------------------------------------------------------------


def head_agreement_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "Reward head against implicit reward, same responses",
) -> Path:
    """Scatter per label of (reward-head score, implicit reward) with Pearson r and Spearman ρ in the legend."""
    colours = _colours(list(series))
    fig, ax = plt.subplots(figsize=FIGURE_INCHES["agreement"])
    dropped = 0
    for label, (head_scores, implicit_rewards) in series.items():
        xs, ys, lost = finite_pairs(head_scores, implicit_rewards)
        dropped += lost
        pearson, spearman = pearson_correlation(xs, ys), spearman_correlation(xs, ys)
        legend = f"{label}\n  n={len(xs)}, Pearson r = {_format(pearson)}, Spearman ρ = {_format(spearman)}"
        ax.scatter(xs, ys, s=14, alpha=0.6, color=colours[label], edgecolors="none", label=legend)
    ax.set(
        xlabel="Reward-head score r(x, y) (reward units)", ylabel="Implicit reward β·log π(y|x)/π_ref(y|x) (nats × β)"
    )
    ax.set_title(_dropped_note(dropped, "point"), fontsize=9)
    if series:  # below the axes: labels are long ("run-a reward head vs run-b implicit")
        ax.legend(
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncol=1 if len(series) <= 3 else 2,
            frameon=False,
        )
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def per_token_perplexity_plot(
    values: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "Per-token perplexity of chosen and rejected responses",
) -> Path:
    """Side-by-side box plots per method (chosen, rejected) on a log axis; values <= 0 count as invalid."""
    methods = list(values)
    fig, ax = plt.subplots(figsize=FIGURE_INCHES["perplexity"])
    dropped, ticks = 0, []
    for offset, side, colour in ((-0.2, 0, "tab:blue"), (0.2, 1, "tab:red")):
        boxes = []
        for method in methods:
            kept, lost = _finite(values[method][side])
            boxes.append([v for v in kept if v > 0])
            dropped += lost + len(kept) - len(boxes[-1])
        positions = [index + offset for index in range(len(methods))]
        if methods:
            drawn = ax.boxplot(boxes, positions=positions, widths=0.35, patch_artist=True)
            for patch in drawn["boxes"]:
                patch.set(facecolor=colour, alpha=0.5)
        ticks.append([len(b) for b in boxes])
        ax.plot([], [], "s", color=colour, alpha=0.5, markersize=10, label="chosen" if side == 0 else "rejected")
    labels = [f"{method}\n(n={chosen_n} / {rejected_n})" for method, chosen_n, rejected_n in zip(methods, *ticks)]
    ax.set_xticks(range(len(methods)), labels)
    if any(ticks[0]) or any(ticks[1]):
        ax.set_yscale("log")  # perplexities are skewed: a few responses sit orders of magnitude higher
    ax.set(xlabel="Method (n = chosen / rejected responses)", ylabel="Per-token perplexity exp(mean NLL) (log scale)")
    ax.set_title(f"{_plural(dropped, 'value')} with NaN/inf or <= 0 dropped" if dropped else "", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


# ---- best-of-N and RLHF curves --------------------------------------------------------------------


def curve_plot(
    curves: dict[str, list[tuple[float, float, Sequence[float]]]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    log2_x: bool = False,
    reference: float | None = None,
    reference_label: str = "",
    band: str = "bands: 95% interval",
    limits: tuple[float, float] | None = None,
) -> Path:
    """One line per label through (x, mean) points, with a shaded 95% band from each point's (low, high), held
    inside `limits` (the metric's range: (0, 1) for accuracies, win rates, the oracle's scores)."""
    labels = list(curves)
    colours = _colours(labels)
    fig, ax = plt.subplots(figsize=FIGURE_INCHES["curve"])
    dropped = 0
    for label in labels:
        points = [(x, m, band) for x, m, band in curves[label] if math.isfinite(m)]
        dropped += len(curves[label]) - len(points)
        if not points:
            continue
        xs, means = [p[0] for p in points], [p[1] for p in points]
        dashed = label.startswith(("random", "judge"))
        ax.plot(xs, means, marker="o", linestyle="--" if dashed else "-", color=colours[label], label=label)
        low, high = _band([p[2][0] for p in points], [p[2][1] for p in points], limits)
        ax.fill_between(xs, low, high, color=colours[label], alpha=0.12)
    handle = None
    if reference is not None:
        handle = ax.axhline(reference, color="black", linestyle=":", linewidth=1, label=reference_label)
    if log2_x:
        ax.set_xscale("log", base=2)
        sizes = sorted({x for series in curves.values() for x, _, _ in series})
        ax.set_xticks(sizes, [f"{int(x)}" for x in sizes])
    else:
        _integer_ticks_if_counts(ax, [x for series in curves.values() for x, _, _ in series])
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(_subtitle("lines: mean", band, _dropped_note(dropped, "point")), fontsize=9)
    if handle is not None:
        _legend_reference_last(ax, handle, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def bon_curve_plot(curves: dict[str, list[tuple[float, float, Sequence[float]]]], path: str | Path, title: str,
                   band: str = "bands: 95% interval") -> Path:  # fmt: skip
    """The best-of-N curve: the judge's mean score of each selector's pick against N (log2 axis); the built-in
    oracle's scores are fractions of constraints met, so the bands stay in [0, 1]."""
    return curve_plot(curves, path, title, "N (samples per prompt)", "Judge score of the pick", log2_x=True, band=band,
                      limits=(0.0, 1.0))  # fmt: skip
