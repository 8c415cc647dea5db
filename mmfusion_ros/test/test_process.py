"""`mmfusion process`: a rosbag2 mcap bag written here (camera, camera_info, LiDAR, audio, IMU) and the
real ROS 1 Husky bag go through the offline pipeline; the output bag is opened with rosbags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fault_bags import bag_header
from mmfusion_ros.cli import main
from mmfusion_ros.ros.bag_io import typestore

T0 = 1_700_000_000.0  # a realistic epoch stamp
CAM_STAMPS = [T0 + 0.1 * k for k in range(20)]  # 2 s of 10 Hz camera
LIDAR_UNTIL = T0 + 0.95  # the LiDAR stops after 1 s: later frames must say so once its timeout passes




def write_sensor_bag(path: Path, topic_prefix: str = "/") -> dict:
    """Camera + camera_info + LiDAR at 10 Hz, audio in 0.1 s chunks at 44.1 kHz stereo, IMU at 100 Hz."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = typestore()
    T = ts.types
    rng = np.random.default_rng(0)
    msgs = []  # (stamp, topic, msgtype, message)
    p = topic_prefix
    for t in CAM_STAMPS:
        img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        msgs.append((t, p + "camera/image_raw", "sensor_msgs/msg/Image", T["sensor_msgs/msg/Image"](
            header=bag_header(ts, t, "camera"), height=60, width=80, encoding="rgb8", is_bigendian=0, step=240,
            data=img.reshape(-1))))
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msgs.append((t, p + "camera/camera_info", "sensor_msgs/msg/CameraInfo", T["sensor_msgs/msg/CameraInfo"](
            header=bag_header(ts, t, "camera"), height=60, width=80, distortion_model="plumb_bob", d=np.zeros(5),
            k=np.array([50.0, 0, 40, 0, 50, 30, 0, 0, 1]), r=np.eye(3).reshape(-1),
            p=np.array([50.0, 0, 40, 0, 0, 50, 30, 0, 0, 0, 1, 0]), binning_x=0, binning_y=0, roi=roi)))
        if t <= LIDAR_UNTIL:
            pts = np.concatenate([rng.uniform(-10, 10, (500, 3)), rng.uniform(0, 1, (500, 1))], 1).astype(np.float32)
            fields = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1)
                      for i, n in enumerate(["x", "y", "z", "intensity"])]
            msgs.append((t + 0.01, p + "lidar/points", "sensor_msgs/msg/PointCloud2", T["sensor_msgs/msg/PointCloud2"](
                header=bag_header(ts, t + 0.01, "velodyne"), height=1, width=len(pts), fields=fields,
                is_bigendian=False, point_step=16, row_step=16 * len(pts), data=pts.view(np.uint8).reshape(-1),
                is_dense=True)))
    rate, chunk = 44100, 4410
    for k in range(21):
        t = T0 - 0.1 + 0.1 * k
        x = (0.2 * rng.standard_normal((chunk, 2))).clip(-1, 1)
        data = (x * 32767).astype("<i2").view(np.uint8).reshape(-1)
        msgs.append((t + 0.1, p + "audio/audio", "mmfusion_msgs/msg/AudioFrame", T["mmfusion_msgs/msg/AudioFrame"](
            header=bag_header(ts, t, "microphone"), sample_rate=rate, channels=2, encoding="S16LE", data=data)))
    V3, Q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    for t in np.arange(T0 - 0.5, T0 + 2.0, 0.01):
        msgs.append((t, p + "imu/data", "sensor_msgs/msg/Imu", T["sensor_msgs/msg/Imu"](
            header=bag_header(ts, t, "imu"), orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=np.zeros(9), angular_velocity=V3(x=0.0, y=0.0, z=0.1),
            angular_velocity_covariance=np.zeros(9), linear_acceleration=V3(x=0.1, y=0.0, z=9.81),
            linear_acceleration_covariance=np.zeros(9))))
    msgs.sort(key=lambda m: m[0])
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for t, topic, typ, msg in msgs:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typ, typestore=ts)
            w.write(conns[topic], int(round(t * 1e9)), ts.serialize_cdr(msg, typ))
    return {"n": len(msgs)}


