"""`mmfusion eval-kitti FRAME_DIR...`: check 3D perception against KITTI object labels.

Each FRAME_DIR holds one frame laid out like ``../shared/data/kitti_000134``: ``<id>.png`` (left colour
camera), ``<id>.bin`` (Velodyne float32 x,y,z,reflectance), ``<id>_calib.txt`` and ``<id>_label.txt``.
The frame goes through the same path as live data: it becomes sensor_msgs Image, CameraInfo and
PointCloud2 messages (``ros.conversions`` builders), is serialised and deserialised as on the wire,
converted back to arrays and run through ``core.perception``.

Metrics (per frame and overall): recall of labelled Car/Pedestrian/Cyclist objects within
``--max-distance`` of the LiDAR in the bird's-eye view (DontCare excluded), matched one-to-one by
Hungarian assignment to clusters whose BEV centre is within ``--match-radius``; the share of matched
objects whose projected 3D box overlaps the labelled 2D box with IoU >= ``--iou``; unmatched clusters
in the camera view (not inside a DontCare box) within the same distance; perception time.

KITTI conventions: ``Tr_velo_to_cam`` maps Velodyne points into the reference camera, ``R0_rect``
rectifies, ``P2 = K [I | t]`` projects into the left colour image; label locations are the bottom
centre of the box in rectified camera coordinates (x right, y down, z forward). The KITTI data are
CC BY-NC-SA 3.0; images rendered from them inherit that licence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import yaml
from scipy.optimize import linear_sum_assignment

from ..core.perception import Perception, PerceptionConfig
from ..core.types import CameraIntrinsics, DetectedObject, FusionResult, SensorFrame

EVAL_CLASSES = ("Car", "Pedestrian", "Cyclist")


@dataclass
class KittiLabel:
    """One label_2 line."""

    cls: str
    box2d: np.ndarray  # (4,) x1,y1,x2,y2 pixels
    size_hwl: np.ndarray  # (3,) height, width, length, metres
    location: np.ndarray  # (3,) bottom centre, rectified camera frame
    rotation_y: float
    center_lidar: Optional[np.ndarray] = None  # (3,) box centre in the Velodyne frame


@dataclass
class KittiFrame:
    """One frame's files, parsed."""

    frame_id: str
    image: np.ndarray  # (H,W,3) uint8 RGB
    points: np.ndarray  # (N,4) float32 x,y,z,reflectance, Velodyne frame
    K: np.ndarray  # (3,3) intrinsics of P2
    T_cam_lidar: np.ndarray  # (4,4) Velodyne -> the P2 camera's rectified optical frame (P2's offset included)
    labels: List[KittiLabel]


def parse_calib(text: str) -> Dict[str, np.ndarray]:
    """KITTI calib file -> {key: flat float array}."""
    out = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, vals = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(v) for v in vals.split()], np.float64)
        except ValueError as e:
            raise ValueError(f"calib line {key!r}: {e}") from None
    for alias, key in (("Tr_velo_cam", "Tr_velo_to_cam"), ("R_rect", "R0_rect")):  # KITTI tracking spelling
        if key not in out and alias in out:
            out[key] = out[alias]
    for key, n in (("P2", 12), ("R0_rect", 9), ("Tr_velo_to_cam", 12)):
        if key not in out or out[key].size != n:
            raise ValueError(f"calib: {key} missing or not {n} numbers")
    return out


