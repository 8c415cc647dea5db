"""Microphone node: captures a sound device with sounddevice (PortAudio) and publishes AudioFrame chunks.

Publishes ``mmfusion_msgs/AudioFrame`` on ``audio/audio`` (sensor-data QoS); parameters:
``device`` (""= the default input, an index, or part of a device name), ``sample_rate`` (Hz),
``channels``, ``chunk_ms`` (samples per message), ``encoding`` (S16LE or F32LE), ``frame_id``,
``message_type``: AudioFrame (default), or audio_common_msgs' AudioStamped or AudioDataStamped where that
package is installed (the latter with its AudioInfo on ``audio/audio_info`` with the first chunk and once a
second): any type the fusion node's audio input accepts (ros/inputs.py).

Behaviour without a usable device (no sound card, wrong name, device busy or unplugged): the node logs
one error that names the input devices PortAudio can see ("none" when there are none) and exits with
code 1. It never publishes made-up silence: a robot whose microphone is gone must show that in its
process list and diagnostics (the fusion node then reports audio as missing), not feed the model
zeros that look like a quiet room. Use ``respawn="true"`` in the launch file to retry hot-plugged
devices. Invalid parameter values exit with code 2 before any device is touched.

Each message's stamp is the capture time of its first sample (PortAudio's ADC time when the driver
gives one, else the callback time minus the chunk length).
"""

from __future__ import annotations

import queue
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from .conversions import AUDIO_ENCODINGS, ConversionError, array_to_audio

#: exit codes
EXIT_NO_DEVICE = 1
EXIT_BAD_PARAMETER = 2


class MicrophoneError(Exception):
    """No usable capture device, or a parameter value the node cannot honour."""

    def __init__(self, message: str, exit_code: int = EXIT_NO_DEVICE):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class MicrophoneConfig:
    """The node's parameters."""

    device: str = ""  # "" = default input device; an index ("2") or a case-insensitive part of its name
    sample_rate: int = 16000  # samples per second per channel requested from the device
    channels: int = 1  # interleaved channels to capture (1..255)
    chunk_ms: float = 50.0  # audio per message, milliseconds
    encoding: str = "S16LE"  # AudioFrame sample encoding: S16LE (int16) or F32LE (float32)
    frame_id: str = "microphone"  # header.frame_id of published frames
    message_type: str = "mmfusion_msgs/msg/AudioFrame"  # or audio_common_msgs/msg/AudioStamped / AudioDataStamped

    def validate(self) -> None:
        from mmfusion_ros.ros.inputs import resolve_type

        bad = None
        try:
            self.message_type = resolve_type("audio", self.message_type)
        except ValueError as e:
            bad = f"message_type: {str(e).split(': ', 1)[1]}"
        if bad:
            pass
        elif self.encoding not in AUDIO_ENCODINGS:
            bad = f"encoding {self.encoding!r} is not one of {sorted(AUDIO_ENCODINGS)}"
        elif not 0 < self.sample_rate < 2**32:
            bad = f"sample_rate {self.sample_rate} must be a positive integer"
        elif not 1 <= self.channels <= 255:
            bad = f"channels {self.channels} must be 1..255"
        elif not self.chunk_ms > 0 or self.chunk_frames < 1:
            bad = f"chunk_ms {self.chunk_ms} must give at least one sample at {self.sample_rate} Hz"
        if bad:
            raise MicrophoneError(f"invalid parameter: {bad}", EXIT_BAD_PARAMETER)

    @property
    def chunk_frames(self) -> int:
        """Samples per channel in one message."""
        return int(round(self.sample_rate * self.chunk_ms / 1000.0))

    @property
    def dtype(self) -> str:
        """sounddevice capture dtype that packs into ``encoding`` without conversion."""
        return "int16" if self.encoding == "S16LE" else "float32"


def describe_devices(devices: Sequence[dict]) -> str:
    """ "0: name (2 in, 44100 Hz); ..." over the input-capable devices, or "none"."""
    items = [
        f"{i}: {d.get('name', '?')} ({d.get('max_input_channels', 0)} in, {d.get('default_samplerate', 0):.0f} Hz)"
        for i, d in enumerate(devices)
        if d.get("max_input_channels", 0) > 0
    ]
    return "; ".join(items) if items else "none"


