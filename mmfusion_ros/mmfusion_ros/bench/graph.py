"""The ROS graph under load: the fusion node as its own process, sensor traffic at 1x, 2x, 4x ... the
nominal rates, end-to-end latency and drops measured by a subscriber on the same machine.

Method (as ros2_benchmark does it): a simulator bag (`mmfusion sim`, scenario street_mix: camera
640x480 at 15 Hz, 32-beam LiDAR at 10 Hz, IMU 200 Hz, audio 50 frames/s) is replayed by ros/replay.py
at a multiple of its recorded rate, with /clock, into a fresh node running on sim time; a child process
records each LiDAR sweep's arrival and each FusedPerception. The node fuses on each sweep
(sync.trigger=lidar, 10 Hz at 1x), so a frame's stamp is its sweep's stamp: latency = FusedPerception
arrival - that sweep's arrival (sensor -> output on this machine's clock), and drops = sweeps in the
window without a FusedPerception. The node's peak RSS is sampled with psutil. Children get a private
ROS_DOMAIN_ID and localhost discovery, so nothing else on the machine hears them.

Where the simulator's bag writer is missing (or MMFUSION_BENCH_GRAPH_SOURCE=synthetic) a built-in load
generator publishes a fixed synthetic scene at exactly the nominal rates (LiDAR 32,000 points), stamped
with the wall clock, into one node on wall time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..ros.inputs import INPUTS, OUTPUTS

NOMINAL_HZ = {"image": 15.0, "camera_info": 15.0, "lidar": 10.0, "imu": 200.0, "audio": 50.0}
TOPICS = {k: INPUTS[k].topic for k in NOMINAL_HZ}  # the node's default topics (ros/inputs.py)
TOPICS_ABS = {k: "/" + v for k, v in TOPICS.items()}
OUTPUT_TOPIC = OUTPUTS["perception"].topic
AUDIO_RATE = 16000
PKG_ROOT = Path(__file__).resolve().parents[2]


# --- synthetic sensor content ---------------------------------------------------------------------
def synthetic_cloud(n_beams: int = 32, n_az: int = 1000, height: float = 1.7) -> np.ndarray:
    """(n_beams * n_az, 4) x,y,z,intensity: ground rings, a 20 m wall, a 1x1x1.5 m box at (5, 2)."""
    elev = np.deg2rad(np.linspace(-15.0, 15.0, n_beams))[:, None]  # (B, 1)
    az = np.linspace(-np.pi, np.pi, n_az, endpoint=False)[None, :]  # (1, A)
    r = np.where(elev < -1e-3, height / np.tan(-np.minimum(elev, -1e-3)), 20.0)  # (B, 1)
    r = np.minimum(np.broadcast_to(r, (n_beams, n_az)), 20.0 / np.cos(elev))  # (B, A)
    box_az = np.arctan2(2.0, 5.0)
    z_at_box = 5.4 * np.tan(elev) - 0.0  # height above the sensor at the box distance
    hit = (np.abs(az - box_az) < 0.09) & (z_at_box > -height) & (z_at_box < -height + 1.5)
    r = np.where(hit, 5.4 / np.cos(az - box_az), r)
    x = r * np.cos(elev) * np.cos(az)
    y = r * np.cos(elev) * np.sin(az)
    z = r * np.sin(elev)
    inten = np.where(hit, 0.8, 0.2) + 0.0 * x
    return np.stack([x, y, z, inten], -1).reshape(-1, 4).astype(np.float32)


def synthetic_image(w: int = 640, h: int = 480, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 64) * 4], -1)
    img = img + rng.integers(0, 20, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# --- the child process: load generator + subscriber ------------------------------------------------
def _child(factors: List[float], seconds: float, warmup: float, ready_timeout: float) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from mmfusion_msgs.msg import FusedPerception
    from mmfusion_ros.core.types import CameraIntrinsics
    from mmfusion_ros.ros import conversions as conv
    from diagnostic_msgs.msg import DiagnosticArray

    from mmfusion_ros.ros.inputs import msg_class

    rclpy.init()
    node = rclpy.create_node("mmfusion_bench_load")
    classes = {k: msg_class(INPUTS[k].msgtype) for k in TOPICS}
    # reliable keep-last publishers connect to best-effort and reliable subscriptions alike
    pub_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {k: node.create_publisher(classes[k], TOPICS[k], pub_qos) for k in TOPICS}
    msgs = {
        "image": conv.rgb_to_image(synthetic_image(), frame_id="camera"),
        "camera_info": conv.intrinsics_to_camera_info(
            CameraIntrinsics(640, 480, np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]), "camera")),
        "lidar": conv.xyzi_to_pointcloud2(synthetic_cloud(), frame_id="base_link"),
        "imu": conv.imu_to_msg(0.0, [0.0, 0.0, 9.81], [0.0, 0.0, 0.01]),
        "audio": conv.array_to_audio((0.1 * np.sin(np.arange(AUDIO_RATE // 50) * 0.3)).astype(np.float32),
                                     AUDIO_RATE),
    }
    received: List[tuple] = []  # (stamp, receive wall time)
    lock = threading.Lock()

    def on_output(msg):
        t = time.time()
        with lock:
            received.append((msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, t))

    out_qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(FusedPerception, OUTPUT_TOPIC, on_output, out_qos)
    diag: Dict[str, Dict[str, str]] = {}

    def on_diag(msg):
        with lock:
            for st in msg.status:
                diag[st.name] = {kv.key: kv.value for kv in st.values}

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, QoSProfile(depth=10))
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()

    def play(factor: float, duration: float) -> Dict[str, object]:
        """Publish every topic at factor x nominal for duration seconds; return published lidar stamps."""
        t0 = time.time()
        heap = [(t0 + i * 1e-4, k) for i, k in enumerate(TOPICS)]
        heapq.heapify(heap)
        counts = {k: 0 for k in TOPICS}
        lidar_stamps = []
        late = []
        while heap:
            due, k = heapq.heappop(heap)
            if due >= t0 + duration:
                continue
            now = time.time()
            if due > now:
                time.sleep(due - now)
            now = time.time()
            late.append(now - due)
            m = msgs[k]
            m.header.stamp = conv.sec_to_stamp(now)
            pubs[k].publish(m)
            counts[k] += 1
            if k == "lidar":
                lidar_stamps.append(round(now, 6))
            heapq.heappush(heap, (due + 1.0 / (NOMINAL_HZ[k] * factor), k))
        return {"counts": counts, "lidar": lidar_stamps, "elapsed": time.time() - t0,
                "late_p99_ms": float(np.percentile(late, 99) * 1e3) if late else 0.0}

    # wait until the node is up and answering
    t_end = time.time() + ready_timeout
    ready = False
    while time.time() < t_end and not ready:
        play(1.0, 1.0)
        with lock:
            ready = len(received) > 0
    if not ready:
        print(json.dumps({"error": f"the fusion node published nothing within {ready_timeout:.0f} s"}), flush=True)
        return 1
    for factor in factors:
        play(factor, warmup)
        time.sleep(0.5)
        with lock:
            received.clear()
        r = play(factor, seconds)
        time.sleep(1.2)  # outputs still in flight, and one more /diagnostics period
        with lock:
            got = {round(s, 6): t for s, t in received}
            pipe = next((v for k, v in diag.items() if k.endswith("pipeline")), {})
        pub = r["lidar"]
        lat = [(got[s] - s) * 1e3 for s in pub if s in got]
        rate = {k: round(c / r["elapsed"], 1) for k, c in r["counts"].items()}
        print(json.dumps({"factor": factor, "published": len(pub), "received": len(lat), "latency_ms": lat,
                          "achieved_hz": rate, "publisher_late_p99_ms": r["late_p99_ms"], "node": pipe}),
              flush=True)
    sys.stdout.flush()
    # Leave without tearing down rclpy under the spinning executor thread (that aborts in rclcpp);
    # this process exists only to measure and its results are already printed.
    os._exit(0)


def _child_bag(bag: str, factor: float, warmup: float, ready_timeout: float) -> int:
    """Replay a simulator bag (ros/replay.py, with /clock) into the node at ``factor`` x its recorded rate.

    The node runs on sim time, so stamps are bag times; each sweep's stamp is mapped to the wall time
    this process saw the sweep on the wire (a raw subscription: only the header is read), and latency is
    FusedPerception arrival minus that.
    """
    import struct

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    from mmfusion_msgs.msg import FusedPerception
    from mmfusion_ros.ros.replay import ReplayOptions, replay

    rclpy.init()
    node = rclpy.create_node("mmfusion_bench_replay")
    lock = threading.Lock()
    seen: Dict[float, float] = {}  # sweep stamp -> wall time it arrived here
    received: List[tuple] = []  # (stamp, wall time) of FusedPerception
    diag: Dict[str, Dict[str, str]] = {}

    def on_lidar(raw: bytes) -> None:
        t = time.time()
        little = raw[1] == 1  # CDR encapsulation: 0x0001 little-endian
        sec, nsec = struct.unpack_from("<iI" if little else ">iI", raw, 4)  # header.stamp follows it
        with lock:
            seen[round(sec + nsec * 1e-9, 6)] = t

    def on_output(msg) -> None:
        t = time.time()
        with lock:
            received.append((round(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, 6), t))

    def on_diag(msg) -> None:
        with lock:
            for st in msg.status:
                diag[st.name] = {kv.key: kv.value for kv in st.values}

    rel = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(PointCloud2, TOPICS["lidar"], on_lidar, rel, raw=True)
    node.create_subscription(FusedPerception, OUTPUT_TOPIC, on_output, rel)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, QoSProfile(depth=10))
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()

    t_end = time.time() + ready_timeout
    while time.time() < t_end:
        with lock:
            active = any(v.get("state") == "active" for k, v in diag.items() if k.endswith("pipeline"))
        if active:
            break
        time.sleep(0.1)
    else:
        print(json.dumps({"error": f"the fusion node was not active within {ready_timeout:.0f} s"}), flush=True)
        os._exit(1)
    time.sleep(1.0)  # let discovery match the replay's publishers with the node's subscriptions
    stats = replay(ReplayOptions(bag=Path(bag), rate=factor, clock=True), node)
    time.sleep(1.5)  # outputs still in flight, and one more /diagnostics period
    with lock:
        sweeps = sorted(seen)
        got = dict(received)
        pipe = next((v for k, v in diag.items() if k.endswith("pipeline")), {})
        lidar_in = next((v for k, v in diag.items() if k.endswith("lidar input")), {})
    t0 = sweeps[0] + warmup if sweeps else 0.0
    window = [s for s in sweeps if s >= t0]
    lat = [(got[s] - seen[s]) * 1e3 for s in window if s in got]
    wall = max(stats.wall_s, 1e-6)
    rate = {k: round(stats.published.get(TOPICS_ABS[k], stats.published.get(TOPICS[k], 0)) / wall, 1)
            for k in ("image", "lidar", "imu", "audio")}
    late = np.asarray(stats.lateness) * 1e3
    print(json.dumps({"factor": factor, "published": len(window), "received": len(lat), "latency_ms": lat,
                      "achieved_hz": rate, "publisher_late_p99_ms": float(np.percentile(late, 99)) if len(late) else 0.0,
                      "node": pipe, "sweeps_sent_total": len(sweeps),
                      "node_sweeps_received": int(lidar_in.get("received", -1))}), flush=True)
    if os.environ.get("MMFUSION_BENCH_DEBUG"):
        print(json.dumps({"debug_sweeps": sweeps, "debug_outputs": sorted(got), "diag": diag}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # see _child: no rclpy teardown under the spinning executor


# --- where a node tick's time goes ----------------------------------------------------------------
def stage_profile(model_dir: Path, iters: int) -> Dict[str, List[float]]:
    """Run the node's pipeline (ONNX Runtime, perception on, default settings) in this process on the
    load generator's frame: per-stage ms of each tick. Explains the graph numbers without ROS in the way."""
    from ..core.types import CameraIntrinsics, SensorFrame
    from ..ros.pipeline_factory import open_pipeline

    # the node's assembly; threads left to ONNX Runtime and no camera labels, as this profile always ran
    pipe = open_pipeline(model_dir, {"backend.type": "onnxruntime", "backend.intra_op_threads": 0}, T_cam_lidar=None)
    backend = pipe.backend
    intr = CameraIntrinsics(640, 480, np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]), "camera")
    image, cloud = synthetic_image(), synthetic_cloud()
    audio = (0.1 * np.sin(np.arange(AUDIO_RATE) * 0.3)).astype(np.float32)
    imu = np.tile(np.array([0, 0, 9.81, 0, 0, 0.01], np.float32), (400, 1))
    stages: Dict[str, List[float]] = {}
    for i in range(iters + 3):
        frame = SensorFrame(stamp=100.0 + 0.1 * i, image=image, camera=intr, lidar=cloud, audio=audio,
                            audio_rate=AUDIO_RATE, imu=imu)
        ms = pipe.process(frame).timings_ms
        if i >= 3:  # warm-up ticks
            for k, v in ms.items():
                if not k.startswith("encode_") and k != "caption_reused":
                    stages.setdefault(k, []).append(v)
    backend.close()
    return stages


