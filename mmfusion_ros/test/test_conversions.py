"""Message <-> numpy conversions on rclpy messages and on rosbags messages (the same bytes via CDR)."""

from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.serialization import serialize_message

from mmfusion_ros.core.types import CameraIntrinsics
from mmfusion_ros.ros import conversions as cv
from mmfusion_ros.ros.bag_io import typestore


def as_rosbags(msg, typename):
    """The same message as the offline path sees it: rosbags dataclass from the rclpy CDR bytes."""
    return typestore().deserialize_cdr(serialize_message(msg), typename)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_image_round_trip_both_message_kinds(rng, encoding):
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    msg = cv.rgb_to_image(rgb, stamp=12.25, frame_id="cam", encoding=encoding)
    expected = rgb if encoding != "mono8" else np.repeat(cv.image_to_array(msg)[:, :, None], 3, axis=2)
    for m in (msg, as_rosbags(msg, "sensor_msgs/msg/Image")):
        out = cv.image_to_rgb(m)
        assert out.shape == (37, 53, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected)
        assert cv.header_stamp(m) == pytest.approx(12.25)


def test_mono16_big_endian_with_step_padding():
    px = np.array([[0x0102, 0xFF00, 0x8000], [0x0000, 0xFFFF, 0x1234]], dtype=np.uint16)
    step = 3 * 2 + 4  # 4 padding bytes per row
    rows = [px[r].astype(">u2").tobytes() + b"\xee" * 4 for r in range(2)]
    msg = SimpleNamespace(encoding="mono16", height=2, width=3, step=step, is_bigendian=1, data=b"".join(rows))
    np.testing.assert_array_equal(cv.image_to_array(msg), px)
    rgb = cv.image_to_rgb(msg)
    np.testing.assert_array_equal(rgb[:, :, 0], (px >> 8).astype(np.uint8))
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_image_errors_name_field_and_problem():
    good = dict(encoding="rgb8", height=2, width=2, step=6, is_bigendian=0, data=bytes(12))
    with pytest.raises(cv.ConversionError, match=r"Image.encoding: 'yuv422'"):
        cv.image_to_rgb(SimpleNamespace(**{**good, "encoding": "yuv422"}))
    with pytest.raises(cv.ConversionError, match=r"Image.step: 5 is smaller than width\*bytes_per_pixel 6"):
        cv.image_to_rgb(SimpleNamespace(**{**good, "step": 5}))
    with pytest.raises(cv.ConversionError, match=r"Image.data: has 11 bytes, expected at least 12"):
        cv.image_to_rgb(SimpleNamespace(**{**good, "data": bytes(11)}))
    with pytest.raises(cv.ConversionError, match=r"Image.width: is 0"):
        cv.image_to_rgb(SimpleNamespace(**{**good, "width": 0}))


def test_compressed_jpeg_and_png(rng):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (200, 30, 10)  # red left half survives JPEG
    for fmt in ("jpeg", "png"):
        msg = cv.rgb_to_compressed(rgb, fmt)
        out = cv.compressed_to_rgb(as_rosbags(msg, "sensor_msgs/msg/CompressedImage"))
        assert out.shape == (40, 60, 3)
        err = np.abs(out.astype(int) - rgb)  # (H, W, 3)
        if fmt == "png":
            assert err.max() == 0
        else:  # lossy: exact channel order away from the colour edge JPEG's chroma subsampling blurs
            assert err[:, :24].max() <= 8 and err[:, 36:].max() <= 8
    with pytest.raises(cv.ConversionError, match="CompressedImage.data: 4 bytes could not be decoded"):
        cv.compressed_to_rgb(SimpleNamespace(format="jpeg", data=b"\xff\xd8\x00\x01"))
    with pytest.raises(cv.ConversionError, match="CompressedImage.format"):
        cv.compressed_to_rgb(SimpleNamespace(format="theora", data=b"abc"))


# -------------------------------------------------------------------------------------- point clouds


def test_cloud_round_trip_with_ring_nan_and_rosbags(rng):
    pts = rng.normal(0, 10, (1000, 4)).astype(np.float32)
    pts[[3, 500], 2] = np.nan
    pts[7, 0] = np.inf
    msg = cv.xyzi_to_pointcloud2(pts, stamp=3.0, frame_id="lidar", ring=np.arange(1000) % 32)
    assert msg.point_step == 20
    keep = np.ones(1000, bool)
    keep[[3, 500, 7]] = False
    for m in (msg, as_rosbags(msg, "sensor_msgs/msg/PointCloud2")):
        out, dropped = cv.pointcloud2_to_xyzi_counted(m)
        assert dropped == 3
        np.testing.assert_array_equal(out, pts[keep])
        np.testing.assert_array_equal(cv.pointcloud2_to_xyz(m), pts[keep, :3])