def calib_transforms(calib: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> K (3,3), T_cam_lidar (4,4) into the P2 camera, T_rect_velo (4,4) into the rectified reference camera.

    P2 = K [I | t] with t the colour camera's offset from the reference camera, so a pinhole K plus
    T_cam_lidar = [I | t] R0_rect Tr_velo_to_cam reproduces P2 exactly.
    """
    P2 = calib["P2"].reshape(3, 4)
    K = P2[:, :3].copy()
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3, :] = calib["Tr_velo_to_cam"].reshape(3, 4)
    offset = np.eye(4)
    offset[:3, 3] = np.linalg.solve(K, P2[:, 3])
    T_rect_velo = R0 @ Tr
    return K, offset @ T_rect_velo, T_rect_velo


def parse_labels(text: str, T_rect_velo: np.ndarray) -> List[KittiLabel]:
    """label_2 text -> labels; 3D centres are converted to the Velodyne frame."""
    T_velo_rect = np.linalg.inv(T_rect_velo)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 15:
            raise ValueError(f"label line {n}: expected 15 fields, got {len(f)}")
        h, w, l = (float(v) for v in f[8:11])
        loc = np.array([float(v) for v in f[11:14]])
        lab = KittiLabel(f[0], np.array([float(v) for v in f[4:8]]), np.array([h, w, l]), loc, float(f[14]))
        if lab.cls != "DontCare":
            centre_rect = np.array([loc[0], loc[1] - h / 2, loc[2], 1.0])  # y points down: centre is h/2 above
            lab.center_lidar = (T_velo_rect @ centre_rect)[:3]
        out.append(lab)
    return out


def load_frame(frame_dir: Path) -> KittiFrame:
    """Read one KITTI-layout folder (exactly one ``*.bin``)."""
    frame_dir = Path(frame_dir)
    bins = sorted(frame_dir.glob("*.bin"))
    if len(bins) != 1:
        raise FileNotFoundError(f"{frame_dir}: expected exactly one <id>.bin, found {len(bins)}")
    fid = bins[0].stem
    paths = {k: frame_dir / f"{fid}{s}" for k, s in (("png", ".png"), ("calib", "_calib.txt"), ("label", "_label.txt"))}
    for k, p in paths.items():
        if not p.is_file():
            raise FileNotFoundError(f"{frame_dir}: missing {p.name}")
    raw = np.fromfile(bins[0], np.float32)
    if raw.size % 4:
        raise ValueError(f"{bins[0]}: size is not a multiple of 4 float32 (x,y,z,reflectance)")
    bgr = cv2.imread(str(paths["png"]), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{paths['png']}: not a readable image")
    calib = parse_calib(paths["calib"].read_text())
    K, T_cam_lidar, T_rect_velo = calib_transforms(calib)
    labels = parse_labels(paths["label"].read_text(), T_rect_velo)
    return KittiFrame(fid, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), raw.reshape(-1, 4), K, T_cam_lidar, labels)


def through_messages(frame: KittiFrame, stamp: float = 1.0) -> Tuple[np.ndarray, CameraIntrinsics, np.ndarray]:
    """Arrays -> Image, CameraInfo, PointCloud2 -> CDR bytes -> messages -> arrays, as the node sees them."""
    from ..ros import conversions as conv

    h, w = frame.image.shape[:2]
    intr = CameraIntrinsics(width=w, height=h, K=frame.K, frame_id="camera_optical")
    img = conv.cdr_roundtrip(conv.rgb_to_image(frame.image, stamp, "camera_optical"))
    info = conv.cdr_roundtrip(conv.intrinsics_to_camera_info(intr, stamp))
    cloud = conv.cdr_roundtrip(conv.xyzi_to_pointcloud2(frame.points, stamp, "velodyne"))
    return conv.image_to_rgb(img), conv.camera_info_to_intrinsics(info), conv.pointcloud2_to_xyzi(cloud)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x1,y1,x2,y2 boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def evaluate(
    labels: List[KittiLabel],
    objects: List[DetectedObject],
    max_distance: float = 40.0,
    match_radius: float = 1.0,
    iou_threshold: float = 0.5,
) -> dict:
    """Match clusters to labelled objects and compute the frame's metrics (see the module docstring)."""
    gts = [
        g for g in labels
        if g.cls in EVAL_CLASSES and g.center_lidar is not None and np.hypot(*g.center_lidar[:2]) <= max_distance
    ]
    dontcare = [g.box2d for g in labels if g.cls == "DontCare"]
    matches: List[Tuple[int, int, float]] = []
    if gts and objects:
        G = np.array([g.center_lidar[:2] for g in gts])  # (L, 2)
        C = np.array([o.center[:2] for o in objects], np.float64)  # (K, 2)
        cost = np.linalg.norm(G[:, None, :] - C[None, :, :], axis=2)  # (L, K)
        rows, cols = linear_sum_assignment(np.where(cost <= match_radius, cost, 1e6))
        matches = [(int(r), int(c), float(cost[r, c])) for r, c in zip(rows, cols) if cost[r, c] <= match_radius]
    per_object = []
    ious = []
    for r, c, d in matches:
        o = objects[c]
        iou = box_iou(o.box2d, gts[r].box2d) if o.box2d is not None else 0.0
        ious.append(iou)
        per_object.append({"class": gts[r].cls, "distance_m": round(float(np.hypot(*gts[r].center_lidar[:2])), 2),
                           "centre_error_m": round(d, 3), "iou": round(iou, 3), "track_id": o.track_id})
    matched_objs = {c for _, c, _ in matches}
    matched_gts = {r for r, _, _ in matches}
    unmatched = []
    for k, o in enumerate(objects):
        if k in matched_objs or o.box2d is None or np.hypot(*o.center[:2]) > max_distance:
            continue
        cx, cy = (o.box2d[0] + o.box2d[2]) / 2, (o.box2d[1] + o.box2d[3]) / 2
        if any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in dontcare):
            continue
        unmatched.append({"center": [round(float(v), 2) for v in o.center], "size": [round(float(v), 2) for v in o.size],
                          "label": o.label})
    missed = [{"class": gts[r].cls, "center": [round(float(v), 2) for v in gts[r].center_lidar]}
              for r in range(len(gts)) if r not in matched_gts]
    n_pass = int(sum(i >= iou_threshold for i in ious))
    return {
        "labelled": len(gts),
        "matched": len(matches),
        "recall": len(matches) / len(gts) if gts else float("nan"),
        "iou_pass": n_pass,
        "iou_pass_rate": n_pass / len(matches) if matches else float("nan"),
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "clusters": len(objects),
        "unmatched_clusters": len(unmatched),
        "matched_objects": per_object,
        "missed_objects": missed,
        "unmatched": unmatched,
    }


