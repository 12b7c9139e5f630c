"""Figures: each writes a readable PNG of the promised size; ECE and correlations against hand-computed numbers.

σ(log 3) = 0.75 and σ(log 9) = 0.9, so margins of log 3 / log 9 land in known calibration bins.
"""

import math
import subprocess
import sys

import pytest
from matplotlib.text import Text
from PIL import Image

from hafrm import plots

NAN = float("nan")
LOG3, LOG9 = math.log(3.0), math.log(9.0)


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # decodes the whole file: a truncated PNG fails here
        assert image.format == "PNG"
        return image.size


def assert_png(path, figure: str) -> None:
    width, height = plots.FIGURE_INCHES[figure]
    assert path.is_file() and path.stat().st_size > 0
    assert png_size(path) == (round(width * plots.DPI), round(height * plots.DPI))


@pytest.fixture
def figure_texts(monkeypatch) -> list[str]:
    """Every string drawn on the figures saved during the test (titles, labels, legend entries)."""
    texts: list[str] = []
    save = plots._save

    def recording_save(fig, path):
        texts.extend(text.get_text() for text in fig.findobj(Text))
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    return texts


def joined(texts: list[str]) -> str:
    return "\n".join(texts)


# ---- expected calibration error ----------------------------------------------------------------------


def test_ece_margin_zero_is_calibrated():
    # p = 0.5 for both orientations, observed 1 and 0 in the same bin: |0.5 - 0.5| = 0
    assert plots.expected_calibration_error([1.0, 2.0, -3.0], [1.0, 2.0, -3.0]) == pytest.approx(0.0)


def test_ece_always_right_at_three_to_one_is_overconfident_by_a_quarter():
    # p = 0.75 -> always 1 (gap 0.25), mirrored p = 0.25 -> always 0 (gap 0.25)
    assert plots.expected_calibration_error([LOG3] * 5, [0.0] * 5) == pytest.approx(0.25)


def test_ece_perfectly_calibrated_three_right_one_wrong():
    # bin of 0.75: three (0.75, 1) and the wrong pair's flip (0.75, 0) -> frequency 0.75 = p
    chosen, rejected = [LOG3, LOG3, LOG3, 0.0], [0.0, 0.0, 0.0, LOG3]
    assert plots.expected_calibration_error(chosen, rejected) == pytest.approx(0.0, abs=1e-12)
    stats = plots.calibration_bins(chosen, rejected)
    assert stats["counts"][7] == 4 and stats["counts"][2] == 4 and sum(stats["counts"]) == 8
    assert stats["observed"][7] == pytest.approx(0.75) and stats["mean_predicted"][7] == pytest.approx(0.75)
    assert math.isnan(stats["observed"][0])  # empty bin


def test_ece_two_bins_weighted_by_count():
    # gaps: 0.75 -> 0.25, 0.9 -> 0.1, and the same for the mirrored 0.25 and 0.1: (0.25 + 0.1) * 2 / 4
    assert plots.expected_calibration_error([LOG3, LOG9], [0.0, 0.0]) == pytest.approx(0.175)


def test_ece_confident_extremes():
    assert plots.expected_calibration_error([100.0], [0.0]) == pytest.approx(0.0, abs=1e-12)
    assert plots.expected_calibration_error([0.0], [100.0]) == pytest.approx(1.0)  # sure and wrong


def test_ece_one_bin_is_zero_by_symmetry_and_bins_must_be_positive():
    assert plots.expected_calibration_error([LOG3, LOG9, 5.0], [0.0, 0.0, 0.0], bins=1) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        plots.expected_calibration_error([1.0], [0.0], bins=0)


def test_ece_drops_nan_pairs_and_is_nan_without_data():
    assert plots.expected_calibration_error([LOG3, NAN, 1.0], [0.0, 0.0, NAN]) == pytest.approx(0.25)
    assert plots.calibration_bins([LOG3, NAN], [0.0, 0.0])["dropped"] == 1
    assert math.isnan(plots.expected_calibration_error([], []))
    assert math.isnan(plots.expected_calibration_error([NAN], [0.0]))


# ---- correlations ------------------------------------------------------------------------------------


