"""Render what RViz would show to a PNG with OpenCV (RViz cannot run on headless machines).

Entry point for commands (``mmfusion process BAG --render DIR``, ``mmfusion eval-kitti --render DIR``)::

    render_frame(frame: SensorFrame, result: FusionResult, out_path, T_cam_lidar=None, cfg=RenderConfig())

writes one PNG: the camera image with each object's 3D box projected and labelled (top, when the
frame has an image, intrinsics and ``T_cam_lidar``), and a bird's-eye view of the LiDAR cloud with
boxes, labels, track ids, velocity arrows and event highlights (bottom). ``render_image`` returns the
same picture as an (H,W,3) uint8 BGR array. ``label_color`` is the one label -> colour mapping, shared
with the RViz markers so both views agree.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .perception import box_corners
from .types import DetectedObject, FusionResult, SensorFrame

#: Box edges as corner-index pairs, for the corner order of ``perception.box_corners``.
BOX_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


@dataclass
class RenderConfig:
    """Layout of the rendered picture."""

    width: int = 1000  # picture width, pixels (the camera image is scaled to it)
    bev_front: float = 45.0  # bird's-eye view extent ahead of the robot, m
    bev_back: float = 10.0  # extent behind, m
    bev_side: float = 25.0  # extent to each side, m
    ring_step: float = 10.0  # distance between range rings, m
    point_max_height: float = 3.0  # heights (m, LiDAR frame) mapped to the top of the point colour map
    point_min_height: float = -2.0  # heights mapped to the bottom
    camera_color_bits: int = 8  # bits kept per colour channel of the camera photo (5 makes PNGs ~45% smaller)
    camera_label_min_px: int = 30  # camera view: boxes lower than this (pixels, after scaling) get no text, against clutter


def label_color(label: str) -> Tuple[float, float, float]:
    """Stable colour for a label: r,g,b in [0,1], bright and saturated, same in every run and process."""
    hue = (zlib.crc32(label.encode("utf-8")) % 360) / 2.0  # OpenCV hue range is 0..180
    hsv = np.array([[[hue, 200, 255]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return r / 255.0, g / 255.0, b / 255.0


def _bgr(label: str) -> Tuple[int, int, int]:
    r, g, b = label_color(label)
    return int(b * 255), int(g * 255), int(r * 255)


def _text(img: np.ndarray, text: str, org: Tuple[int, int], color, scale: float = 0.45) -> None:
    """Text with a dark outline so it stays readable on any background."""
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def object_caption(o: DetectedObject) -> str:
    """'label 0.87 #12' (a '~' marks a geometric, not camera, label)."""
    mark = "" if o.label_from_camera else "~"
    return f"{mark}{o.label} {o.score:.2f} #{o.track_id}"


def render_camera(
    image: np.ndarray, camera, objects: Sequence[DetectedObject], T_cam_lidar: np.ndarray, scale: float = 1.0,
    label_min_px: int = 0,
    color_bits: int = 8,
) -> np.ndarray:
    """(H,W,3) RGB image -> BGR copy (scaled) with projected 3D boxes and labels."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2BGR)
    if scale != 1.0:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if color_bits < 8:
        drop = 8 - max(1, color_bits)
        bgr = (bgr >> drop) << drop  # posterise the photo only (smaller PNG); boxes and text keep full colour
    T = np.asarray(T_cam_lidar, np.float64)
    for o in objects:
        pc = box_corners(o.center, o.size, o.yaw) @ T[:3, :3].T + T[:3, 3]  # (8, 3) optical frame
        if np.any(pc[:, 2] < 0.3):
            continue
        uv = camera.project(pc) * scale  # (8, 2)
        if not np.isfinite(uv).all():
            continue
        col = _bgr(o.label)
        for a, b in BOX_EDGES:
            cv2.line(bgr, tuple(np.round(uv[a]).astype(int)), tuple(np.round(uv[b]).astype(int)), col, 1, cv2.LINE_AA)
        if uv[:, 1].max() - uv[:, 1].min() < label_min_px:
            continue
        x, y = int(uv[:, 0].min()), int(uv[:, 1].min()) - 4
        _text(bgr, object_caption(o), (max(0, x), max(12, y)), col, 0.4)
    return bgr