def choose_device(devices: Sequence[dict], wanted: str, default_input: int, channels: int) -> int:
    """Index of the device to capture from; MicrophoneError naming the available inputs otherwise."""
    listing = f"available input devices: {describe_devices(devices)}"
    inputs = [i for i, d in enumerate(devices) if d.get("max_input_channels", 0) > 0]
    if not inputs:
        raise MicrophoneError(f"no audio input device found ({listing})")
    wanted = wanted.strip()
    if not wanted:
        if default_input is None or default_input < 0 or default_input not in inputs:
            raise MicrophoneError(f"no default audio input device; set the 'device' parameter ({listing})")
        index = default_input
    elif wanted.lstrip("-").isdigit():
        index = int(wanted)
        if index not in inputs:
            raise MicrophoneError(f"device {index} is not an input device ({listing})")
    else:
        matches = [i for i in inputs if wanted.lower() in str(devices[i].get("name", "")).lower()]
        if len(matches) != 1:
            what = "matches no" if not matches else f"matches {len(matches)}"
            raise MicrophoneError(f"device {wanted!r} {what} input device(s) ({listing})")
        index = matches[0]
    have = devices[index].get("max_input_channels", 0)
    if channels > have:
        raise MicrophoneError(
            f"device {index} ({devices[index].get('name')}) has {have} input channel(s), {channels} requested"
        )
    return index


def first_sample_stamp(now: float, frames: int, rate: int, adc_time: float = 0.0, stream_time: float = 0.0) -> float:
    """ROS time (s) of a block's first sample, from the callback time ``now`` (s).

    PortAudio reports the block's ADC time and the stream's current time on one clock; their
    difference is how long ago the first sample was captured. Drivers that report 0 fall back to
    "the block ended just now".
    """
    if adc_time > 0.0 and stream_time >= adc_time and stream_time - adc_time < 1.0:
        return now - (stream_time - adc_time)
    return now - frames / float(rate)


def block_to_msg(block: np.ndarray, stamp: float, cfg: MicrophoneConfig):
    """(S,C) captured block -> a message of cfg.message_type (samples interleaved frame-major)."""
    from . import conversions as conv

    if cfg.message_type.endswith("/AudioStamped"):
        return conv.array_to_audio_stamped(block, cfg.sample_rate, cfg.encoding, stamp=stamp, frame_id=cfg.frame_id)
    if cfg.message_type.endswith("/AudioDataStamped"):
        return conv.array_to_audio_data_stamped(block, cfg.encoding, stamp=stamp, frame_id=cfg.frame_id)
    return array_to_audio(block, cfg.sample_rate, cfg.encoding, stamp=stamp, frame_id=cfg.frame_id)


def info_msg(cfg: MicrophoneConfig):
    """The AudioInfo that goes with AudioDataStamped chunks (None for the types that carry their format)."""
    from . import conversions as conv

    if not cfg.message_type.endswith("/AudioDataStamped"):
        return None
    return conv.audio_common_info(cfg.sample_rate, cfg.channels, cfg.encoding, cfg.chunk_frames)


def _read_config(node) -> MicrophoneConfig:
    """Declare and read the parameters; a wrong type or value is a MicrophoneError (exit code 2)."""
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.exceptions import ParameterException

    defaults = MicrophoneConfig()
    numeric = ParameterDescriptor(dynamic_typing=True)  # chunk_ms:=50 and :=50.0 both work; checked below
    try:
        node.declare_parameter("device", defaults.device, numeric)  # device:=2 arrives as an integer
        node.declare_parameter("sample_rate", defaults.sample_rate, numeric)
        node.declare_parameter("channels", defaults.channels, numeric)
        node.declare_parameter("chunk_ms", defaults.chunk_ms, numeric)
        node.declare_parameter("encoding", defaults.encoding)
        node.declare_parameter("frame_id", defaults.frame_id)
        node.declare_parameter("message_type", defaults.message_type)
    except ParameterException as e:
        raise MicrophoneError(f"invalid parameter: {e}", EXIT_BAD_PARAMETER) from None
    values = {
        n: node.get_parameter(n).value
        for n in ("device", "sample_rate", "channels", "chunk_ms", "encoding", "frame_id", "message_type")
    }
    for name in ("sample_rate", "channels"):
        v = values[name]
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise MicrophoneError(f"invalid parameter: {name} {v!r} is not an integer", EXIT_BAD_PARAMETER)
    if isinstance(values["chunk_ms"], bool) or not isinstance(values["chunk_ms"], (int, float)):
        raise MicrophoneError(f"invalid parameter: chunk_ms {values['chunk_ms']!r} is not a number", EXIT_BAD_PARAMETER)
    cfg = MicrophoneConfig(
        device=str(values["device"]),
        sample_rate=int(values["sample_rate"]),
        channels=int(values["channels"]),
        chunk_ms=float(values["chunk_ms"]),
        encoding=str(values["encoding"]),
        frame_id=str(values["frame_id"]),
        message_type=str(values["message_type"]),
    )
    cfg.validate()
    return cfg