def load_perception_config(path: Optional[str]) -> PerceptionConfig:
    """PerceptionConfig from a YAML file (top-level ``perception:`` or the fields directly)."""
    if not path:
        return PerceptionConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return PerceptionConfig.from_dict(data.get("perception", data))


def _camera_labeller(model_dir: str, backend_type: str):
    """(embed_crops, prompt_embeddings, prompt labels) from a model bundle's camera encoder and every prompt of
    its prompts.json, through the node's assembly (ros/pipeline_factory.open_pipeline)."""
    from ..ros.pipeline_factory import PromptEmbedder, open_pipeline

    embedder = PromptEmbedder(model_dir)
    labels, emb = embedder.bundle_defaults()  # (P, 384)
    pipe = open_pipeline(model_dir, {"backend.type": backend_type, "backend.intra_op_threads": 0,
                                     "perception.enabled": False}, prompts=(labels, emb))
    return pipe.embed_crops, emb, labels  # embed_crops: K (h, w, 3) crops -> (K, 384)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames", nargs="+", metavar="FRAME_DIR",
                   help="folders with <id>.png, <id>.bin, <id>_calib.txt, <id>_label.txt")
    p.add_argument("--json", metavar="FILE", help="also write all metrics as JSON ('-' for stdout)")
    p.add_argument("--config", metavar="YAML",
                   help="perception parameters (default: PerceptionConfig defaults, as in config/perception.yaml)")
    p.add_argument("--model", metavar="DIR", help="model bundle: label in-view clusters with its camera encoder and prompts")
    p.add_argument("--backend", default="auto", help="runtime backend for --model (auto, onnxruntime, tensorrt, torch)")
    p.add_argument("--render", metavar="DIR", help="write <id>.png: bird's-eye view and camera view with boxes")
    p.add_argument("--max-distance", type=float, default=40.0, help="labelled objects farther (BEV, m) are not counted")
    p.add_argument("--match-radius", type=float, default=1.0, help="max BEV centre distance (m) of a match")
    p.add_argument("--iou", type=float, default=0.5, help="2D IoU a matched object's projected box must reach")
    p.add_argument("--min-recall", type=float, default=0.8, help="exit 1 when overall recall is below this")
    p.add_argument("--min-iou-pass", type=float, default=0.7, help="exit 1 when the overall IoU pass rate is below this")


def build_args(argv: List[str]) -> argparse.Namespace:
    """Parse eval-kitti arguments (for tests and scripts)."""
    p = argparse.ArgumentParser(prog="mmfusion eval-kitti")
    add_arguments(p)
    return p.parse_args(argv)


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.0f}%"


