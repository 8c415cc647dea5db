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

Labels, with ``--model BUNDLE``: the clusters are labelled as the pipeline labels them (the camera encoder
embeds each projected crop, the best of the bundle's prompts.json labels by cosine similarity wins, see
``core/perception.py``), and the labels are scored against KITTI's classes through ``KITTI_TO_PROMPT_LABELS``:
top-1 accuracy of the matched objects per class and overall with counts and the labels given (the confusion),
and for the unmatched clusters in view the labels given and their median score. The pipeline gives crop labels
only from a familiar camera (core/pipeline.py: crop labels are learned claims); on a frame whose image the
bundle's familiarity statistics call unfamiliar the clusters keep their geometric labels, and the frame's labels
are reported as not scored, with the reason (``--ignore-familiarity`` labels and scores them anyway, marked so).
Object labels carry no confidence cut-off in the pipeline: the score is the softmax probability of the chosen
prompt, reported as it is. Label figures never change the exit status.

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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import yaml
from scipy.optimize import linear_sum_assignment

from ..core.perception import Perception, PerceptionConfig
from ..core.types import CameraIntrinsics, DetectedObject, FusionResult, SensorFrame

EVAL_CLASSES = ("Car", "Pedestrian", "Cyclist")

#: KITTI class -> the prompt labels (prompts.json "label") that count as a right top-1 label for it.
#: Van -> car: the prompts have no van, and a van is "a car on the road" to them (KITTI keeps Van apart only so
#: that detectors are not penalised for mixing the two up); likewise Person_sitting -> person. Cyclist -> bicycle
#: or person: the crop holds the rider on the bicycle and both prompts name what is in it (a car label is wrong).
#: Van and Person_sitting are not in the geometry metrics (EVAL_CLASSES): their labels are scored on the clusters
#: that match them among the unmatched ones. Truck, Tram, Misc: no prompt names them; clusters on them are listed
#: apart (``other_objects``), neither scored nor counted as unmatched. DontCare: ignored.
KITTI_TO_PROMPT_LABELS: Dict[str, Tuple[str, ...]] = {
    "Car": ("car",),
    "Van": ("car",),
    "Pedestrian": ("person",),
    "Person_sitting": ("person",),
    "Cyclist": ("bicycle", "person"),
}


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


def _within(g: KittiLabel, max_distance: float) -> bool:
    return g.center_lidar is not None and float(np.hypot(*g.center_lidar[:2])) <= max_distance


def match_clusters(gts: List[KittiLabel], objects: List[DetectedObject],
                   match_radius: float) -> List[Tuple[int, int, float]]:
    """One-to-one (label index, object index, BEV centre distance) by Hungarian assignment, within match_radius."""
    if not gts or not objects:
        return []
    G = np.array([g.center_lidar[:2] for g in gts])  # (L, 2)
    C = np.array([o.center[:2] for o in objects], np.float64)  # (K, 2)
    cost = np.linalg.norm(G[:, None, :] - C[None, :, :], axis=2)  # (L, K)
    rows, cols = linear_sum_assignment(np.where(cost <= match_radius, cost, 1e6))
    return [(int(r), int(c), float(cost[r, c])) for r, c in zip(rows, cols) if cost[r, c] <= match_radius]


def unmatched_in_view(labels: List[KittiLabel], objects: List[DetectedObject], matched: set,
                      max_distance: float) -> List[int]:
    """Indices of the objects not in `matched` that are in the camera view, within max_distance and whose 2D box
    centre is not inside a DontCare box."""
    dontcare = [g.box2d for g in labels if g.cls == "DontCare"]
    out = []
    for k, o in enumerate(objects):
        if k in matched or o.box2d is None or np.hypot(*o.center[:2]) > max_distance:
            continue
        cx, cy = (o.box2d[0] + o.box2d[2]) / 2, (o.box2d[1] + o.box2d[3]) / 2
        if any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in dontcare):
            continue
        out.append(k)
    return out


def evaluate(
    labels: List[KittiLabel],
    objects: List[DetectedObject],
    max_distance: float = 40.0,
    match_radius: float = 1.0,
    iou_threshold: float = 0.5,
) -> dict:
    """Match clusters to labelled objects and compute the frame's metrics (see the module docstring)."""
    gts = [g for g in labels if g.cls in EVAL_CLASSES and _within(g, max_distance)]
    matches = match_clusters(gts, objects, match_radius)
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
    unmatched = [{"center": [round(float(v), 2) for v in objects[k].center],
                  "size": [round(float(v), 2) for v in objects[k].size], "label": objects[k].label}
                 for k in unmatched_in_view(labels, objects, matched_objs, max_distance)]
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