def test_cloud_zero_copy_view_shares_the_message_buffer(rng):
    pts = rng.normal(size=(100, 4)).astype(np.float32)
    msg = cv.xyzi_to_pointcloud2(pts)
    m = SimpleNamespace(
        **{k: getattr(msg, k) for k in ("height", "width", "fields", "is_bigendian", "point_step", "row_step")}
    )
    m.data = bytearray(msg.data)
    view = cv.pointcloud2_to_xyz(m, drop_invalid=False)
    np.testing.assert_array_equal(view, pts[:, :3])
    m.data[0:4] = np.float32(42.0).tobytes()  # write through the message: the view sees it
    assert view[0, 0] == 42.0


def test_cloud_without_intensity_and_organised(rng):
    grid = rng.normal(size=(4, 6, 3)).astype(np.float32)
    msg = cv.xyzi_to_pointcloud2(grid)
    assert (msg.height, msg.width) == (4, 6)
    out = cv.pointcloud2_to_xyzi(msg)
    np.testing.assert_array_equal(out[:, :3], grid.reshape(-1, 3))
    assert (out[:, 3] == 0).all()


def test_empty_cloud_is_valid():
    msg = cv.xyzi_to_pointcloud2(np.zeros((0, 4), np.float32))
    out, dropped = cv.pointcloud2_to_xyzi_counted(msg)
    assert out.shape == (0, 4) and dropped == 0


def test_cloud_errors_name_field_and_problem():
    f = lambda name, off, dt=7: SimpleNamespace(name=name, offset=off, datatype=dt, count=1)  # noqa: E731
    fields = [f("x", 0), f("y", 4), f("z", 8), f("intensity", 12)]
    base = dict(height=1, width=2, point_step=16, row_step=32, is_bigendian=False, fields=fields, data=bytes(32))
    with pytest.raises(cv.ConversionError) as e:
        cv.pointcloud2_to_xyzi(SimpleNamespace(**{**base, "point_step": 12}))
    assert str(e.value) == "PointCloud2.point_step: 12 is smaller than field 'intensity' end 16"
    with pytest.raises(cv.ConversionError, match=r"PointCloud2.data: has 31 bytes, expected at least 32"):
        cv.pointcloud2_to_xyzi(SimpleNamespace(**{**base, "data": bytes(31)}))
    with pytest.raises(cv.ConversionError, match=r"PointCloud2.fields: no field 'z'"):
        cv.pointcloud2_to_xyzi(SimpleNamespace(**{**base, "fields": fields[:2]}))
    with pytest.raises(cv.ConversionError, match=r"field 'x' is int32, expected FLOAT32 or FLOAT64"):
        cv.pointcloud2_to_xyzi(SimpleNamespace(**{**base, "fields": [f("x", 0, 5)] + fields[1:]}))
    with pytest.raises(cv.ConversionError, match=r"PointCloud2.row_step: 16 is smaller than width\*point_step 32"):
        cv.pointcloud2_to_xyzi(SimpleNamespace(**{**base, "height": 2, "width": 2, "row_step": 16, "data": bytes(64)}))
    with pytest.raises(cv.ConversionError, match=r"PointCloud2.data: unsupported container type str"):
        cv.pointcloud2_to_xyzi(SimpleNamespace(**{**base, "data": "not bytes"}))


def test_data_containers_are_all_accepted(rng):
    pts = rng.normal(size=(5, 4)).astype(np.float32)
    msg = cv.xyzi_to_pointcloud2(pts)
    raw = bytes(msg.data)
    attrs = {k: getattr(msg, k) for k in ("height", "width", "fields", "is_bigendian", "point_step", "row_step")}
    for data in (
        raw,
        bytearray(raw),
        memoryview(raw),
        array.array("B", raw),
        list(raw),
        [bytes([b]) for b in raw],
        np.frombuffer(raw, np.uint8),
    ):
        np.testing.assert_array_equal(cv.pointcloud2_to_xyzi(SimpleNamespace(**attrs, data=data)), pts)


# --------------------------------------------------------------------------------- imu, camera info


