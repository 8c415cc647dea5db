"""Shared test setup: ROS isolation, markers, and the paths tests need.

Every test session gets its own ROS_DOMAIN_ID and localhost-only discovery, so parallel test runs
(and other developers' nodes) on the same machine never see each other's topics.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MMFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(10, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
if "VIRTUAL_ENV" in os.environ:
    os.environ.setdefault("AMENT_PREFIX_PATH", os.environ["VIRTUAL_ENV"])
else:
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def pytest_configure(config):
    config.addinivalue_line("markers", "ros: starts rclpy or ROS processes")
    config.addinivalue_line("markers", "slow: takes more than about 10 s")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped elsewhere)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real recorded samples); tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sensor samples not found at {SHARED_DATA} (set MMFUSION_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kitti_dir(shared_data) -> Path:
    """The real KITTI frame 000134 (camera, LiDAR, calibration, labels) in ../shared/data."""
    d = shared_data / "kitti_000134"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """A small randomly initialised model bundle (checkpoint + ONNX parts + manifest), made once.

    Tests of the node, runtime and pipeline use it so none of them depends on model accuracy.
    """
    from mmfusion_ros.model.bundle import write_random_bundle

    out = tmp_path_factory.mktemp("random_model")
    write_random_bundle(out, seed=0)
    return out


@pytest.fixture(scope="module")
def ros_context():
    """One rclpy context per test module that talks to node processes (its own, so modules don't share state)."""
    import rclpy

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


TINY_CLIP_ARCH = "mmf-tiny-clip"
TINY_CLIP_CONFIG = {  # an OpenCLIP architecture small enough to import in seconds (random weights, seed 0)
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class TinyTowers:
    """What `tiny_tower_bundle` made: the bundle and what it was imported from (to import it again)."""

    bundle: Path  # the tower bundle (`mmfusion towers import` output; towers.bound == [])
    checkpoint: Path  # the open_clip checkpoint ({"state_dict": ...}) passed as --pretrained
    arch: str  # the architecture name, passed as --open-clip
    config_file: Path  # the open_clip model-config JSON (named <arch>.json), passed as --config
    config: dict  # that JSON's contents
    embed_dim: int  # the towers' shared width (the bundle's embed_dim)


@pytest.fixture(scope="session")
def tiny_towers(tmp_path_factory) -> TinyTowers:
    """A tiny randomly initialised OpenCLIP model imported as a tower bundle, made once per session (~15 s).

    Offline: the weights are a seeded open_clip model saved as a local checkpoint; the tokenizer is
    open_clip's bundled BPE vocabulary."""
    import json

    import torch

    from mmfusion_ros.model.open_clip_import import import_open_clip
    from mmfusion_ros.train.towers import import_towers

    d = tmp_path_factory.mktemp("tiny_towers")
    cfg_file = d / f"{TINY_CLIP_ARCH}.json"
    cfg_file.write_text(json.dumps(TINY_CLIP_CONFIG))
    oc = import_open_clip()
    oc.add_model_config(cfg_file)
    torch.manual_seed(0)
    model = oc.create_model(TINY_CLIP_ARCH)
    ckpt = d / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    bundle = d / "bundle"
    import_towers(TINY_CLIP_ARCH, str(ckpt), bundle, config=cfg_file)
    return TinyTowers(bundle=bundle, checkpoint=ckpt, arch=TINY_CLIP_ARCH, config_file=cfg_file,
                      config=dict(TINY_CLIP_CONFIG), embed_dim=TINY_CLIP_CONFIG["embed_dim"])


@pytest.fixture(scope="session")
def tiny_tower_bundle(tiny_towers) -> Path:
    """The tiny tower bundle's folder (see `tiny_towers` for its checkpoint, arch and config)."""
    return tiny_towers.bundle
