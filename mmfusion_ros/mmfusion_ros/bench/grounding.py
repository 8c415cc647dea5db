"""`mmfusion bench` section: the per-frame cost of grounding (familiarity, calibration, caption clauses).

Familiarity runs once per present modality on every frame of the robot's path, so its budget is < 1 ms
p50 per frame in numpy; this section measures it on the bench bundle's own statistics with inputs of the
model-input shapes (the cost does not depend on the values).
"""

from __future__ import annotations

from typing import List

import numpy as np

from mmfusion_ros.bench import bench_model_dir, fmt, model_label, pct, section, time_calls


def run(quick: bool = False) -> List[dict]:
    from mmfusion_ros.core.calibration import Calibration
    from mmfusion_ros.core.familiarity import Familiarity
    from mmfusion_ros.core.observability import grounded_caption
    from mmfusion_ros.core.preprocess import DEFAULT
    from mmfusion_ros.runtime.manifest import load_manifest

    model_dir = bench_model_dir()
    man = load_manifest(model_dir)
    fam = Familiarity.from_manifest(man, model_dir)
    cal = Calibration.from_manifest(man)
    iters = 50 if quick else 300
    rng = np.random.default_rng(0)
    shapes = DEFAULT.input_shapes()
    rows = []
    total = np.zeros(iters)
    for m in ("camera", "lidar", "audio", "imu"):
        if not fam.assessed(m):
            rows.append([f"familiarity {m}", "not assessed (no statistics in the bundle)", "", ""])
            continue
        x = rng.standard_normal(shapes[m]).astype(np.float32)
        ms = time_calls(lambda: fam.score(m, x), iters)
        total += ms
        rows.append([f"familiarity {m}", fmt(pct(ms, 50), 3), fmt(pct(ms, 99), 3), str(iters)])
    if fam.available:
        rows.append(["familiarity, all four (sum per frame)", fmt(pct(total, 50), 3), fmt(pct(total, 99), 3), str(iters)])
    if cal.available:
        probs = rng.random(9).astype(np.float32)
        probs /= probs.sum()
        ev = rng.random((len(man["event_types"]), len(man["horizons"]))).astype(np.float32)
        ms = time_calls(lambda: (cal.labels(probs, ["camera", "audio"]), cal.events(ev)), iters)
        rows.append(["calibration: labels + events", fmt(pct(ms, 50), 3), fmt(pct(ms, 99), 3), str(iters)])
    text = ("A person walks toward the robot from the left, a box sits ahead while a dog barking can be heard; "
            "the robot drives over rough ground")
    ms = time_calls(lambda: grounded_caption(text, ["camera", "imu"]), iters)
    rows.append(["caption clause grounding", fmt(pct(ms, 50), 3), fmt(pct(ms, 99), 3), str(iters)])
    return [section(f"Grounding per frame ({model_label(model_dir)}, numpy, 1 thread)",
                    ["step", "p50 ms", "p99 ms", "calls"], rows,
                    "Target: familiarity of all present modalities < 1 ms p50 per frame (grounded-outputs issue).")]
