"""A trial's figures: what they draw, checked against values computed here independently."""

import io
from collections import OrderedDict

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from orchestrator import trial_plots as plots
from trainables.metrics import convergence


def test_convergence_is_mean_and_std_of_the_last_ten_epochs():
    values = [1.0 + 0.5 * np.exp(-e / 3) + 0.001 * (-1) ** e for e in range(1, 26)]
    mean, std = convergence(values)
    assert mean == pytest.approx(np.mean(values[-10:])) and std == pytest.approx(np.std(values[-10:]))
    short = [0.9, 1.1, 1.3]  # a trial shorter than 10 epochs: all of them
    assert convergence(short) == pytest.approx((1.1, np.std(short)))
    with pytest.raises(ValueError):
        convergence([])


def _theta_omega_rows(epochs):
    history = [
        {
            "epoch": e,
            "state": {
                "stages.0.act": {
                    "theta/1": 1 + e / 100,
                    "theta/2": 1 - e / 50,
                    "omega/1": e / 200,
                    "omega/2": -e / 300,
                },
                "stages.2.act": {"theta/1": 0.9 - e / 400, "theta/2": 1.0, "omega/1": 0.0, "omega/2": e / 1000},
            },
        }
        for e in range(1, epochs + 1)
    ]
    return plots.theta_omega_rows(history)


def test_theta_omega_figure_annotates_each_curve_with_its_convergence_value():
    rows = _theta_omega_rows(14)
    fig = plots.theta_omega_figure(rows, "t")
    try:
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == ["stages.0.act", "stages.2.act"]
        labels = panels[0].get_legend_handles_labels()[1]
        theta2 = [1 - e / 50 for e in range(5, 15)]  # θ2 of stages.0.act over the last 10 of 14 epochs
        assert f"θ2 → {np.mean(theta2):.3f} ± {np.std(theta2):.3f}" in labels
        omega1 = [e / 200 for e in range(5, 15)]
        assert f"ω1 → {np.mean(omega1):.3f} ± {np.std(omega1):.3f}" in labels
        assert len(labels) == 4  # θ1, ω1, θ2, ω2
        # θ_i and ω_i share a colour, θ solid and ω dashed
        lines = {line.get_label(): line for line in panels[0].get_lines() if not line.get_label().startswith("_")}
        t1, o1 = (next(line for k, line in lines.items() if k.startswith(p)) for p in ("θ1", "ω1"))
        assert t1.get_color() == o1.get_color() and t1.get_linestyle() == "-" and o1.get_linestyle() == "--"
        # each convergence value is drawn as a dotted line over its window, in its curve's colour
        dotted = [
            (tuple(line.get_xdata()), tuple(line.get_ydata()), line.get_color())
            for line in panels[0].get_lines()
            if line.get_linestyle() == ":"
        ]
        t2 = next(line for k, line in lines.items() if k.startswith("θ2"))
        assert len(dotted) == 4 and any(
            x == (5, 14) and y == pytest.approx((np.mean(theta2),) * 2) and c == t2.get_color() for x, y, c in dotted
        )
        assert "last 10 epochs" in fig._suptitle.get_text()
    finally:
        plots.close(fig)


def test_theta_omega_figure_without_lslu_sites_says_so():
    fig = plots.theta_omega_figure([], "t")
    try:
        assert any("no LSLU sites" in t.get_text() for ax in fig.axes for t in ax.texts)
    finally:
        plots.close(fig)


def test_learning_curves_mark_the_first_best_epoch():
    accs = [50.0, 80.0, 91.5, 90.0, 91.5]
    history = {
        "train_loss": [(e, 1 / e) for e in range(1, 6)],
        "val_loss": [(e, 1.2 / e) for e in range(1, 6)],
        "val_acc": list(zip(range(1, 6), accs)),
        "lr": [(e, 0.01 * (6 - e) / 5) for e in range(1, 6)],
    }
    fig = plots.learning_curves_figure(history, "t")
    try:
        loss_ax, acc_ax, lr_ax = fig.axes
        assert [line.get_label() for line in loss_ax.get_lines()] == ["train_loss", "val_loss"]
        star = next(line for line in acc_ax.get_lines() if line.get_label().startswith("best"))
        assert list(star.get_xdata()) == [3] and list(star.get_ydata()) == [91.5]
        assert star.get_label() == "best 91.50 % (epoch 3)"
        assert list(lr_ax.get_lines()[0].get_ydata()) == pytest.approx([0.01, 0.008, 0.006, 0.004, 0.002])
    finally:
        plots.close(fig)