def _capture(node, cfg: MicrophoneConfig, is_running) -> None:
    """Open the device and publish chunks until shutdown; MicrophoneError when the device fails."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data

    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: the PortAudio shared library is missing
        raise MicrophoneError(f"sounddevice/PortAudio unavailable ({e}); install libportaudio2") from None

    from mmfusion_ros.ros.inputs import INPUTS, msg_class, type_available

    why = type_available(cfg.message_type)
    if why is not None:
        raise MicrophoneError(f"invalid parameter: message_type {cfg.message_type} cannot be used: {why}",
                              EXIT_BAD_PARAMETER)

    try:
        devices = [dict(d) for d in sd.query_devices()]
        default_input = sd.default.device[0]
    except sd.PortAudioError as e:
        raise MicrophoneError(f"PortAudio cannot list devices ({e}); available input devices: none") from None
    index = choose_device(devices, cfg.device, default_input, cfg.channels)
    pub = node.create_publisher(msg_class(cfg.message_type), INPUTS["audio"].topic,
                                qos_profile_sensor_data)  # the node's input
    info = info_msg(cfg)
    info_pub = None if info is None else node.create_publisher(msg_class(INPUTS["audio_info"].msgtype),
                                                               INPUTS["audio_info"].topic, qos_profile_sensor_data)
    info_sent = [float("-inf")]
    log = node.get_logger()
    blocks: "queue.Queue[tuple]" = queue.Queue(maxsize=64)
    overflows = [0]
    finished = [False]

    def on_block(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: copy out and return; publishing happens on the node's thread
        now = node.get_clock().now().nanoseconds * 1e-9
        stamp = first_sample_stamp(now, frames, cfg.sample_rate, time_info.inputBufferAdcTime, time_info.currentTime)
        if status:
            overflows[0] += 1
        try:
            blocks.put_nowait((indata.copy(), stamp))  # (S, C)
        except queue.Full:
            overflows[0] += 1

    try:
        stream = sd.InputStream(
            device=index,
            samplerate=cfg.sample_rate,
            channels=cfg.channels,
            dtype=cfg.dtype,
            blocksize=cfg.chunk_frames,
            callback=on_block,
            finished_callback=lambda: finished.__setitem__(0, True),
        )
    except (sd.PortAudioError, ValueError) as e:
        name = devices[index].get("name")
        raise MicrophoneError(
            f"cannot open device {index} ({name}) at {cfg.sample_rate} Hz, {cfg.channels} ch: {e} "
            f"(available input devices: {describe_devices(devices)})"
        ) from None
    log.info(
        f"capturing {devices[index].get('name')} at {cfg.sample_rate} Hz, {cfg.channels} ch, "
        f"{cfg.chunk_frames} samples per frame"
    )
    reported = 0
    with stream:
        while is_running() and rclpy.ok(context=node.context):
            try:
                block, stamp = blocks.get(timeout=0.5)
            except queue.Empty:
                if finished[0] or not stream.active:
                    raise MicrophoneError(
                        f"device {index} ({devices[index].get('name')}) stopped delivering audio"
                    ) from None
                continue
            if info_pub is not None and stamp - info_sent[0] >= 1.0:  # with the first chunk, then once a second
                info_pub.publish(info)
                info_sent[0] = stamp
            try:
                pub.publish(block_to_msg(block, stamp, cfg))
            except ConversionError as e:  # cannot happen for int16/float32 blocks, but never kill the node
                log.error(f"dropped a chunk: {e}", throttle_duration_sec=5.0)
            if overflows[0] > reported:
                log.warning(
                    f"{overflows[0]} chunks overflowed (input too fast for this node)", throttle_duration_sec=5.0
                )
                reported = overflows[0]


def main(args: Optional[List[str]] = None) -> int:
    from .node_main import run_node

    def body(node) -> int:
        try:
            _capture(node, _read_config(node), is_running=lambda: True)
        except MicrophoneError as e:
            node.get_logger().error(str(e))
            return e.exit_code
        return 0

    return run_node("microphone", body, args)

if __name__ == "__main__":
    sys.exit(main())