def evaluate_labels(
    labels: List[KittiLabel],
    objects: List[DetectedObject],
    max_distance: float = 40.0,
    match_radius: float = 1.0,
    unavailable: str = "",
) -> dict:
    """Score the objects' labels against KITTI (see the module docstring); ``unavailable``: why this frame has no
    camera labels to score ("" = it has them).

    -> {"scored", "by_class": {KITTI class: {"objects", "labelled" (by the camera), "correct", "given": {label: n}}},
    "unmatched": {"clusters", "labelled", "given", "scores": {label: [score...]}}, "other_objects": {class: {label: n}}}
    plus the accuracies (``finish_labels``); {"scored": False, "reason"} when ``unavailable``.
    """
    if unavailable:
        return {"scored": False, "reason": unavailable}
    gts = [g for g in labels if g.cls in EVAL_CLASSES and _within(g, max_distance)]
    matches = match_clusters(gts, objects, match_radius)  # the geometry metrics' matches
    rest = unmatched_in_view(labels, objects, {c for _, c, _ in matches}, max_distance)
    others = [g for g in labels if g.cls not in EVAL_CLASSES and g.cls != "DontCare" and _within(g, max_distance)]
    on_others = [(r, rest[c]) for r, c, _ in match_clusters(others, [objects[k] for k in rest], match_radius)]
    by_class: Dict[str, dict] = {}
    other_objects: Dict[str, Counter] = {}
    for cls, o in [(gts[r].cls, objects[c]) for r, c, _ in matches] + [(others[r].cls, objects[k]) for r, k in on_others]:
        if cls not in KITTI_TO_PROMPT_LABELS:
            other_objects.setdefault(cls, Counter())[o.label if o.label_from_camera else "(no camera label)"] += 1
            continue
        row = by_class.setdefault(cls, {"objects": 0, "labelled": 0, "correct": 0, "given": Counter()})
        row["objects"] += 1
        if o.label_from_camera:
            row["labelled"] += 1
            row["correct"] += int(o.label in KITTI_TO_PROMPT_LABELS[cls])
            row["given"][o.label] += 1
    on_other_objs = {k for _, k in on_others}
    left = [objects[k] for k in rest if k not in on_other_objs]
    scores: Dict[str, List[float]] = {}
    for o in left:
        if o.label_from_camera:
            scores.setdefault(o.label, []).append(round(float(o.score), 3))
    out = {"scored": True,
           "by_class": {c: {**v, "given": dict(v["given"])} for c, v in by_class.items()},
           "unmatched": {"clusters": len(left), "labelled": sum(len(v) for v in scores.values()),
                         "given": {k: len(v) for k, v in scores.items()}, "scores": scores},
           "other_objects": {c: dict(v) for c, v in other_objects.items()}}
    return finish_labels(out)


def finish_labels(m: dict) -> dict:
    """Add the accuracies, the overall row and median scores to evaluate_labels counts (in place; returns m)."""
    for row in m["by_class"].values():
        row["accuracy"] = row["correct"] / row["labelled"] if row["labelled"] else float("nan")
        row["given"] = dict(sorted(row["given"].items(), key=lambda kv: (-kv[1], kv[0])))
    tot = {k: sum(r[k] for r in m["by_class"].values()) for k in ("objects", "labelled", "correct")}
    tot["accuracy"] = tot["correct"] / tot["labelled"] if tot["labelled"] else float("nan")
    m["overall"] = tot
    u = m["unmatched"]
    u["given"] = dict(sorted(u["given"].items(), key=lambda kv: (-kv[1], kv[0])))
    u["no_camera_label"] = u["clusters"] - u["labelled"]
    u["median_score"] = {k: round(float(np.median(v)), 3) for k, v in u["scores"].items()}
    return m


def merge_labels(frames: List[dict]) -> dict:
    """The scored frames' evaluate_labels results summed into one (the same layout), plus which were not scored."""
    scored = [f for f in frames if f.get("scored")]
    if not scored:
        reasons = sorted({f.get("reason", "") for f in frames})
        return {"scored": False, "reason": reasons[0] if len(reasons) == 1 else "no frame has camera labels "
                "(frames[].labels.reason says why)", "frames_scored": 0, "frames_not_scored": len(frames)}
    by_class: Dict[str, dict] = {}
    unmatched = {"clusters": 0, "labelled": 0, "given": Counter(), "scores": {}}
    other: Dict[str, Counter] = {}
    for f in scored:
        for c, row in f["by_class"].items():
            acc = by_class.setdefault(c, {"objects": 0, "labelled": 0, "correct": 0, "given": Counter()})
            for k in ("objects", "labelled", "correct"):
                acc[k] += row[k]
            acc["given"].update(row["given"])
        u = f["unmatched"]
        unmatched["clusters"] += u["clusters"]
        unmatched["labelled"] += u["labelled"]
        unmatched["given"].update(u["given"])
        for k, v in u["scores"].items():
            unmatched["scores"].setdefault(k, []).extend(v)
        for c, given in f["other_objects"].items():
            other.setdefault(c, Counter()).update(given)
    out = finish_labels({"scored": True, "by_class": by_class, "unmatched": unmatched,
                         "other_objects": {c: dict(v) for c, v in other.items()}})
    out["frames_scored"] = len(scored)
    out["frames_not_scored"] = len(frames) - len(scored)
    return out