def test_sites_figure_colours_inserted_sites_by_module():
    sites = [
        {"index": "0", "path": "stem.act", "channels": "16", "module": "ReLU", "inserted": "0"},
        {"index": "1", "path": "stages.0.act", "channels": "32", "module": "LSLU", "inserted": "1"},
        {"index": "2", "path": "stages.1.act", "channels": "32", "module": "ReLU", "inserted": "0"},
        {"index": "3", "path": "stages.2.act", "channels": "64", "module": "LSLU", "inserted": "1"},
    ]
    fig = plots.sites_figure(sites, "t")
    try:
        ax = fig.axes[0]
        boxes = sorted(ax.patches, key=lambda p: p.get_x())
        assert len(boxes) == 4
        kept, lslu = to_rgba(plots.KEPT_COLOR), to_rgba("C1")
        assert [b.get_facecolor() for b in boxes] == [kept, lslu, kept, lslu]
        texts = {t.get_text() for t in ax.texts}
        assert {"stem.act", "stages.2.act", "64ch", "0", "3"} <= texts
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["LSLU (inserted) ×2", "ReLU (kept) ×2"]
        assert "2 of 4 sites inserted (mask 0101)" in fig._suptitle.get_text()
    finally:
        plots.close(fig)


def test_sites_figure_wraps_a_deep_network():
    sites = [
        {
            "index": str(i),
            "path": f"layer{i}.act",
            "channels": "",
            "module": "LSLU" if i % 3 else "ReLU",
            "inserted": "1" if i % 3 else "0",
        }
        for i in range(49)
    ]
    fig = plots.sites_figure(sites)
    try:
        ax = fig.axes[0]
        rows = {round(p.get_y(), 3) for p in ax.patches}
        assert len(ax.patches) == 49 and len(rows) == 4  # 16 per row
        assert not any(t.get_text().startswith("layer") for t in ax.texts)  # too many sites for path labels
    finally:
        plots.close(fig)


