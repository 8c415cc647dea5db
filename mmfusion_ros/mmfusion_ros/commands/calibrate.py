"""`mmfusion calibrate --model BUNDLE --data DS [DS ...] [--split val]`: fit the bundle's calibration.

Runs the bundle's checkpoint over the split(s), fits the maps of core/calibration.py (labels and caption
per presence subset, events per type and horizon), the event on-thresholds against a false-alarm
budget and the label sensors' skill weights (first: the labels' mean is calibrated as it will be computed),
the approach forecast's weight of person-shaped LiDAR tracks (first too: the track thresholds see it), and rewrites BUNDLE/manifest.json in place ("calibration"; nothing else changes). The fitting is
train/calibrate.py; `--dry-run` prints without writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundle folder (manifest.json + checkpoint.pt)")
    p.add_argument("--data", required=True, nargs="+",
                   help="dataset folder(s) written by `mmfusion sim dataset`; DIR:train,val names that folder's splits")
    p.add_argument("--split", default="val", help="split(s) to fit on, comma-separated (default val), for folders without :SPLITS")
    p.add_argument("--budget", type=float, default=1.0, help="false alarms per minute allowed per event type (default 1)")
    p.add_argument("--margin", type=float, default=None,
                   help="fit the thresholds against budget x margin (default train/calibrate.py FIT_MARGIN, 0.8)")
    p.add_argument("--threshold-rule", default="lowest", choices=["lowest", "fewest_false_alarms"],
                   help="among the event on-thresholds within the budget: the lowest (default), or those warning the "
                        "most onsets with the fewest false alarms")
    p.add_argument("--max-samples", type=int, default=0, help="use only the first shards up to this many frames per split")
    p.add_argument("--dry-run", action="store_true", help="fit and print, leave manifest.json as it is")
    p.add_argument("--caption-only", action="store_true",
                   help="refit only the caption confidence maps and keep every other entry of the bundle's calibration "
                        "(after `mmfusion caption-presence` changed which captions are published)")
    p.add_argument("--json", help="also write the fitted entry and the method comparison here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--equal-label-weights", action="store_true",
                   help="labels average the label sensors equally (default: weighted by each one's zero-shot skill "
                        "above chance on the fitting data; train/calibrate.py label_skill_weights)")


def run(args) -> int:
    from mmfusion_ros.train import calibrate as C
    from mmfusion_ros.train.data import DatasetError, load_split, read_manifest
    from mmfusion_ros.train.evaluate import Evaluator

    bundle = Path(args.model)
    if not (bundle / "manifest.json").is_file():
        print(f"error: {bundle} is not a bundle folder (no manifest.json)", file=sys.stderr)
        return 2
    if args.budget <= 0:
        print("error: --budget must be > 0", file=sys.stderr)
        return 2
    try:
        ev = Evaluator(bundle, threads=args.threads)
        sets, used = [], []
        for d, spec_ in enumerate(args.data):
            data, _, splits = spec_.rpartition(":") if ":" in spec_ and not Path(spec_).exists() else (spec_, "", "")
            seed = read_manifest(data).get("seed")
            for split in [s.strip() for s in (splits or args.split).split(",") if s.strip()]:
                sp = load_split(data, split, args.max_samples)
                print(f"{data} {split}: {len(sp)} frames")
                # scene ids are unique within one dataset only
                sets.append((sp, ev.embed(sp), 1_000_000 * d))  # (N, 4, D) per-sensor embeddings
                used.append({"data": str(data), "seed": seed, "split": split, "frames": len(sp)})
        shape = C.fit_person_shape_prob([sp for sp, _, _ in sets])
        if shape is not None:  # the track forecasts the thresholds are fitted on weigh such tracks as the node will
            ev.calibration.track_person_shape_prob = shape["prob"]
            print(f"person-shaped tracks moving at the robot that are people: {shape['people']}/{shape['tracks']} "
                  f"= {shape['prob']:.3f} (the approach forecast's weight for them)")
        else:
            print("too few person-shaped tracks moving at the robot in datasets with sweeps: "
                  "the approach forecast keeps its default weight for them")
        o, lw = C.collect_weighted(ev, sets, args.equal_label_weights)
        if lw:
            print("label sensors' zero-shot top-1 / skill weight: " + ", ".join(
                f"{m} {lw['top1'][m]:.3f} / {w:.3f}" for m, w in lw["weights"].items()) + f" (chance {lw['chance']:.3f})")
    except (FileNotFoundError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    comparison = C.compare_methods(o)
    margin = C.FIT_MARGIN if args.margin is None else args.margin
    spec = C.add_label_weights(C.fit(o, budget_per_min=args.budget, margin=margin,
                                     threshold_rule=args.threshold_rule), lw)
    if shape is not None:
        spec["track_person_shape_prob"] = shape["prob"]
        spec["track_person_shape_fit"] = {"people": shape["people"], "tracks": shape["tracks"]}
    minutes = len(o.scene) * o.frame_step / 60.0
    spec["fitted_on"] = {"sets": used, "frames": int(len(o.scene)), "minutes": round(minutes, 2),
                         "checkpoint_sha256": ev.info["sha256"]}
    spec["method_comparison_cv_ece"] = {m: {k: round(v, 4) for k, v in d.items()} for m, d in comparison.items()}
    print(f"\nfitted on {len(o.scene)} frames ({minutes:.1f} min); two-fold (by scene) cross-validated ECE per method:")
    outs = list(next(iter(comparison.values())))
    print("| method | " + " | ".join(outs) + " |")
    print("|---|" + "---|" * len(outs))
    for m, d in comparison.items():
        print(f"| {m} | " + " | ".join("n/a" if d[k] != d[k] else f"{d[k]:.3f}" for k in outs) + " |")
    print(f"\nevent on-thresholds (calibrated scale, <= {args.budget:g} x {margin:g} false alarms/min on the fitting data):")
    for name, r in spec["fit_figures"].items():
        print(f"  {name}: {r['threshold']:.2f} ({r['rule']}; {r['false_alarms']} false alarms, "
              f"{r['warned']}/{r['onsets']} onsets warned, {r['positive_frames']} positive frames)")
    if "track_event_thresholds" in spec:
        tf = spec["track_fit_figures"]
        print(f"\nwith the LiDAR track forecasts merged in (the node's probabilities for these types; "
              f"{tf['frames']} frames of datasets with sweeps):")
        for name, thr in spec["track_event_thresholds"].items():
            r = tf[name]
            print(f"  {name}: {thr:.2f} ({r['rule']}; {r['false_alarms']} false alarms, "
                  f"{r['warned']}/{r['onsets']} onsets warned)")
    else:
        print("\nno dataset keeps LiDAR sweeps: the track forecasts keep the pipeline's on-threshold floor")
    if args.caption_only:
        old = json.loads((bundle / "manifest.json").read_text()).get("calibration")
        if not old:
            print("error: --caption-only needs a calibrated bundle (manifest.json has no calibration)", file=sys.stderr)
            return 2
        if "caption" not in spec:
            print("error: too few published captions to fit the caption maps; the calibration is kept", file=sys.stderr)
            return 2
        spec = {**old, "caption": spec["caption"],
                "caption_fitted_on": {**spec["fitted_on"], "caption_presence": bool(ev.presence is not None)}}
        print("\n--caption-only: the caption maps are refitted, every other calibration entry is kept")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(spec, indent=1, default=float))
    if args.dry_run:
        print("\n--dry-run: manifest.json not changed")
        return 0
    path = C.write_into_bundle(bundle, spec)
    print(f"\nwrote calibration into {path}")
    return 0
