"""θ/ω histories as a table and a figure (one panel per LSLU site, like papers/000 Fig. 5)."""
from __future__ import annotations

import csv
import io

import matplotlib

matplotlib.use("Agg")  # trials and drivers have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

ROW_FIELDS = ("epoch", "site", "i", "theta", "omega")


def theta_omega_rows(act_history: list[dict]) -> list[dict]:
    """Flatten ``[{"epoch": e, "state": {path: {"theta": [...], "omega": [...]}}}]`` into epoch × site × i rows."""
    rows = []
    for entry in act_history:
        for path, params in entry["state"].items():
            if "theta" not in params:  # not an LSLU site (a PWLU reports its boundaries instead)
                continue
            for i, (theta, omega) in enumerate(zip(params["theta"], params["omega"]), start=1):
                rows.append({"epoch": entry["epoch"], "site": path, "i": i, "theta": theta, "omega": omega})
    return rows


def theta_omega_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def theta_omega_figure(rows: list[dict], title: str = ""):
    """θ_i and ω_i against epoch, one panel per site, with the last value of each curve annotated."""
    sites = list(dict.fromkeys(r["site"] for r in rows))
    cols = min(4, max(1, len(sites)))
    nrows = max(1, -(-len(sites) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax in axes.flat[len(sites):]:
        ax.set_visible(False)
    for ax, site in zip(axes.flat, sites):
        site_rows = [r for r in rows if r["site"] == site]
        for param, style in (("theta", "-"), ("omega", "--")):
            for i in sorted({r["i"] for r in site_rows}):
                curve = sorted((r["epoch"], r[param]) for r in site_rows if r["i"] == i)
                epochs, values = zip(*curve)
                symbol = "θ" if param == "theta" else "ω"
                (line,) = ax.plot(epochs, values, style, marker="." if len(epochs) < 30 else None, label=f"{symbol}{i}")
                ax.annotate(f"{values[-1]:.3f}", (epochs[-1], values[-1]), fontsize=7, color=line.get_color(),
                            xytext=(3, 0), textcoords="offset points", va="center")
        ax.set_title(site, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    if not sites:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no LSLU sites in this trial", ha="center", va="center")
        axes.flat[0].set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