def test_a_single_epoch_is_drawn_on_whole_epoch_ticks():
    history = {"train_loss": [(1, 2.3)], "val_loss": [(1, 2.4)], "val_acc": [(1, 60.0)], "lr": [(1, 0.002)]}
    figures = [plots.learning_curves_figure(history, "t"), plots.theta_omega_figure(_theta_omega_rows(1), "t")]
    try:
        axes = [ax for fig in figures for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 5
        for ax in axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert 1 in ticks and all(float(t).is_integer() for t in ticks)
    finally:
        for fig in figures:
            plots.close(fig)


def _pixels(fig):
    fig.canvas.draw()
    try:
        return np.asarray(fig.canvas.buffer_rgba()).copy()
    finally:
        plots.close(fig)


@pytest.mark.parametrize("epochs", [1, 14])
def test_pinned_titles_and_axis_labels_land_where_matplotlib_places_them(epochs, monkeypatch):
    """Titles and axis labels are placed without measuring the tick labels (cheaper to draw): the figures must be
    pixel for pixel what matplotlib's own placement draws."""
    history = {
        "train_loss": [(e, 2 / e) for e in range(1, epochs + 1)],
        "val_loss": [(e, 2.2 / e) for e in range(1, epochs + 1)],
        "val_acc": [(e, 50.0 + e) for e in range(1, epochs + 1)],
        "lr": [(e, 1e-3 * 0.9**e) for e in range(1, epochs + 1)],
    }
    rows = _theta_omega_rows(epochs)
    pinned = [_pixels(plots.learning_curves_figure(history, "t")), _pixels(plots.theta_omega_figure(rows, "t"))]
    monkeypatch.setattr(plots, "pin_axis_labels", lambda ax: None)
    monkeypatch.setattr(plots, "panel_title", lambda ax, text: ax.set_title(text, fontsize=9))
    placed = [_pixels(plots.learning_curves_figure(history, "t")), _pixels(plots.theta_omega_figure(rows, "t"))]
    for a, b in zip(pinned, placed):
        assert a.shape == b.shape and np.array_equal(a, b)


def _png_pixels(png: bytes):
    return np.asarray(Image.open(io.BytesIO(png)))


def _new_figure_pixels(fig):
    try:
        return _png_pixels(plots.png_bytes(fig))
    finally:
        plots.close(fig)


def test_figures_drawn_again_on_a_laid_out_figure_are_a_new_figures_pixels(monkeypatch):
    """``learning_curves_png``/``theta_omega_png`` empty a figure this thread laid out before and draw on it (it keeps
    its tick marks, cheaper to draw). Through a run of drawings that change the epochs, the scales, the metrics logged,
    the title and the sites, each must be pixel for pixel what a new figure draws."""
    monkeypatch.setattr(plots._LAID_OUT, "figures", OrderedDict(), raising=False)
    drawn_on, laid_out = [], plots._laid_out
    monkeypatch.setattr(
        plots, "_laid_out", lambda key, layout: drawn_on.append((key, laid_out(key, layout))) or drawn_on[-1][1]
    )
    rng = np.random.default_rng(0)

    def curves(epochs, keys=("train_loss", "val_loss", "val_acc", "lr"), scale=1.0):
        return {
            k: [(e, float(rng.random() * (100 if k == "val_acc" else scale))) for e in range(1, epochs + 1)]
            for k in keys
        }

    for history, title in [
        (curves(12), "a"),
        (curves(1, scale=1e-4), "b"),
        (curves(3, ("train_loss",)), "c"),
        ({}, "d"),
        (curves(40, scale=1e5), "e"),
        (curves(5), ""),
        (curves(2), ""),
    ]:
        got = _png_pixels(plots.learning_curves_png(history, title))
        assert np.array_equal(got, _new_figure_pixels(plots.learning_curves_figure(history, title))), (history, title)
    for rows in [
        _theta_omega_rows(14),
        _theta_omega_rows(1),
        _theta_omega_rows(3)[:4],
        [],
        _theta_omega_rows(40),
        [],
        _theta_omega_rows(2)[:2],
    ]:
        got = _png_pixels(plots.theta_omega_png(rows, "t"))
        assert np.array_equal(got, _new_figure_pixels(plots.theta_omega_figure(rows, "t"))), rows
    # 14 drawings on 5 figures, one per layout: with and without a title; 2 sites, 1 site, none
    figures = {key: {id(fig) for k, fig in drawn_on if k == key} for key, _ in drawn_on}
    assert len(drawn_on) == 14 and sorted(map(len, figures.values())) == [1] * 5
    assert sorted(figures, key=str) == sorted(
        [
            ("learning_curves", True),
            ("learning_curves", False),
            ("theta_omega", 2),
            ("theta_omega", 1),
            ("theta_omega", 0),
        ],
        key=str,
    )


def test_png_bytes_is_a_png_of_savefigs_pixels():
    """``png_bytes`` writes the PNG itself (faster than PIL's writer): a PNG decoder must read back exactly the pixels,
    size and resolution that ``savefig`` writes, for figures with transparency and colour."""
    history = {"train_loss": [(1, 2.0), (2, 1.0)], "val_acc": [(1, 50.0), (2, 60.0)]}
    for fig in (
        plots.learning_curves_figure(history, "t"),
        plots.sites_figure(
            [{"index": i, "path": f"s{i}", "channels": 8, "module": "LSLU", "inserted": i % 2} for i in range(5)]
        ),
    ):
        fig.patch.set_alpha(0.5)  # a translucent background: the alpha channel must come through too
        try:
            ours, theirs = Image.open(io.BytesIO(plots.png_bytes(fig))), io.BytesIO()
            fig.savefig(theirs, format="png")
            theirs = Image.open(theirs)
            assert ours.format == "PNG" and ours.mode == theirs.mode == "RGBA" and ours.size == theirs.size
            assert np.array_equal(np.asarray(ours), np.asarray(theirs))
            assert ours.info["dpi"] == pytest.approx(theirs.info["dpi"], abs=0.01)
        finally:
            plots.close(fig)