# --- the parent: node process, RSS sampling, report --------------------------------------------------
def _rss_sampler(pid: int, stop: threading.Event, peak: list) -> None:
    import psutil

    try:
        p = psutil.Process(pid)
        while not stop.is_set():
            rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
            peak[0] = max(peak[0], rss)
            stop.wait(0.1)
    except psutil.Error:
        pass


#: node parameters of the extra "reliable inputs" run (the large messages: camera image and LiDAR sweep)
RELIABLE_INPUTS = ["qos.lidar.reliability:=reliable", "qos.image.reliability:=reliable"]
SHORT_DELAY = ["sync.delay_s:=0.02"]
#: ... and of the "input depth 5" run: a sweep or image that arrives while the executor is still busy with the
#: previous one waits in a queue of 5 instead of replacing it (tells executor starvation from transport loss)
DEEP_QUEUES = ["qos.lidar.depth:=5", "qos.image.depth:=5"]


def _start_node(model_dir: Path, env: dict, log_path: Path, sim_time: bool,
                extra: Optional[List[str]] = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmfusion_ros.ros.fusion_node", "--ros-args",
           "-p", f"model.dir:={model_dir}", "-p", "backend.type:=onnxruntime", "-p", "sync.trigger:=lidar",
           "-p", f"use_sim_time:={'true' if sim_time else 'false'}", "--log-level", "warn"]
    for p in extra or []:
        cmd += ["-p", p]
    return subprocess.Popen(cmd, env=env, stdout=open(log_path, "a"), stderr=subprocess.STDOUT)


