"""Build the whole report folder from a scenario bag and a recording of the node's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from .data import read_outputs, read_scenario
from .summary import compute_summary, write_summary
from .timeline import write_timeline
from .video import VideoConfig, write_contact_sheet, write_video

#: report files, relative to the report folder
VIDEO, SHEET, TIMELINE = "demo.mp4", "contact_sheet.png", "timeline.png"


def build_report(scenario_bag: Path, outputs_bag: Path, out_dir: Path, rate_hz: float,
                 T_cam_lidar: Optional[np.ndarray] = None, info: Optional[Dict[str, Any]] = None,
                 video: Optional[VideoConfig] = None,
                 progress: Optional[Callable[[int], Callable[[int], None]]] = None,
                 with_video: bool = True) -> Dict[str, Any]:
    """Write demo.mp4, contact_sheet.png, timeline.png, summary.md and summary.json; return the summary.

    with_video=False leaves out the two pictures made from every frame (mp4, contact sheet).
    progress(total) -> update(n): an optional progress-bar factory for the video frames.
    T_cam_lidar: (4,4) LiDAR -> camera for the boxes in the camera view (default: the simulator sidecar's).
    Raises ValueError when the recording holds no fused frames (there is nothing to report).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenario = read_scenario(Path(scenario_bag))
    outputs = read_outputs(Path(outputs_bag))
    if not outputs.frames:
        raise ValueError(f"{outputs_bag}: no FusedPerception messages were recorded")
    summary = compute_summary(scenario, outputs, rate_hz, info=info)
    write_summary(out_dir, summary)
    title = f"{summary.get('scenario', '')}: events predicted by the node (blue, red = flagged) vs ground truth (grey)"
    write_timeline(out_dir / TIMELINE, scenario, outputs, title=title.strip(": "))
    if not with_video:
        return summary
    update = progress(len(outputs.frames)) if progress else None
    T = T_cam_lidar if T_cam_lidar is not None else scenario.T_cam_lidar  # else the simulator's sidecar
    pictures = write_video(out_dir / VIDEO, Path(scenario_bag), scenario, outputs, T, video, update)
    write_contact_sheet(out_dir / SHEET, pictures, video)
    return summary
