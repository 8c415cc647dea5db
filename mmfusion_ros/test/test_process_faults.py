"""`mmfusion process` on what real robots record wrong, built by the test from one simulated bag: sensor clocks
237 days behind, 90 days ahead, an hour ahead midway, zero stamps, stamps restarting midway, one message in three
absurd, a damaged chunk; and output faults (disk full, read-only location, existing output) and ctrl-C.
Each clock/value case must keep at least 95% of the clean recording's frames, every sensor included."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fault_bags as fb
from mmfusion_ros.cli import main
from test_process import read_outputs

SECONDS = 3.0
S = fb.SENSOR_TOPICS


def _process(bag: Path, out: Path, model: Path):
    from mmfusion_ros.ros import offline

    values = offline.load_param_values(None, {"backend.intra_op_threads": 1})
    return offline.process_bag(offline.OfflineOptions(bag=bag, out=out, model_dir=model, backend="onnxruntime",
                                                      progress=False), values)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, random_model_dir):
    d = tmp_path_factory.mktemp("faults")
    bag = fb.sim_bag(d / "clean", seconds=SECONDS)
    return bag, _process(bag, d / "clean_out", random_model_dir)


CLOCK_CASES = {
    "every sensor 237 days behind": lambda src, dst: fb.offset_stamps(src, dst, {t: -237 * fb.DAY for t in S}),
    "every sensor 90 days ahead": lambda src, dst: fb.offset_stamps(src, dst, {t: 90 * fb.DAY for t in S}),
    "LiDAR alone 237 days behind": lambda src, dst: fb.offset_stamps(src, dst, {"lidar/points": -237 * fb.DAY}),
    "each sensor its own clock": lambda src, dst: fb.offset_stamps(src, dst, {
        "camera/image_raw": -237 * fb.DAY, "camera/camera_info": -237 * fb.DAY, "lidar/points": 90 * fb.DAY,
        "audio/audio": 3.0, "imu/data": -30.0}),
    "all-zero stamps": lambda src, dst: fb.zero_stamps(src, dst),
    "stamps restart midway": lambda src, dst: fb.restart_stamps(src, dst, 0.5),
    "stamps jump an hour ahead midway": lambda src, dst: fb.restart_stamps(src, dst, 0.5, forward=3600.0),
    "one message in three absurd": lambda src, dst: fb.corrupt_values(src, dst, every=3),
}


@pytest.mark.parametrize("case", list(CLOCK_CASES))
def test_faulty_recording_keeps_95_percent_of_the_clean_frames(case, clean, tmp_path, random_model_dir):
    bag, ref = clean
    bad = CLOCK_CASES[case](bag, tmp_path / "bad")
    s = _process(bad, tmp_path / "out", random_model_dir)
    assert ref.frames >= 10 * SECONDS
    assert s.frames >= 0.95 * ref.frames, (case, s.frames, ref.frames)
    for m, n in ref.present.items():
        assert s.present[m] >= 0.95 * n, (case, m, s.present[m], n)
    assert s.frame_errors == 0
    out = read_outputs(tmp_path / "out")
    assert len(out["/mmfusion/perception"]) == s.frames
    if case == "one message in three absurd":  # rejected at conversion and counted; the LiDAR keeps its sweeps
        by = {i.input: i for i in s.inputs}
        assert by["audio"].rejected == by["audio"].read // 3 and by["imu"].rejected == by["imu"].read // 3
        assert by["lidar"].rejected == 0 and s.sync["lidar"]["points_dropped"] == by["lidar"].read // 3
    elif case != "LiDAR alone 237 days behind":
        # the clock faults are seen per sensor and reported in the summary table
        assert "sensor clock" in s.table()


def test_damaged_chunk_keeps_the_frames_so_far_in_a_valid_bag_with_exit_4(clean, tmp_path, random_model_dir, capsys):
    bag, ref = clean
    bad = fb.damage_chunk(bag, tmp_path / "damaged", at_fraction=0.6)
    out = tmp_path / "out"
    rc = main(["process", str(bad), "--out", str(out), "--model", str(random_model_dir), "--backend", "onnxruntime",
               "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 4, cap.err
    err = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "damaged" in err[0] and str(out) in err[0] and "Traceback" not in cap.err
    written = read_outputs(out)  # readable: metadata.yaml and the mcap index are there
    n = len(written["/mmfusion/perception"])
    assert 0.3 * ref.frames < n < ref.frames and f"holds the {n} frames" in err[0]
    assert all(len(v) == n for k, v in written.items() if k != "/mmfusion/markers")
    # the rerun is not blocked by a half-written folder: a new output name works, the old one is refused clearly
    assert main(["process", str(bad), "--out", str(out), "--no-progress"]) == 5
    assert "already exists" in capsys.readouterr().err


def test_unreadable_input_is_still_exit_2(tmp_path, random_model_dir, capsys):
    bad = tmp_path / "junk.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + os.urandom(4096))
    rc = main(["process", str(bad), "--out", str(tmp_path / "o"), "--model", str(random_model_dir), "--no-progress"])
    assert rc == 2 and "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_disk_full_is_an_output_error_naming_the_output_and_leaves_nothing(clean, tmp_path, random_model_dir, capsys,
                                                                          monkeypatch):
    from rosbags.rosbag2 import Writer

    bag, _ = clean
    real, calls = Writer.write, [0]

    def full(self, *a, **kw):
        calls[0] += 1
        if calls[0] > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(Writer, "write", full)
    out = tmp_path / "out"
    rc = main(["process", str(bag), "--out", str(out), "--model", str(random_model_dir), "--backend", "onnxruntime",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 5 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(out) in lines[0] and "No space left on device (ENOSPC)" in lines[0]
    assert "read" not in lines[0]  # not reported as an input read error
    assert not out.exists()


def test_read_only_location_is_a_clear_output_error(clean, tmp_path, random_model_dir, capsys, monkeypatch):
    bag, _ = clean
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out = ro / "out"
    try:
        (ro / "probe").mkdir()  # root ignores the mode: make mkdir fail the way it does for other users
        (ro / "probe").rmdir()
        real = Path.mkdir

        def mkdir(self, *a, **kw):
            if self == out:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *a, **kw)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    except PermissionError:
        pass
    try:
        rc = main(["process", str(bag), "--out", str(out), "--model", str(random_model_dir), "--no-progress"])
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 5 and "Traceback" not in err and not out.exists()
    assert str(out) in err and "Permission denied" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_finishes_the_output_with_the_frames_done_and_exits_130(clean, tmp_path, random_model_dir, capsys,
                                                                       monkeypatch):
    from mmfusion_ros.ros import offline

    bag, _ = clean
    build = offline.build_pipeline

    def interrupting(values, opts):
        pipe = build(values, opts)
        process, n = pipe.process, [0]

        def after_five(frame):
            n[0] += 1
            if n[0] > 5:
                raise KeyboardInterrupt
            return process(frame)

        pipe.process = after_five
        return pipe

    monkeypatch.setattr(offline, "build_pipeline", interrupting)
    out = tmp_path / "out"
    rc = main(["process", str(bag), "--out", str(out), "--model", str(random_model_dir), "--backend", "onnxruntime",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err and "interrupted" in err
    assert len(read_outputs(out)["/mmfusion/perception"]) == 5


def _installed(tool: str) -> str:
    exe = Path(sys.executable).parent / tool
    if not exe.exists():
        pytest.skip(f"{tool} is not installed in this environment (make bootstrap)")
    return str(exe)


@pytest.mark.parametrize("command", ["process", "replay"])
def test_sigint_exits_130_without_a_traceback(command, clean, tmp_path, random_model_dir):
    """A real ctrl-C (SIGINT) on the installed command, in the middle of its work."""
    exe = _installed("mmfusion")
    bag = fb.repeat(clean[0], tmp_path / "long", times=4)  # 12 s of recording
    out = tmp_path / "out"
    args = {"process": [exe, "process", str(bag), "--out", str(out), "--model", str(random_model_dir),
                        "--backend", "onnxruntime", "--no-progress"],
            "replay": [exe, "replay", str(bag)]}[command]
    env = dict(os.environ, ROS_LOG_DIR=str(tmp_path / "ros_log"))
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start = time.monotonic()
    # wait until the work has started: the output bag exists (process) / the first messages went out (replay)
    while p.poll() is None and time.monotonic() - start < 30:
        if (out.exists() if command == "process" else time.monotonic() - start > 4):
            break
        time.sleep(0.05)
    time.sleep(1.5)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr
    if command == "process":  # a valid bag of what was done (the count the summary printed)
        n = len(read_outputs(out).get("/mmfusion/perception", []))
        assert f"holds the {n} frames" in stderr
    else:
        assert "interrupted" in stdout


def test_ros1_lidar_bag_237_days_behind_its_recorder_fuses_every_sweep(tmp_path, random_model_dir, capsys):
    """The issue's Luminar case: a ROS 1 bag of 5 sweeps whose header stamps are 237 days behind the record
    time (before: 0 frames, exit 0, nothing said)."""
    import numpy as np
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    T = ts.types
    bag, t0 = tmp_path / "luminar.bag", 1_700_000_000.0
    rng = np.random.default_rng(0)
    with Writer(bag) as w:
        c = w.add_connection("/luminar/points", "sensor_msgs/msg/PointCloud2", typestore=ts)
        for k in range(5):
            t = t0 + 0.1 * k
            ns = int((t - 237 * fb.DAY) * 1e9)
            pts = np.c_[rng.uniform(-30, 30, (3000, 3)), rng.uniform(0, 1, (3000, 1))].astype(np.float32)
            fields = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1)
                      for i, n in enumerate(["x", "y", "z", "intensity"])]
            hdr = T["std_msgs/msg/Header"](seq=k, stamp=T["builtin_interfaces/msg/Time"](
                sec=ns // 10**9, nanosec=ns % 10**9), frame_id="luminar")
            m = T["sensor_msgs/msg/PointCloud2"](header=hdr, height=1, width=len(pts), fields=fields,
                                                 is_bigendian=False, point_step=16, row_step=16 * len(pts),
                                                 data=pts.view(np.uint8).reshape(-1), is_dense=True)
            w.write(c, int(t * 1e9), ts.serialize_ros1(m, "sensor_msgs/msg/PointCloud2"))
    out = tmp_path / "out"
    rc = main(["process", str(bag), "--out", str(out), "--model", str(random_model_dir), "--backend", "onnxruntime",
               "--remap", "/luminar/points:=lidar/points", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "| 5 | 0 (0%) | 5 (100%) |" in cap.out and "| lidar | 20476800.000 | yes |" in cap.out
    assert "237.0 days" in cap.err  # the one WARN naming the sensor and the offset
    assert len(read_outputs(out)["/mmfusion/perception"]) == 5
