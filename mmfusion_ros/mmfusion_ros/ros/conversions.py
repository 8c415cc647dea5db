"""Sensor messages <-> numpy arrays, for rclpy messages and rosbags messages alike.

Readers are duck-typed on field names, so the live node (rclpy objects, ``data`` as ``array.array``)
and offline bag processing (rosbags dataclasses, ``data`` as a numpy array) share one implementation;
``data`` may also be ``bytes``, ``bytearray``, ``memoryview`` or a list. Builders return rclpy messages
and fill ``data`` with ``arr.tobytes()`` (assigning an ndarray to an rclpy field is ~650x slower).

Every malformed input raises :class:`ConversionError` naming the field and the problem, never another
exception type, so callers can count and log a rejected message with one ``except``.

Physical plausibility (:class:`Limits`, the node's ``limits.*`` parameters) is checked here too, so one
absurd value costs only its own message: an audio chunk or IMU sample beyond its bound is rejected
(ConversionError); a point cloud keeps its good points and drops the implausible ones, counted like
non-finite points (a LiDAR return at 1e20 m is one bad return, not a bad sweep).
"""

from __future__ import annotations

import array
import math
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..core.types import CameraIntrinsics


class ConversionError(ValueError):
    """A message could not be converted; ``field`` says where (``"PointCloud2.point_step"``)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# ------------------------------------------------------------------------------------ plausibility


@dataclass(frozen=True)
class Limits:
    """Physical plausibility bounds per input, applied at conversion (node parameters ``limits.<field>``)."""

    audio_max_abs: float = 10.0  # largest |sample| of a float audio chunk (full scale 1); beyond: chunk rejected
    lidar_max_range_m: float = 1000.0  # LiDAR points farther than this from the sensor are dropped (counted)
    imu_max_accel: float = 500.0  # largest |linear acceleration|, m/s^2 (about 50 g); beyond: sample rejected
    imu_max_gyro: float = 100.0  # largest |angular velocity|, rad/s (about 5700 deg/s); beyond: sample rejected

    @classmethod
    def from_params(cls, values: Dict[str, Any]) -> "Limits":
        """From the node's parameter values (``limits.<field>``); a missing one keeps its default."""
        d = cls()
        return cls(**{f: float(values.get(f"limits.{f}", getattr(d, f))) for f in
                      ("audio_max_abs", "lidar_max_range_m", "imu_max_accel", "imu_max_gyro")}).validate()

    def validate(self) -> "Limits":
        for name in ("audio_max_abs", "lidar_max_range_m", "imu_max_accel", "imu_max_gyro"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"limits.{name}: must be a finite number > 0, got {v!r}")
        return self


#: The defaults (what a conversion called without ``limits`` applies).
DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------------------------- time


