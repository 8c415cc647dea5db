"""The summary table: one dict of figures, printed in the terminal and written as summary.md/.json."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..core.types import EVENT_HORIZONS, EVENT_TYPES, SENSOR_MODALITIES
from . import metrics as M
from .data import Outputs, Scenario


def machine() -> str:
    """'<cpu model>, N cores, Linux x86_64' for the record of where numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def _r(x: float, nd: int = 3) -> Optional[float]:
    """Round for JSON; NaN -> None."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), nd)


def compute_summary(scenario: Scenario, outputs: Outputs, rate_hz: float,
                    horizon: float = max(EVENT_HORIZONS), info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every figure of the report, from the two bags' contents.

    rate_hz: the node's fusion rate (sync.rate_hz), to count the frames it should have produced.
    horizon: events count as "true" for AP when active now or within this many seconds.
    """
    frames = outputs.frames
    stamps = outputs.stamps
    out: Dict[str, Any] = dict(info or {})
    out["machine"] = machine()
    out["scenario_span_s"] = _r(scenario.t_end - scenario.t_start, 2)
    out["frames_fused"] = len(frames)
    out["captions"] = len(outputs.captions)
    out["event_arrays"] = len(outputs.events)
    out["marker_arrays"] = outputs.markers
    # latency: frame stamp (sim clock) -> reception (wall clock), through the /clock mapping
    if len(outputs.clock) and len(frames):
        rate = float((info or {}).get("replay_rate", 1.0))
        offset = M.clock_offset(outputs.clock[:, 0], outputs.clock[:, 1], rate)
        lat = M.latency_ms(stamps, [f.recv for f in frames], offset, rate)
        out["latency_ms"] = {"p50": _r(M.percentile(lat, 50), 1), "p99": _r(M.percentile(lat, 99), 1),
                             "max": _r(float(np.max(lat)), 1)}
    else:
        out["latency_ms"] = {"p50": None, "p99": None, "max": None}
    inf = [f.inference_ms for f in frames]
    out["inference_ms"] = {"p50": _r(M.percentile(inf, 50), 1), "p99": _r(M.percentile(inf, 99), 1)}
    d = M.count_drops(stamps, scenario.t_start, scenario.t_end, rate_hz)
    out["drops"] = {"expected": d.expected, "fused": d.fused, "dropped": d.dropped, "rate": _r(d.rate, 3),
                    "rate_hz": rate_hz, "node_frames_skipped": outputs.pipeline.get("frames_skipped")}
    out["presence"] = {m.value: _r(float(np.mean([m.value in f.present for f in frames])) if frames else float("nan"), 3)
                       for m in SENSOR_MODALITIES}
    out["backend"] = outputs.pipeline.get("backend")
    top = [f.labels[0][0] if f.labels else None for f in frames]
    ls = M.score_labels(top, scenario.objects_at(stamps), scenario.hfov)
    out["labels"] = {"nearest_in_view_accuracy": _r(ls.nearest_accuracy), "nearest_frames": ls.nearest_frames,
                     "in_scene_accuracy": _r(ls.present_accuracy), "scored_frames": ls.frames}
    P, A = outputs.event_matrix(stamps)
    scores = M.score_events(stamps, P, A, scenario.intervals(), EVENT_TYPES, horizon)
    out["events"] = [{"type": s.type, "ap": _r(s.ap), "positives": s.positives, "onsets": s.onsets,
                      "detected": s.detected, "lead_s": _r(s.lead_s, 2), "flagged": s.flagged,
                      "flag_precision": _r(s.flag_precision)} for s in scores]
    out["event_map"] = _r(M.nanmean([s.ap for s in scores]))
    onsets = sum(s.onsets for s in scores)
    out["onsets_detected"] = f"{sum(s.detected for s in scores)}/{onsets}"
    leads = [s.lead_s * s.detected for s in scores if s.detected]
    out["mean_lead_s"] = _r(sum(leads) / sum(s.detected for s in scores), 2) if leads else None
    out["event_horizon_s"] = horizon
    out["familiarity"] = {}
    for m in SENSOR_MODALITIES:  # what the learned claims rested on: mean familiarity, share of frames not used
        vals = [f.familiarity[m.value] for f in frames if m.value in f.familiarity]
        if vals:
            unused = [m.value not in f.used for f in frames if m.value in f.familiarity]
            out["familiarity"][m.value] = {"mean": _r(float(np.mean(vals))), "unfamiliar_share": _r(float(np.mean(unused)))}
    out["unobservable_events"] = {k: v for k, v in sorted(outputs.unobservable.items())}
    return out


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}{unit}" if abs(x) < 1000 else f"{x:.0f}{unit}"
    return f"{x}{unit}"