@dataclass
class CameraLabeller:
    """What the pipeline labels crops with, from a model bundle, and what it decides camera use by."""

    embed_crops: Callable[[List[np.ndarray]], np.ndarray]  # K (h, w, 3) uint8 RGB crops -> (K, D)
    prompt_embeddings: np.ndarray  # (P, D) every prompt of the bundle's prompts.json
    prompts: List[str]  # their labels, in the same order
    familiarity: Any  # core.familiarity.Familiarity of the bundle (the pipeline's own)
    preprocess: Any  # core.preprocess.PreprocessConfig of the bundle

    def label_source(self, image: Optional[np.ndarray], camera: Optional[CameraIntrinsics],
                     ignore_familiarity: bool = False) -> Tuple[str, Optional[float], str]:
        """(why the pipeline would give this frame no camera labels, "" when it would; the camera's familiarity,
        None when not assessed; a note when the labels are scored although the pipeline would not give them).

        Mirrors core/pipeline.py: crop labels come only from a present, familiar camera."""
        from ..core.preprocess import model_inputs

        if image is None or camera is None:
            return "no camera image" if image is None else "no camera intrinsics", None, ""
        if not self.familiarity.assessed("camera"):
            return "", None, ""
        x = model_inputs(SensorFrame(stamp=0.0, image=image, camera=camera), self.preprocess)["camera"]
        fam = float(self.familiarity.score("camera", x))
        if fam >= self.familiarity.threshold:
            return "", fam, ""
        why = (f"camera unfamiliar to the model (familiarity {fam:.4f} < {self.familiarity.threshold:g}): "
               "the pipeline gives these objects no camera labels")
        return ("", fam, why + "; scored anyway (--ignore-familiarity)") if ignore_familiarity else (why, fam, "")


def open_camera_labeller(model_dir: str, backend_type: str) -> CameraLabeller:
    """The bundle's camera encoder, every prompt of its prompts.json and its familiarity statistics, through the
    node's assembly (ros/pipeline_factory.open_pipeline)."""
    from ..ros.pipeline_factory import PromptEmbedder, open_pipeline

    embedder = PromptEmbedder(model_dir)
    labels, emb = embedder.bundle_defaults()  # (P, 384)
    pipe = open_pipeline(model_dir, {"backend.type": backend_type, "backend.intra_op_threads": 0,
                                     "perception.enabled": False}, prompts=(labels, emb))
    return CameraLabeller(pipe.embed_crops, emb, list(labels), pipe.familiarity, pipe.preprocess)


def load_perception_config(path: Optional[str]) -> PerceptionConfig:
    """PerceptionConfig from a YAML file (top-level ``perception:`` or the fields directly)."""
    if not path:
        return PerceptionConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    return PerceptionConfig.from_dict(data.get("perception", data))


def _camera_labeller(model_dir: str, backend_type: str):
    """(embed_crops, prompt_embeddings, prompt labels) of ``open_camera_labeller``: Perception.process's last three."""
    lab = open_camera_labeller(model_dir, backend_type)
    return lab.embed_crops, lab.prompt_embeddings, lab.prompts  # embed_crops: K (h, w, 3) crops -> (K, 384)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames", nargs="+", metavar="FRAME_DIR",
                   help="folders with <id>.png, <id>.bin, <id>_calib.txt, <id>_label.txt")
    p.add_argument("--json", metavar="FILE", help="also write all metrics as JSON ('-' for stdout)")
    p.add_argument("--config", metavar="YAML",
                   help="perception parameters (default: PerceptionConfig defaults, as in config/perception.yaml)")
    p.add_argument("--model", metavar="DIR", help="model bundle: label in-view clusters with its camera encoder and prompts")
    p.add_argument("--backend", default="auto", help="runtime backend for --model (auto, onnxruntime, tensorrt, torch)")
    p.add_argument("--ignore-familiarity", action="store_true",
                   help="with --model: label and score crops even where the model finds the camera unfamiliar "
                        "(the pipeline gives no camera labels there)")
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


