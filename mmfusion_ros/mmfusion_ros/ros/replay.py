"""Publish a recorded bag onto live topics with its recorded timing (``ros2 bag play`` without rosbag2).

Bags are read with the ``rosbags`` library (rosbag2 sqlite3/mcap and ROS 1 bags), so replay works on
machines with only the rclpy wheels. Messages are published as serialized CDR (``publish(bytes)``):
rosbag2 bags already hold ROS 2 CDR, ROS 1 messages are converted to it by rosbags (header ``seq`` is
dropped). Skipping the deserialize/serialize round trip keeps a 200 Hz stream on schedule; the first
message of each topic is still deserialized into its rclpy class to check that the bytes fit it.

``main()`` is the ``replay_node`` executable (ROS parameters ``bag``, ``rate``, ``loop``, ``clock``, ...);
``mmfusion replay`` (commands/replay.py) is the command-line front end. Both share :func:`replay`.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

#: conventional topic of simulated time (rosgraph_msgs/Clock)
CLOCK_TOPIC = "/clock"


class ReplayError(Exception):
    """The bag or the options cannot be replayed (unreadable bag, unknown topic...): exit code 2."""


# ------------------------------------------------------------------------------------------ remapping


def _absolute(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def parse_remaps(items: Optional[Sequence[str]]) -> Dict[str, str]:
    """``["FROM:=TO", ...]`` -> ``{"/FROM": "/TO"}``; shared by ``replay`` and ``process``.

    Bag topics are absolute, so relative names are taken from the root namespace. A malformed item
    or a topic remapped twice raises ValueError naming it.
    """
    remaps: Dict[str, str] = {}
    for item in items or []:
        src, sep, dst = item.partition(":=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst or ":=" in dst:
            raise ValueError(f"remap {item!r} is not FROM:=TO")
        for name in (src, dst):
            if any(c.isspace() for c in name) or name.endswith("/") or "//" in name:
                raise ValueError(f"remap {item!r}: {name!r} is not a valid topic name")
        src = _absolute(src)
        if src in remaps:
            raise ValueError(f"topic {src} is remapped twice ({remaps[src]} and {_absolute(dst)})")
        remaps[src] = _absolute(dst)
    return remaps


def remap_topic(topic: str, remaps: Dict[str, str]) -> str:
    """The topic name to publish a bag topic under."""
    return remaps.get(topic, topic)


# ------------------------------------------------------------------------------------------- options


@dataclass
class ReplayOptions:
    """What to replay and how; mirrors ``mmfusion replay``'s flags."""

    bag: Path  # rosbag2 folder (sqlite3 or mcap), a .mcap/.db3 file inside one, or a ROS 1 .bag file
    rate: float = 1.0  # playback speed factor (2.0 = twice as fast)
    loop: bool = False  # start over at the end, until interrupted
    start: float = 0.0  # seconds into the bag to start from
    duration: Optional[float] = None  # seconds of bag time to play from `start` (None = to the end)
    topics: Optional[List[str]] = None  # bag topics to play (None = every topic)
    remaps: Dict[str, str] = field(default_factory=dict)  # bag topic -> published topic
    clock: bool = False  # publish /clock (rosgraph_msgs/Clock) with the bag time, for use_sim_time
    clock_hz: float = 100.0  # wall-clock rate of /clock between messages (also published before each message)
    qos: str = "reliable"  # "reliable" (depth qos_depth) or "sensor" (best effort, depth 5)
    qos_depth: int = 100  # history depth of reliable publishers
    wait_subscribers: float = 0.0  # seconds to wait, before playing, until every topic has a subscriber
    late_threshold: float = 0.005  # a message published later than this after its due time counts as late
    spin_window: float = 0.001  # busy-wait this long before each due time (sleep() wakes up late)

    def validate(self) -> None:
        if not (self.rate > 0 and np.isfinite(self.rate)):
            raise ReplayError(f"--rate must be a positive number, got {self.rate}")
        if self.start < 0:
            raise ReplayError(f"--start must be >= 0, got {self.start}")
        if self.duration is not None and not self.duration > 0:
            raise ReplayError(f"--duration must be > 0, got {self.duration}")
        if self.qos not in ("reliable", "sensor"):
            raise ReplayError(f"--qos must be reliable or sensor, got {self.qos!r}")
        if self.clock and not self.clock_hz > 0:
            raise ReplayError(f"--clock-hz must be > 0, got {self.clock_hz}")