def read_outputs(path: Path) -> dict:
    from rosbags.highlevel import AnyReader

    out = {}
    with AnyReader([path]) as r:
        for conn, t, raw in r.messages():
            m = r.deserialize(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((t, m))
    return out


def stamp(m) -> float:
    return m.header.stamp.sec + m.header.stamp.nanosec * 1e-9


def params_file(tmp_path: Path, **sync) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"/**/mmfusion": {"ros__parameters": {"sync": sync,
                                                                      "backend": {"intra_op_threads": 1}}}}))
    return p


@pytest.fixture(scope="module")
def sensor_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "sensors"
    write_sensor_bag(path)
    return path


def test_camera_triggered_outputs_carry_the_camera_stamps_and_presence(sensor_bag, random_model_dir, tmp_path,
                                                                        capsys, repo_root):
    out = tmp_path / "out"
    rc = main(["process", str(sensor_bag), "--out", str(out), "--model", str(random_model_dir),
               "--backend", "onnxruntime", "--params", str(params_file(tmp_path, trigger="camera")), "--no-progress",
               "--render", str(tmp_path / "png"),
               "--extrinsics", str(repo_root / "mmfusion_ros" / "config" / "extrinsics.yaml")])
    assert rc == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "| 20 |" in table  # 20 fused frames in the summary
    res = read_outputs(out)
    per = res["/mmfusion/perception"]
    assert [round(stamp(m), 6) for _, m in per] == [round(t, 6) for t in CAM_STAMPS]
    assert all(t == int(round(stamp(m) * 1e9)) for t, m in per)  # log time = source stamp
    for _, m in per:
        s = stamp(m)
        want = ["camera", "audio", "imu"]
        # a frame is cut as soon as every sensor delivering is past its time (core/sync watermarks): the
        # first image's frame goes out before the first sweep (10 ms later) has arrived, later ones hold the
        # sweep before them; after the LiDAR stops it stays in frames until its 0.5 s timeout, then drops out
        if s >= T0 + 0.01 and s - 0.5 <= LIDAR_UNTIL + 0.01:
            want.insert(1, "lidar")
        assert list(m.present_modalities) == want, s
        assert len(m.fused_embedding) == 384 and abs(np.linalg.norm(m.fused_embedding) - 1) < 1e-3
        weights = dict(zip(m.modality_names, m.modality_weights))
        assert (weights["lidar"] > 0) == ("lidar" in want)
        assert len(m.labels) == 5
    assert any("lidar" not in m.present_modalities for _, m in per)
    caps = res["/mmfusion/caption"]
    evs = res["/mmfusion/events"]
    assert [stamp(m) for _, m in caps] == [stamp(m) for _, m in per]
    assert [stamp(m) for _, m in evs] == [stamp(m) for _, m in per]
    # a caption lists only the present sensors its clauses rest on (none for an empty caption)
    assert all(isinstance(m.text, str) and set(m.modalities_used) <= set(p.present_modalities)
               and bool(m.text) == bool(m.modalities_used) for (_, m), (_, p) in zip(caps, per))
    # RViz markers (ros/markers.py) at the same stamps, and one rendered PNG per frame (core/render.py)
    marks = res["/mmfusion/markers"]
    assert [t for t, _ in marks] == [t for t, _ in per]
    assert all(stamp(mk) == stamp(m) for (_, a), (_, m) in zip(marks, per) for mk in a.markers if mk.action == 0)
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 20 and all(p.stat().st_size > 1000 for p in pngs)