def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> float seconds."""
    try:
        return int(stamp.sec) + int(stamp.nanosec) * 1e-9
    except (AttributeError, TypeError, ValueError) as e:
        raise ConversionError("stamp", f"not a Time with sec/nanosec ({e})") from None


def header_stamp(msg: Any) -> float:
    """Seconds of ``msg.header.stamp``."""
    header = getattr(msg, "header", None)
    if header is None:
        raise ConversionError(f"{_type_name(msg)}.header", "missing")
    return stamp_to_sec(getattr(header, "stamp", None))


def sec_to_time_parts(t: float) -> Tuple[int, int]:
    """Float seconds -> (sec, nanosec) with nanosec in [0, 1e9), rounding to the nearest nanosecond."""
    if not math.isfinite(t) or t < 0 or t >= 2**31:
        raise ConversionError("stamp", f"{t!r} s is not a representable ROS time (0 <= t < 2^31)")
    ns = int(round(t * 1e9))
    return ns // 1_000_000_000, ns % 1_000_000_000


def sec_to_stamp(t: float):
    """Float seconds -> builtin_interfaces.msg.Time."""
    from builtin_interfaces.msg import Time

    sec, nanosec = sec_to_time_parts(t)
    return Time(sec=sec, nanosec=nanosec)


def make_header(stamp: float, frame_id: str = ""):
    """std_msgs.msg.Header at ``stamp`` seconds."""
    from std_msgs.msg import Header

    return Header(stamp=sec_to_stamp(stamp), frame_id=frame_id)


# ------------------------------------------------------------------------------------------ helpers


def _type_name(msg: Any) -> str:
    name = getattr(msg, "__msgtype__", None) or type(msg).__name__
    return str(name).rsplit("/", 1)[-1]


def _uint8_buffer(data: Any, field: str) -> np.ndarray:
    """Message ``data`` of any supported container -> 1-D uint8 array (zero-copy where possible)."""
    if isinstance(data, np.ndarray):
        if data.dtype == np.uint8 and data.ndim == 1:
            return data
        if data.dtype.kind not in "biuf":
            raise ConversionError(field, f"array of dtype {data.dtype} is not raw bytes")
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, (list, tuple)):
        if not data:
            return np.zeros(0, np.uint8)
        if isinstance(data[0], (bytes, bytearray)):  # rclpy `byte[]` fields arrive as a list of 1-byte bytes
            try:
                return np.frombuffer(b"".join(data), dtype=np.uint8)
            except TypeError as e:
                raise ConversionError(field, f"mixed element types ({e})") from None
        try:
            return np.asarray(data, dtype=np.uint8)
        except (OverflowError, TypeError, ValueError) as e:
            raise ConversionError(field, f"is not a list of bytes 0..255 ({e})") from None
    raise ConversionError(field, f"unsupported container type {type(data).__name__}")


def _int_field(msg: Any, name: str, type_name: str) -> int:
    try:
        v = getattr(msg, name)
    except AttributeError:
        raise ConversionError(f"{type_name}.{name}", "missing") from None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ConversionError(f"{type_name}.{name}", f"{v!r} is not an integer")
    if v < 0:
        raise ConversionError(f"{type_name}.{name}", f"{v} is negative")
    return int(v)


# -------------------------------------------------------------------------------------------- Image

#: encoding -> (numpy dtype, channels); channel order is the encoding's own.
IMAGE_ENCODINGS: Dict[str, Tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
}


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> its pixels in the native dtype and channel order, a fresh native-endian copy.

    (H,W) for mono8/mono16, (H,W,C) otherwise. ``step`` padding is skipped and big-endian mono16 is
    byte-swapped, so the values are the ones the camera meant.
    """
    enc = getattr(msg, "encoding", None)
    if enc not in IMAGE_ENCODINGS:
        raise ConversionError("Image.encoding", f"{enc!r} is not one of {sorted(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[enc]
    height = _int_field(msg, "height", "Image")
    width = _int_field(msg, "width", "Image")
    step = _int_field(msg, "step", "Image")
    if height == 0 or width == 0:
        raise ConversionError("Image.height" if height == 0 else "Image.width", "is 0 (empty image)")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ConversionError("Image.step", f"{step} is smaller than width*bytes_per_pixel {row_bytes} ({enc})")
    buf = _uint8_buffer(getattr(msg, "data", None), "Image.data")
    need = (height - 1) * step + row_bytes
    if buf.size < need:
        raise ConversionError(
            "Image.data", f"has {buf.size} bytes, expected at least {need} ({height} rows of step {step})"
        )
    big = bool(getattr(msg, "is_bigendian", 0))
    dt = dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype
    # strided view over the message buffer: rows `step` apart, padding never read
    view = np.ndarray(
        (height, width, channels), dtype=dt, buffer=buf, strides=(step, channels * dtype.itemsize, dtype.itemsize)
    )  # (H, W, C)
    out = view.astype(dtype.newbyteorder("="), copy=True)  # (H, W, C) native endian, contiguous
    return out[:, :, 0] if channels == 1 else out


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H,W,3) uint8 RGB, what the model takes.

    mono16 keeps its top 8 bits (value >> 8), the full-range mapping of 16-bit to 8-bit; alpha is dropped.
    """
    enc = getattr(msg, "encoding", None)
    px = image_to_array(msg)
    if enc == "rgb8":
        return px
    if enc == "bgr8":
        return np.ascontiguousarray(px[:, :, ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(px[:, :, :3])
    if enc == "bgra8":
        return np.ascontiguousarray(px[:, :, 2::-1])
    if enc == "mono16":
        px = (px >> 8).astype(np.uint8)  # (H, W)
    return np.repeat(px[:, :, None], 3, axis=2)  # (H, W, 3)


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, decoded by OpenCV) -> (H,W,3) uint8 RGB."""
    fmt = str(getattr(msg, "format", "") or "").lower()
    if fmt and "jpeg" not in fmt and "jpg" not in fmt and "png" not in fmt:
        raise ConversionError("CompressedImage.format", f"{fmt!r} is neither jpeg nor png")
    buf = _uint8_buffer(getattr(msg, "data", None), "CompressedImage.data")
    if buf.size == 0:
        raise ConversionError("CompressedImage.data", "is empty")
    try:
        # the stored pixels, as cv_bridge and compressed_image_transport return them: an EXIF orientation
        # tag is not applied (CameraInfo describes the sensor's pixel grid, not a rotated view of it)
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # (H, W, 3) BGR
    except cv2.error as e:
        raise ConversionError("CompressedImage.data", f"could not be decoded ({e})") from None
    if bgr is None:
        raise ConversionError("CompressedImage.data", f"{buf.size} bytes could not be decoded as {fmt or 'jpeg/png'}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def array_to_image(pixels: np.ndarray, encoding: str = "rgb8", stamp: float = 0.0, frame_id: str = ""):
    """(H,W[,C]) array already in ``encoding``'s dtype and channel order -> rclpy sensor_msgs.msg.Image."""
    from sensor_msgs.msg import Image

    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError("Image.encoding", f"{encoding!r} is not one of {sorted(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    px = np.asarray(pixels)
    if px.ndim == 2 and channels == 1:
        px = px[:, :, None]
    if px.ndim != 3 or px.shape[2] != channels:
        raise ConversionError(
            "Image.data", f"array of shape {px.shape} does not have {channels} channel(s) for {encoding}"
        )
    if px.dtype != dtype:
        raise ConversionError("Image.data", f"array dtype {px.dtype} is not {dtype} for {encoding}")
    h, w = px.shape[:2]
    msg = Image(header=make_header(stamp, frame_id), height=h, width=w, encoding=encoding)
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = w * channels * dtype.itemsize
    msg.data = np.ascontiguousarray(px).tobytes()
    return msg


def rgb_to_image(rgb: np.ndarray, stamp: float = 0.0, frame_id: str = "", encoding: str = "rgb8"):
    """(H,W,3) uint8 RGB -> rclpy Image in ``encoding`` (rgb8, bgr8, rgba8, bgra8 or mono8)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ConversionError("Image.data", f"expected (H,W,3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    conv = {
        "rgb8": lambda a: a,
        "bgr8": lambda a: a[:, :, ::-1],
        "rgba8": lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2RGBA),
        "bgra8": lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2BGRA),
        "mono8": lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2GRAY),
    }
    if encoding not in conv:
        raise ConversionError("Image.encoding", f"{encoding!r} cannot be built from RGB (use array_to_image)")
    return array_to_image(conv[encoding](rgb), encoding, stamp, frame_id)


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", stamp: float = 0.0, frame_id: str = "", quality: int = 90):
    """(H,W,3) uint8 RGB -> rclpy sensor_msgs.msg.CompressedImage (jpeg or png)."""
    from sensor_msgs.msg import CompressedImage

    if fmt not in ("jpeg", "png"):
        raise ConversionError("CompressedImage.format", f"{fmt!r} is neither jpeg nor png")
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, enc = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), bgr, params)
    if not ok:
        raise ConversionError("CompressedImage.data", f"OpenCV could not encode {fmt}")
    msg = CompressedImage(header=make_header(stamp, frame_id), format=fmt)
    msg.data = enc.tobytes()
    return msg


# -------------------------------------------------------------------------------------- PointCloud2

#: sensor_msgs/PointField datatype -> numpy scalar type
POINTFIELD_DTYPES: Dict[int, np.dtype] = {
    1: np.dtype(np.int8),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int16),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int32),
    6: np.dtype(np.uint32),
    7: np.dtype(np.float32),
    8: np.dtype(np.float64),
}
FLOAT32, FLOAT64, UINT16 = 7, 8, 4
#: field names read as intensity, first match wins (KITTI calls it reflectance)
INTENSITY_NAMES = ("intensity", "i", "reflectance")


class CloudLayout(NamedTuple):
    """Validated geometry of a PointCloud2: where x, y, z and intensity sit in each point."""

    height: int
    width: int
    point_step: int
    row_step: int
    big_endian: bool
    fields: Dict[str, Tuple[int, np.dtype]]  # name -> (offset, dtype) of the fields we read
    buffer: np.ndarray  # (bytes,) uint8 view of data


def _cloud_layout(msg: Any) -> CloudLayout:
    """Check every size and offset of a PointCloud2 before any byte is read."""
    height = _int_field(msg, "height", "PointCloud2")
    width = _int_field(msg, "width", "PointCloud2")
    point_step = _int_field(msg, "point_step", "PointCloud2")
    row_step = _int_field(msg, "row_step", "PointCloud2")
    big = bool(getattr(msg, "is_bigendian", False))
    fields = getattr(msg, "fields", None)
    if fields is None:
        raise ConversionError("PointCloud2.fields", "missing")
    found: Dict[str, Tuple[int, np.dtype]] = {}
    for i, f in enumerate(fields):
        name = getattr(f, "name", None)
        if not isinstance(name, str):
            raise ConversionError(f"PointCloud2.fields[{i}].name", f"{name!r} is not a string")
        offset = _int_field(f, "offset", f"PointCloud2.fields[{i}]")
        datatype = _int_field(f, "datatype", f"PointCloud2.fields[{i}]")
        count = _int_field(f, "count", f"PointCloud2.fields[{i}]")
        if datatype not in POINTFIELD_DTYPES:
            raise ConversionError(
                f"PointCloud2.fields[{i}].datatype", f"{datatype} (field {name!r}) is not a PointField type 1..8"
            )
        end = offset + POINTFIELD_DTYPES[datatype].itemsize * max(count, 1)
        if end > point_step:
            raise ConversionError("PointCloud2.point_step", f"{point_step} is smaller than field {name!r} end {end}")
        if name not in found:
            found[name] = (offset, POINTFIELD_DTYPES[datatype])
    for axis in "xyz":
        if axis not in found:
            raise ConversionError(
                "PointCloud2.fields", f"no field {axis!r} (have {[getattr(f, 'name', '?') for f in fields]})"
            )
        if found[axis][1].kind != "f":
            raise ConversionError(
                "PointCloud2.fields", f"field {axis!r} is {found[axis][1]}, expected FLOAT32 or FLOAT64"
            )
    wanted = {a: found[a] for a in "xyz"}
    for name in INTENSITY_NAMES:
        if name in found:
            wanted["intensity"] = found[name]
            break
    buf = _uint8_buffer(getattr(msg, "data", None), "PointCloud2.data")
    n = height * width
    if n > 0:
        if point_step == 0:
            raise ConversionError("PointCloud2.point_step", f"is 0 for {n} points")
        if height > 1 and row_step < width * point_step:
            raise ConversionError(
                "PointCloud2.row_step", f"{row_step} is smaller than width*point_step {width * point_step}"
            )
        need = (height - 1) * row_step + width * point_step
        if buf.size < need:
            raise ConversionError(
                "PointCloud2.data", f"has {buf.size} bytes, expected at least {need} ({height}x{width} points)"
            )
    return CloudLayout(height, width, point_step, row_step, big, wanted, buf)


def _field_view(layout: CloudLayout, name: str) -> np.ndarray:
    """(H, W) strided view of one field over the message buffer (no copy)."""
    offset, dt = layout.fields[name]
    dt = dt.newbyteorder(">" if layout.big_endian else "<") if dt.itemsize > 1 else dt
    row_stride = layout.row_step if layout.height > 1 else layout.width * layout.point_step
    return np.ndarray(
        (layout.height, layout.width),
        dtype=dt,
        buffer=layout.buffer,
        offset=offset,
        strides=(row_stride, layout.point_step),
    )


def _xyz_view(layout: CloudLayout) -> Optional[np.ndarray]:
    """(N,3) float32 zero-copy view when x,y,z are consecutive native float32 and rows are unpadded."""
    (ox, dx), (oy, dy), (oz, dz) = layout.fields["x"], layout.fields["y"], layout.fields["z"]
    native_le = not layout.big_endian and sys.byteorder == "little"
    consecutive = oy == ox + 4 and oz == ox + 8
    unpadded = layout.height <= 1 or layout.row_step == layout.width * layout.point_step
    if not (native_le and consecutive and unpadded and dx == dy == dz == np.float32):
        return None
    n = layout.height * layout.width
    return np.ndarray((n, 3), np.float32, buffer=layout.buffer, offset=ox, strides=(layout.point_step, 4))


def _finite_rows(xyz: np.ndarray) -> Optional[np.ndarray]:
    """(N,) mask of rows whose values (x,y,z[,intensity]) are all finite, or None when every row is (the
    common case).

    One flat check first: ``isfinite(...).all(axis=1)`` costs ~8x more than this on 65k points.
    """
    fin = np.isfinite(xyz)  # (N, C)
    if fin.all():
        return None
    mask = fin[:, 0].copy()  # (N,)
    for j in range(1, fin.shape[1]):
        mask &= fin[:, j]
    return mask


def pointcloud2_to_xyz(msg: Any, drop_invalid: bool = True) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> (N,3) float32 x,y,z, row-major over organised clouds.

    With ``drop_invalid=False`` and x,y,z as consecutive little-endian float32 this is a read-only
    zero-copy view of the message buffer; otherwise a fresh array without non-finite points.
    """
    layout = _cloud_layout(msg)
    n = layout.height * layout.width
    if n == 0:
        return np.zeros((0, 3), np.float32)
    xyz = _xyz_view(layout)  # (N, 3) or None
    if xyz is None:
        xyz = np.empty((n, 3), np.float32)
        for i, axis in enumerate("xyz"):
            xyz[:, i] = _field_view(layout, axis).reshape(-1)
    if not drop_invalid:
        return xyz
    xyz = np.ascontiguousarray(xyz)  # (N, 3) fresh copy when it was a view
    mask = _finite_rows(xyz)
    return xyz if mask is None else xyz[mask]


def pointcloud2_to_xyzi_counted(msg: Any, limits: Optional[Limits] = None) -> Tuple[np.ndarray, int]:
    """sensor_msgs/PointCloud2 -> ((N,4) float32 x,y,z,intensity, points dropped).

    Intensity is read from the first field named intensity, i or reflectance (any numeric type, cast
    to float32, values unchanged) and is 0 when the cloud has none. Points with a NaN or infinite
    x, y, z or intensity, or farther than ``limits.lidar_max_range_m`` from the sensor, are dropped
    and counted (the good points of the sweep are kept); organised clouds come out row-major.
    """
    max_range = float((limits or DEFAULT_LIMITS).lidar_max_range_m)
    layout = _cloud_layout(msg)
    n = layout.height * layout.width
    out = np.empty((n, 4), np.float32)  # (N, 4)
    if n == 0:
        return out, 0
    xyz = _xyz_view(layout)
    if xyz is not None:
        out[:, :3] = xyz
    else:
        for i, axis in enumerate("xyz"):
            out[:, i] = _field_view(layout, axis).reshape(-1)
    if "intensity" in layout.fields:
        out[:, 3] = _field_view(layout, "intensity").reshape(-1)
    else:
        out[:, 3] = 0.0
    mask = _finite_rows(out)  # (N,) or None: x, y, z and intensity finite
    # points within the range bound: one cheap test on the largest coordinate first (the common case)
    peak = float(np.abs(out[:, :3]).max(initial=0.0)) if mask is None else \
        float(np.abs(out[mask, :3]).max(initial=0.0))
    if peak > max_range / math.sqrt(3.0):
        with np.errstate(over="ignore", invalid="ignore"):
            xyz = out[:, :3].astype(np.float64)  # (N, 3): squares of 1e20 overflow float32
            near = (xyz * xyz).sum(axis=1) <= max_range * max_range  # (N,) False for NaN too
        mask = near if mask is None else (mask & near)
    if mask is None:
        return out, 0
    return out[mask], int(n - np.count_nonzero(mask))


def pointcloud2_to_xyzi(msg: Any, limits: Optional[Limits] = None) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> (N,4) float32 x,y,z,intensity with non-finite and out-of-range points dropped."""
    return pointcloud2_to_xyzi_counted(msg, limits)[0]


def xyzi_to_pointcloud2(
    points: np.ndarray,
    stamp: float = 0.0,
    frame_id: str = "lidar",
    ring: Optional[np.ndarray] = None,
):
    """(N,3|4) or organised (H,W,3|4) float array -> rclpy PointCloud2 with float32 x,y,z,intensity[,uint16 ring].

    Layout: x,y,z,intensity float32 at offsets 0,4,8,12; ring uint16 at 16 (point_step 20, 4-byte
    aligned) when ``ring`` (shape (N,) or (H,W)) is given. A (N,3) input gets intensity 0.
    """
    from sensor_msgs.msg import PointCloud2, PointField

    pts = np.asarray(points)
    if pts.ndim == 2:
        pts = pts[None]  # (1, N, C)
    if pts.ndim != 3 or pts.shape[2] not in (3, 4):
        raise ConversionError("PointCloud2.data", f"expected (N,3|4) or (H,W,3|4) points, got {np.shape(points)}")
    h, w = pts.shape[:2]
    names = ["x", "y", "z", "intensity"]
    formats: List[Any] = [np.float32] * 4
    if ring is not None:
        ring = np.asarray(ring).reshape(-1)
        if ring.size != h * w:
            raise ConversionError("PointCloud2.ring", f"{ring.size} values for {h * w} points")
        names.append("ring")
        formats.append(np.uint16)
    offsets = [0, 4, 8, 12, 16][: len(names)]
    step = 20 if ring is not None else 16
    rec = np.zeros(h * w, dtype=np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step}))
    flat = pts.reshape(h * w, pts.shape[2])  # (N, C)
    for i in range(flat.shape[1]):
        rec[names[i]] = flat[:, i]
    if ring is not None:
        rec["ring"] = ring
    msg = PointCloud2(header=make_header(stamp, frame_id), height=h, width=w)
    msg.fields = [
        PointField(name=n, offset=o, datatype=(UINT16 if n == "ring" else FLOAT32), count=1)
        for n, o in zip(names, offsets)
    ]
    msg.is_bigendian = sys.byteorder == "big"
    msg.point_step = step
    msg.row_step = step * w
    msg.is_dense = bool(np.isfinite(flat[:, :3]).all())
    msg.data = rec.tobytes()
    return msg


# ---------------------------------------------------------------------------------------------- Imu


class ImuReading(NamedTuple):
    """One sensor_msgs/Imu in SI units."""

    stamp: float  # seconds
    accel: np.ndarray  # (3,) float64 m/s^2
    gyro: np.ndarray  # (3,) float64 rad/s
    orientation: np.ndarray  # (4,) float64 quaternion x,y,z,w (all zero when the IMU gives none)

    @property
    def row(self) -> np.ndarray:
        """(6,) float32 ax,ay,az,gx,gy,gz: one row of SensorFrame.imu."""
        return np.concatenate([self.accel, self.gyro]).astype(np.float32)


def _vec3(v: Any, field: str) -> np.ndarray:
    try:
        a = np.array([float(v.x), float(v.y), float(v.z)])
    except (AttributeError, TypeError, ValueError) as e:
        raise ConversionError(field, f"not a vector with x,y,z ({e})") from None
    if not np.isfinite(a).all():
        raise ConversionError(field, f"contains non-finite values {a.tolist()}")
    return a


def imu_to_reading(msg: Any, limits: Optional[Limits] = None) -> ImuReading:
    """sensor_msgs/Imu -> ImuReading; NaN/inf acceleration or rate raises, and so does a magnitude beyond
    ``limits.imu_max_accel`` / ``imu_max_gyro`` (orientation is passed as given)."""
    lim = limits or DEFAULT_LIMITS
    stamp = header_stamp(msg)
    accel = _vec3(getattr(msg, "linear_acceleration", None), "Imu.linear_acceleration")
    gyro = _vec3(getattr(msg, "angular_velocity", None), "Imu.angular_velocity")
    for field, v, bound, name, unit in (("Imu.linear_acceleration", accel, lim.imu_max_accel, "imu_max_accel", "m/s^2"),
                                        ("Imu.angular_velocity", gyro, lim.imu_max_gyro, "imu_max_gyro", "rad/s")):
        mag = float(np.linalg.norm(v))
        if mag > bound:
            raise ConversionError(field, f"magnitude {mag:.4g} {unit} is beyond the plausible {bound:g} "
                                         f"(parameter limits.{name})")
    q = getattr(msg, "orientation", None)
    try:
        orientation = np.array([float(q.x), float(q.y), float(q.z), float(q.w)])
    except (AttributeError, TypeError, ValueError) as e:
        raise ConversionError("Imu.orientation", f"not a quaternion ({e})") from None
    return ImuReading(stamp, accel, gyro, orientation)


def imu_to_msg(
    stamp: float,
    accel: Sequence[float],
    gyro: Sequence[float],
    orientation: Optional[Sequence[float]] = None,
    frame_id: str = "imu",
):
    """Arrays -> rclpy sensor_msgs.msg.Imu; without ``orientation`` its covariance[0] is -1 (REP 145: none)."""
    from geometry_msgs.msg import Quaternion, Vector3
    from sensor_msgs.msg import Imu

    a = np.asarray(accel, np.float64).reshape(-1)
    g = np.asarray(gyro, np.float64).reshape(-1)
    if a.size != 3 or g.size != 3:
        raise ConversionError("Imu", f"accel and gyro need 3 values each, got {a.size} and {g.size}")
    msg = Imu(header=make_header(stamp, frame_id))
    msg.linear_acceleration = Vector3(x=float(a[0]), y=float(a[1]), z=float(a[2]))
    msg.angular_velocity = Vector3(x=float(g[0]), y=float(g[1]), z=float(g[2]))
    if orientation is None:
        msg.orientation_covariance[0] = -1.0
    else:
        q = np.asarray(orientation, np.float64).reshape(-1)
        if q.size != 4:
            raise ConversionError("Imu.orientation", f"needs 4 values x,y,z,w, got {q.size}")
        msg.orientation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return msg


# --------------------------------------------------------------------------------------- CameraInfo


def camera_info_to_intrinsics(msg: Any) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo (``k``, or ROS 1's ``K``) -> CameraIntrinsics; an uncalibrated K raises."""
    k = getattr(msg, "k", None)
    if k is None:
        k = getattr(msg, "K", None)
    if k is None:
        raise ConversionError("CameraInfo.k", "missing")
    try:
        K = np.asarray(k, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ConversionError("CameraInfo.k", f"not numeric ({e})") from None
    if K.size != 9:
        raise ConversionError("CameraInfo.k", f"has {K.size} values, expected 9")
    if not np.isfinite(K).all():
        raise ConversionError("CameraInfo.k", "contains non-finite values")
    K = K.reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConversionError(
            "CameraInfo.k", f"focal lengths fx={K[0, 0]}, fy={K[1, 1]} must be > 0 (uncalibrated camera?)"
        )
    width = _int_field(msg, "width", "CameraInfo")
    height = _int_field(msg, "height", "CameraInfo")
    if width == 0 or height == 0:
        raise ConversionError("CameraInfo.width" if width == 0 else "CameraInfo.height", "is 0")
    K, width, height = _binned_roi(msg, K, width, height)
    frame_id = getattr(getattr(msg, "header", None), "frame_id", "") or "camera"
    return CameraIntrinsics(width=width, height=height, K=K, frame_id=frame_id)


def _binned_roi(msg: Any, K: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, int, int]:
    """K and image size of the image actually published, as image_geometry's PinholeCameraModel computes
    them: CameraInfo's K and size describe the full-resolution sensor; a driver that bins (binning_x/y, 0
    meaning 1) and crops to ``roi`` publishes images of roi.width/binning_x x roi.height/binning_y pixels
    (an all-zero roi = the full image), whose intrinsics are fx/bx, fy/by, (cx - roi.x_offset)/bx,
    (cy - roi.y_offset)/by."""
    bx = getattr(msg, "binning_x", 0)
    by = getattr(msg, "binning_y", 0)
    bx = 1 if not bx else _int_field(msg, "binning_x", "CameraInfo")
    by = 1 if not by else _int_field(msg, "binning_y", "CameraInfo")
    roi = getattr(msg, "roi", None)
    x0 = int(getattr(roi, "x_offset", 0) or 0)
    y0 = int(getattr(roi, "y_offset", 0) or 0)
    rw = int(getattr(roi, "width", 0) or 0)
    rh = int(getattr(roi, "height", 0) or 0)
    if rw == 0 and rh == 0:  # no ROI: the full image
        x0 = y0 = 0
        rw, rh = width, height
    if rw == 0 or rh == 0 or x0 + rw > width or y0 + rh > height:
        raise ConversionError("CameraInfo.roi", f"x_offset {x0}, y_offset {y0}, {rw}x{rh} does not fit the "
                                                f"{width}x{height} image")
    if bx == 1 and by == 1 and (x0, y0, rw, rh) == (0, 0, width, height):
        return K, width, height
    K = K.copy()
    K[0, 0] /= bx
    K[1, 1] /= by
    K[0, 2] = (K[0, 2] - x0) / bx
    K[1, 2] = (K[1, 2] - y0) / by
    return K, rw // bx, rh // by


def intrinsics_to_camera_info(intr: CameraIntrinsics, stamp: float = 0.0):
    """CameraIntrinsics -> rclpy sensor_msgs.msg.CameraInfo (no distortion, P = [K | 0])."""
    from sensor_msgs.msg import CameraInfo

    K = np.asarray(intr.K, np.float64).reshape(3, 3)
    msg = CameraInfo(header=make_header(stamp, intr.frame_id), width=int(intr.width), height=int(intr.height))
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = K.reshape(-1)
    msg.r = np.eye(3).reshape(-1)
    msg.p = np.hstack([K, np.zeros((3, 1))]).reshape(-1)
    return msg


# --------------------------------------------------------------------------------------- AudioFrame

#: AudioFrame.encoding -> little-endian sample dtype
AUDIO_ENCODINGS: Dict[str, np.dtype] = {"S16LE": np.dtype("<i2"), "F32LE": np.dtype("<f4")}


def audio_to_array(msg: Any, limits: Optional[Limits] = None) -> Tuple[np.ndarray, int]:
    """mmfusion_msgs/AudioFrame -> ((S,C) float32, sample_rate).

    S16LE is scaled by 1/32768 into [-1, 1); F32LE is passed through as sent (nominally [-1, 1]);
    non-finite samples raise, and so does a chunk whose peak is beyond ``limits.audio_max_abs``.
    """
    enc = getattr(msg, "encoding", None)
    if enc not in AUDIO_ENCODINGS:
        raise ConversionError("AudioFrame.encoding", f"{enc!r} is not one of {sorted(AUDIO_ENCODINGS)}")
    rate = _int_field(msg, "sample_rate", "AudioFrame")
    channels = _int_field(msg, "channels", "AudioFrame")
    if rate == 0:
        raise ConversionError("AudioFrame.sample_rate", "is 0")
    if channels == 0:
        raise ConversionError("AudioFrame.channels", "is 0")
    dt = AUDIO_ENCODINGS[enc]
    buf = _uint8_buffer(getattr(msg, "data", None), "AudioFrame.data")
    frame_bytes = channels * dt.itemsize
    if buf.size % frame_bytes:
        raise ConversionError(
            "AudioFrame.data",
            f"{buf.size} bytes is not a whole number of {channels}-channel {enc} frames ({frame_bytes} bytes each)",
        )
    samples = np.frombuffer(buf, dtype=dt).reshape(-1, channels)  # (S, C)
    if enc == "S16LE":
        return samples.astype(np.float32) * np.float32(1.0 / 32768.0), rate
    out = samples.astype(np.float32)  # (S, C) native endian copy
    if not np.isfinite(out).all():
        raise ConversionError("AudioFrame.data", "contains non-finite F32LE samples")
    bound = float((limits or DEFAULT_LIMITS).audio_max_abs)
    peak = float(np.abs(out).max(initial=0.0))
    if peak > bound:
        raise ConversionError("AudioFrame.data", f"peak |sample| {peak:.4g} is beyond the plausible {bound:g} "
                                                 f"(full scale 1; parameter limits.audio_max_abs)")
    return out, rate


# ------------------------------------------------------------------------- audio_common_msgs (both layouts)
# Two published packages share the name audio_common_msgs. ROS 2 audio_common (AudioStamped = header +
# Audio{AudioData, AudioInfo}; AudioDataStamped = header + AudioData): AudioData carries one typed array per
# sample format and AudioInfo{format, channels, rate, chunk} names it with a PortAudio constant. ros-drivers
# audio_common (AudioDataStamped = header + AudioData{uint8[] data}, AudioInfo{channels, sample_rate,
# sample_format, bitrate, coding_format} on its own topic): raw bytes in a GStreamer sample format. The
# readers below are duck-typed on those field names, so either installed package (and a bag of either) works.


class AudioFormat(NamedTuple):
    """What an AudioInfo says about the samples of AudioData."""

    rate: int  # samples per second per channel
    channels: int
    dtype: np.dtype  # little-endian sample type
    scale: float  # full scale of the integer samples (1.0 for float)
    offset: float  # subtracted before scaling (128 for unsigned 8-bit)
    field: Optional[str]  # the AudioData array to read (ROS 2 layout), None = the `data` bytes (ros-drivers)


#: PortAudio sample format constant (ROS 2 audio_common AudioInfo.format) -> (AudioData field, dtype, full scale, offset)
PA_FORMATS: Dict[int, Tuple[str, str, float, float]] = {
    1: ("float32_data", "<f4", 1.0, 0.0),  # paFloat32
    2: ("int32_data", "<i4", 2.0 ** 31, 0.0),  # paInt32
    4: ("int24_data", "<i4", 2.0 ** 23, 0.0),  # paInt24, one sample per int32
    8: ("int16_data", "<i2", 32768.0, 0.0),  # paInt16
    16: ("int8_data", "i1", 128.0, 0.0),  # paInt8
    32: ("uint8_data", "u1", 128.0, 128.0),  # paUInt8
}
#: ros-drivers AudioInfo.sample_format (GStreamer names) -> (dtype, full scale, offset) of AudioData.data bytes
SAMPLE_FORMATS: Dict[str, Tuple[str, float, float]] = {
    "S16LE": ("<i2", 32768.0, 0.0), "S32LE": ("<i4", 2.0 ** 31, 0.0), "F32LE": ("<f4", 1.0, 0.0),
    "S8": ("i1", 128.0, 0.0), "U8": ("u1", 128.0, 128.0),
}
#: AudioFrame encodings -> PortAudio format constant (what the microphone node writes into AudioInfo.format)
PA_OF_ENCODING = {"S16LE": 8, "F32LE": 1}


def audio_info_to_format(info: Any, what: str = "AudioInfo") -> AudioFormat:
    """An AudioInfo of either audio_common_msgs layout -> AudioFormat; ConversionError for what cannot be read."""
    if info is None:
        raise ConversionError(what, "missing")
    if hasattr(info, "sample_format"):  # ros-drivers layout
        rate = _int_field(info, "sample_rate", what)
        channels = _int_field(info, "channels", what)
        coding = str(getattr(info, "coding_format", "") or "").lower()
        if coding and coding not in ("wave", "wav", "raw", "pcm"):
            raise ConversionError(f"{what}.coding_format", f"{coding!r} is compressed audio; capture with "
                                                           f"format 'wave' (raw PCM)")
        sf = str(getattr(info, "sample_format", "") or "").upper()
        if sf not in SAMPLE_FORMATS:
            raise ConversionError(f"{what}.sample_format", f"{sf!r} is not one of {sorted(SAMPLE_FORMATS)}")
        dt, scale, offset = SAMPLE_FORMATS[sf]
        field = None
    else:  # ROS 2 audio_common layout
        rate = _int_field(info, "rate", what)
        channels = _int_field(info, "channels", what)
        fmt = getattr(info, "format", None)
        if fmt not in PA_FORMATS:
            raise ConversionError(f"{what}.format", f"{fmt!r} is not a PortAudio sample format "
                                                    f"({', '.join(f'{k}' for k in PA_FORMATS)})")
        field, dt, scale, offset = PA_FORMATS[int(fmt)]
    if rate == 0:
        raise ConversionError(f"{what}.{'sample_rate' if field is None else 'rate'}", "is 0")
    if channels == 0:
        raise ConversionError(f"{what}.channels", "is 0")
    return AudioFormat(rate, channels, np.dtype(dt), scale, offset, field)


def _pcm_to_float(samples: np.ndarray, fmt: AudioFormat, field: str, limits: Optional[Limits]) -> np.ndarray:
    """(S, C) samples of fmt.dtype -> (S, C) float32 in [-1, 1); float samples are checked like AudioFrame's."""
    if fmt.dtype.kind == "f":
        out = samples.astype(np.float32)
        if not np.isfinite(out).all():
            raise ConversionError(field, "contains non-finite float samples")
        bound = float((limits or DEFAULT_LIMITS).audio_max_abs)
        peak = float(np.abs(out).max(initial=0.0))
        if peak > bound:
            raise ConversionError(field, f"peak |sample| {peak:.4g} is beyond the plausible {bound:g} "
                                         f"(full scale 1; parameter limits.audio_max_abs)")
        return out
    x = samples.astype(np.float32)
    if fmt.offset:
        x -= np.float32(fmt.offset)
    return x * np.float32(1.0 / fmt.scale)


def audio_data_to_array(data: Any, fmt: AudioFormat, what: str = "AudioData",
                        limits: Optional[Limits] = None) -> Tuple[np.ndarray, int]:
    """AudioData of either layout, read as `fmt` says -> ((S, C) float32, rate)."""
    if data is None:
        raise ConversionError(what, "missing")
    if fmt.field is not None:
        field = f"{what}.{fmt.field}"
        raw = getattr(data, fmt.field, None)
        if raw is None:
            raise ConversionError(field, "missing (the AudioInfo format names an array this AudioData lacks)")
        if isinstance(raw, np.ndarray):
            flat = raw.astype(fmt.dtype.newbyteorder("="), copy=False).reshape(-1)
        elif isinstance(raw, array.array):
            flat = np.frombuffer(raw, dtype=np.dtype(raw.typecode)).astype(fmt.dtype.newbyteorder("="), copy=False)
        else:
            try:
                flat = np.asarray(list(raw), dtype=fmt.dtype.newbyteorder("="))
            except (TypeError, ValueError, OverflowError) as e:
                raise ConversionError(field, f"not {fmt.dtype} samples ({e})") from None
    else:
        field = f"{what}.data"
        buf = _uint8_buffer(getattr(data, "data", None), field)
        if buf.size % fmt.dtype.itemsize:
            raise ConversionError(field, f"{buf.size} bytes is not a whole number of {fmt.dtype.itemsize}-byte samples")
        flat = np.frombuffer(buf, dtype=fmt.dtype)
    if flat.size % fmt.channels:
        raise ConversionError(field, f"{flat.size} samples is not a whole number of {fmt.channels}-channel frames")
    return _pcm_to_float(flat.reshape(-1, fmt.channels), fmt, field, limits), fmt.rate


def audio_stamped_to_array(msg: Any, limits: Optional[Limits] = None) -> Tuple[np.ndarray, int]:
    """audio_common_msgs/AudioStamped (ROS 2 audio_common: header + Audio{audio, info}) -> ((S, C) float32, rate)."""
    audio = getattr(msg, "audio", None)
    if audio is None:
        raise ConversionError("AudioStamped.audio", "missing")
    fmt = audio_info_to_format(getattr(audio, "info", None), "AudioStamped.audio.info")
    return audio_data_to_array(getattr(audio, "audio", None), fmt, "AudioStamped.audio.audio", limits)


def audio_data_stamped_to_array(msg: Any, info: Any, limits: Optional[Limits] = None) -> Tuple[np.ndarray, int]:
    """audio_common_msgs/AudioDataStamped + the newest AudioInfo of its info topic -> ((S, C) float32, rate)."""
    if info is None:
        raise ConversionError("AudioDataStamped", "no AudioInfo received yet (parameter topics.audio_info): "
                                                  "the sample format and rate are unknown")
    fmt = audio_info_to_format(info, "AudioInfo")
    return audio_data_to_array(getattr(msg, "audio", None), fmt, "AudioDataStamped.audio", limits)


def _fields(cls) -> Dict[str, str]:
    try:
        return dict(cls.get_fields_and_field_types())
    except AttributeError:
        return {}


def audio_common_info(sample_rate: int, channels: int, encoding: str = "S16LE", chunk: int = 0):
    """rclpy audio_common_msgs.msg.AudioInfo in the installed package's layout."""
    from audio_common_msgs.msg import AudioInfo

    if encoding not in PA_OF_ENCODING:
        raise ConversionError("AudioInfo", f"encoding {encoding!r} is not one of {sorted(PA_OF_ENCODING)}")
    if "sample_format" in _fields(AudioInfo):  # ros-drivers
        return AudioInfo(channels=int(channels), sample_rate=int(sample_rate), sample_format=encoding,
                         bitrate=int(sample_rate * channels * (16 if encoding == "S16LE" else 32)),
                         coding_format="wave")
    return AudioInfo(format=PA_OF_ENCODING[encoding], channels=int(channels), rate=int(sample_rate), chunk=int(chunk))


def _audio_common_data(samples: np.ndarray, encoding: str):
    """(S, C) block -> (rclpy AudioData, channels, frames) in the installed package's layout."""
    from audio_common_msgs.msg import AudioData

    data, channels = pack_audio(samples, encoding)
    frames = len(data) // (channels * AUDIO_ENCODINGS[encoding].itemsize)
    msg = AudioData()
    if "data" in _fields(AudioData):  # ros-drivers: raw bytes
        msg.data = data
    elif encoding == "S16LE":
        msg.int16_data = array.array("h", data)
    else:
        msg.float32_data = array.array("f", data)
    return msg, channels, frames


def array_to_audio_stamped(samples: np.ndarray, sample_rate: int, encoding: str = "S16LE", stamp: float = 0.0,
                           frame_id: str = "microphone"):
    """(S,C) or (S,) samples -> rclpy audio_common_msgs.msg.AudioStamped (ROS 2 audio_common)."""
    from audio_common_msgs.msg import Audio, AudioStamped

    data, channels, frames = _audio_common_data(samples, encoding)
    return AudioStamped(header=make_header(stamp, frame_id),
                        audio=Audio(audio=data, info=audio_common_info(sample_rate, channels, encoding, frames)))


def array_to_audio_data_stamped(samples: np.ndarray, encoding: str = "S16LE", stamp: float = 0.0,
                                frame_id: str = "microphone"):
    """(S,C) or (S,) samples -> rclpy audio_common_msgs.msg.AudioDataStamped (its AudioInfo goes on its own topic)."""
    from audio_common_msgs.msg import AudioDataStamped

    data, _, _ = _audio_common_data(samples, encoding)
    return AudioDataStamped(header=make_header(stamp, frame_id), audio=data)


def pack_audio(samples: np.ndarray, encoding: str = "S16LE") -> Tuple[bytes, int]:
    """(S,C) or (S,) block -> (interleaved bytes, channels) in ``encoding``.

    int16 input is packed as is for S16LE; float input must lie in [-1, 1] for S16LE (scaled by 32768,
    rounded, 1.0 saturating to 32767) and be finite for F32LE.
    """
    if encoding not in AUDIO_ENCODINGS:
        raise ConversionError("AudioFrame.encoding", f"{encoding!r} is not one of {sorted(AUDIO_ENCODINGS)}")
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]  # (S, 1)
    if x.ndim != 2 or x.shape[1] == 0 or x.shape[1] > 255:
        raise ConversionError(
            "AudioFrame.channels", f"block of shape {np.shape(samples)} is not (S, C) with 1 <= C <= 255"
        )
    if encoding == "S16LE":
        if x.dtype == np.int16:
            packed = x.astype("<i2")
        elif x.dtype.kind == "f":
            if not np.isfinite(x).all() or np.abs(x).max(initial=0.0) > 1.0:
                raise ConversionError("AudioFrame.data", "float samples must be finite and within [-1, 1] for S16LE")
            packed = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")  # (S, C)
        else:
            raise ConversionError("AudioFrame.data", f"dtype {x.dtype} cannot be packed as S16LE (give int16 or float)")
    else:
        if x.dtype.kind not in "fi":
            raise ConversionError("AudioFrame.data", f"dtype {x.dtype} cannot be packed as F32LE")
        if x.dtype == np.int16:
            x = x.astype(np.float32) / np.float32(32768.0)
        if not np.isfinite(x).all():
            raise ConversionError("AudioFrame.data", "contains non-finite samples")
        packed = x.astype("<f4")
    return np.ascontiguousarray(packed).tobytes(), int(x.shape[1])


def array_to_audio(
    samples: np.ndarray, sample_rate: int, encoding: str = "S16LE", stamp: float = 0.0, frame_id: str = "microphone"
):
    """(S,C) or (S,) samples -> rclpy mmfusion_msgs.msg.AudioFrame; ``stamp`` is the first sample's time."""
    from mmfusion_msgs.msg import AudioFrame

    if not isinstance(sample_rate, (int, np.integer)) or not 0 < sample_rate < 2**32:
        raise ConversionError("AudioFrame.sample_rate", f"{sample_rate!r} is not a positive integer")
    data, channels = pack_audio(samples, encoding)
    msg = AudioFrame(
        header=make_header(stamp, frame_id), sample_rate=int(sample_rate), channels=channels, encoding=encoding
    )
    msg.data = data
    return msg


def cdr_roundtrip(msg):
    """The message as a subscriber receives it: serialised to CDR and back (tests and eval-kitti use it)."""
    from rclpy.serialization import deserialize_message, serialize_message

    return deserialize_message(serialize_message(msg), type(msg))
