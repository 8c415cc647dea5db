"""eval-kitti label scoring: KITTI classes against the labels the pipeline gives the clusters (synthetic cases),
and the command on the real KITTI frame with the shipped model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mmfusion_ros.commands import eval_kitti
from mmfusion_ros.commands.eval_kitti import KittiLabel, evaluate, evaluate_labels, merge_labels
from mmfusion_ros.core.types import DetectedObject

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mmfusion_small"


def gt(cls: str, x: float, y: float, box2d=(100, 100, 200, 200)) -> KittiLabel:
    lab = KittiLabel(cls, np.array(box2d, np.float64), np.array([1.5, 1.8, 4.0]), np.zeros(3), 0.0)
    lab.center_lidar = None if cls == "DontCare" else np.array([x, y, 0.0])
    return lab


def obj(x: float, y: float, label: str, camera: bool = True, box2d=(100, 100, 200, 200), score=0.9) -> DetectedObject:
    return DetectedObject(center=np.array([x, y, 0.0], np.float32), size=np.array([4.0, 1.8, 1.5], np.float32), yaw=0.0,
                          label=label, score=score, label_from_camera=camera, point_count=50,
                          box2d=None if box2d is None else np.array(box2d, np.float32))


def test_mapping_names_prompts_of_the_shipped_bundle():
    prompts = {p["label"] for p in json.loads((SHIPPED / "prompts.json").read_text())["prompts"]}
    assert set(eval_kitti.EVAL_CLASSES) <= set(eval_kitti.KITTI_TO_PROMPT_LABELS)
    assert "DontCare" not in eval_kitti.KITTI_TO_PROMPT_LABELS
    for cls, ok in eval_kitti.KITTI_TO_PROMPT_LABELS.items():
        assert ok and set(ok) <= prompts, (cls, ok)


def test_labels_equal_to_the_mapped_class_score_100_percent():
    labels = [gt("Car", 10, 0), gt("Pedestrian", 12, 3), gt("Cyclist", 15, -3), gt("Cyclist", 20, 5)]
    objs = [obj(10.2, 0, "car"), obj(12, 3.1, "person"), obj(15, -3, "bicycle"), obj(20, 5, "person")]
    m = evaluate_labels(labels, objs)
    assert m["scored"] and m["overall"] == {"objects": 4, "labelled": 4, "correct": 4, "accuracy": 1.0}
    assert {c: r["accuracy"] for c, r in m["by_class"].items()} == {"Car": 1.0, "Pedestrian": 1.0, "Cyclist": 1.0}
    assert m["by_class"]["Cyclist"]["given"] == {"bicycle": 1, "person": 1}
    assert m["unmatched"]["clusters"] == 0


def test_wrong_labels_score_0_and_the_confusion_says_what_was_given():
    labels = [gt("Car", 10, 0), gt("Pedestrian", 12, 3), gt("Cyclist", 15, -3), gt("Pedestrian", 18, 6)]
    objs = [obj(10, 0, "person"), obj(12, 3, "car"), obj(15, -3, "car"), obj(18, 6, "door")]
    m = evaluate_labels(labels, objs)
    assert m["overall"]["correct"] == 0 and m["overall"]["labelled"] == 4 and m["overall"]["accuracy"] == 0.0
    assert m["by_class"]["Car"]["given"] == {"person": 1}
    assert m["by_class"]["Pedestrian"]["given"] == {"car": 1, "door": 1}
    assert m["by_class"]["Cyclist"]["accuracy"] == 0.0


def test_a_matched_object_without_a_camera_label_is_counted_not_scored():
    m = evaluate_labels([gt("Car", 10, 0), gt("Pedestrian", 12, 3)],
                        [obj(10, 0, "vehicle-sized object", camera=False, box2d=None), obj(12, 3, "person")])
    assert m["by_class"]["Car"]["objects"] == 1 and m["by_class"]["Car"]["labelled"] == 0
    assert math.isnan(m["by_class"]["Car"]["accuracy"])
    assert m["overall"] == {"objects": 2, "labelled": 1, "correct": 1, "accuracy": 1.0}


def test_unmatched_clusters_are_counted_by_label():
    labels = [gt("Car", 10, 0), gt("DontCare", 0, 0, box2d=(500, 100, 600, 200))]
    objs = [obj(10, 0, "car"),  # matched
            obj(5, 2, "car", score=0.8), obj(6, -2, "car", score=0.9), obj(7, 4, "car", score=1.0),
            obj(8, -4, "door", score=0.5),
            obj(9, 6, "wall/structure", camera=False),  # in view, geometric label only
            obj(11, 3, "car", box2d=(520, 120, 580, 180)),  # inside the DontCare box: not counted
            obj(12, -6, "car", box2d=None),  # not in the camera view: not counted
            obj(45, 0, "car")]  # beyond --max-distance: not counted
    m = evaluate_labels(labels, objs)
    u = m["unmatched"]
    assert u["clusters"] == 5 and u["labelled"] == 4 and u["no_camera_label"] == 1
    assert u["given"] == {"car": 3, "door": 1} and list(u["given"]) == ["car", "door"]
    assert u["median_score"] == {"car": 0.9, "door": 0.5}
    assert evaluate(labels, objs)["unmatched_clusters"] == u["clusters"]  # the geometry's unmatched, same set


def test_van_is_scored_as_car_and_a_truck_is_set_apart_without_changing_the_geometry():
    labels = [gt("Car", 10, 0), gt("Van", 14, 4), gt("Truck", 20, -5)]
    objs = [obj(10, 0, "car"), obj(14, 4, "car"), obj(20, -5, "car"), obj(8, 8, "car")]
    m = evaluate_labels(labels, objs)
    assert m["by_class"]["Van"] == {"objects": 1, "labelled": 1, "correct": 1, "given": {"car": 1}, "accuracy": 1.0}
    assert m["other_objects"] == {"Truck": {"car": 1}}
    assert m["unmatched"]["clusters"] == 1  # only the cluster on no labelled object
    g = evaluate(labels, objs)
    assert g["labelled"] == 1 and g["matched"] == 1 and g["unmatched_clusters"] == 3  # Car/Pedestrian/Cyclist only


def test_no_camera_label_source_is_reported_not_scored():
    m = evaluate_labels([gt("Car", 10, 0)], [obj(10, 0, "car")], unavailable="no camera image")
    assert m == {"scored": False, "reason": "no camera image"}
    assert merge_labels([m, m]) == {"scored": False, "reason": "no camera image", "frames_scored": 0,
                                    "frames_not_scored": 2}


def test_frames_merge_into_overall_counts():
    a = evaluate_labels([gt("Car", 10, 0)], [obj(10, 0, "car"), obj(5, 5, "car", score=0.6)])
    b = evaluate_labels([gt("Car", 10, 0), gt("Pedestrian", 12, 3)],
                        [obj(10, 0, "person"), obj(12, 3, "person"), obj(5, 5, "door", score=0.7)])
    m = merge_labels([a, b, {"scored": False, "reason": "no camera image"}])
    assert m["frames_scored"] == 2 and m["frames_not_scored"] == 1
    assert m["by_class"]["Car"]["labelled"] == 2 and m["by_class"]["Car"]["accuracy"] == 0.5
    assert m["by_class"]["Car"]["given"] == {"car": 1, "person": 1}
    assert m["overall"] == {"objects": 3, "labelled": 3, "correct": 2, "accuracy": 2 / 3}
    assert m["unmatched"]["given"] == {"car": 1, "door": 1} and m["unmatched"]["clusters"] == 2


def test_shipped_model_finds_the_kitti_camera_unfamiliar(kitti_dir):
    lab = eval_kitti.open_camera_labeller(str(SHIPPED), "onnxruntime")
    image, camera, _ = eval_kitti.through_messages(eval_kitti.load_frame(kitti_dir))
    reason, fam, note = lab.label_source(image, camera)
    assert "unfamiliar" in reason and fam is not None and fam < lab.familiarity.threshold and not note
    reason, fam2, note = lab.label_source(image, camera, ignore_familiarity=True)
    assert reason == "" and fam2 == fam and "scored anyway" in note
    assert lab.label_source(None, camera)[0] == "no camera image"


def test_eval_kitti_scores_labels_of_the_shipped_model(kitti_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = eval_kitti.run(eval_kitti.build_args([str(kitti_dir), "--model", str(SHIPPED), "--backend", "onnxruntime",
                                               "--json", str(out)]))
    text = capsys.readouterr().out
    assert rc == 0 and "labels not scored: camera unfamiliar" in text, text
    doc = json.loads(out.read_text())
    assert not doc["overall"]["labels"]["scored"] and "unfamiliar" in doc["overall"]["labels"]["reason"]
    # as the pipeline: an unfamiliar camera gives no crop labels, the clusters keep their geometric ones
    assert all(u["label"] not in ("car", "person", "bicycle") for u in doc["frames"][0]["unmatched"])

    rc = eval_kitti.run(eval_kitti.build_args([str(kitti_dir), "--model", str(SHIPPED), "--backend", "onnxruntime",
                                               "--ignore-familiarity", "--json", str(out)]))
    text = capsys.readouterr().out
    assert rc == 0 and "top-1" in text and "unmatched clusters in view" in text, text
    forced = json.loads(out.read_text())
    labels, frame = forced["overall"]["labels"], forced["frames"][0]
    assert labels["scored"] and "scored anyway" in frame["labels"]["note"]
    assert labels["overall"]["objects"] == frame["matched"] == 12 and labels["overall"]["labelled"] == 12
    assert sum(labels["unmatched"]["given"].values()) + labels["unmatched"]["no_camera_label"] \
        == labels["unmatched"]["clusters"] == frame["unmatched_clusters"]
    for k in ("labelled", "matched", "recall", "iou_pass", "clusters", "unmatched_clusters"):  # geometry unchanged
        assert forced["overall"][k] == doc["overall"][k], k
