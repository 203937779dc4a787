"""A trial's figures: θ/ω against epoch (papers/000 Fig. 5), learning curves, and the network's sites.

Each figure is drawn from plain rows (what the trial's MLflow run holds), so a trial that finishes and a
trial the driver closes after the scheduler stopped it get the same pictures, drawn by the driver
(orchestrator/figures.py); no trial draws them, so they live in the orchestrator (DESIGN.md §1).
"""

from __future__ import annotations

import csv
import io
import struct
import threading
import zlib
from collections import OrderedDict

import matplotlib
import numpy as np

matplotlib.use("Agg")  # trials and drivers have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from trainables.metrics import CONVERGENCE_EPOCHS, convergence  # noqa: E402

ROW_FIELDS = ("epoch", "site", "i", "theta", "omega")
SITE_FIELDS = ("index", "path", "channels", "module", "inserted")
KEPT_COLOR = "#c8c8c8"  # a site that kept the network's own activation
SITES_PER_ROW = 16
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# empty figures kept for reuse by each drawing thread (one per layout: number of panels, title or not)
LAID_OUT_PER_THREAD = 8


def fixed_margins(
    fig, *, left: float, right: float, bottom: float, top: float, wgap: float = 0.0, hgap: float = 0.0
) -> None:
    """Place a figure's subplot grid with margins and gaps given in inches. ``tight_layout`` would measure every
    label instead, and drawing twice (layout, then the PNG) is most of a trial's figure time on the driver."""
    width, height = fig.get_size_inches()
    rows, cols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    axes_w = (width - left - right - (cols - 1) * wgap) / cols
    axes_h = (height - bottom - top - (rows - 1) * hgap) / rows
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wgap / axes_w,
        hspace=hgap / axes_h,
    )


def panel_title(ax, text: str) -> None:
    """A panel's title at a fixed height: matplotlib would measure the axes' ticks at every draw to place it."""
    ax.set_title(text, fontsize=9, y=1.0)


def pin_axis_labels(ax) -> None:
    """Put the x label where matplotlib puts it below one line of tick labels (tick length + pad + label height +
    labelpad), and fix the empty y label, so drawing does not measure every tick label to place them: a quarter of
    a panel's drawing time. Same pixels as matplotlib's own placement (tests/test_plots.py)."""
    rc = matplotlib.rcParams
    below = (
        rc["xtick.major.size"]
        + rc["xtick.major.pad"]
        + FontProperties(size=rc["xtick.labelsize"]).get_size_in_points()
        + rc["axes.labelpad"]
    )
    ax.xaxis.set_label_coords(0.5, 0, ax.transAxes + ScaledTranslation(0, -below / 72, ax.figure.dpi_scale_trans))
    if not ax.get_ylabel():  # a y label's place depends on the tick labels' width: only an empty one is pinned
        ax.yaxis.set_label_coords(0, 0.5)


def epoch_axis(ax, epochs: list[int]) -> None:
    """An x axis of whole epochs; a single epoch gets its neighbours as limits (matplotlib would tick 0.95 … 1.05)."""
    ax.set_xlabel("epoch")
    pin_axis_labels(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def theta_omega_rows(act_history: list[dict]) -> list[dict]:
    """Flatten ``[{"epoch": e, "state": {path: {"theta/1": …, "omega/1": …}}}]`` into epoch × site × i rows: the sites
    that report θ_i and ω_i (LSLU's; a PWLU reports its boundaries instead)."""
    rows = []
    for entry in act_history:
        for path, values in entry["state"].items():
            i = 1
            while f"theta/{i}" in values and f"omega/{i}" in values:
                rows.append(
                    {
                        "epoch": entry["epoch"],
                        "site": path,
                        "i": i,
                        "theta": values[f"theta/{i}"],
                        "omega": values[f"omega/{i}"],
                    }
                )
                i += 1
    return rows


def rows_csv(rows: list[dict], fields: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def theta_omega_csv(rows: list[dict]) -> str:
    return rows_csv(rows, ROW_FIELDS)


def theta_omega_figure(rows: list[dict], title: str = ""):
    """θ_i (solid) and ω_i (dashed, same colour) against epoch, one panel per LSLU site.

    Each legend entry carries the convergence value, mean ± std over the last 10 epochs (shaded), as papers/000 Fig. 5
    annotates it.
    """
    fig = _theta_omega_layout(len(_sites_of(rows)))
    _draw_theta_omega(fig, rows, title)
    return fig


def theta_omega_png(rows: list[dict], title: str = "") -> bytes:
    """``theta_omega_figure`` as PNG bytes, drawn on a figure this thread laid out before (the same pixels)."""
    fig = _laid_out(("theta_omega", len(_sites_of(rows))), _theta_omega_layout)
    _draw_theta_omega(fig, rows, title)
    return png_bytes(fig)


def _sites_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["site"] for r in rows))


