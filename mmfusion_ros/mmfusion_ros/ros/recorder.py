"""Record the fusion node's outputs from DDS into a rosbag2 (mcap) bag, as `ros2 bag record` would.

rosbag2 is not installable here, so the bag is written with rosbags' Writer. Outputs arrive as raw
CDR bytes (`raw=True` subscriptions) and go into the bag unchanged; the log time is the wall-clock
receive time, and /clock is recorded too, so latency (frame stamp on the sim clock -> reception) can
be recomputed from the bag alone. The executor spins in a background thread that also owns the writer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Dict, Optional

from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from mmfusion_ros.ros.inputs import OUTPUTS

#: output name -> ROS 2 message type (a view of the one table in ros/inputs.py)
OUTPUT_TOPICS: Dict[str, str] = {n: s.msgtype for n, s in OUTPUTS.items()}
DIAGNOSTICS_TOPIC = "/diagnostics"
CLOCK_TOPIC = "/clock"


def _msg_class(msgtype: str):
    from ..ros.replay import message_class

    return message_class(msgtype)


class OutputRecorder:
    """Subscribes to the node's outputs (its topics.* values under its namespace), /diagnostics and /clock;
    writes a bag.

    Read-only views for the caller (updated from the executor thread): `counts` per topic, `sim_time`
    (newest /clock, seconds), `pipeline` (the node's newest pipeline diagnostics as a dict) and
    `last_output_wall` (time.monotonic() of the newest output message).
    """

    def __init__(self, bag: Path, namespace: str = "", node_name: str = "mmfusion_demo_recorder",
                 extra_topics: Optional[Dict[str, str]] = None, topics: Optional[Dict[str, str]] = None):
        """namespace: the fusion node's; topics: {output name: topic} as the node has them (ros/inputs.py
        output_topics of its parameters; default: the defaults); extra_topics: {topic: msgtype} recorded
        as well (e.g. the simulator's ground truth)."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosgraph_msgs.msg import Clock

        from ..ros.bag_io import typestore

        self.bag = Path(bag)
        self.node = rclpy.create_node(node_name)
        self.counts: Dict[str, int] = {}
        self.sim_time: Optional[float] = None
        self.pipeline: Dict[str, str] = {}
        self.last_output_wall: Optional[float] = None
        self._writer = Writer(self.bag, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._lock = threading.Lock()
        self._closed = False
        store = typestore()
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self._subs = []
        if topics is None:
            topics = {n: s.topic for n, s in OUTPUTS.items()}
        for name, rel in topics.items():
            msgtype = OUTPUT_TOPICS[name]
            topic = rel if rel.startswith("/") else f"{ns}/{rel}"
            conn = self._writer.add_connection(topic, msgtype, typestore=store)
            self.counts[topic] = 0
            self._subs.append(self.node.create_subscription(
                _msg_class(msgtype), topic, self._raw_callback(topic, conn, output=True), reliable, raw=True))
        for topic, msgtype in (extra_topics or {}).items():
            topic = "/" + topic.lstrip("/")
            conn = self._writer.add_connection(topic, msgtype, typestore=store)
            self.counts[topic] = 0
            self._subs.append(self.node.create_subscription(
                _msg_class(msgtype), topic, self._raw_callback(topic, conn, output=False), reliable, raw=True))
        self._extra = set("/" + t.lstrip("/") for t in (extra_topics or {}))
        from rclpy.serialization import serialize_message

        self._serialize = serialize_message
        diag_conn = self._writer.add_connection(DIAGNOSTICS_TOPIC, "diagnostic_msgs/msg/DiagnosticArray", typestore=store)
        clock_conn = self._writer.add_connection(CLOCK_TOPIC, "rosgraph_msgs/msg/Clock", typestore=store)
        self.counts[DIAGNOSTICS_TOPIC] = self.counts[CLOCK_TOPIC] = 0
        self._subs.append(self.node.create_subscription(
            DiagnosticArray, DIAGNOSTICS_TOPIC, lambda m: self._on_diagnostics(m, diag_conn), reliable))
        # best effort matches both kinds of /clock publisher; a lost tick only thins the offset estimate
        self._subs.append(self.node.create_subscription(
            Clock, CLOCK_TOPIC, lambda m: self._on_clock(m, clock_conn), best_effort))
        self._executor = SingleThreadedExecutor(context=self.node.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="demo-recorder", daemon=True)
        self._thread.start()

    # ---- callbacks (executor thread) ---------------------------------------------------------------
    def _write(self, topic: str, conn, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            self._writer.write(conn, time.time_ns(), data)
            self.counts[topic] += 1

    def _raw_callback(self, topic: str, conn, output: bool):
        def cb(data: bytes) -> None:
            self._write(topic, conn, data)
            if output:
                self.last_output_wall = time.monotonic()

        return cb

    def _on_diagnostics(self, msg, conn) -> None:
        self._write(DIAGNOSTICS_TOPIC, conn, self._serialize(msg))
        for st in msg.status:
            if st.name.endswith(": pipeline"):
                self.pipeline = {kv.key: kv.value for kv in st.values}
                self.pipeline["_message"] = st.message

    def _on_clock(self, msg, conn) -> None:
        self._write(CLOCK_TOPIC, conn, self._serialize(msg))
        self.sim_time = msg.clock.sec + msg.clock.nanosec * 1e-9

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while not self._closed and self.node.context.ok():
                self._executor.spin_once(timeout_sec=0.1)
        except (ExternalShutdownException, KeyboardInterrupt):
            pass

    # ---- caller --------------------------------------------------------------------------------------
    @property
    def outputs(self) -> int:
        """Output messages (perception, caption, events, markers) recorded so far."""
        return sum(n for t, n in self.counts.items() if t not in (DIAGNOSTICS_TOPIC, CLOCK_TOPIC) and t not in self._extra)

    def count(self, name: str) -> int:
        return sum(n for t, n in self.counts.items() if t.endswith("/" + name))

    def publishers(self, name: str) -> int:
        """Publishers on the recorded output topic `name` (e.g. 'perception')."""
        topic = next(t for t in self.counts if t.endswith("/" + name))
        return self.node.count_publishers(topic)

    def close(self) -> None:
        """Stop spinning and finish the bag (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._thread.join(timeout=5.0)
        with self._lock:
            self._writer.close()
        self._executor.remove_node(self.node)
        self.node.destroy_node()


def init_without_signal_handlers() -> None:
    """rclpy.init for a program that owns child processes: Ctrl-C must raise KeyboardInterrupt in it
    (so it can stop its children) instead of being taken by rclpy's signal handlers."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)


def shutdown() -> None:
    """rclpy.shutdown if the context is still up (safe to call twice)."""
    import rclpy

    if rclpy.ok():
        rclpy.shutdown()
