"""Events as the node raises them, over simulated scenario bags: the event head alone against the head plus
the track forecasts (core/kinematic_events.py), side by side on the same bags.

`mmfusion eval` T5 replays the tracker and forecasts over a dataset's kept LiDAR boxes (train/track_events.py);
this checks the same on whole bags through the node's own offline path (ros/offline.py: conversions, Collector,
Pipeline with perception, the shipped params file) on scenario bags written with seeds no training used,
and scores the published events against the simulator's ground truth (report/metrics.py): AP at 1 s
(the published probability against "active now or within 1 s"), onsets flagged in time, mean lead and
false alarms per minute (a start while the event is neither active nor due within 2 s).

  mmfusion bench --only events --out -     # about 12 minutes on a 2-core CPU; --quick: 2 bags
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

#: scenarios with a geometric or a sound event each, 12 s long, two seeds no dataset or demo used
SCENARIOS = ["person_crossing", "person_approaching", "dog_crossing", "collision_course", "bicycle_bell",
             "car_passing", "alarm", "rough_terrain", "street_mix", "office_chairs"]
SEEDS = [901, 902]
SECONDS = 12.0
VARIANTS = {"event head alone": False, "event head + track forecasts": True}


def _params_file() -> Path:
    return Path(__file__).resolve().parents[2] / "config" / "mmfusion.yaml"


def run(quick: bool = False) -> List[dict]:
    from ..core.types import EVENT_TYPES
    from ..report import metrics as M
    from ..report.data import read_outputs, read_scenario
    from ..ros.offline import OfflineOptions, load_param_values, process_bag
    from ..sim.scenarios import make_scenario
    from ..commands.sim import write_bag
    from . import bench_model_dir, machine, section

    model = bench_model_dir()
    cases = [(s, k) for k in SEEDS for s in SCENARIOS]
    if quick:
        cases = cases[:2]
    per_variant: Dict[str, List[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="mmfusion_bench_events_") as tmp:
        tmp = Path(tmp)
        for name, seed in cases:
            bag = tmp / f"{name}_{seed}"
            write_bag(make_scenario(name, SECONDS, seed), bag, seed=seed)
            scenario = read_scenario(bag)
            for variant, kin in VARIANTS.items():
                out = tmp / f"{name}_{seed}_{int(kin)}"
                values = load_param_values(_params_file(), {"pipeline.kinematic_events": kin})
                process_bag(OfflineOptions(bag=bag, out=out, model_dir=model, backend="onnxruntime",
                                           params_file=_params_file(), progress=False), values)
                outputs = read_outputs(out)
                t = outputs.stamps
                P, A = outputs.event_matrix(t)
                iv = scenario.intervals()
                per_variant[variant].append({
                    "t": t, "P": P, "A": A,
                    "y1": np.stack([M.active_within(iv.get(e, []), t, 1.0) for e in EVENT_TYPES], 1),
                    "y2": np.stack([M.active_within(iv.get(e, []), t, 2.0) for e in EVENT_TYPES], 1),
                    "now": np.stack([M.active_at(iv.get(e, []), t) for e in EVENT_TYPES], 1)})
    rows = []
    summary = []
    for variant, bags in per_variant.items():
        table = pool(bags, list(EVENT_TYPES))
        aps = [r["ap"] for r in table.values() if math.isfinite(r["ap"])]
        det = sum(r["detected"] for r in table.values())
        ons = sum(r["onsets"] for r in table.values())
        summary.append([variant, f"{np.mean(aps):.2f}" if aps else "n/a", f"{det}/{ons}",
                        f"{max(r['fa_per_min'] for r in table.values()):.2f}"])
        for e, r in table.items():
            rows.append([variant, e, _f(r["ap"]), r["positives"], f"{r['detected']}/{r['onsets']}", _f(r["lead_s"]),
                         f"{r['fa_per_min']:.2f}"])
    m = machine()
    notes = (f"{len(cases)} scenario bags ({', '.join(SCENARIOS[:len(cases)] if quick else SCENARIOS)}; "
             f"{SECONDS:g} s, seeds {SEEDS if not quick else SEEDS[:1]}), each run through `mmfusion process`'s "
             f"path (ros/offline.py, config/mmfusion.yaml, ONNX Runtime) once per variant; pooled over the "
             f"bags. AP: the published probability (max over horizons) against active now or within 1 s. "
             f"An onset is flagged in time when the event is on at it or the frame before; false alarms: starts "
             f"while the event is neither active nor due within 2 s. Machine: {m.get('cpu', '?')}, {m.get('cores', '?')}.")
    return [section("Events as the node raises them, simulated scenario bags: head alone vs head + track forecasts",
                    ["variant", "mAP at 1 s", "onsets flagged in time", "worst false alarms / min"], summary, notes),
            section("Events per type as the node raises them (scenario bags)",
                    ["variant", "event", "AP at 1 s", "frames active within 1 s", "onsets flagged", "mean lead (s)",
                     "false alarms / min"], rows, "Same runs as the table above.")]


def _f(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"


def pool(bags: List[dict], event_types: List[str]) -> Dict[str, dict]:
    """Per type, pooled over bags: AP at 1 s, positives, onsets flagged in time, mean lead, false alarms/min."""
    from ..train import metrics as TM

    out = {}
    minutes = sum(float(b["t"][-1] - b["t"][0]) if len(b["t"]) > 1 else 0.0 for b in bags) / 60.0
    for e, name in enumerate(event_types):
        y = np.concatenate([b["y1"][:, e] for b in bags]) if bags else np.zeros(0, bool)
        s = np.concatenate([b["P"][:, e] for b in bags]) if bags else np.zeros(0)
        leads: List[float] = []
        false = 0
        for b in bags:
            scene = np.zeros(len(b["t"]), np.int64)
            leads += TM.lead_times(b["A"][:, e], b["now"][:, e], scene, b["t"])
            a = b["A"][:, e]
            rising = a & ~np.r_[False, a[:-1]]
            false += int((rising & ~b["y2"][:, e]).sum())
        hits = [x for x in leads if not math.isnan(x)]
        out[name] = {"ap": TM.average_precision(y, s) if y.any() else float("nan"), "positives": int(y.sum()),
                     "onsets": len(leads), "detected": len(hits),
                     "lead_s": float(np.mean(hits)) if hits else float("nan"),
                     "fa_per_min": false / minutes if minutes > 0 else 0.0}
    return out