def render_bev(
    points: Optional[np.ndarray],
    objects: Sequence[DetectedObject],
    cfg: RenderConfig,
    highlight: Iterable[int] = (),
    ground_truth: Sequence[tuple] = (),
) -> np.ndarray:
    """Bird's-eye view (x forward = up, y left = left) -> (H,W,3) BGR.

    ``ground_truth``: optional (centre (3,), size (3,), yaw, label) boxes drawn as thin grey outlines.
    """
    px_per_m = cfg.width / (2 * cfg.bev_side)
    h = int(round((cfg.bev_front + cfg.bev_back) * px_per_m))
    img = np.full((h, cfg.width, 3), 18, np.uint8)

    def to_px(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        u = (cfg.bev_side - xy[:, 1]) * px_per_m
        v = (cfg.bev_front - xy[:, 0]) * px_per_m
        return np.stack([u, v], axis=1)  # (M, 2) pixels

    origin = tuple(np.round(to_px([0.0, 0.0])[0]).astype(int))
    r = cfg.ring_step
    while r <= max(cfg.bev_front, cfg.bev_side) * 1.5:
        cv2.circle(img, origin, int(r * px_per_m), (60, 60, 60), 1, cv2.LINE_AA)
        _text(img, f"{r:g} m", (origin[0] + 3, origin[1] - int(r * px_per_m) + 12), (120, 120, 120), 0.35)
        r += cfg.ring_step
    if points is not None and len(points):
        p = np.asarray(points, np.float64)
        p = p[np.isfinite(p[:, :3]).all(axis=1)]
        uv = np.round(to_px(p[:, :2])).astype(np.int64)  # (N, 2)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < cfg.width) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        zn = (p[ok, 2] - cfg.point_min_height) / (cfg.point_max_height - cfg.point_min_height)
        lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(-1, 1), cv2.COLORMAP_VIRIDIS)[:, 0]  # (256, 3)
        img[uv[ok, 1], uv[ok, 0]] = lut[np.clip(zn * 255, 0, 255).astype(np.int64)]
    for centre, size, yaw, label in ground_truth:
        poly = to_px(box_corners(centre, size, yaw)[:4, :2])
        cv2.polylines(img, [np.round(poly).astype(np.int32)], True, (200, 200, 200), 1, cv2.LINE_AA)
    cv2.rectangle(img, (origin[0] - 4, origin[1] - 6), (origin[0] + 4, origin[1] + 6), (255, 255, 255), -1)
    hl = set(highlight)
    for o in objects:
        col = _bgr(o.label)
        poly = np.round(to_px(box_corners(o.center, o.size, o.yaw)[:4, :2])).astype(np.int32)
        cv2.polylines(img, [poly], True, col, 2 if o.track_id in hl else 1, cv2.LINE_AA)
        c = to_px(o.center[:2])[0]
        if o.track_id in hl:
            cv2.circle(img, tuple(np.round(c).astype(int)), int(max(o.size[:2]) * px_per_m) + 8, (0, 0, 255), 2, cv2.LINE_AA)
        v = np.asarray(o.velocity, np.float64)[:2]
        if np.linalg.norm(v) > 0.05:
            tip = to_px(np.asarray(o.center[:2], np.float64) + v)[0]  # arrow = 1 s of motion
            cv2.arrowedLine(img, tuple(np.round(c).astype(int)), tuple(np.round(tip).astype(int)), (255, 255, 255), 1,
                            cv2.LINE_AA, tipLength=0.3)
        _text(img, object_caption(o), (int(poly[:, 0].max()) + 3, int(poly[:, 1].min()) + 8), col, 0.35)
    return img


def render_image(
    frame: SensorFrame,
    result: FusionResult,
    T_cam_lidar: Optional[np.ndarray] = None,
    cfg: Optional[RenderConfig] = None,
    title: Optional[str] = None,
    ground_truth: Sequence[tuple] = (),
) -> np.ndarray:
    """Camera view (when available) above the bird's-eye view, with a header line -> (H,W,3) BGR."""
    cfg = cfg or RenderConfig()
    panels: List[np.ndarray] = []
    lines = [title] if title else []
    lines.append(f"t={result.stamp:.2f}s  objects={len(result.objects)}"
                 + (f"  caption: {result.caption} ({result.caption_confidence:.2f})" if result.caption else ""))
    if result.events:
        lines.append("events: " + ", ".join(f"{e.type} p={e.probability:.2f} h={e.horizon:g}s"
                                            + (f" #{e.track_id}" if e.track_id else "") for e in result.events[:4]))
    head = np.full((18 * len(lines) + 8, cfg.width, 3), 0, np.uint8)
    for i, line in enumerate(lines):
        _text(head, line, (6, 18 * (i + 1)), (230, 230, 230), 0.45)
    panels.append(head)
    if frame.image is not None and frame.camera is not None and T_cam_lidar is not None:
        scale = cfg.width / frame.image.shape[1]
        panels.append(render_camera(frame.image, frame.camera, result.objects, T_cam_lidar, scale,
                                    cfg.camera_label_min_px, cfg.camera_color_bits))
    highlight = [e.track_id for e in result.events if e.track_id]
    panels.append(render_bev(frame.lidar, result.objects, cfg, highlight, ground_truth))
    return np.vstack([p if p.shape[1] == cfg.width else cv2.resize(p, (cfg.width, p.shape[0])) for p in panels])


def render_frame(
    frame: SensorFrame,
    result: FusionResult,
    out_path,
    T_cam_lidar: Optional[np.ndarray] = None,
    cfg: Optional[RenderConfig] = None,
    title: Optional[str] = None,
    ground_truth: Sequence[tuple] = (),
) -> Path:
    """Write ``render_image`` to ``out_path`` (PNG; parent folders are created). Returns the path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img = render_image(frame, result, T_cam_lidar, cfg, title, ground_truth)
    if not cv2.imwrite(str(out), img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {out}")
    return out
