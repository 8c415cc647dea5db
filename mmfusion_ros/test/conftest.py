"""Shared test setup: ROS isolation, markers, and the paths tests need.

Every test session gets its own ROS_DOMAIN_ID and localhost-only discovery, so parallel test runs
(and other developers' nodes) on the same machine never see each other's topics.
"""

from __future__ import annotations

import os
import random
import sys
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