def _theta_omega_layout(n_sites: int):
    cols = min(4, max(1, n_sites))
    nrows = max(1, -(-n_sites // cols))
    fig = _agg_figure(figsize=(4.6 * cols, 3.4 * nrows + 0.4))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[n_sites:]:
        ax.set_visible(False)
    for ax in axes.flat[:n_sites]:
        ax.grid(alpha=0.3)  # kept by the ticks a reused figure makes: set once, not at every drawing
    if not n_sites:
        axes.flat[0].set_visible(True)
        axes.flat[0].set_axis_off()
    fixed_margins(fig, left=0.7, right=0.15, bottom=0.5, top=0.85, wgap=0.75, hgap=0.85)
    return fig


def _draw_theta_omega(fig, rows: list[dict], title: str) -> None:
    sites = _sites_of(rows)
    for ax, site in zip(fig.axes, sites):
        site_rows = [r for r in rows if r["site"] == site]
        epochs = sorted({r["epoch"] for r in site_rows})
        window = epochs[-CONVERGENCE_EPOCHS:]
        if len(epochs) > 1:
            ax.axvspan(window[0], window[-1], color="0.93", zorder=0)
        for param, symbol, style in (("theta", "θ", "-"), ("omega", "ω", "--")):  # legend: θ column, ω column
            for n, i in enumerate(sorted({r["i"] for r in site_rows})):
                xs, ys = zip(*sorted((r["epoch"], r[param]) for r in site_rows if r["i"] == i))
                mean, std = convergence(list(ys))
                ax.plot(
                    xs,
                    ys,
                    style,
                    color=f"C{n}",
                    marker="." if len(xs) < 30 else None,
                    label=f"{symbol}{i} → {mean:.3f} ± {std:.3f}",
                )
                # the convergence value over its window: a plain line (a LineCollection from hlines costs a tenth of
                # the figure), which the legend's "best" place also keeps clear of
                ax.plot([xs[-CONVERGENCE_EPOCHS:][0], xs[-1]], [mean, mean], ":", color=f"C{n}", linewidth=1)
        panel_title(ax, site)
        epoch_axis(ax, epochs)
        ax.legend(fontsize=7, ncol=2, columnspacing=0.8, handlelength=1.6)
    if not sites:
        fig.axes[0].text(0.5, 0.5, "no LSLU sites in this trial", ha="center", va="center")
    note = f"convergence value: mean ± std over the last {CONVERGENCE_EPOCHS} epochs (shaded)"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=10)


def learning_curves_figure(history: dict[str, list[tuple[int, float]]], title: str = ""):
    """Loss (train, val), validation accuracy with its best epoch marked, and the learning rate, against epoch.

    ``history`` maps a metric name to its ``(epoch, value)`` points.
    """
    fig = _learning_curves_layout(bool(title))
    _draw_learning_curves(fig, history, title)
    return fig


def learning_curves_png(history: dict[str, list[tuple[int, float]]], title: str = "") -> bytes:
    """``learning_curves_figure`` as PNG bytes, drawn on a figure this thread laid out before (the same pixels)."""
    fig = _laid_out(("learning_curves", bool(title)), _learning_curves_layout)
    _draw_learning_curves(fig, history, title)
    return png_bytes(fig)


def _learning_curves_layout(titled: bool):
    fig = _agg_figure(figsize=(13, 3.6))
    for ax in fig.subplots(1, 3):
        ax.grid(alpha=0.3)
    fixed_margins(fig, left=0.6, right=0.15, bottom=0.5, top=0.6 if titled else 0.35, wgap=0.85)
    return fig


def _draw_learning_curves(fig, history: dict[str, list[tuple[int, float]]], title: str) -> None:
    loss_ax, acc_ax, lr_ax = fig.axes
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        if history.get(key):
            loss_ax.plot(*zip(*history[key]), style, marker=".", label=key)
    panel_title(loss_ax, "loss")
    if history.get("val_acc"):
        epochs, accs = zip(*history["val_acc"])
        acc_ax.plot(epochs, accs, marker=".", color="C2", label="val_acc")
        best = max(range(len(accs)), key=accs.__getitem__)  # the first epoch that reached the best value
        acc_ax.plot(
            epochs[best],
            accs[best],
            "*",
            color="C3",
            markersize=12,
            label=f"best {accs[best]:.2f} % (epoch {epochs[best]})",
        )
    panel_title(acc_ax, "validation top-1 accuracy (%)")
    if history.get("lr"):
        lr_ax.plot(*zip(*history["lr"]), marker=".", color="C4", label="lr (end of epoch)")
    panel_title(lr_ax, "learning rate")
    epochs = sorted({e for points in history.values() for e, _ in points})
    for ax in (loss_ax, acc_ax, lr_ax):
        epoch_axis(ax, epochs)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=10)