# ----------------------------------------------------------------------------------------- bag source


def message_class(msgtype: str):
    """``"sensor_msgs/msg/Imu"`` -> the rclpy class sensor_msgs.msg.Imu (ImportError/AttributeError if absent)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


@dataclass
class TopicPlan:
    """One bag topic as it will be published."""

    topic: str  # name in the bag
    out_topic: str  # name it is published under
    msgtype: str  # e.g. sensor_msgs/msg/Imu
    msg_class: type  # rclpy class
    to_cdr: Callable[[bytes], bytes]  # raw bag bytes -> ROS 2 CDR
    count: int  # messages in the bag


def _open_reader(path: Path):
    """AnyReader over a bag path, resolving a storage file to its rosbag2 folder."""
    from rosbags.highlevel import AnyReader

    from .bag_io import typestore

    if not path.exists():
        raise ReplayError(f"bag {path} does not exist")
    if path.is_file() and path.suffix in (".mcap", ".db3") and (path.parent / "metadata.yaml").is_file():
        path = path.parent
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise ReplayError(f"bag {path} is a folder without metadata.yaml (not a rosbag2 bag)")
    return AnyReader([path], default_typestore=typestore())


def _cdr_converter(reader, msgtype: str) -> Callable[[bytes], bytes]:
    """Raw bag bytes -> ROS 2 CDR: identity for rosbag2, rosbags' ROS 1 -> ROS 2 migration otherwise."""
    if reader.is2:
        return bytes
    # rosbags' own bag converter: ros1_to_cdr when the wire formats match (Header's seq is dropped),
    # a field-by-field migration when they differ
    from rosbags.convert.converter import generate_message_converter

    from .bag_io import typestore

    conv = generate_message_converter(reader.typestore, typestore(), msgtype, msgtype, {}, src_is2=False, dst_is2=True)
    return lambda raw: bytes(conv(raw))


def plan_topics(reader, opts: ReplayOptions, warn: Callable[[str], None]) -> List[TopicPlan]:
    """Which bag topics play, under which names, with which classes; unimportable types are skipped."""
    from rclpy.serialization import deserialize_message

    from .bag_io import typestore

    by_topic: Dict[str, list] = {}
    for c in reader.connections:
        by_topic.setdefault(_absolute(c.topic), []).append(c)  # rosbag2 names are absolute; some writers omit the slash
    wanted = [_absolute(t) for t in opts.topics] if opts.topics else sorted(by_topic)
    missing = [t for t in wanted if t not in by_topic]
    if missing:
        raise ReplayError(f"topic(s) {missing} not in the bag (it has {sorted(by_topic)})")
    unused = [t for t in opts.remaps if t not in by_topic]
    if unused:
        warn(f"remap(s) for {unused} match no topic in the bag")
    plans = []
    for topic in wanted:
        conns = by_topic[topic]
        msgtype = conns[0].msgtype
        try:
            cls = message_class(msgtype)
        except (ImportError, AttributeError, ValueError) as e:
            warn(f"skipping {topic}: message type {msgtype} cannot be imported ({e})")
            continue
        if not reader.is2 and msgtype not in typestore().fielddefs:
            warn(f"skipping {topic}: no ROS 2 definition of {msgtype} to convert its ROS 1 messages to")
            continue
        to_cdr = _cdr_converter(reader, msgtype)
        count = sum(c.msgcount for c in conns)
        first = next(reader.messages(connections=conns), None)
        if first is not None:  # check the bytes really are this class before publishing thousands of them
            try:
                deserialize_message(to_cdr(first[2]), cls)
            except Exception as e:  # noqa: BLE001 - rclpy and rosbags raise assorted types on bad bytes
                warn(f"skipping {topic}: its first message does not deserialize as {msgtype} ({e})")
                continue
        plans.append(TopicPlan(topic, remap_topic(topic, opts.remaps), msgtype, cls, to_cdr, count))
    return plans


# ------------------------------------------------------------------------------------------ scheduler