def rows(s: Dict[str, Any]) -> List[List[str]]:
    """The headline table as [metric, value] rows."""
    lat, inf, d, lab = s["latency_ms"], s["inference_ms"], s["drops"], s["labels"]
    pres = ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["presence"].items() if v is not None)
    r = [
        ["scenario", f"{s.get('scenario', '?')} ({_fmt(s.get('seconds'))} s, seed {s.get('seed', '?')}"
                     + (f", replayed at {s['replay_rate']:g}x" if s.get("replay_rate", 1.0) != 1.0 else "") + ")"],
        ["model / backend", f"{s.get('model', '?')} / {s.get('backend') or '?'}"
                            + (f" (inputs: {s['input_qos']})" if s.get("input_qos") else "")],
        ["frames fused", f"{s['frames_fused']} (captions {s['captions']}, event arrays {s['event_arrays']}, "
                         f"marker arrays {s['marker_arrays']})"],
        ["latency p50 / p99 (stamp -> received)", f"{_fmt(lat['p50'])} / {_fmt(lat['p99'])} ms"],
        ["inference p50 / p99", f"{_fmt(inf['p50'])} / {_fmt(inf['p99'])} ms"],
        ["drops (expected at fusion rate vs fused)",
         f"{d['dropped']} of {d['expected']} at {d['rate_hz']:g} Hz ({_fmt(None if d['rate'] is None else 100 * d['rate'])}%)"
         + (f"; node skipped {d['node_frames_skipped']}" if d.get("node_frames_skipped") is not None else "")],
        ["modalities present", pres or "n/a"],
        ["label accuracy (top label = nearest object in view)",
         f"{_fmt(lab['nearest_in_view_accuracy'])} over {lab['nearest_frames']} frames"],
        ["label accuracy (top label among classes seen or heard)",
         f"{_fmt(lab['in_scene_accuracy'])} over {lab['scored_frames']} frames"],
        [f"event mAP (active within {s['event_horizon_s']:g} s)", _fmt(s["event_map"])],
        ["event onsets flagged in time / mean lead", f"{s['onsets_detected']} / {_fmt(s['mean_lead_s'], ' s')}"],
    ]
    fam = s.get("familiarity") or {}
    r.append(["familiarity (mean; share of frames unfamiliar)",
              ", ".join(f"{m} {_fmt(v['mean'])} ({_fmt(100 * v['unfamiliar_share'])}%)" for m, v in fam.items())
              or "not assessed"])
    unobs = s.get("unobservable_events") or {}
    r.append(["event types reported unobservable (frames)",
              ", ".join(f"{k} {v}" for k, v in unobs.items()) or "none"])
    if "stage_seconds" in s:
        r.append(["stage times", ", ".join(f"{k} {v:.0f} s" for k, v in s["stage_seconds"].items())])
    r.append(["machine", s["machine"]])
    return r


def event_rows(s: Dict[str, Any]) -> List[List[str]]:
    return [[e["type"], _fmt(e["ap"]), str(e["positives"]), str(e["flagged"]), _fmt(e["flag_precision"]),
             f"{e['detected']}/{e['onsets']}", _fmt(e["lead_s"])] for e in s["events"]]


EVENT_HEADER = ["event", "AP", "true frames", "flagged frames", "flag precision", "onsets flagged", "mean lead (s)"]


def markdown(s: Dict[str, Any]) -> str:
    lines = ["# mmfusion demo summary", "", "| metric | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows(s)]
    lines += ["", "| " + " | ".join(EVENT_HEADER) + " |", "|" + "---|" * len(EVENT_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in event_rows(s)]
    lines += ["", "Latency: frame stamp on the sim clock to the recorder's reception, through the /clock mapping; "
              "it includes the collector's wait for late messages (sync delay). AP scores the probability the node "
              "published (0 when it published no event of that type) against \"active now or within the horizon\"; "
              "an onset counts as flagged when the node had the event on at or just before it, and the lead is "
              "how long before the onset that run of flags began (read it with the flag precision: a node that flags "
              "everything all the time has long leads and low precision).", ""]
    return "\n".join(lines)


def terminal(s: Dict[str, Any]) -> str:
    def table(header, body):
        w = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
        line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
        return "\n".join([line(header), "  ".join("-" * x for x in w)] + [line(r) for r in body])

    return table(["metric", "value"], rows(s)) + "\n\n" + table(EVENT_HEADER, event_rows(s))


def write_summary(out_dir: Path, s: Dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (out_dir / "summary.md").write_text(markdown(s))
