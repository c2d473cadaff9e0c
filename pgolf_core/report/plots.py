"""Figures the notebooks show and save (PNG at the report's dpi; matplotlib's Agg backend).

Every function returns a matplotlib Figure; ``save`` writes it as PNG next to the report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves; kernels keep inline
from matplotlib.ticker import FuncFormatter

from pgolf_core.challenge import BYTE_CAP
from pgolf_core.stages import StageRecord


def save(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def show(fig, path: str | os.PathLike, dpi: int = 120):
    """Save ``fig`` as PNG and display that very file in a notebook (the report embeds it); returns
    the path."""
    out = save(fig, path, dpi)
    plt.close(fig)
    try:
        from IPython.display import Image, display

        display(Image(filename=str(out)))
    except ImportError:  # pragma: no cover - IPython comes with the notebook dependencies
        pass
    return out


def read_metrics(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def training_curves(metrics: list[dict], title: str = ""):
    """Train loss per step (left) and validation bpb per step (right)."""
    train = [m for m in metrics if m.get("event") == "train"]
    val = [m for m in metrics if m.get("event") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot([m["step"] for m in train], [m["train_loss"] for m in train], lw=1)
    ax1.set(xlabel="step", ylabel="train loss (nats/token)", title="training loss")
    ax2.plot([m["step"] for m in val], [m["val_bpb"] for m in val], marker="o", lw=1)
    ax2.set(xlabel="step", ylabel="val bpb", title="validation bits per byte")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def stage_bars(records: list[StageRecord], title: str = "bpb per stage"):
    """One bar per stage; non-compliant stages hatched red and labelled, so no number stands alone."""
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(records)), 3.8))
    xs = range(len(records))
    for x, r in zip(xs, records, strict=True):
        ok = r.compliant
        ax.bar(x, r.val_bpb, color="#4c78a8" if ok else "#e45756", hatch=None if ok else "//")
        label = f"{r.val_bpb:.4f}" + ("" if ok else "\nNON-COMPLIANT")
        ax.annotate(label, (x, r.val_bpb), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [r.stage for r in records], rotation=20, ha="right")
    lo = min(r.val_bpb for r in records)
    hi = max(r.val_bpb for r in records)
    pad = max(0.02, (hi - lo) * 0.3)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set(ylabel="val bpb", title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def pareto(points: list[dict], cap: int = BYTE_CAP, title: str = "artifact bytes vs bpb"):
    """Scatter of (artifact bytes, bpb) per scheme with the Pareto front and the cap's line (pass the
    config's ``quant.byte_cap``; the default is the challenge's).

    ``points``: dicts with name, bytes, bpb. Lower-left is better.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    pts = sorted(points, key=lambda p: p["bytes"])
    front, best = [], float("inf")
    for p in pts:
        if p["bpb"] < best:
            front.append(p)
            best = p["bpb"]
    ax.scatter([p["bytes"] for p in pts], [p["bpb"] for p in pts], color="#4c78a8", zorder=3)
    for p in pts:
        ax.annotate(p["name"], (p["bytes"], p["bpb"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.step(
        [p["bytes"] for p in front],
        [p["bpb"] for p in front],
        where="post",
        color="#f58518",
        label="Pareto front",
    )
    if max(p["bytes"] for p in pts) > 0.5 * cap:
        ax.axvline(cap, color="#e45756", ls="--", label=f"cap {cap:,} B")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set(
        xlabel="artifact bytes (code + compressed model)", ylabel="val bpb after quantization", title=title
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grouped_bars(labels: list[str], series: dict[str, list[float]], ylabel: str, title: str):
    """Bars per label for each series (e.g. quantization gap per tensor group per scheme)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) * max(1, len(series))), 3.8))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _focus_ylim(ax, series: list[tuple[list[float], list[float]]]) -> bool:
    """Fit the y axis to the points after the first tenth of each (x, y) series' x range: the first
    steps' loss (about ln(vocab), and a warmup spike) would squeeze the part where runs differ into a few
    pixels. Returns whether a point lies outside the shown range (the caption says so)."""
    values = []
    for xs, ys in series:
        if not xs:
            continue
        start = xs[0] + 0.1 * (xs[-1] - xs[0])
        kept = [y for x, y in zip(xs, ys, strict=True) if x >= start]
        values += kept if len(kept) >= 2 else ys
    if not values:
        return False
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.06, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
    return any(y > hi + pad or y < lo - pad for _, ys in series for y in ys)


def overlay_curves(runs: list[dict], title: str = ""):
    """Training loss and validation bpb of several runs in one figure, against steps (left column) and
    against training seconds (right; in-loop validation excluded, as the wallclock cap counts it).

    ``runs``: dicts with ``label``, ``metrics`` (metrics.jsonl records) and optional matplotlib
    ``style`` (color, linestyle). Points without ``train_time_s`` are left out of the right column.
    The figure's ``clipped`` attribute lists the panels whose early points lie above the shown range.
    """
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.2), sharex="col")
    panels = [("train", "train_loss", "train loss (nats/token)"), ("val", "val_bpb", "val bpb")]
    clipped = []
    for row, (event, key, ylabel) in enumerate(panels):
        for col, xkey in enumerate(("step", "train_time_s")):
            ax = axes[row][col]
            ys_all = []
            for r in runs:
                pts = [
                    (m[xkey], m[key])
                    for m in r["metrics"]
                    if m.get("event") == event and m.get(xkey) is not None and m.get(key) is not None
                ]
                style = {"lw": 1.1, **r.get("style", {})}
                if event == "val":
                    style.setdefault("marker", "o")
                    style.setdefault("ms", 3)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r["label"], **style)
                ys_all.append(([p[0] for p in pts], [p[1] for p in pts]))
            if _focus_ylim(ax, ys_all):
                clipped.append(f"{ylabel} vs {'step' if col == 0 else 'seconds'}")
            ax.set(ylabel=ylabel)
            ax.grid(alpha=0.3)
    axes[1][0].set(xlabel="step")
    axes[1][1].set(xlabel="training seconds (validation excluded)")
    axes[0][0].set_title("against steps")
    axes[0][1].set_title("against wallclock")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8, frameon=False
    )
    if title:
        fig.suptitle(title)
    rows_of_legend = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, 0.035 * rows_of_legend + 0.01, 1, 1))
    fig.clipped = clipped
    return fig