def _agg_figure(**kwargs) -> Figure:
    """A figure outside pyplot's registry (one kept for reuse is never closed there) on an Agg canvas of its own (its
    renderer is kept between drawings)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


_LAID_OUT = threading.local()


def _laid_out(key: tuple, layout):
    """This thread's empty figure for ``key``, made by ``layout(*key[1:])`` the first time. A new figure's axes make
    their tick marks and labels at the first draw; a figure emptied and drawn on again keeps them, and its renderer:
    0.6× the time for the learning curves, 0.7× for θ/ω (tests/test_plots.py checks the pixels against a new
    figure's)."""
    figures = _LAID_OUT.__dict__.setdefault("figures", OrderedDict())
    fig = figures.pop(key, None)
    if fig is None:
        fig = layout(*key[1:])
    else:
        for ax in fig.axes:
            _empty(ax)
    figures[key] = fig
    while len(figures) > LAID_OUT_PER_THREAD:
        figures.popitem(last=False)  # not pyplot's: nothing else holds it
    return fig


def _empty(ax) -> None:
    """Take the drawing off a panel and put its data and view limits, autoscaling and colour cycle back to those of a
    new panel; the layout, titles and labels stay (the drawing sets them again)."""
    for artist in [*ax.lines, *ax.collections, *ax.patches, *ax.texts]:
        artist.remove()
    if ax.legend_ is not None:
        ax.legend_.remove()
    ax.set_prop_cycle(None)
    ax.ignore_existing_data_limits = True  # the next drawing's data limits replace the last one's
    ax.set_xlim(0, 1)  # a new panel's view; a panel left without data keeps it
    ax.set_ylim(0, 1)
    ax.set_autoscale_on(True)


def png_bytes(fig) -> bytes:
    """The figure as an 8-bit RGBA PNG of ``savefig``'s pixels (tests/test_plots.py), unfiltered rows at zlib's fastest
    level. ``savefig`` goes through PIL's writer, which tries five filters on each row: twice the encoding time
    (~20 ms for the learning curves) for files of about the same size (~70 kB)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    height, width, _ = rgba.shape
    rows = np.zeros((height, 1 + 4 * width), np.uint8)  # each row: its filter type (0, none), then its pixels
    rows[:, 1:] = rgba.reshape(height, 4 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits per channel, RGBA, no interlace
    ppm = round(fig.dpi / 0.0254)
    return PNG_SIGNATURE + b"".join(
        _png_chunk(kind, data)
        for kind, data in (
            (b"IHDR", header),
            (b"pHYs", struct.pack(">IIB", ppm, ppm, 1)),
            (b"IDAT", zlib.compress(rows, 1)),
            (b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def sites_figure(sites: list[dict], title: str = ""):
    """The network's activation sites in forward order, one box each, coloured by the module that sits there.

    ``sites`` are ``sites.csv`` rows: index, path, channels, module, inserted (0/1). Sites that kept the
    network's own activation are grey; every inserted module type gets its own colour.
    """
    inserted_types = sorted({s["module"] for s in sites if str(s["inserted"]) == "1"})
    colours = {m: f"C{k + 1}" for k, m in enumerate(inserted_types)}
    per_row = min(SITES_PER_ROW, max(1, len(sites)))
    nrows = max(1, -(-len(sites) // per_row))
    labelled = len(sites) <= 2 * SITES_PER_ROW  # path labels only where they stay readable
    row_height = 2.4 if labelled else 1.5  # a box is 1 × 1; labels hang below it
    left, bottom = (-1.2 if labelled else -0.2), -(nrows - 1) * row_height - (1.4 if labelled else 0.3)
    width, height = per_row + 0.2 - left, 1.4 - bottom
    scale = 0.75  # inches per box
    fig = plt.figure(figsize=(max(4.5, scale * width), scale * height + 0.9))
    ax = fig.add_axes((0, 0.5 / (scale * height + 0.9), 1, scale * height / (scale * height + 0.9)))
    for k, site in enumerate(sites):
        x, y = k % per_row, -(k // per_row) * row_height
        inserted = str(site["inserted"]) == "1"
        ax.add_patch(
            Rectangle(
                (x + 0.1, y),
                0.8,
                0.8,
                facecolor=colours[site["module"]] if inserted else KEPT_COLOR,
                edgecolor="black",
                linewidth=0.6,
            )
        )
        ax.text(x + 0.5, y + 0.4, str(site["index"]), ha="center", va="center", fontsize=9)
        if site.get("channels") not in (None, "", "None"):
            ax.text(x + 0.5, y + 0.88, f"{site['channels']}ch", ha="center", va="bottom", fontsize=7, color="0.3")
        if labelled:
            ax.text(
                x + 0.6, y - 0.1, site["path"], ha="right", va="top", fontsize=7, rotation=35, rotation_mode="anchor"
            )
        if k % per_row:
            ax.plot([x - 0.1, x + 0.1], [y + 0.4, y + 0.4], color="0.4", linewidth=0.8)
    ax.set_xlim(left, left + width)
    ax.set_ylim(bottom, bottom + height)
    ax.set_axis_off()
    kept = sorted({s["module"] for s in sites if str(s["inserted"]) != "1"})
    handles = [
        Patch(facecolor=colours[m], edgecolor="black", label=f"{m} (inserted) ×{_count(sites, m, '1')}")
        for m in inserted_types
    ]
    handles += [
        Patch(facecolor=KEPT_COLOR, edgecolor="black", label=f"{m} (kept) ×{_count(sites, m, '0')}") for m in kept
    ]
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 0),
            ncol=min(4, len(handles)),
            fontsize=8,
            frameon=False,
        )
    else:
        ax.text(0.5, 0.5, "no activation sites", ha="center", va="center", transform=ax.transAxes)
    mask = "".join("1" if str(s["inserted"]) == "1" else "0" for s in sites)
    headline = f"{mask.count('1')} of {len(sites)} sites inserted (mask {mask})" if sites else ""
    fig.suptitle("\n".join(t for t in (title, headline) if t), fontsize=9, y=0.99, va="top")
    return fig


def _count(sites: list[dict], module: str, bit: str) -> int:
    return sum(s["module"] == module and str(s["inserted"]) == bit for s in sites)


def close(fig) -> None:
    plt.close(fig)