class Scheduler:
    """Waits until each message's due time: sleep, then busy-wait the last ``spin_window`` seconds.

    ``time.sleep`` alone wakes up late by its timer slack (~0.08 ms median measured here) and by
    however long the OS takes to reschedule us; the short spin removes the systematic part, so an
    unloaded machine publishes within microseconds of schedule. It cannot beat CPU contention: on an
    overloaded machine the process may be preempted while spinning (see bench/ros_io.py's load column).
    """

    def __init__(
        self, rate: float = 1.0, spin_window: float = 0.001, on_idle: Optional[Callable[[float], float]] = None
    ):
        self.rate = rate
        self.spin_window = spin_window
        self.on_idle = on_idle  # called with the wall time while waiting; returns the next wall time it wants
        self.wall0 = 0.0
        self.bag0 = 0.0

    def reset(self, bag_t0: float, wall_t0: Optional[float] = None) -> None:
        """Bag time ``bag_t0`` (s) is due at wall time ``wall_t0`` (perf_counter s, default now)."""
        self.bag0 = bag_t0
        self.wall0 = time.perf_counter() if wall_t0 is None else wall_t0

    def due(self, bag_t: float) -> float:
        return self.wall0 + (bag_t - self.bag0) / self.rate

    def bag_time(self, wall: float) -> float:
        return self.bag0 + (wall - self.wall0) * self.rate

    def wait(self, bag_t: float) -> float:
        """Block until ``bag_t`` is due; returns lateness in seconds (>= 0 normally, tiny negatives clipped)."""
        due = self.due(bag_t)
        while True:
            now = time.perf_counter()
            if now >= due:
                return now - due
            wake = due
            if self.on_idle is not None:
                wake = min(due, self.on_idle(now))
            remaining = wake - now
            if remaining > self.spin_window:
                time.sleep(remaining - self.spin_window)
            elif wake < due:  # an idle task is due within the spin window: spin to it
                while time.perf_counter() < wake:
                    pass
            else:
                while time.perf_counter() < due:
                    pass


# --------------------------------------------------------------------------------------------- stats


@dataclass
class ReplayStats:
    """What a replay did: per-topic counts and how late messages went out."""

    published: Dict[str, int] = field(default_factory=dict)  # out topic -> messages
    lateness: List[float] = field(default_factory=list)  # seconds, one per message
    lateness_by_topic: Dict[str, List[float]] = field(default_factory=dict)  # out topic -> seconds per message
    late_threshold: float = 0.005
    clock_published: int = 0
    loops: int = 0
    wall_s: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C / shutdown before the end
    dropped: int = 0  # ROS 1 messages that did not convert to ROS 2 (corrupt), skipped

    def record(self, topic: str, late: float) -> None:
        self.published[topic] = self.published.get(topic, 0) + 1
        self.lateness.append(late)
        self.lateness_by_topic.setdefault(topic, []).append(late)

    @property
    def late(self) -> int:
        return int(np.count_nonzero(np.asarray(self.lateness) > self.late_threshold))

    def summary(self) -> str:
        lines = [f"{'topic':<40} {'messages':>9} {'max late ms':>12}"]
        lines += [
            f"{t:<40} {n:>9} {max(self.lateness_by_topic[t]) * 1e3:>12.3f}" for t, n in sorted(self.published.items())
        ]
        if self.clock_published:
            lines.append(f"{CLOCK_TOPIC:<40} {self.clock_published:>9}")
        if self.lateness:
            lat = np.asarray(self.lateness) * 1e3
            lines.append(
                f"{sum(self.published.values())} messages in {self.wall_s:.2f} s, {self.loops} pass(es)"
                f"{' (interrupted)' if self.interrupted else ''}; "
                f"lateness p50 {np.percentile(lat, 50):.3f} ms, p99 {np.percentile(lat, 99):.3f} ms, "
                f"max {lat.max():.3f} ms; {self.late} later than {self.late_threshold * 1e3:.1f} ms"
            )
        else:
            lines.append("no messages published")
        if self.dropped:
            lines.append(f"{self.dropped} corrupt message(s) dropped")
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------- replay


def _qos(opts: ReplayOptions):
    from rclpy.qos import QoSProfile, qos_profile_sensor_data

    if opts.qos == "sensor":
        return qos_profile_sensor_data
    return QoSProfile(depth=opts.qos_depth)  # reliable, volatile, keep last


def _messages(
    reader, plans: List[TopicPlan], start_ns: int, stop_ns: Optional[int]
) -> Iterator[Tuple[TopicPlan, int, bytes]]:
    by_conn = {}
    for p in plans:
        for c in reader.connections:
            if _absolute(c.topic) == p.topic:
                by_conn[c.id] = p
    conns = [c for c in reader.connections if c.id in by_conn]
    for conn, t_ns, raw in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
        yield by_conn[conn.id], t_ns, raw


