"""What the fusion node tells /diagnostics: per sensor its rate, age, rejects and frames fused without it.

The pipeline status also names the subscribed sensors the model has no encoder for (`not_bound`: a tower
bundle before `mmfusion train --towers`): an OK property of the model, not a fault; frames fuse without them.

`NodeDiagnostics` only counts and formats (no rclpy node, no clock of its own): the node passes the time
of its ROS clock, so ages and rates are in sim time when use_sim_time is on. Callbacks, the inference
worker and the diagnostics timer run on different threads, so every method takes one lock.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from mmfusion_ros.ros.messages import make_header

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
#: Seconds of receive times kept to measure an input's rate.
RATE_WINDOW_S = 2.0
#: A newest stamp this far after the node clock is still jitter (a sim /clock published at 100 Hz, DDS
#: delivery order); beyond it the input is WARN: a negative age is never OK.
FUTURE_TOLERANCE_S = 0.05
#: Seconds between two log lines about rejected messages of the same input.
REJECT_LOG_PERIOD_S = 5.0
#: Frames the pipeline status looks back over for unfamiliar and dropped modalities.
RECENT_FRAMES = 50
#: Remedy named when a modality is unfamiliar.
FAMILIARITY_REMEDY = ("record this robot's sensors and run `mmfusion train --bags BAG... --init CKPT --out DIR`, "
                      "which re-binds the encoders and refits the familiarity statistics on your recordings")
#: Remedy named when subscribed sensors are not bound (the bundle has no encoder for them).
NOT_BOUND_REMEDY = ("bind them to its towers with `mmfusion train --towers BUNDLE --config CFG --data DS --out RUN` "
                    "and run the bound bundle RUN/bundle")


def not_bound_text(modalities: List[str]) -> str:
    """One line for logs and summaries: the sensors the model has no encoder for, and the remedy."""
    it = "it" if len(modalities) == 1 else "them"
    return (f"the model has no encoder for {', '.join(modalities)}: frames fuse from the bound sensors without "
            f"{it}; remedy: {NOT_BOUND_REMEDY}")


@dataclass
class InputCounters:
    """Counters of one subscription."""

    name: str  # input name from ros/params.INPUT_TOPICS, e.g. "lidar"
    topic: str  # topic as configured (relative names resolve under the namespace)
    group: str  # status it is reported under: a modality name, or "camera_info"
    received: int = 0  # messages converted and handed to the collector
    rejected: int = 0  # messages that failed conversion or validation
    ignored: int = 0  # valid messages deliberately not used (e.g. compressed images while raw ones flow)
    newest_stamp: Optional[float] = None  # header stamp of the newest accepted message, seconds
    last_error: str = ""  # why the last rejected message was rejected
    receive_times: Deque[float] = field(default_factory=lambda: deque(maxlen=4000))  # node clock, seconds
    last_reject_log: float = float("-inf")  # wall time of the last rejection log line


class NodeDiagnostics:
    """Counts everything /diagnostics reports and builds the DiagnosticArray."""

    def __init__(self, node_name: str, timeouts: Dict[str, float], inference_window: int = 200):
        self.node_name = node_name
        self.timeouts = dict(timeouts)  # modality -> seconds after which it is stale
        self._lock = threading.Lock()
        self._inputs: Dict[str, InputCounters] = {}
        self._frames_without: Dict[str, int] = {m: 0 for m in timeouts}
        self._rejected_at_last_report: Dict[str, int] = {}
        self._inference_ms: Deque[float] = deque(maxlen=inference_window)
        self.frames_fused = 0
        self.frames_skipped = 0
        self.pipeline_errors = 0
        self.backend = ""
        self.state = "unconfigured"
        self.extra: Dict[str, str] = {}
        self.not_bound: List[str] = []  # subscribed sensor modalities the loaded model has no encoder for
        self._recent: Deque[tuple] = deque(maxlen=RECENT_FRAMES)  # (unfamiliar set, dropped set) per frame
        self._familiarity: Dict[str, float] = {}  # newest familiarity per assessed modality
        self._familiarity_assessed = True  # False once a frame came from a bundle without statistics
        self._dropped: Dict[str, int] = {}  # modality (or "perception") -> frames it was dropped from
        self._dropped_why: Dict[str, str] = {}  # ... and the newest reason
        self._errors_at_last_report = 0
        self._clock_at_last_report: Dict[str, Dict[str, Any]] = {}  # modality -> Collector stats at the last report

    # -- counting (called from callbacks and the worker) ------------------------------------------------
    def add_input(self, name: str, topic: str, group: str) -> None:
        with self._lock:
            self._inputs[name] = InputCounters(name, topic, group)

    def message(self, name: str, stamp: float, now: float) -> None:
        """A message of input `name` was accepted."""
        with self._lock:
            c = self._inputs[name]
            c.received += 1
            c.newest_stamp = stamp if c.newest_stamp is None else max(c.newest_stamp, stamp)
            c.receive_times.append(now)

    def ignored(self, name: str) -> None:
        with self._lock:
            self._inputs[name].ignored += 1

    def rejected(self, name: str, error: str, wall_now: float) -> bool:
        """Count a rejected message; True when the caller should log it (at most once per 5 s per input)."""
        with self._lock:
            c = self._inputs[name]
            c.rejected += 1
            c.last_error = error
            if wall_now - c.last_reject_log >= REJECT_LOG_PERIOD_S:
                c.last_reject_log = wall_now
                return True
            return False

    def frame(self, present: List[str], inference_ms: float, skipped: int = 0,
              familiarity: Optional[Dict[str, float]] = None, used: Optional[List[str]] = None,
              dropped: Optional[Dict[str, str]] = None) -> None:
        """A frame was fused from the `present` modalities; `skipped` newer frames replaced older ones.

        familiarity / used / dropped (FusionResult fields): per-modality familiarity, the modalities the
        learned claims rested on, and modalities (or perception) dropped from the frame with the reason."""
        with self._lock:
            self.frames_fused += 1
            self.frames_skipped += skipped
            for m in self._frames_without:
                if m not in present:
                    self._frames_without[m] += 1
            self._inference_ms.append(inference_ms)
            used_set = set(present if used is None else used)
            unfamiliar = {m for m in present if m in (familiarity or {}) and m not in used_set}
            self._recent.append((frozenset(unfamiliar), frozenset(dropped or ())))
            for m, v in (familiarity or {}).items():
                self._familiarity[m] = float(v)
            if familiarity is not None and present and not familiarity and not dropped:
                self._familiarity_assessed = False  # present modalities, none assessed: no statistics
            for m, why in (dropped or {}).items():
                self._dropped[m] = self._dropped.get(m, 0) + 1
                self._dropped_why[m] = why

    def skipped(self, n: int) -> None:
        with self._lock:
            self.frames_skipped += n

    def pipeline_error(self) -> None:
        with self._lock:
            self.pipeline_errors += 1

    def counters(self, name: str) -> InputCounters:
        with self._lock:
            return self._inputs[name]

    # -- reporting ------------------------------------------------------------------------------------------
    def build(self, now: float, sync: Optional[Dict[str, Any]] = None) -> DiagnosticArray:
        """One DiagnosticArray: a status per sensor modality (and camera_info) plus one for the pipeline.

        `sync` = core.sync.Collector.stats(): each sensor's measured clock offset, and its newest stamp on
        the receive clock (aligned when its clock is off), which ages are then measured with."""
        with self._lock:
            groups: Dict[str, List[InputCounters]] = {}
            for c in self._inputs.values():
                groups.setdefault(c.group, []).append(c)
            statuses = [self._group_status(g, cs, now, (sync or {}).get(g)) for g, cs in groups.items()]
            statuses.append(self._pipeline_status())
            for c in self._inputs.values():
                self._rejected_at_last_report[c.name] = c.rejected
        arr = DiagnosticArray(header=make_header(now, ""))
        arr.status = statuses
        return arr

    def _group_status(self, group: str, inputs: List[InputCounters], now: float,
                      clock: Optional[Dict[str, Any]] = None) -> DiagnosticStatus:
        received = sum(c.received for c in inputs)
        rejected = sum(c.rejected for c in inputs)
        new_rejects = sum(c.rejected - self._rejected_at_last_report.get(c.name, 0) for c in inputs)
        stamps = [c.newest_stamp for c in inputs if c.newest_stamp is not None]
        if clock is not None and clock.get("newest_stamp") is not None:
            stamps = [clock["newest_stamp"]]  # on the receive clock: aligned when the sensor's clock is off
        age = now - max(stamps) if stamps else None
        rate = sum(sum(1 for t in c.receive_times if now - RATE_WINDOW_S < t <= now) for c in inputs) / RATE_WINDOW_S
        timeout = self.timeouts.get(group)
        problems = []
        if timeout is not None:  # a sensor modality: it goes stale
            if age is None:
                problems.append("no messages received")
            elif age > timeout:
                problems.append(f"stale: newest message is {age:.2f} s old (timeout {timeout:g} s)")
            elif age < -FUTURE_TOLERANCE_S:  # never OK: stamped after the node clock
                problems.append(f"newest stamp is {-age:.3f} s ahead of the node clock (sensor clock ahead?)")
        if new_rejects > 0:
            last = next((c.last_error for c in inputs if c.last_error), "")
            problems.append(f"rejected {new_rejects} invalid message(s) since the last report: {last}")
        clock_values = self._clock_problems(group, clock, problems) if clock is not None else {}
        values = {
            "topics": ", ".join(c.topic for c in inputs),
            "rate_hz": f"{rate:.2f}",
            "age_s": f"{age:.3f}" if age is not None else "never",
            "received": str(received),
            "rejected": str(rejected),
            "ignored": str(sum(c.ignored for c in inputs)),
        }
        if timeout is not None:
            values["frames_fused_without"] = str(self._frames_without.get(group, 0))
            values["timeout_s"] = f"{timeout:g}"
        for c in inputs:
            if len(inputs) > 1:
                values[f"{c.name}.received"] = str(c.received)
                values[f"{c.name}.rejected"] = str(c.rejected)
        last_error = next((c.last_error for c in inputs if c.last_error), "")
        if last_error:
            values["last_error"] = last_error
        values.update(clock_values)
        return DiagnosticStatus(
            level=WARN if problems else OK,
            name=f"{self.node_name}: {group} input",
            message="; ".join(problems) if problems else "ok",
            hardware_id=self.node_name,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def _clock_problems(self, group: str, clock: Dict[str, Any], problems: List[str]) -> Dict[str, str]:
        """The sensor clock's keys (offset, aligned, zero stamps, jumps) and what is wrong with it since the last
        report: an aligned clock stays a WARN (its stamps are wrong, the frames are right)."""
        off = clock.get("clock_offset_s")
        last = self._clock_at_last_report.get(group, {})
        self._clock_at_last_report[group] = dict(clock)
        if clock.get("clock_aligned") and off is not None:
            how = "behind" if off > 0 else "ahead of"
            days = f" ({abs(off) / 86400.0:.1f} days)" if abs(off) >= 86400.0 else ""
            problems.append(f"header stamps are {abs(off):.3f} s {how} the node clock{days}: aligned onto it")
        for key, what in (("zero_stamps", "zero header stamps (placed at their receive time)"),
                          ("clock_jumps", "sensor clock jump(s), re-aligned"),
                          ("clock_dropped", "message(s) dropped while a clock jump was confirmed")):
            new = int(clock.get(key, 0)) - int(last.get(key, 0))
            if new > 0:
                problems.append(f"{new} {what} since the last report")
        values = {"clock_offset_s": "n/a" if off is None else f"{off:.3f}",
                  "clock_aligned": "true" if clock.get("clock_aligned") else "false",
                  "zero_stamps": str(clock.get("zero_stamps", 0)), "clock_jumps": str(clock.get("clock_jumps", 0)),
                  "clock_dropped": str(clock.get("clock_dropped", 0))}
        if group == "lidar":
            values["points_dropped"] = str(clock.get("points_dropped", 0))
        return values

    def _pipeline_status(self) -> DiagnosticStatus:
        inf = np.asarray(self._inference_ms, np.float64)
        values = {
            "state": self.state,
            "backend": self.backend or "none",
            "frames_fused": str(self.frames_fused),
            "frames_skipped": str(self.frames_skipped),
            "pipeline_errors": str(self.pipeline_errors),
            "inference_ms_p50": f"{np.percentile(inf, 50):.2f}" if len(inf) else "n/a",
            "inference_ms_p99": f"{np.percentile(inf, 99):.2f}" if len(inf) else "n/a",
        }
        for m in ("camera", "lidar", "audio", "imu"):
            if m in self._familiarity:
                values[f"familiarity_{m}"] = f"{self._familiarity[m]:.2f}"
        if not self._familiarity_assessed:
            values["familiarity"] = "not assessed (the model bundle has no familiarity statistics)"
        for m, n in sorted(self._dropped.items()):
            values[f"dropped_{m}"] = f"{n} frames (last: {self._dropped_why[m]})"
        if self.not_bound:  # a property of the model: OK, output continues from the bound sensors
            values["not_bound"] = ", ".join(self.not_bound)
        values.update(self.extra)
        level, message = OK, "fusing"
        if self.not_bound:
            message = f"fusing without {', '.join(self.not_bound)} (not bound: the model has no encoder for them)"
        problems = []
        n = len(self._recent)
        unfam = sorted({m for u, _ in self._recent for m in u if sum(m in uu for uu, _ in self._recent) > n / 2})
        for m in unfam:
            problems.append(f"{m} unfamiliar (familiarity {self._familiarity.get(m, 0.0):.2f}): its input does not "
                            f"look like the training data, so labels, captions and events ignore it; remedy: "
                            f"{FAMILIARITY_REMEDY}")
        dropped = sorted({m for _, d in self._recent for m in d})
        for m in dropped:
            problems.append(f"{m} dropped from {sum(m in d for _, d in self._recent)} of the last {n} frames "
                            f"({self._dropped_why.get(m, '')})")
        if problems:
            level, message = WARN, "; ".join(problems)
        if self.pipeline_errors > self._errors_at_last_report:
            level, message = ERROR, (f"{self.pipeline_errors - self._errors_at_last_report} frames failed since the "
                                     f"last report" + (f"; {message}" if problems else ""))
        self._errors_at_last_report = self.pipeline_errors
        if self.state != "active":
            level, message = WARN, f"not fusing: node is {self.state}"
        return DiagnosticStatus(
            level=level,
            name=f"{self.node_name}: pipeline",
            message=message,
            hardware_id=self.node_name,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
