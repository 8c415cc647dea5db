"""~/set_prompts off the hot path, with the node as its own process (as test_node.py drives it): requests are
bounded by prompts.max_count / prompts.max_length, a large one is embedded on a worker thread while
perception and /diagnostics keep coming, and the new prompt set is swapped in whole."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from mmfusion_msgs.srv import SetPrompts  # noqa: E402
from test_node import Harness, kv, start_node, stamp, stop_node  # noqa: E402 - the node tests' DDS harness

pytestmark = [pytest.mark.ros, pytest.mark.slow]
#: prompts in the large request: each needs the text encoder (none is in the bundle's prompts.json)
N_LARGE = 3000
MAX_COUNT = 5000


def _text_encoder_present() -> bool:
    return (Path.home() / ".cache" / "mmfusion_ros" / "text_encoder" / "text_encoder.onnx").is_file()


@pytest.fixture(scope="module")
def h(ros_context, random_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("prompts") / "fusion_node.log"
    proc = start_node(random_model_dir, "-p", "sync.trigger:=camera", "-p", "diagnostics.period_s:=0.2",
                      "-p", f"prompts.max_count:={MAX_COUNT}", "-p", "perception.enabled:=false", log_path=log)
    harness = Harness(ros_context)
    try:
        harness.spin_until(lambda: len(harness.perception) >= 3 or proc.poll() is not None, 40, "first frames")
    except AssertionError:
        stop_node(proc)
        raise AssertionError("node produced no output; its log:\n" + log.read_text()[-3000:])
    harness.log = log
    yield harness
    stop_node(proc)
    harness.node.destroy_node()


@pytest.mark.parametrize("prompts,problem", [
    ([f"thing {i}" for i in range(MAX_COUNT + 1)], "prompts.max_count"),
    (["a chair", "x" * 201], "prompts.max_length"),
    (["a chair", "a chair"], "duplicate"),
])
def test_requests_beyond_the_bounds_are_refused_with_the_parameter_named(h, prompts, problem):
    client = h.node.create_client(SetPrompts, "mmfusion/set_prompts")
    res = h.call(client, SetPrompts.Request(prompts=prompts))
    assert not res.success and problem in res.message, res.message


def test_a_large_request_is_embedded_while_perception_and_diagnostics_continue(h):
    if not _text_encoder_present():
        pytest.skip("no text encoder in ~/.cache/mmfusion_ros/text_encoder (mmfusion export --text-encoder)")
    client = h.node.create_client(SetPrompts, "mmfusion/set_prompts")
    assert client.wait_for_service(timeout_sec=10)
    prompts = [f"object number {i} standing next to the robot on a wide street" for i in range(N_LARGE)]
    n_per, n_diag = len(h.perception), len(h.diagnostics)
    arrivals, diag_arrivals = [], []
    t_sent = time.monotonic()
    future = client.call_async(SetPrompts.Request(prompts=prompts))
    deadline = t_sent + 120
    while not future.done() and time.monotonic() < deadline:
        h.pump()
        h.executor.spin_once(timeout_sec=0.005)
        now = time.monotonic()
        if len(h.perception) > n_per:
            arrivals += [now] * (len(h.perception) - n_per)
            n_per = len(h.perception)
        if len(h.diagnostics) > n_diag:
            diag_arrivals += [now] * (len(h.diagnostics) - n_diag)
            n_diag = len(h.diagnostics)
    took = time.monotonic() - t_sent
    assert future.done(), f"no reply in {took:.0f} s; node log:\n{h.log.read_text()[-2000:]}"
    res = future.result()
    assert res.success, res.message
    assert took > 0.5, f"embedding {N_LARGE} prompts took only {took:.2f} s: too fast to show anything"
    # outputs kept coming while the request was being embedded: no gap near the embedding time
    for name, times in (("perception", arrivals), ("/diagnostics", diag_arrivals)):
        gaps = [b - a for a, b in zip([t_sent] + times, times)]
        assert len(times) >= 2 and max(gaps) < max(1.5, 0.3 * took), (
            f"{name}: {len(times)} messages during a {took:.1f} s request, longest gap {max(gaps, default=took):.2f} s")
    seen_embedding = [kv(s).get("prompts", "") for arr in h.diagnostics[-len(diag_arrivals):] for s in arr.status
                      if s.name == "mmfusion: pipeline"]
    assert any(v.startswith(f"embedding {N_LARGE}") for v in seen_embedding), seen_embedding[-5:]
    # the swap is whole: every later frame labels from the new set only
    t = time.time()
    h.spin_until(lambda: sum(stamp(m.header) > t for m in h.perception) >= 3, 10, "frames with the new prompts")
    later = [m for m in h.perception if stamp(m.header) > t]
    assert all(ls.label in set(prompts) for m in later for ls in m.labels)
    h.spin_until(lambda: kv(h.status("mmfusion: pipeline")).get("prompts") == f"{N_LARGE} in use", 5,
                 "diagnostics saying the new prompts are in use")