def replay(opts: ReplayOptions, node, should_stop: Callable[[], bool] = lambda: False) -> ReplayStats:
    """Play ``opts.bag`` through publishers created on ``node``; returns when done (or stopped).

    Raises ReplayError for an unreadable bag or bad options.
    """
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as ReaderError1
    from rosbags.rosbag2 import ReaderError as ReaderError2

    opts.validate()
    log = node.get_logger()
    stats = ReplayStats(late_threshold=opts.late_threshold)
    try:
        reader = _open_reader(Path(opts.bag))
        reader.open()
    except ReplayError:
        raise
    except (AnyReaderError, ReaderError1, ReaderError2, OSError, ValueError, KeyError) as e:
        raise ReplayError(f"cannot read bag {opts.bag}: {e}") from None
    try:
        plans = plan_topics(reader, opts, log.warning)
        if not plans:
            raise ReplayError(f"nothing to play in {opts.bag}: no topic with an importable message type")
        qos = _qos(opts)
        pubs = {}
        for p in plans:
            if p.out_topic in pubs:
                if pubs[p.out_topic].msg_type is not p.msg_class:
                    raise ReplayError(f"two bag topics of different types would publish on {p.out_topic}")
                continue
            pubs[p.out_topic] = node.create_publisher(p.msg_class, p.out_topic, qos)
        clock_pub = None
        if opts.clock:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=10))
        _wait_for_subscribers(pubs, opts.wait_subscribers, should_stop, log)

        bag_start = reader.start_time + int(round(opts.start * 1e9))
        if bag_start >= reader.end_time:
            length = (reader.end_time - reader.start_time) / 1e9
            raise ReplayError(f"--start {opts.start} s is past the end of the bag ({length:.2f} s)")
        stop_ns = None if opts.duration is None else bag_start + int(round(opts.duration * 1e9)) + 1
        clock_period = 1.0 / opts.clock_hz
        next_tick = [0.0]
        sched = Scheduler(opts.rate, opts.spin_window)

        def publish_clock(ns: int) -> None:
            from builtin_interfaces.msg import Time
            from rosgraph_msgs.msg import Clock

            clock_pub.publish(Clock(clock=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)))
            stats.clock_published += 1

        def on_idle(now: float) -> float:
            if now >= next_tick[0]:
                publish_clock(int(round(sched.bag_time(now) * 1e9)))
                next_tick[0] = now + clock_period
            return next_tick[0]

        if clock_pub is not None:
            sched.on_idle = on_idle
        log.info(
            f"playing {opts.bag} at {opts.rate}x: "
            + ", ".join(f"{p.topic}->{p.out_topic}" if p.topic != p.out_topic else p.topic for p in plans)
        )
        wall_begin = time.perf_counter()
        try:
            while not should_stop():
                stats.loops += 1
                sched.reset(bag_start * 1e-9)
                next_tick[0] = 0.0
                n_this_pass = 0
                messages = _messages(reader, plans, bag_start, stop_ns)
                while not should_stop():
                    try:
                        plan, t_ns, raw = next(messages)
                    except StopIteration:
                        break
                    except Exception as e:  # noqa: BLE001 - storage plugins raise assorted types on corrupt data
                        raise ReplayError(f"cannot read bag {opts.bag} after {n_this_pass} messages: {e}") from None
                    try:
                        cdr = plan.to_cdr(raw)
                    except Exception as e:  # noqa: BLE001 - a corrupt ROS 1 message: drop it, keep playing
                        stats.dropped += 1
                        log.warning(
                            f"dropped a message on {plan.topic} that does not convert: {e}", throttle_duration_sec=5.0
                        )
                        continue
                    late = sched.wait(t_ns * 1e-9)
                    if clock_pub is not None:
                        publish_clock(t_ns)
                        next_tick[0] = time.perf_counter() + clock_period
                    pubs[plan.out_topic].publish(cdr)
                    stats.record(plan.out_topic, late)
                    n_this_pass += 1
                if not opts.loop or n_this_pass == 0:
                    break
        except KeyboardInterrupt:
            stats.interrupted = True
        stats.interrupted = stats.interrupted or should_stop()
        stats.wall_s = time.perf_counter() - wall_begin
    except (AnyReaderError, ReaderError1, ReaderError2) as e:
        raise ReplayError(f"cannot read bag {opts.bag}: {e}") from None
    finally:
        reader.close()
    return stats


