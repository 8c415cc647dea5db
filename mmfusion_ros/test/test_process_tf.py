"""`mmfusion process` takes the camera-LiDAR extrinsics from the bag's /tf_static (the YAML when the bag's
tree lacks the transform, or when --extrinsics is given), as the node does from the live topics."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from fault_bags import bag_header
from mmfusion_ros.cli import main
from mmfusion_ros.ros import params as P
from mmfusion_ros.ros.bag_io import typestore
from mmfusion_ros.ros.extrinsics import apply_bag_tf
from mmfusion_ros.ros.inputs import open_bag, route_connections

T0 = 1_700_000_000.0
#: velodyne -> camera optical: 20 cm ahead, 10 cm down, camera looking along the LiDAR's x
R_OPT = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # LiDAR axes -> optical axes


def _T_cam_lidar() -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R_OPT
    T[:3, 3] = -R_OPT @ np.array([0.2, 0.0, -0.1])
    return T


def write_bag(path: Path, tf_pairs) -> None:
    """Camera, camera_info and LiDAR at 10 Hz for 0.5 s, and one /tf_static message with `tf_pairs`."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from scipy.spatial.transform import Rotation

    ts = typestore()
    T = ts.types

    header = functools.partial(bag_header, ts)  # (t, frame_id) -> Header

    rng = np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        transforms = []
        for parent, child, M in tf_pairs:  # M maps child points into parent
            q = Rotation.from_matrix(M[:3, :3]).as_quat()
            transforms.append(T["geometry_msgs/msg/TransformStamped"](
                header=header(0.0, parent), child_frame_id=child,
                transform=T["geometry_msgs/msg/Transform"](
                    translation=T["geometry_msgs/msg/Vector3"](x=M[0, 3], y=M[1, 3], z=M[2, 3]),
                    rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))))
        w.write(c_tf, int(T0 * 1e9) - 1, ts.serialize_cdr(T["tf2_msgs/msg/TFMessage"](transforms=transforms),
                                                           "tf2_msgs/msg/TFMessage"))
        c_img = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection("/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_pts = w.add_connection("/lidar/points", "sensor_msgs/msg/PointCloud2", typestore=ts)
        for k in range(5):
            t = T0 + 0.1 * k
            img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            w.write(c_img, int(t * 1e9), ts.serialize_cdr(T["sensor_msgs/msg/Image"](
                header=header(t, "camera"), height=24, width=32, encoding="rgb8", is_bigendian=0, step=96,
                data=img.reshape(-1)), "sensor_msgs/msg/Image"))
            roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            w.write(c_info, int(t * 1e9), ts.serialize_cdr(T["sensor_msgs/msg/CameraInfo"](
                header=header(t, "camera"), height=24, width=32, distortion_model="plumb_bob", d=np.zeros(5),
                k=np.array([20.0, 0, 16, 0, 20, 12, 0, 0, 1]), r=np.eye(3).reshape(-1),
                p=np.array([20.0, 0, 16, 0, 0, 20, 12, 0, 0, 0, 1, 0]), binning_x=0, binning_y=0, roi=roi),
                "sensor_msgs/msg/CameraInfo"))
            pts = np.concatenate([rng.uniform(-10, 10, (200, 3)), rng.uniform(0, 1, (200, 1))], 1).astype(np.float32)
            fields = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1)
                      for i, n in enumerate(["x", "y", "z", "intensity"])]
            w.write(c_pts, int((t + 0.01) * 1e9), ts.serialize_cdr(T["sensor_msgs/msg/PointCloud2"](
                header=header(t + 0.01, "velodyne"), height=1, width=len(pts), fields=fields, is_bigendian=False,
                point_step=16, row_step=16 * len(pts), data=pts.view(np.uint8).reshape(-1), is_dense=True),
                "sensor_msgs/msg/PointCloud2"))


def _resolve(bag: Path, explicit: bool = False):
    values = P.validate(P.defaults())
    yaml_T = np.eye(4)
    pipe = NS(T_cam_lidar=yaml_T)
    reader = open_bag(bag)
    try:
        routes, _ = route_connections(reader.connections, values)
        source = apply_bag_tf(reader, {cid: r.name for cid, r in routes.items()}, values, pipe, explicit)
    finally:
        reader.close()
    return source, pipe.T_cam_lidar


def test_bag_tf_static_chain_gives_the_extrinsics(tmp_path):
    base_velo = np.eye(4)
    base_velo[:3, 3] = [0.0, 0.0, 1.8]
    # base_link -> velodyne and base_link -> camera: the chain goes through the common parent
    base_cam = base_velo @ np.linalg.inv(_T_cam_lidar())
    write_bag(tmp_path / "tf", [("base_link", "velodyne", base_velo), ("base_link", "camera", base_cam)])
    source, T = _resolve(tmp_path / "tf")
    assert source == "tf_static"
    np.testing.assert_allclose(T, _T_cam_lidar(), atol=1e-9)
    source, T = _resolve(tmp_path / "tf", explicit=True)  # --extrinsics on the command line wins
    assert source == "yaml" and np.array_equal(T, np.eye(4))


def test_bag_without_the_transform_warns_and_keeps_the_yaml(tmp_path, caplog):
    write_bag(tmp_path / "no_tf", [("base_link", "imu_link", np.eye(4))])
    with caplog.at_level(logging.WARNING, logger="mmfusion_ros.ros.extrinsics"):
        source, T = _resolve(tmp_path / "no_tf")
    assert source == "yaml" and np.array_equal(T, np.eye(4))
    assert any("TF has no transform between velodyne and camera" in r.getMessage() for r in caplog.records)


def test_process_command_reads_tf_static_from_the_bag(tmp_path, random_model_dir, caplog, capsys):
    bag = tmp_path / "bag"
    write_bag(bag, [("velodyne", "camera", np.linalg.inv(_T_cam_lidar()))])
    with caplog.at_level(logging.INFO, logger="mmfusion_ros.ros.extrinsics"):
        rc = main(["process", str(bag), "--out", str(tmp_path / "out"), "--model", str(random_model_dir),
                   "--backend", "onnxruntime", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert any(r.getMessage() == "extrinsics velodyne -> camera: from /tf_static" for r in caplog.records)