def test_rate_trigger_on_the_bag_clock(sensor_bag, random_model_dir, tmp_path):
    from mmfusion_ros.ros import offline

    values = offline.load_param_values(params_file(tmp_path, trigger="rate", rate_hz=5.0))
    opts = offline.OfflineOptions(bag=sensor_bag, out=tmp_path / "out", model_dir=random_model_dir,
                                  backend="onnxruntime", progress=False)
    summary = offline.process_bag(opts, values)
    per = read_outputs(tmp_path / "out")["/mmfusion/perception"]
    stamps = np.array([stamp(m) for _, m in per])
    assert summary.frames == len(per) >= 12  # 2.5 s of data at 5 Hz
    np.testing.assert_allclose(np.diff(stamps), 0.2, atol=1e-6)
    assert np.allclose(stamps * 5, np.round(stamps * 5), atol=1e-4)  # ticks on the 5 Hz grid of the clock
    assert stamps[0] >= T0 - 0.5 and stamps[-1] <= T0 + 2.0
    assert summary.present["imu"] == summary.frames
    assert 0 < summary.present["camera"] < summary.frames  # the first ticks precede the first image
    assert summary.sync["imu"]["received"] == 250


def test_remap_and_topic_selection(tmp_path, random_model_dir):
    from mmfusion_ros.ros import offline

    bag = tmp_path / "ns_bag"
    write_sensor_bag(bag, topic_prefix="/robot/")
    values = offline.load_param_values(None, {"sync.trigger": "imu", "backend.intra_op_threads": 1})
    opts = offline.OfflineOptions(bag=bag, out=tmp_path / "out", model_dir=random_model_dir, backend="onnxruntime",
                                  remaps=offline.parse_remaps(["/robot/imu/data:=imu/data",
                                                               "/robot/lidar/points:=lidar/points"]),
                                  topics=["/robot/imu/data"], progress=False)
    s = offline.process_bag(opts, values)
    assert [(i.topic, i.input) for i in s.inputs] == [("/robot/imu/data", "imu")]
    assert s.frames == 250 and s.present["imu"] == 250 and s.present["lidar"] == 0
    # without the remap the namespaced bag has nothing to read: a clear error
    opts = offline.OfflineOptions(bag=bag, out=tmp_path / "out2", model_dir=random_model_dir, progress=False)
    with pytest.raises(ValueError, match="no input topics"):
        offline.process_bag(opts, values)


def test_husky_ros1_bag_yields_imu_only_frames(shared_data, random_model_dir, tmp_path):
    from rosbags.highlevel import AnyReader

    from mmfusion_ros.ros import offline

    bag = shared_data / "ros1_bags" / "robot_localization_husky_imu.bag"
    values = offline.load_param_values(None, {"backend.intra_op_threads": 1})
    opts = offline.OfflineOptions(bag=bag, out=tmp_path / "out", model_dir=random_model_dir, backend="onnxruntime",
                                  progress=False)
    s = offline.process_bag(opts, values)
    assert [(i.topic, i.read, i.rejected) for i in s.inputs] == [("/imu/data", 11865, 0)]
    assert s.frames > 0.9 * 10 * s.bag_s  # 10 Hz over the recording
    assert s.present == {"camera": 0, "lidar": 0, "audio": 0, "imu": s.frames}
    with AnyReader([tmp_path / "out"]) as r:
        conn = [c for c in r.connections if c.topic == "/mmfusion/perception"]
        first = [r.deserialize(raw, c.msgtype) for c, _, raw in r.messages(connections=conn)][:50]
    assert all(list(m.present_modalities) == ["imu"] for m in first)
    st = [stamp(m) for m in first]
    assert st == sorted(st) and st[0] > 1.4e9  # the recording's own 2015 timeline