def _stop_node(node: subprocess.Popen) -> None:
    node.send_signal(signal.SIGINT)
    try:
        node.wait(timeout=15)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait()


def _run_child(args: List[str], env: dict, timeout: float) -> List[dict]:
    """Run the load-generating child; its JSON lines, or RuntimeError with why it failed."""
    cmd = [sys.executable, "-m", "mmfusion_ros.bench.graph", "--child", *args]
    try:
        cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError("load generator timed out") from None
    out = [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]
    errors = [d["error"] for d in out if "error" in d]
    if errors:
        raise RuntimeError(errors[0])
    if cp.returncode != 0:
        raise RuntimeError(f"load generator exited {cp.returncode}: {cp.stderr[-500:]}")
    return out


def _sim_bag(out: Path, seconds: float) -> Optional[Path]:
    """A street_mix scenario bag from the simulator (None when the simulator's bag writer is absent)."""
    try:
        from ..commands.sim import write_bag
        from ..sim.scenarios import make_scenario
    except ImportError:
        return None
    write_bag(make_scenario("street_mix", seconds, 0), out, seed=0)
    return out


def run(quick: bool) -> List[dict]:
    from . import bench_model_dir, fmt, model_label, pct, section

    factors = [1.0, 2.0] if quick else [1.0, 2.0, 4.0, 8.0]
    seconds, warmup = (5.0, 1.0) if quick else (10.0, 2.0)
    model_dir = bench_model_dir()
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.Random(os.getpid() ^ int(time.time())).randint(120, 220))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["PYTHONPATH"] = str(PKG_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("AMENT_PREFIX_PATH", os.environ.get("VIRTUAL_ENV", sys.prefix))
    logdir = Path(tempfile.mkdtemp(prefix="mmfusion_bench_graph_"))
    env["ROS_LOG_DIR"] = str(logdir)
    log_path = logdir / "node.log"
    source = os.environ.get("MMFUSION_BENCH_GRAPH_SOURCE", "bag")
    bag = _sim_bag(logdir / "bag", seconds + warmup) if source == "bag" else None
    peak = [0]
    results: List[dict] = []
    try:
        if bag is not None:
            # a fresh node per rate: it runs on the bag's /clock, which restarts with every replay
            # plus, in a full run, 1x again with reliable QoS on the two large inputs (what it changes)
            # and 1x with a shorter sync delay (the latency it buys)
            variants = [(1.0, RELIABLE_INPUTS, "reliable inputs"), (1.0, DEEP_QUEUES, "input depth 5"),
                        (1.0, SHORT_DELAY, "sync.delay_s 0.02")]
            with_variants = not quick or os.environ.get("MMFUSION_BENCH_GRAPH_VARIANTS") == "1"
            runs = [(f, None, "") for f in factors] + (variants if with_variants else [])
            for f, extra, label in runs:
                node = _start_node(model_dir, env, log_path, sim_time=True, extra=extra)
                stop = threading.Event()
                threading.Thread(target=_rss_sampler, args=(node.pid, stop, peak), daemon=True).start()
                try:
                    out = _run_child(["--bag", str(bag), "--factors", str(f), "--warmup", str(warmup)], env,
                                     timeout=120 + (seconds + warmup) / f + 10)
                    for d in out:
                        d["variant"] = label
                    results += out
                finally:
                    stop.set()
                    _stop_node(node)
        else:
            node = _start_node(model_dir, env, log_path, sim_time=False)
            stop = threading.Event()
            threading.Thread(target=_rss_sampler, args=(node.pid, stop, peak), daemon=True).start()
            try:
                results = _run_child(["--factors", *[str(f) for f in factors], "--seconds", str(seconds),
                                      "--warmup", str(warmup)], env,
                                     timeout=120 + len(factors) * (seconds + warmup + 3))
            finally:
                stop.set()
                _stop_node(node)
    except RuntimeError as e:
        tail = log_path.read_text()[-1500:] if log_path.is_file() else ""
        raise RuntimeError(f"{e}; node log tail:\n{tail}") from None
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    rows = []
    best = None
    for d in results:
        drop = 1.0 - d["received"] / max(d["published"], 1)
        if drop < 0.05 and not d.get("variant"):
            best = max(best or 0.0, d["factor"])
        hz = d["achieved_hz"]
        rows.append([f"{d['factor']:g}x" + (f" ({d['variant']})" if d.get("variant") else ""), f"{10 * d['factor']:g}",
                     f"cam {hz['image']}, lidar {hz['lidar']}, imu {hz['imu']}, audio {hz['audio']}",
                     d["published"], d["received"], f"{100 * drop:.1f}%",
                     (f"{d['node_sweeps_received']}/{d['sweeps_sent_total']}" if d.get("node_sweeps_received", -1) >= 0
                      else "n/a"),
                     fmt(pct(d["latency_ms"], 50), 1), fmt(pct(d["latency_ms"], 99), 1)])
    nominal = results[0] if results else None
    verdict = ""
    if nominal:
        p99 = pct(nominal["latency_ms"], 99)
        drop1 = 1.0 - nominal["received"] / max(nominal["published"], 1)
        verdict = (f" At 1x (nominal): p99 {fmt(p99, 1)} ms (target <= 100: {'met' if p99 <= 100 else 'MISSED'}), "
                   f"drops {100 * drop1:.1f}% (target < 1%: {'met' if drop1 < 0.01 else 'MISSED'}).")
    rss_mb = peak[0] / 2**20
    how = ("a simulator bag (street_mix, mmfusion sim) replayed by ros/replay.py with /clock, a fresh node on "
           "sim time per rate" if bag is not None else
           "the synthetic load generator of bench/graph.py (simulator bag writer not available)")
    notes = (f"Model: {model_label(model_dir)}; node backend onnxruntime, fusion on each LiDAR sweep. Input: {how}. "
             f"{seconds:g} s measured per rate after {warmup:g} s warm-up. Highest input rate with under 5% "
             f"drops: {f'{best:g}x' if best else 'none of those tried'}. Node peak RSS {rss_mb:.0f} MB "
             f"(target <= 700 MB: {'met' if rss_mb <= 700 else 'MISSED'}).{verdict} The load generator shares "
             f"the CPU with the node; 'offered Hz' is what it achieved (below the asked rate means the "
             f"machine, not the node, was saturated). 'Sweeps the node received' is the node's own /diagnostics "
             f"count: a sweep sent but not received never reached its LiDAR callback, so it cannot be fused. "
             f"The '(reliable inputs)' row reruns 1x with node parameters {' '.join(RELIABLE_INPUTS)} "
             f"(default: best_effort), which shows whether those losses happen in transport; the '(input depth 5)' row reruns 1x "
             f"with {' '.join(DEEP_QUEUES)}, which shows whether they happen because the executor was busy; the "
             f"'(sync.delay_s 0.02)' row reruns 1x with frames waiting 20 ms instead of 50 ms for late audio/IMU "
             f"messages, which is most of the latency left.")
    node_info = results[-1].get("node", {}) if results else {}
    if node_info:
        notes += (f" Node's own /diagnostics at the last rate: inference p50 {node_info.get('inference_ms_p50')} ms, "
                  f"p99 {node_info.get('inference_ms_p99')} ms, frames skipped {node_info.get('frames_skipped')}, "
                  f"torch loaded: {node_info.get('torch_loaded', 'n/a')}.")
    prof = stage_profile(model_dir, 15 if quick else 40)
    order = ["preprocess", "encode", "fuse", "labels", "caption", "events", "perception", "inference", "total"]
    prof_rows = [[k, fmt(pct(prof[k], 50)), fmt(pct(prof[k], 99))] for k in order if k in prof]
    sections = [section("ROS graph under load (fusion node process, sensor stamp -> FusedPerception received)",
                    ["input rate", "fusion Hz asked", "offered Hz", "sweeps sent", "fused frames", "dropped",
                     "sweeps the node received (whole replay)",
                     "e2e p50 ms", "e2e p99 ms"], rows, notes)]
    sections.append(section(
        "Node tick profile (the node's pipeline in-process on the same frame, ONNX Runtime)",
        ["stage", "p50 ms", "p99 ms"], prof_rows,
        "Default pipeline settings as the node uses them (caption every 5th frame, so its p50 is 0 and its "
        "p99 is one decode; perception = LiDAR clustering + camera labelling of 32k points). 'total' is the "
        "tick the node pays per fused frame before publishing; 'inference' is the model part of it."))
    return sections


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="load generator child of bench/graph.py")
    p.add_argument("--child", action="store_true")
    p.add_argument("--factors", type=float, nargs="+", default=[1.0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--ready-timeout", type=float, default=90.0)
    p.add_argument("--bag", default=None, help="replay this bag (one factor) instead of the synthetic load")
    a = p.parse_args(argv)
    if a.bag:
        return _child_bag(a.bag, a.factors[0], a.warmup, a.ready_timeout)
    return _child(a.factors, a.seconds, a.warmup, a.ready_timeout)


if __name__ == "__main__":
    sys.exit(main())
