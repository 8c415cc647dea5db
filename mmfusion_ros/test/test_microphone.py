"""Microphone node: device choice, packing, the publish path (fake PortAudio) and the no-device exit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from mmfusion_ros.ros import microphone_node as mic
from mmfusion_ros.ros.conversions import audio_to_array

DEVICES = [
    {"name": "HDA Intel PCH: HDMI 0", "max_input_channels": 0, "default_samplerate": 48000.0},
    {"name": "USB Audio Device: Mic", "max_input_channels": 2, "default_samplerate": 44100.0},
    {"name": "ReSpeaker 4 Mic Array", "max_input_channels": 6, "default_samplerate": 16000.0},
]


def test_choose_device_by_default_index_and_name():
    assert mic.choose_device(DEVICES, "", 2, 1) == 2
    assert mic.choose_device(DEVICES, "1", 2, 2) == 1
    assert mic.choose_device(DEVICES, "respeaker", -1, 4) == 2
    with pytest.raises(mic.MicrophoneError, match=r"no audio input device found \(available input devices: none\)"):
        mic.choose_device([], "", -1, 1)
    with pytest.raises(
        mic.MicrophoneError, match=r"device 0 is not an input device .*1: USB Audio Device: Mic \(2 in, 44100 Hz\)"
    ):
        mic.choose_device(DEVICES, "0", 2, 1)
    with pytest.raises(mic.MicrophoneError, match="'mic' matches 2 input"):
        mic.choose_device(DEVICES, "mic", 2, 1)
    with pytest.raises(mic.MicrophoneError, match="no default audio input device"):
        mic.choose_device(DEVICES, "", -1, 1)
    with pytest.raises(mic.MicrophoneError, match="has 2 input channel"):
        mic.choose_device(DEVICES, "usb", -1, 4)


def test_config_validation():
    mic.MicrophoneConfig().validate()
    for bad in (
        dict(encoding="U8"),
        dict(sample_rate=0),
        dict(channels=0),
        dict(channels=300),
        dict(chunk_ms=0.0),
        dict(chunk_ms=0.01),
    ):
        with pytest.raises(mic.MicrophoneError, match="invalid parameter") as e:
            mic.MicrophoneConfig(**bad).validate()
        assert e.value.exit_code == mic.EXIT_BAD_PARAMETER
    assert mic.MicrophoneConfig(sample_rate=48000, chunk_ms=20).chunk_frames == 960


def test_block_packing_int16_and_float32():
    rng = np.random.default_rng(0)
    block = rng.integers(-32768, 32767, (800, 2), dtype=np.int16)  # what PortAudio hands an int16 stream
    cfg = mic.MicrophoneConfig(sample_rate=16000, channels=2, encoding="S16LE", frame_id="mic_link")
    msg = mic.block_to_msg(block, 12.5, cfg)
    assert bytes(msg.data) == block.astype("<i2").tobytes()  # interleaved frame-major, unchanged
    assert (msg.channels, msg.sample_rate, msg.encoding, msg.header.frame_id) == (2, 16000, "S16LE", "mic_link")
    assert msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 500_000_000
    samples, rate = audio_to_array(msg)
    np.testing.assert_array_equal(samples, block / 32768.0)

    fblock = rng.uniform(-1, 1, (160, 3)).astype(np.float32)
    cfg = mic.MicrophoneConfig(sample_rate=8000, channels=3, encoding="F32LE")
    samples, rate = audio_to_array(mic.block_to_msg(fblock, 1.0, cfg))
    np.testing.assert_array_equal(samples, fblock)
    assert rate == 8000


def test_first_sample_stamp():
    assert mic.first_sample_stamp(100.0, 800, 16000) == pytest.approx(99.95)  # no ADC time: block just ended
    assert mic.first_sample_stamp(100.0, 800, 16000, adc_time=5.02, stream_time=5.10) == pytest.approx(99.92)


# ------------------------------------------------------------------------ publish path, fake device


def fake_sounddevice(blocks, rate, node):
    """A stand-in for the sounddevice module that plays `blocks` through the callback at real time.

    It starts once the node's publisher has matched a subscriber (best-effort QoS drops earlier chunks).
    """

    class PortAudioError(Exception):
        pass

    class InputStream:
        def __init__(self, device, samplerate, channels, dtype, blocksize, callback, finished_callback):
            assert (device, samplerate, channels, dtype) == (1, rate, 2, "int16")
            self.callback, self.blocksize, self.active = callback, blocksize, False
            self.thread = threading.Thread(target=self._run, daemon=True)

        def _run(self):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                p.topic_name == "/audio/audio" and p.get_subscription_count() > 0 for p in node.publishers
            ):
                time.sleep(0.01)
            t0 = time.monotonic()
            for k, b in enumerate(blocks):
                time.sleep(max(0.0, t0 + (k + 1) * self.blocksize / rate - time.monotonic()))
                now = time.monotonic()
                self.callback(
                    b, len(b), types.SimpleNamespace(inputBufferAdcTime=now - len(b) / rate, currentTime=now), 0
                )

        def __enter__(self):
            self.active = True
            self.thread.start()
            return self

        def __exit__(self, *exc):
            self.active = False

    sd = types.SimpleNamespace(
        PortAudioError=PortAudioError,
        InputStream=InputStream,
        query_devices=lambda: DEVICES,
        default=types.SimpleNamespace(device=[2, -1]),
    )
    return sd


@pytest.mark.ros
def test_capture_publishes_every_block(monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from mmfusion_msgs.msg import AudioFrame

    rng = np.random.default_rng(1)
    blocks = [rng.integers(-3000, 3000, (160, 2), dtype=np.int16) for _ in range(10)]
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    ex = None
    try:
        node = rclpy.create_node("microphone", context=ctx)
        monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(blocks, 16000, node))
        sub_node = rclpy.create_node("mic_listener", context=ctx)
        got = []
        best_effort = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)  # as the fusion node
        sub_node.create_subscription(AudioFrame, "audio/audio", got.append, best_effort)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(sub_node)
        threading.Thread(target=ex.spin, daemon=True).start()
        cfg = mic.MicrophoneConfig(device="usb", sample_rate=16000, channels=2, chunk_ms=10)
        done = threading.Event()
        worker = threading.Thread(target=lambda: mic._capture(node, cfg, is_running=lambda: not done.is_set()))
        worker.start()
        deadline = time.monotonic() + 10
        while len(got) < len(blocks) and time.monotonic() < deadline:
            time.sleep(0.02)
        done.set()
        worker.join(timeout=5)
        assert [bytes(m.data) for m in got] == [b.tobytes() for b in blocks]
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in got]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
    finally:
        if ex is not None:
            ex.shutdown()
        rclpy.shutdown(context=ctx)


# --------------------------------------------------------------------------- the real node process


def run_node(*params):
    cmd = [sys.executable, "-m", "mmfusion_ros.ros.microphone_node", "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=os.environ.copy())


@pytest.mark.ros
def test_no_device_exits_with_clear_error():
    import sounddevice as sd

    if any(d["max_input_channels"] > 0 for d in sd.query_devices()):
        pytest.skip("this machine has an audio input device")
    proc = run_node()
    out = proc.stdout + proc.stderr
    assert proc.returncode == mic.EXIT_NO_DEVICE, out
    assert "no audio input device found (available input devices: none)" in out
    assert "Traceback" not in out


@pytest.mark.ros
def test_bad_parameter_exits_2():
    proc = run_node("encoding:=U8")
    out = proc.stdout + proc.stderr
    assert proc.returncode == mic.EXIT_BAD_PARAMETER, out
    assert "invalid parameter: encoding 'U8'" in out and "Traceback" not in out