def test_corrupt_or_missing_bag_is_a_clear_error_with_exit_code_2(tmp_path, random_model_dir, capsys):
    bad = tmp_path / "corrupt.bag"
    bad.write_bytes(b"#ROSBAG V2.0\n" + bytes(range(256)) * 8)
    rc = main(["process", str(bad), "--out", str(tmp_path / "o1"), "--model", str(random_model_dir),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be read" in err and "Traceback" not in err
    rc = main(["process", str(tmp_path / "nope"), "--out", str(tmp_path / "o2"), "--no-progress"])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_existing_output_missing_model_and_bad_extrinsics_are_refused(sensor_bag, tmp_path, capsys,
                                                                      random_model_dir):
    bad = tmp_path / "bad_extrinsics.yaml"
    bad.write_text("extrinsics: {translation: [0, 0], rpy: [0, 0, 0]}\n")
    rc = main(["process", str(sensor_bag), "--out", str(tmp_path / "o0"), "--extrinsics", str(bad),
               "--model", str(random_model_dir), "--no-progress"])
    assert rc == 1 and "extrinsics" in capsys.readouterr().err
    rc = main(["process", str(sensor_bag), "--out", str(tmp_path / "o0"), "--no-progress",
               "--params", str(params_file(tmp_path, rate_hz=-1.0))])
    assert rc == 1 and "sync.rate_hz" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    rc = main(["process", str(sensor_bag), "--out", str(tmp_path / "exists"), "--no-progress"])
    assert rc == 5 and "already exists" in capsys.readouterr().err
    rc = main(["process", str(sensor_bag), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "no_model"),
               "--no-progress"])
    assert rc == 3 and "manifest.json" in capsys.readouterr().err


def test_malformed_messages_are_counted_and_processing_goes_on(tmp_path, random_model_dir):
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mmfusion_ros.ros import offline

    ts = typestore()
    T = ts.types
    bag = tmp_path / "bad_msgs"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        ci = w.add_connection("/imu/data", "sensor_msgs/msg/Imu", typestore=ts)
        ca = w.add_connection("/audio/audio", "mmfusion_msgs/msg/AudioFrame", typestore=ts)
        V3, Q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
        for k in range(100):
            t = T0 + 0.01 * k
            acc = V3(x=float("nan") if k % 10 == 0 else 0.0, y=0.0, z=9.81)
            m = T["sensor_msgs/msg/Imu"](header=bag_header(ts, t, "imu"), orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0),
                                         orientation_covariance=np.zeros(9), angular_velocity=V3(x=0.0, y=0.0, z=0.0),
                                         angular_velocity_covariance=np.zeros(9), linear_acceleration=acc,
                                         linear_acceleration_covariance=np.zeros(9))
            w.write(ci, int(t * 1e9), ts.serialize_cdr(m, "sensor_msgs/msg/Imu"))
        a = T["mmfusion_msgs/msg/AudioFrame"](header=bag_header(ts, T0, "mic"), sample_rate=16000, channels=2,
                                              encoding="S16LE", data=np.zeros(7, np.uint8))  # odd byte count
        w.write(ca, int(T0 * 1e9), ts.serialize_cdr(a, "mmfusion_msgs/msg/AudioFrame"))
    values = offline.load_param_values(None, {"sync.trigger": "imu", "backend.intra_op_threads": 1})
    s = offline.process_bag(offline.OfflineOptions(bag=bag, out=tmp_path / "out", model_dir=random_model_dir,
                                                   backend="onnxruntime", progress=False), values)
    by = {i.input: i for i in s.inputs}
    assert by["imu"].rejected == 10 and by["imu"].read == 100
    assert by["audio"].rejected == 1
    assert s.frames == 90


def test_header_clock_gives_the_same_camera_frames(sensor_bag, random_model_dir, tmp_path):
    from mmfusion_ros.ros import offline

    values = offline.load_param_values(params_file(tmp_path, trigger="camera"))
    opts = offline.OfflineOptions(bag=sensor_bag, out=tmp_path / "out", model_dir=random_model_dir,
                                  backend="onnxruntime", clock="header", progress=False)
    s = offline.process_bag(opts, values)
    per = read_outputs(tmp_path / "out")["/mmfusion/perception"]
    assert s.frames == 20 and [round(stamp(m), 6) for _, m in per] == [round(t, 6) for t in CAM_STAMPS]