def _counts(given: Dict[str, int], median: Optional[Dict[str, float]] = None) -> str:
    if not given:
        return "-"
    return ", ".join(f"{k} {n}" + (f" (median score {median[k]:.2f})" if median else "") for k, n in given.items())


def print_labels(labels: dict, frames: List[dict], prompts: Sequence[str], no_prompt: Sequence[str]) -> None:
    """The label table of ``run``: per-class top-1 with the labels given, then the unmatched clusters."""
    rule = ", ".join(f"{c}->{'|'.join(v)}" for c, v in KITTI_TO_PROMPT_LABELS.items())
    print(f"Labels from the camera: top-1 among the bundle's {len(prompts)} prompts; right labels {rule}")
    for m in frames:
        lm = m["labels"]
        if not lm["scored"]:
            print(f"  {m['frame']}: labels not scored: {lm['reason']}")
        elif lm.get("note"):
            print(f"  {m['frame']}: {lm['note']}")
    for c in no_prompt:
        print(f"  warning: no prompt of the bundle is a right label for {c}: its objects cannot be labelled right")
    if not labels["scored"]:
        return
    rows = [[c, r["objects"], r["labelled"], r["correct"], _fmt(r["accuracy"]), _counts(r["given"])]
            for c, r in sorted(labels["by_class"].items())]
    o = labels["overall"]
    rows.append(["overall", o["objects"], o["labelled"], o["correct"], _fmt(o["accuracy"]), ""])
    header = ["class", "matched", "camera-labelled", "right", "top-1", "labels given"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header) - 1)]
    for r in [header] + rows:
        print(("  ".join(str(v).rjust(w) for v, w in zip(r, widths)) + "  " + str(r[-1])).rstrip())
    u = labels["unmatched"]
    print(f"unmatched clusters in view: {u['clusters']}; camera labels given: "
          f"{_counts(u['given'], u['median_score'])}; no camera label: {u['no_camera_label']}")
    for c, given in sorted(labels["other_objects"].items()):
        print(f"clusters on KITTI {c} (no prompt names it, not scored): {_counts(given)}")


def run(args: argparse.Namespace) -> int:
    cfg = load_perception_config(args.config)
    labeller = open_camera_labeller(args.model, args.backend) if args.model else None
    no_prompt = [c for c, ok in KITTI_TO_PROMPT_LABELS.items() if labeller and not set(ok) & set(labeller.prompts)]
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
        if labeller is None:
            reason, fam, note = "no --model: clusters keep their geometric labels", None, ""
            gated, crop_args = False, ()
        else:  # as the pipeline does: no image and no encoder for the crops when the camera is not used
            reason, fam, note = labeller.label_source(image, camera, args.ignore_familiarity)
            gated = bool(reason)
            crop_args = () if gated else (labeller.embed_crops, labeller.prompt_embeddings, labeller.prompts)
        t0 = time.perf_counter()
        objs = perception.process(points, 0.0, None if gated else image, camera, frame.T_cam_lidar, *crop_args)
        ms = (time.perf_counter() - t0) * 1e3
        times.append(ms)
        m = evaluate(frame.labels, objs, args.max_distance, args.match_radius, args.iou)
        lm = evaluate_labels(frame.labels, objs, args.max_distance, args.match_radius, unavailable=reason)
        m["labels"] = {**lm, "camera_familiarity": fam, **({"note": note} if note else {})}
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
    labels = merge_labels([m["labels"] for m in frames_out]) if labeller else \
        {"scored": False, "reason": "no --model: clusters keep their geometric labels"}
    if labeller:
        labels["classes_without_prompt"] = no_prompt
        print_labels(labels, frames_out, labeller.prompts, no_prompt)
    ok = recall >= args.min_recall and iou_rate >= args.min_iou_pass
    summary = {"frames": frames_out, "overall": {**totals, "recall": recall, "iou_pass_rate": iou_rate,
                                                 "perception_ms_p50": float(np.median(times)),
                                                 "passed": bool(ok), "labels": labels},
               "settings": {"max_distance": args.max_distance, "match_radius": args.match_radius, "iou": args.iou,
                            "min_recall": args.min_recall, "min_iou_pass": args.min_iou_pass,
                            "model": args.model, "ignore_familiarity": bool(args.ignore_familiarity),
                            "kitti_to_prompt_labels": {k: list(v) for k, v in KITTI_TO_PROMPT_LABELS.items()}}}
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
