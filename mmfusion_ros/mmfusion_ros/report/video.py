"""Annotated video and contact sheet: what the node saw and said, frame by frame.

Each picture: a header (time, top labels, caption), the camera image with the node's 3D boxes
projected (core/render.render_camera), the bird's-eye LiDAR view with the node's boxes and the
ground-truth boxes in grey (core/render.render_bev), and a footer with predicted against true events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..core.render import RenderConfig, render_bev, render_camera
from ..core.types import CameraIntrinsics, DetectedObject
from .data import OutputFrame, Outputs, Scenario, sensor_frames
from .metrics import active_at

FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class VideoConfig:
    """Layout and encoding of the annotated video."""

    camera_width: int = 640  # camera panel width, pixels (height follows the image aspect)
    bev_front: float = 30.0  # bird's-eye view extent ahead of the robot, m
    bev_back: float = 6.0  # extent behind, m
    bev_side: float = 18.0  # extent to each side, m
    fourcc: str = "mp4v"  # cv2.VideoWriter codec (mp4v plays in browsers' and desktop players)
    fps: float = 10.0  # video frame rate; each fused frame is held until the next, so it plays in scene time
    sheet_frames: int = 6  # pictures on the contact sheet
    sheet_columns: int = 2  # contact sheet columns
    sheet_width: int = 1400  # contact sheet width, pixels
    sheet_colors: int = 160  # palette size of the contact-sheet PNG (keeps it < 500 KB for the README)


def _text(img: np.ndarray, text: str, org: Tuple[int, int], color=(235, 235, 235), scale: float = 0.5) -> None:
    """Text on the dark header/footer bars (no outline: a thick outline's glyphs run wider than the text)."""
    cv2.putText(img, text, org, FONT, scale, color, 1, cv2.LINE_AA)


def _fit(text: str, width_px: int, scale: float) -> str:
    """Shorten text with an ellipsis so it fits in width_px."""
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width_px:
        return text
    while text and cv2.getTextSize(text + "...", FONT, scale, 1)[0][0] > width_px:
        text = text[:-1]
    return text + "..."


def _chips(img: np.ndarray, y: int, x: int, items: Sequence[Tuple[str, Tuple[int, int, int]]]) -> None:
    """Coloured labels in a row, left to right."""
    for text, col in items:
        (w, h), _ = cv2.getTextSize(text, FONT, 0.45, 1)
        if x + w + 10 > img.shape[1]:
            break
        cv2.rectangle(img, (x, y - h - 5), (x + w + 8, y + 5), col, -1)
        cv2.putText(img, text, (x + 4, y), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += w + 14


def compose(t: float, frame: OutputFrame, image: Optional[np.ndarray], cloud: Optional[np.ndarray],
            camera: Optional[CameraIntrinsics], T_cam_lidar: Optional[np.ndarray], caption: Optional[Tuple[str, float]],
            predicted: Sequence[Tuple[str, float, float]], truth: Sequence[str], gt_boxes: Sequence[tuple],
            cfg: VideoConfig) -> np.ndarray:
    """One annotated picture -> (H,W,3) BGR; width = camera_width + the BEV panel's, both even."""
    if image is not None:
        scale = cfg.camera_width / image.shape[1]
        objs: List[DetectedObject] = frame.objects if (camera is not None and T_cam_lidar is not None) else []
        cam = render_camera(image, camera, objs, T_cam_lidar if T_cam_lidar is not None else np.eye(4), scale)
    else:
        cam = np.full((cfg.camera_width * 3 // 4, cfg.camera_width, 3), 40, np.uint8)
        _text(cam, "no camera image", (20, 40))
    h = cam.shape[0] - cam.shape[0] % 2
    cam = cam[:h]
    bev_w = int(round(h * 2 * cfg.bev_side / (cfg.bev_front + cfg.bev_back)))
    rc = RenderConfig(width=bev_w, bev_front=cfg.bev_front, bev_back=cfg.bev_back, bev_side=cfg.bev_side)
    bev = render_bev(cloud, frame.objects, rc, ground_truth=gt_boxes)
    bev = cv2.resize(bev, (bev_w - bev_w % 2, h), interpolation=cv2.INTER_AREA) if bev.shape[:2] != (h, bev_w - bev_w % 2) else bev
    body = np.hstack([cam, bev])
    W = body.shape[1]
    head = np.full((52, W, 3), 12, np.uint8)
    labels = ", ".join(f"{l} {s:.2f}" for l, s in frame.labels[:3]) or "-"
    mods = "+".join(m[:3] for m in frame.present) or "none"
    _text(head, _fit(f"t={t:6.2f}s  [{mods}]  labels: {labels}", W - 12, 0.5), (6, 20))
    cap = f"caption: {caption[0]} ({caption[1]:.2f})" if caption else "caption: -"
    _text(head, _fit(cap, W - 12, 0.5), (6, 43), (140, 230, 255))
    foot = np.full((56, W, 3), 12, np.uint8)
    _text(foot, "predicted:", (6, 20), scale=0.45)
    _chips(foot, 20, 100, [(f"{n} {p:.2f}@{hz:g}s", (80, 170, 255)) for n, p, hz in predicted] or [("none", (90, 90, 90))])
    _text(foot, "true now:", (6, 46), scale=0.45)
    _chips(foot, 46, 100, [(n, (120, 220, 120)) for n in truth] or [("none", (90, 90, 90))])
    return np.vstack([head, body, foot])


def key_moments(times: np.ndarray, scenario: Scenario, outputs: Outputs, n: int) -> List[int]:
    """Frame indices worth a picture: ground-truth onsets, predicted starts, then evenly spaced fill.

    Near each wanted time (within 0.5 s) the frame with the most detected objects wins, so the
    pictures show boxes where the node had a LiDAR sweep.
    """
    times = np.asarray(times, np.float64)
    if not len(times):
        return []
    n_obj = np.array([len(f.objects) for f in outputs.frames])  # (F,)
    wanted: List[float] = []
    for ivs in scenario.intervals().values():
        wanted += [a + 0.3 for a, _ in ivs]
    wanted += [s for s, evs in outputs.events if any(e["state"] == 0 for e in evs)]
    picks: List[int] = []
    min_gap = max(0.8, (times[-1] - times[0]) / (3 * n))

    def best_near(w: float) -> Optional[int]:
        near = np.flatnonzero(np.abs(times - w) <= 0.5)
        if not len(near):
            return None
        return int(max(near, key=lambda i: (n_obj[i], -abs(times[i] - w))))

    def free(i: int) -> bool:
        return all(abs(times[i] - times[j]) >= min_gap for j in picks)

    for w in sorted(wanted):
        i = best_near(w)
        if i is not None and free(i):
            picks.append(i)
    for w in np.linspace(times[0], times[-1], 2 * n):
        if len(picks) >= n:
            break
        i = best_near(w)
        if i is not None and free(i):
            picks.append(i)
    if len(picks) > n:  # keep an even spread over time
        picks = sorted(picks, key=lambda i: times[i])
        picks = [picks[int(round(k))] for k in np.linspace(0, len(picks) - 1, n)]
    return sorted(set(picks), key=lambda i: times[i])


def write_video(path: Path, scenario_bag: Path, scenario: Scenario, outputs: Outputs,
                T_cam_lidar: Optional[np.ndarray], cfg: Optional[VideoConfig] = None,
                progress=None) -> Dict[int, np.ndarray]:
    """Write the mp4 (each fused frame's picture held until the next); return the key-moment pictures by frame index
    (their camera photo median-filtered, for a small contact-sheet PNG)."""
    cfg = cfg or VideoConfig()
    frames = outputs.frames
    times = outputs.stamps
    if not len(frames):
        raise ValueError("no fused frames to render")
    P, A = outputs.event_matrix(times)
    from ..core.types import EVENT_TYPES

    horizons = {round(s, 3): {e["type"]: e["horizon"] for e in evs} for s, evs in outputs.events}
    ivs = scenario.intervals()
    truth_now = {n: active_at(ivs[n], times) for n in EVENT_TYPES}
    gt = scenario.objects_at(times)
    keys = set(key_moments(times, scenario, outputs, cfg.sheet_frames))
    kept: Dict[int, np.ndarray] = {}
    writer = None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for i, (t, image, cloud) in enumerate(sensor_frames(scenario_bag, times)):
            pred = [(n, float(P[i, e]), horizons.get(round(float(t), 3), {}).get(n, 0.0))
                    for e, n in enumerate(EVENT_TYPES) if A[i, e]]
            truth = [n for n in EVENT_TYPES if truth_now[n][i]]
            boxes = [(o.center, o.size, o.yaw, o.cls) for o in gt[i]]
            pic = compose(float(t) - scenario.origin, frames[i], image, cloud, scenario.camera, T_cam_lidar, outputs.caption_at(float(t)),
                          pred, truth, boxes, cfg)
            if writer is None:
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*cfg.fourcc), cfg.fps,
                                         (pic.shape[1], pic.shape[0]))
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write {path} with codec {cfg.fourcc!r}")
                size = pic.shape[:2]
            if pic.shape[:2] != size:
                pic = cv2.resize(pic, (size[1], size[0]))
            # held until the next fused frame, so the video plays in scene time and shows the node's real rate
            hold = times[i + 1] - t if i + 1 < len(times) else 1.0 / cfg.fps
            for _ in range(max(1, int(round(hold * cfg.fps)))):
                writer.write(pic)
            if i in keys:  # the simulated camera's pixel noise is what makes a PNG big: a 3x3 median removes it
                clean = None if image is None else cv2.medianBlur(np.ascontiguousarray(image), 3)
                kept[i] = compose(float(t) - scenario.origin, frames[i], clean, cloud, scenario.camera, T_cam_lidar,
                                  outputs.caption_at(float(t)), pred, truth, boxes, cfg)
            if progress is not None:
                progress(1)
    finally:
        if writer is not None:
            writer.release()
    return kept


def write_contact_sheet(path: Path, pictures: Dict[int, np.ndarray], cfg: Optional[VideoConfig] = None) -> Path:
    """Tile the key-moment pictures (in time order) into one palette PNG."""
    from PIL import Image

    cfg = cfg or VideoConfig()
    if not pictures:
        raise ValueError("no pictures for the contact sheet")
    pics = [pictures[k] for k in sorted(pictures)]
    cols = min(cfg.sheet_columns, len(pics))
    tw = cfg.sheet_width // cols
    th = int(round(pics[0].shape[0] * tw / pics[0].shape[1]))
    rows = (len(pics) + cols - 1) // cols
    sheet = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    for k, p in enumerate(pics):
        r, c = divmod(k, cols)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = cv2.resize(p, (tw, th), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a palette PNG (the pictures' photos are median-filtered, see write_video): ~4x smaller than RGB
    img = Image.fromarray(cv2.cvtColor(sheet, cv2.COLOR_BGR2RGB)).quantize(colors=cfg.sheet_colors, dither=Image.Dither.NONE)
    img.save(path, optimize=True)
    return path