def test_pearson_by_hand():
    # dx = (-1, 0, 1), dy = (-4/3, -1/3, 5/3): r = 3 / sqrt(2 · 42/9) = 9 / sqrt(84)
    assert plots.pearson_correlation([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    assert plots.pearson_correlation([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)


def test_spearman_by_hand_with_ties():
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): r = 4.5 / sqrt(4.5 · 5) = sqrt(0.9)
    assert plots.spearman_correlation([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert plots.spearman_correlation([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert plots.spearman_correlation([1, 2, 3, 4], [9, 5, 2, -7]) == pytest.approx(-1.0)


def test_correlation_undefined_is_nan():
    for correlation in (plots.pearson_correlation, plots.spearman_correlation):
        assert math.isnan(correlation([], []))
        assert math.isnan(correlation([1.0], [2.0]))
        assert math.isnan(correlation([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]))  # constant x, even with float noise
    with pytest.raises(ValueError):
        plots.pearson_correlation([1.0, 2.0], [1.0])


# ---- every figure writes a readable PNG --------------------------------------------------------------


def test_calibration_plot(tmp_path, figure_texts):
    path = plots.calibration_plot([LOG3, LOG3, LOG3, 0.0, NAN], [0.0, 0.0, 0.0, LOG3, 1.0], tmp_path / "a" / "cal.png")
    assert path == tmp_path / "a" / "cal.png"  # parent folder made
    assert_png(path, "calibration")
    text = joined(figure_texts)
    assert "ECE = 0.000" in text and "1 pair with NaN/inf dropped" in text and "Reward-head calibration" in text


@pytest.mark.parametrize(
    "chosen, rejected",
    [([], []), ([1.0], [0.0]), ([2.0] * 4, [2.0] * 4), ([NAN, NAN], [0.0, 1.0]), ([50.0, -50.0], [0.0, 0.0])],
)
def test_calibration_plot_edge_cases(tmp_path, chosen, rejected):
    assert_png(plots.calibration_plot(chosen, rejected, tmp_path / "cal.png", bins=5), "calibration")


def test_margin_histogram(tmp_path, figure_texts):
    margins = {"rm": [0.5, 1.0, -0.2, 2.0], "dpo": [0.1, NAN, -1.0], "haf": [0.3] * 4, "empty": [], "one": [1.0]}
    assert_png(plots.margin_histogram(margins, tmp_path / "margins.png"), "margins")
    text = joined(figure_texts)
    assert "rm (n=4, mean 0.82, 75% > 0)" in text and "empty (no data)" in text and "1 margin with NaN/inf" in text
    assert_png(plots.margin_histogram({}, tmp_path / "none.png"), "margins")
    assert_png(plots.margin_histogram({"nan": [NAN]}, tmp_path / "nan.png"), "margins")


def test_accuracy_bars(tmp_path, figure_texts):
    table = {
        "rm": {"hh-rlhf-helpful-base": (0.68, 0.02), "arena": (0.61, NAN)},  # one seed: no spread
        "dpo": {"hh-rlhf-helpful-base": (NAN, 0.0)},  # missing cell and a NaN mean
        "haf": {"hh-rlhf-helpful-base": (0.71, 0.03), "arena": (0.65, 0.01)},
    }
    assert_png(plots.accuracy_bars(table, tmp_path / "acc.png", title="My title"), "accuracy")
    text = joined(figure_texts)
    assert "My title" in text and "1 cell with NaN/inf dropped" in text and "chance (0.5)" in text
    assert_png(plots.accuracy_bars({}, tmp_path / "empty.png"), "accuracy")
    assert_png(plots.accuracy_bars({"rm": {"hh": (1.0, 0.5)}}, tmp_path / "one.png"), "accuracy")


def test_alpha_sweep_plot(tmp_path, figure_texts):
    alphas = [0.5, -0.5, 0.0, 0.2, NAN]
    accuracy = [(0.70, 0.01), (0.55, 0.02), (0.68, NAN), (0.72, 0.01), (0.7, 0.0)]
    margin = [(1.0, 0.1), (-0.2, 0.1), (NAN, 0.0), (1.1, 0.2), (1.0, 0.0)]
    assert_png(plots.alpha_sweep_plot(alphas, accuracy, margin, tmp_path / "alpha.png"), "alpha_sweep")
    text = joined(figure_texts)
    assert "4 accuracy points · 1 point with NaN/inf dropped" in text
    assert "3 mean margin points · 2 points with NaN/inf dropped" in text
    assert_png(plots.alpha_sweep_plot([0.2], [(0.7, NAN)], [(1.0, 0.0)], tmp_path / "one.png"), "alpha_sweep")
    assert_png(plots.alpha_sweep_plot([], [], [], tmp_path / "empty.png"), "alpha_sweep")
    with pytest.raises(ValueError):
        plots.alpha_sweep_plot([0.0, 0.2], [(0.7, 0.0)], [(1.0, 0.0)] * 2, tmp_path / "bad.png")


def test_head_agreement_plot(tmp_path, figure_texts):
    series = {
        "rm head vs dpo implicit": ([1, 2, 3, NAN], [1, 2, 4, 0.0]),
        "constant": ([0.5] * 3, [1.0, 2.0, 3.0]),
        "single": ([1.0], [2.0]),
        "empty": ([], []),
    }
    assert_png(plots.head_agreement_plot(series, tmp_path / "agree.png"), "agreement")
    text = joined(figure_texts)
    assert f"n=3, Pearson r = {9 / math.sqrt(84):.3f}, Spearman ρ = 1.000" in text
    assert "n=3, Pearson r = n/a, Spearman ρ = n/a" in text and "1 point with NaN/inf dropped" in text
    assert_png(plots.head_agreement_plot({}, tmp_path / "none.png"), "agreement")


def test_per_token_perplexity_plot(tmp_path, figure_texts):
    values = {
        "rm": ([2.0, 3.5, 4.0, 12.0], [3.0, 5.0, 30.0, NAN]),
        "dpo": ([2.5], [0.0, -1.0, 7.0]),  # <= 0 is not a perplexity
        "haf": ([], []),
    }
    assert_png(plots.per_token_perplexity_plot(values, tmp_path / "ppl.png"), "perplexity")
    text = joined(figure_texts)
    assert "3 values with NaN/inf or <= 0 dropped" in text and "rm\n(n=4 / 3)" in text
    assert_png(plots.per_token_perplexity_plot({}, tmp_path / "none.png"), "perplexity")
    assert_png(plots.per_token_perplexity_plot({"rm": ([2.0] * 3, [2.0] * 3)}, tmp_path / "flat.png"), "perplexity")


def test_rest_of_hafrm_does_not_import_matplotlib():
    code = (
        "import pkgutil, importlib, sys, hafrm\n"
        "for module in pkgutil.walk_packages(hafrm.__path__, 'hafrm.'):\n"
        "    if module.name != 'hafrm.plots':\n"
        "        importlib.import_module(module.name)\n"
        "print('matplotlib' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ---- nothing clipped, bands in range, whole-number steps --------------------------------------------------------

LONG = "study on " + ", ".join(f"../data/part-{i}/train.jsonl.gz:train" for i in range(6)) + ": accuracy"


@pytest.fixture
def kept_figures(monkeypatch) -> list:
    """The figures the plots save during the test, kept open (they are closed after it)."""
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def titles_inside(fig) -> bool:
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = [fig._suptitle] if fig._suptitle is not None else []
    texts += [ax.title for ax in fig.axes]
    for text in texts:
        if text.get_text():
            extent = text.get_window_extent(renderer)
            if extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y1 > box.y1 + 1:
                return False
    return True


def band_edges(fig) -> list[float]:
    from matplotlib.collections import PolyCollection

    return [y for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)
            for path in c.get_paths() for _, y in path.vertices]  # fmt: skip


def test_every_curve_keeps_its_title_inside_and_its_bands_in_range(tmp_path, kept_figures):
    wide = [(1, 0.9, (0.7, 1.2)), (2, 0.2, (-0.1, 0.5)), (3, 0.95, (0.8, 1.1))]  # normal intervals past [0, 1]
    plots.curve_plot({"haf": wide}, tmp_path / "a.png", LONG, "training step", "win rate", limits=(0.0, 1.0))
    plots.bon_curve_plot({"rm": [(1, 0.3, (-0.2, 0.8)), (8, 0.9, (0.6, 1.3))]}, tmp_path / "b.png", LONG)
    plots.alpha_curve_plot({"test": [(0.0, 0.9, (0.7, 1.3)), (0.2, 0.5, (-0.1, 1.1))]}, tmp_path / "c.png", LONG)
    plots.accuracy_bars({"rm": {"set": (0.7, 0.05)}}, tmp_path / "d.png", title=LONG)
    plots.paired_differences_plot({"haf": {"set": (0.01, (-0.02, 0.04))}}, tmp_path / "e.png", title=LONG)
    assert len(kept_figures) == 5
    for fig in kept_figures:
        assert titles_inside(fig), fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
    for fig in kept_figures[:3]:
        edges = band_edges(fig)
        assert edges and min(edges) >= 0.0 and max(edges) <= 1.0
    steps = kept_figures[0].axes[0].get_xticks()
    assert all(float(tick).is_integer() for tick in steps)  # training steps: no tick at 1.25


def test_the_random_selector_is_exact_and_shown_without_an_interval():
    from hafrm.bon import _interval
    from hafrm.selection import random_recall

    chance = random_recall([[1.0, 0.0], [1.0, 1.0]], 1)  # one best of two, then all tied
    assert chance["recall"] == 0.75 and chance["ci95"] is None
    assert _interval(chance) == "0.750 (exact)"