def _wait_for_subscribers(pubs: dict, timeout: float, should_stop: Callable[[], bool], log) -> None:
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not should_stop():
        if all(p.get_subscription_count() > 0 for p in pubs.values()):
            # DDS discovery is per side: the writer has matched the reader, the reader may not yet have matched
            # the writer and would drop the first messages; a short settle covers that second half.
            time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
            return
        time.sleep(0.01)
    lonely = [t for t, p in pubs.items() if p.get_subscription_count() == 0]
    if lonely:
        log.warning(f"no subscriber after {timeout:.1f} s on {lonely}; playing anyway")


# -------------------------------------------------------------------------------------- replay_node


#: replay_node parameters: name -> (default, comment)
NODE_PARAMETERS = {
    "bag": ("", "bag path (required)"),
    "rate": (1.0, "playback speed factor"),
    "loop": (False, "start over at the end"),
    "clock": (False, "publish /clock for use_sim_time"),
    "start": (0.0, "seconds into the bag"),
    "duration": (0.0, "seconds of bag time to play (0 = to the end)"),
    "topics": ([""], "bag topics to play (empty = all)"),
    "remaps": ([""], "FROM:=TO bag topic renames"),
    "qos": ("reliable", "reliable or sensor"),
    "wait_subscribers": (0.0, "seconds to wait for subscribers before playing"),
}


def _node_options(node) -> ReplayOptions:
    """ReplayOptions from the node's parameters; ReplayError for a missing bag or a bad value."""
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.exceptions import ParameterException

    try:
        for name, (default, comment) in NODE_PARAMETERS.items():
            numeric = isinstance(default, float)  # rate:=4 and rate:=4.0 both accepted
            node.declare_parameter(name, default, ParameterDescriptor(description=comment, dynamic_typing=numeric))
    except ParameterException as e:
        raise ReplayError(f"invalid parameter: {e}") from None
    p = {n: node.get_parameter(n).value for n in NODE_PARAMETERS}
    if not p["bag"]:
        raise ReplayError("parameter 'bag' is required (the bag to play)")
    for n in ("rate", "start", "duration", "wait_subscribers"):
        if isinstance(p[n], bool) or not isinstance(p[n], (int, float)):
            raise ReplayError(f"invalid parameter: {n} {p[n]!r} is not a number")
    try:
        remaps = parse_remaps([r for r in p["remaps"] if r])
    except ValueError as e:
        raise ReplayError(str(e)) from None
    opts = ReplayOptions(
        bag=Path(p["bag"]),
        rate=float(p["rate"]),
        loop=bool(p["loop"]),
        clock=bool(p["clock"]),
        start=float(p["start"]),
        duration=float(p["duration"]) or None,
        topics=[t for t in p["topics"] if t] or None,
        remaps=remaps,
        qos=str(p["qos"]),
        wait_subscribers=float(p["wait_subscribers"]),
    )
    opts.validate()
    return opts


def play(opts: ReplayOptions) -> int:
    """`mmfusion replay`: play in a fresh rclpy context and print the summary; exit code 0, 2 or 130."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    # ctrl-C as a KeyboardInterrupt where the loop is (it stops, prints the summary, exit 130): rclpy's own
    # handler would shut the context down under a publish() and end in a traceback
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("mmfusion_replay")
    try:
        stats = replay(opts, node, should_stop=lambda: not rclpy.ok())
        print(stats.summary())
        return 130 if stats.interrupted else 0
    except ReplayError as e:
        print(f"mmfusion replay: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(args: Optional[List[str]] = None) -> int:
    """The ``replay_node`` executable; parameters in NODE_PARAMETERS. Exit 2 on a bad bag or parameter."""
    import rclpy

    from .node_main import run_node

    def body(node) -> int:
        try:
            stats = replay(_node_options(node), node, should_stop=lambda: not rclpy.ok())
        except ReplayError as e:
            node.get_logger().error(str(e))
            return 2
        node.get_logger().info("replay done\n" + stats.summary())
        return 0

    return run_node("replay", body, args)

if __name__ == "__main__":
    sys.exit(main())