def test_imu_round_trip_and_nan_rejected():
    msg = cv.imu_to_msg(100.5, [0.1, -0.2, 9.81], [0.01, 0.02, -0.03], [0, 0, 0.7071068, 0.7071068], frame_id="imu")
    for m in (msg, as_rosbags(msg, "sensor_msgs/msg/Imu")):
        r = cv.imu_to_reading(m)
        assert r.stamp == pytest.approx(100.5)
        np.testing.assert_allclose(r.accel, [0.1, -0.2, 9.81])
        np.testing.assert_allclose(r.gyro, [0.01, 0.02, -0.03])
        np.testing.assert_allclose(r.orientation, [0, 0, 0.7071068, 0.7071068])
        assert r.row.dtype == np.float32 and r.row.shape == (6,)
    no_orient = cv.imu_to_msg(1.0, [0, 0, 9.8], [0, 0, 0])
    assert no_orient.orientation_covariance[0] == -1.0
    msg.linear_acceleration.y = float("nan")
    with pytest.raises(cv.ConversionError, match="Imu.linear_acceleration: contains non-finite"):
        cv.imu_to_reading(msg)


def test_camera_info_round_trip_and_uncalibrated():
    K = np.array([[700.0, 0, 620], [0, 710.0, 187], [0, 0, 1]])
    msg = cv.intrinsics_to_camera_info(CameraIntrinsics(1224, 370, K, "cam_left"), stamp=5.0)
    for m in (msg, as_rosbags(msg, "sensor_msgs/msg/CameraInfo")):
        intr = cv.camera_info_to_intrinsics(m)
        assert (intr.width, intr.height, intr.frame_id) == (1224, 370, "cam_left")
        np.testing.assert_array_equal(intr.K, K)
    ros1_style = SimpleNamespace(K=list(K.reshape(-1)), width=10, height=10, header=SimpleNamespace(frame_id="c"))
    np.testing.assert_array_equal(cv.camera_info_to_intrinsics(ros1_style).K, K)
    with pytest.raises(cv.ConversionError, match=r"CameraInfo.k: focal lengths fx=0.0"):
        cv.camera_info_to_intrinsics(SimpleNamespace(k=[0.0] * 9, width=10, height=10))


# ---------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("encoding", ["S16LE", "F32LE"])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_audio_round_trip(rng, encoding, channels):
    x = np.round(rng.uniform(-1, 1, (480, channels)) * 32768).clip(-32768, 32767) / 32768  # exactly representable
    msg = cv.array_to_audio(x.astype(np.float32), 48000, encoding, stamp=7.0)
    assert msg.channels == channels and len(msg.data) == 480 * channels * (2 if encoding == "S16LE" else 4)
    for m in (msg, as_rosbags(msg, "mmfusion_msgs/msg/AudioFrame")):
        out, rate = cv.audio_to_array(m)
        assert rate == 48000 and out.shape == (480, channels) and out.dtype == np.float32
        np.testing.assert_array_equal(out, x.astype(np.float32))


def test_audio_int16_block_packs_unchanged_and_errors():
    block = np.array([[-32768, 32767], [0, 1]], np.int16)
    data, ch = cv.pack_audio(block, "S16LE")
    assert ch == 2 and data == block.astype("<i2").tobytes()
    with pytest.raises(cv.ConversionError, match=r"within \[-1, 1\] for S16LE"):
        cv.pack_audio(np.array([1.5], np.float32), "S16LE")
    bad = SimpleNamespace(encoding="S16LE", sample_rate=16000, channels=2, data=bytes(6))
    with pytest.raises(
        cv.ConversionError, match="AudioFrame.data: 6 bytes is not a whole number of 2-channel S16LE frames"
    ):
        cv.audio_to_array(bad)
    with pytest.raises(cv.ConversionError, match="AudioFrame.encoding: 'U8'"):
        cv.audio_to_array(SimpleNamespace(encoding="U8", sample_rate=16000, channels=1, data=b""))


# ----------------------------------------------------------------------------------------------- time


def test_stamp_helpers():
    assert cv.sec_to_time_parts(1.5) == (1, 500_000_000)
    assert cv.sec_to_time_parts(2.9999999999) == (3, 0)
    t = cv.sec_to_stamp(1700000000.123456789)
    assert cv.stamp_to_sec(t) == pytest.approx(1700000000.123456789, abs=1e-9)
    with pytest.raises(cv.ConversionError, match="stamp: -1.0 s is not a representable ROS time"):
        cv.sec_to_time_parts(-1.0)