def run(args: argparse.Namespace) -> int:
    cfg = load_perception_config(args.config)
    labeller = _camera_labeller(args.model, args.backend) if args.model else (None, None, None)
    rows, frames_out = [], []
    totals = {"labelled": 0, "matched": 0, "iou_pass": 0, "clusters": 0, "unmatched_clusters": 0}
    times = []
    for d in args.frames:
        try:
            frame = load_frame(Path(d))
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        image, camera, points = through_messages(frame)
        if not times:
            Perception(cfg).process(points, 0.0)  # warm-up (library initialisation), not timed
        perception = Perception(cfg)  # frames are independent: no tracking across them
        t0 = time.perf_counter()
        objs = perception.process(points, 0.0, image, camera, frame.T_cam_lidar, *labeller)
        ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        m = evaluate(frame.labels, objs, args.max_distance, args.match_radius, args.iou)
        m.update({"frame": frame.frame_id, "dir": str(d), "points": int(len(points)), "perception_ms": round(ms, 2),
                  "stage_ms": {k: round(v, 2) for k, v in perception.timings_ms.items()}})
        frames_out.append(m)
        for k in totals:
            totals[k] += m[k]
        rows.append([frame.frame_id, m["labelled"], m["matched"], _fmt(m["recall"]), _fmt(m["iou_pass_rate"]),
                     m["clusters"], m["unmatched_clusters"], f"{ms:.1f}"])
        if args.render:
            from ..core.render import RenderConfig, render_frame

            sf = SensorFrame(stamp=0.0, image=image, camera=camera, lidar=points, frame_id="velodyne")
            res = FusionResult(stamp=0.0, present=[], embedding=np.zeros(384, np.float32),
                               modality_weights=np.zeros(4, np.float32), labels=[], objects=objs, frame_id="velodyne")
            out = Path(args.render) / f"kitti_{frame.frame_id}.png"
            # KITTI clouds cover the camera's view ahead only: no need to show what is behind
            render_frame(sf, res, out, frame.T_cam_lidar, RenderConfig(width=800, bev_front=42.0, bev_back=2.0, bev_side=24.0,
                                                                   camera_color_bits=5),
                         title=f"KITTI {frame.frame_id} (CC BY-NC-SA 3.0): recall {_fmt(m['recall'])}, "
                               f"IoU>={args.iou} {_fmt(m['iou_pass_rate'])}",
                         ground_truth=[(g.center_lidar, g.size_hwl[[2, 1, 0]], -g.rotation_y - np.pi / 2, g.cls)
                                       for g in frame.labels if g.center_lidar is not None])
            print(f"wrote {out}")
    recall = totals["matched"] / totals["labelled"] if totals["labelled"] else float("nan")
    iou_rate = totals["iou_pass"] / totals["matched"] if totals["matched"] else float("nan")
    rows.append(["overall", totals["labelled"], totals["matched"], _fmt(recall), _fmt(iou_rate), totals["clusters"],
                 totals["unmatched_clusters"], f"{np.median(times):.1f} (p50)"])
    header = ["frame", "labelled", "matched", "recall", f"IoU>={args.iou}", "clusters", "unmatched", "ms"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(f"KITTI 3D perception: Car/Pedestrian/Cyclist within {args.max_distance:g} m, match radius "
          f"{args.match_radius:g} m (BEV), IoU threshold {args.iou:g}")
    for r in [header] + rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))
    for m in frames_out:
        for miss in m["missed_objects"]:
            print(f"  {m['frame']}: missed {miss['class']} at {miss['center']}")
    ok = recall >= args.min_recall and iou_rate >= args.min_iou_pass
    summary = {"frames": frames_out, "overall": {**totals, "recall": recall, "iou_pass_rate": iou_rate,
                                                 "perception_ms_p50": float(np.median(times)),
                                                 "passed": bool(ok)},
               "settings": {"max_distance": args.max_distance, "match_radius": args.match_radius, "iou": args.iou,
                            "min_recall": args.min_recall, "min_iou_pass": args.min_iou_pass}}
    if args.json:
        text = json.dumps(summary, indent=1, default=float)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text)
    print(f"{'PASS' if ok else 'FAIL'}: recall {_fmt(recall)} (>= {_fmt(args.min_recall)}), "
          f"IoU pass {_fmt(iou_rate)} (>= {_fmt(args.min_iou_pass)})")
    return 0 if ok else 1
