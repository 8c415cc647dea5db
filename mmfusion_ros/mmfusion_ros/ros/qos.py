"""QoS of the node's subscriptions and publishers, built from the `qos.<input>.*` parameters.

rclpy's QoSOverridingOptions (`qos_overrides./<ns>/<topic>.subscription.depth`) keys each override by
the fully qualified topic name, so one params file could not serve a node under any namespace or with
remapped inputs; the node's own `qos.<input>.reliability/depth` parameters are keyed by input instead.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """Sensor-data QoS (keep last, volatile) with the given reliability and queue depth.

    Best effort is the default: it connects to both best-effort and reliable publishers, and a slow
    consumer never makes a reliable publisher block or resend old frames.
    """
    if reliability not in _RELIABILITY:
        raise ValueError(f"reliability must be one of {', '.join(_RELIABILITY)}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=_RELIABILITY[reliability],
        durability=qos_profile_sensor_data.durability,
    )


def output_qos(depth: int = 10) -> QoSProfile:
    """Reliable, volatile outputs: subscribers of either reliability connect, and recorders miss nothing."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
