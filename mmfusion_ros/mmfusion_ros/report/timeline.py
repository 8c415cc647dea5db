"""Timeline plot: predicted event probabilities against ground-truth events, captions along the time axis."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from ..core.types import EVENT_TYPES
from .data import Outputs, Scenario


def _captions_to_show(outputs: Outputs, min_gap: float) -> List[tuple]:
    """(stamp, text) where the caption text changes, at least min_gap s apart."""
    out: List[tuple] = []
    last_text: Optional[str] = None
    for s, _, text, _ in outputs.captions:
        if text == last_text:
            continue
        last_text = text
        if out and s - out[-1][0] < min_gap:
            continue
        out.append((s, text))
    return out


def write_timeline(path: Path, scenario: Scenario, outputs: Outputs, title: str = "") -> Path:
    """One PNG: a caption lane on top, then one lane per event type (grey = true, line = predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    P, A = outputs.event_matrix(outputs.stamps)
    o = scenario.origin  # plot in scene time: seconds since the scenario started
    times = outputs.stamps - o
    ivs = {k: [(a - o, b - o) for a, b in v] for k, v in scenario.intervals().items()}
    t0 = min(scenario.t_start - o, times[0] if len(times) else scenario.t_start - o)
    t1 = max(scenario.t_end - o, times[-1] if len(times) else scenario.t_end - o)
    n = len(EVENT_TYPES)
    fig, axes = plt.subplots(n + 1, 1, figsize=(12, 1.9 + 0.62 * n), sharex=True,
                             gridspec_kw={"height_ratios": [2.2] + [1] * n, "hspace": 0.12})
    cap_ax = axes[0]
    cap_ax.set_ylim(0, 1)
    cap_ax.set_yticks([])
    cap_ax.set_ylabel("caption", rotation=0, ha="right", va="center", fontsize=8)
    shown = [(s - o, text) for s, text in _captions_to_show(outputs, min_gap=max(1.0, (t1 - t0) / 14))]
    for k, (s, text) in enumerate(shown):
        y = 0.85 - 0.27 * (k % 4)
        cap_ax.axvline(s, color="0.8", lw=0.6)
        cap_ax.text(s, y, text if len(text) <= 48 else text[:46] + "...", fontsize=6.5, va="center", ha="left",
                    clip_on=True)
    if not shown:
        cap_ax.text(0.5, 0.5, "no captions recorded", transform=cap_ax.transAxes, ha="center", fontsize=8, color="0.4")
    for e, name in enumerate(EVENT_TYPES):
        ax = axes[e + 1]
        for a, b in ivs.get(name, []):
            ax.axvspan(a, b, color="0.75", lw=0, label="ground truth" if e == 0 and a == ivs[name][0][0] else None)
        if len(times):
            ax.step(times, P[:, e], where="post", color="C0", lw=1.2, label="predicted" if e == 0 else None)
            on = np.where(A[:, e], 1.04, np.nan)  # (F,) a bar where the node flagged the event
            ax.plot(times, on, color="C3", lw=3, solid_capstyle="butt", label="flagged" if e == 0 else None)
        ax.set_ylim(-0.05, 1.12)
        ax.set_yticks([0, 1])
        ax.tick_params(labelsize=7)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.grid(axis="x", color="0.92", lw=0.5)
    axes[-1].set_xlim(t0, t1)
    axes[-1].set_xlabel("scene time (s)", fontsize=8)
    handles, labels = [], []
    for ax in axes[1:2]:
        h, l = ax.get_legend_handles_labels()
        handles += h
        labels += l
    if not any(ivs.values()) and len(times):  # make "ground truth" appear in the legend even with no events
        from matplotlib.patches import Patch

        handles.insert(0, Patch(color="0.75"))
        labels.insert(0, "ground truth")
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=7, ncol=3, frameon=False)
    fig.suptitle(title or "events: predicted probability (blue), flagged (red) vs ground truth (grey)",
                 fontsize=9, x=0.01, ha="left")
    fig.subplots_adjust(left=0.15, right=0.99, top=0.93, bottom=0.07)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
