"""Real-data acceptance on the KITTI frame in ../shared/data: recall and 2D IoU through ROS messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion_ros.commands import eval_kitti
from mmfusion_ros.core.perception import Perception


def test_calibration_reproduces_p2(kitti_dir):
    frame = eval_kitti.load_frame(kitti_dir)
    calib = eval_kitti.parse_calib((kitti_dir / "000134_calib.txt").read_text())
    P2 = calib["P2"].reshape(3, 4)
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3, :] = calib["Tr_velo_to_cam"].reshape(3, 4)
    pts = np.column_stack([frame.points[:500, :3], np.ones(500)])  # (500, 4) homogeneous
    ref = (P2 @ R0 @ Tr @ pts.T).T
    ours = (frame.K @ (frame.T_cam_lidar @ pts.T)[:3]).T
    assert np.allclose(ref[:, :2] / ref[:, 2:], ours[:, :2] / ours[:, 2:], atol=1e-6)
    # label centres land inside their own 2D boxes
    for lab in frame.labels:
        if lab.center_lidar is None:
            continue
        c = frame.T_cam_lidar @ np.append(lab.center_lidar, 1.0)
        u, v = (frame.K @ c[:3])[:2] / c[2]
        assert lab.box2d[0] - 2 <= u <= lab.box2d[2] + 2 and lab.box2d[1] - 2 <= v <= lab.box2d[3] + 2


def test_kitti_frame_meets_recall_and_iou(kitti_dir):
    frame = eval_kitti.load_frame(kitti_dir)
    image, camera, points = eval_kitti.through_messages(frame)
    assert image.shape == frame.image.shape and np.array_equal(image, frame.image)
    assert len(points) == len(frame.points)
    objs = Perception().process(points, 0.0, image, camera, frame.T_cam_lidar)
    m = eval_kitti.evaluate(frame.labels, objs)
    assert m["labelled"] == 15  # 17 labels, 2 DontCare, all others within 40 m
    assert m["recall"] >= 0.8, m["missed_objects"]
    assert m["iou_pass_rate"] >= 0.7, m["matched_objects"]


def test_eval_kitti_command(kitti_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = eval_kitti.run(eval_kitti.build_args([str(kitti_dir), "--json", str(out), "--render", str(tmp_path)]))
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "overall" in text and "PASS" in text
    doc = json.loads(out.read_text())
    assert doc["overall"]["passed"] and doc["frames"][0]["frame"] == "000134"
    assert doc["frames"][0]["unmatched_clusters"] == len(doc["frames"][0]["unmatched"])
    png = tmp_path / "kitti_000134.png"
    assert png.is_file() and png.stat().st_size < 400_000


def test_bad_frame_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "1.bin").write_bytes(np.zeros(6, np.float32).tobytes())
    rc = eval_kitti.run(eval_kitti.build_args([str(tmp_path)]))
    assert rc == 2 and "missing" in capsys.readouterr().err


def test_camera_labels_from_a_model_bundle(kitti_dir, random_model_dir):
    frame = eval_kitti.load_frame(kitti_dir)
    image, camera, points = eval_kitti.through_messages(frame)
    embed_crops, prompt_emb, prompts = eval_kitti._camera_labeller(str(random_model_dir), "onnxruntime")
    objs = Perception().process(points, 0.0, image, camera, frame.T_cam_lidar, embed_crops, prompt_emb, prompts)
    in_view = [o for o in objs if o.box2d is not None]
    assert len(in_view) >= 12
    assert all(o.label_from_camera and o.label in prompts and 0 < o.score <= 1 for o in in_view)
    assert all(not o.label_from_camera for o in objs if o.box2d is None)
