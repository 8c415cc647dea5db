"""The node's parameter table, config/mmfusion.yaml and the configs they feed agree (pure, no ROS processes)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmfusion_ros.core.sync import SyncConfig
from mmfusion_ros.ros import params as P

PKG = Path(__file__).resolve().parents[1]
YAML = PKG / "config" / "mmfusion.yaml"


def yaml_values() -> dict:
    doc = yaml.safe_load(YAML.read_text())
    assert list(doc) == ["/**/mmfusion"], "one node key, applying in any namespace"
    return P.flatten(doc["/**/mmfusion"]["ros__parameters"])


SYNC = "after a PerceptionConfig change run `python -m mmfusion_ros.ros.params --sync-yaml`"


def test_yaml_holds_exactly_the_code_defaults():
    in_yaml, in_code = yaml_values(), P.defaults()
    assert sorted(set(in_yaml) - set(in_code)) == [], f"keys in the yaml the node does not declare ({SYNC})"
    assert sorted(set(in_code) - set(in_yaml)) == [], f"declared parameters missing from the yaml ({SYNC})"
    for name, default in in_code.items():
        assert in_yaml[name] == default, f"{name} ({SYNC})"
        assert type(in_yaml[name]) is type(default), f"{name}: yaml type {type(in_yaml[name]).__name__}"


def test_defaults_validate_and_match_the_sync_and_pipeline_defaults():
    values = P.validate(P.defaults())
    cfg = SyncConfig(**P.sync_kwargs(values)).validate()
    ref = SyncConfig()
    for f in ("trigger", "rate_hz", "camera_timeout_s", "lidar_timeout_s", "audio_timeout_s", "imu_timeout_s",
              "audio_window_s", "imu_window_s", "delay_s"):
        assert getattr(cfg, f) == getattr(ref, f), f
    pipeline = pytest.importorskip("mmfusion_ros.core.pipeline")
    ref_p = pipeline.PipelineConfig()
    assert values["pipeline.top_k"] == ref_p.top_k
    assert values["pipeline.caption_every_n"] == ref_p.caption_every_n


def test_perception_group_round_trips_into_perception_config():
    perception = pytest.importorskip("mmfusion_ros.core.perception")
    values = P.validate(P.defaults())
    cfg = perception.PerceptionConfig.from_dict(P.perception_dict(values))
    assert dataclasses.asdict(cfg) == dataclasses.asdict(perception.PerceptionConfig())


def test_default_prompts_are_the_shipped_bundle_prompts():
    """The default prompts need no text encoder: each has a precomputed embedding in prompts.json."""
    prompts_mod = pytest.importorskip("mmfusion_ros.model.prompts")
    assert P.default_prompts() == [p["text"] for p in prompts_mod.default_prompts()]


@pytest.mark.parametrize("name,value,problem", [
    ("sync.rate_hz", 0.0, "out of range"),
    ("sync.rate_hz", "fast", "expected a number"),
    ("sync.trigger", "radar", "not one of"),
    ("backend.type", "cuda", "not one of"),
    ("qos.lidar.depth", 0, "out of range"),
    ("qos.imu.reliability", "sometimes", "not one of"),
    ("pipeline.top_k", 2.5, "expected an integer"),
    ("pipeline.top_k", 50, "more than the 9 prompts"),
    ("model.prompts", ["a", ""], "non-empty"),
    ("model.prompts", ["a", "a"], "duplicate"),
    ("model.dir", "/nonexistent/bundle", "not a folder"),
    ("autostart", "yes", "true or false"),
    ("sync.timeout.imu", float("nan"), "finite"),
])
def test_bad_values_name_the_parameter(name, value, problem):
    values = P.defaults()
    values[name] = value
    with pytest.raises(P.ParamError) as e:
        P.validate(values)
    assert f"parameter '{name}'" in str(e.value) and problem in str(e.value)


def test_integers_are_accepted_for_float_parameters():
    values = P.defaults()
    values["sync.rate_hz"] = 20  # a user writing `rate_hz: 20` in YAML gets an integer
    assert P.validate(values)["sync.rate_hz"] == 20.0


def test_switching_every_sensor_off_is_an_error():
    values = P.defaults()
    for name in P.INPUT_TOPICS:
        values[f"topics.{name}"] = ""
    with pytest.raises(P.ParamError, match="topics"):
        P.validate(values)


def test_model_dir_resolves_through_the_share_directory_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mmfusion_small").mkdir(parents=True)
    (tmp_path / "models" / "mmfusion_small" / "manifest.json").write_text("{}")  # a decoy in the cwd
    try:
        found = P.default_model_dir()
    except FileNotFoundError as e:
        assert "model.dir" in str(e)
        return
    assert tmp_path not in found.parents
    assert P.resolve_model_dir(str(tmp_path)) == tmp_path.resolve()
    assert P.engine_cache_dir("") == Path.home() / ".cache" / "mmfusion_ros" / "engines"


@pytest.mark.ros
def test_params_file_applies_under_any_namespace(tmp_path):
    """rclpy reads config/mmfusion.yaml (flow mappings, lists, the /** key) for a node in a namespace."""
    script = tmp_path / "read.py"
    script.write_text(
        "import sys, rclpy\n"
        "from mmfusion_ros.ros.fusion_node import FusionNode\n"
        "rclpy.init(args=sys.argv)\n"
        "n = FusionNode()\n"
        "print(n.get_fully_qualified_name(), n.get_parameter('qos.imu.depth').value,\n"
        "      n.get_parameter('sync.timeout.imu').value, len(n.get_parameter('model.prompts').value),\n"
        "      n.get_parameter('pipeline.top_k').value)\n"
        "n.destroy_node(); rclpy.shutdown()\n")
    env = dict(os.environ, PYTHONPATH=str(PKG) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(script), "--ros-args", "-r", "__ns:=/robot7", "--params-file", str(YAML),
         "-p", "pipeline.top_k:=3"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["/robot7/mmfusion", "10", "0.25", "9", "3"]


def test_sync_yaml_rewrites_only_the_perception_group(tmp_path):
    pytest.importorskip("mmfusion_ros.core.perception")
    copy = tmp_path / "mmfusion.yaml"
    text = YAML.read_text()
    copy.write_text(text.replace("      voxel_size:", "      voxel_size: 123.0 #", 1))
    assert P.sync_yaml_perception(copy) is True
    assert P.flatten(yaml.safe_load(copy.read_text())["/**/mmfusion"]["ros__parameters"]) == P.defaults()
    before, after = text.split("\n    perception:")[0], copy.read_text().split("\n    perception:")[0]
    assert before == after  # everything above the group untouched
    assert copy.read_text().rstrip().endswith(text.rstrip().splitlines()[-1])  # and the keys after it
