"""Property tests: random valid layouts convert exactly; random corruptions raise ConversionError only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfusion_ros.ros import conversions as cv

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


# ------------------------------------------------------------------------------ PointCloud2 generator


@st.composite
def cloud_layouts(draw):
    """A random valid PointCloud2 (as raw bytes) plus the (N,4) float32 it must convert to."""
    xyz_type = draw(st.sampled_from([7, 8]))
    intensity_type = draw(st.sampled_from([None, *NUMERIC]))
    extras = draw(st.lists(st.sampled_from(list(NUMERIC)), max_size=3))  # unrelated fields (ring, time...)
    specs = [("x", xyz_type), ("y", xyz_type), ("z", xyz_type)]
    if intensity_type is not None:
        specs.append(("intensity", intensity_type))
    specs += [(f"extra{i}", t) for i, t in enumerate(extras)]
    order = draw(st.permutations(range(len(specs))))
    gaps = draw(st.lists(st.integers(0, 5), min_size=len(specs), max_size=len(specs)))
    big = draw(st.booleans())
    offsets, pos = {}, 0
    for i, g in zip(order, gaps):  # fields in a random order, with random gaps between them
        pos += g
        offsets[specs[i][0]] = pos
        pos += np.dtype(NUMERIC[specs[i][1]]).itemsize
    point_step = pos + draw(st.integers(0, 7))
    organised = draw(st.booleans())
    height = draw(st.integers(1, 4)) if organised else 1
    width = draw(st.integers(0, 12))
    row_step = width * point_step + (draw(st.integers(0, 9)) if height > 1 else 0)
    n = height * width

    end = ">" if big else "<"
    dt = np.dtype(
        {
            "names": [s[0] for s in specs],
            "formats": [end + NUMERIC[t] if np.dtype(NUMERIC[t]).itemsize > 1 else NUMERIC[t] for _, t in specs],
            "offsets": [offsets[s[0]] for s in specs],
            "itemsize": point_step,
        }
    )
    rec = np.zeros(n, dt)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0, 50, (n, 3))
    nan_rows = rng.random(n) < 0.2
    xyz[nan_rows, rng.integers(0, 3, n)[nan_rows]] = np.nan
    for i, a in enumerate("xyz"):
        rec[a] = xyz[:, i]
    if intensity_type is not None:
        info = np.iinfo(NUMERIC[intensity_type]) if intensity_type < 7 else None
        vals = rng.integers(info.min, info.max, n, endpoint=True) if info else rng.uniform(0, 255, n)
        rec["intensity"] = vals
    for s, _ in specs[3:]:
        if s.startswith("extra"):
            rec[s] = rng.integers(0, 100, n)
    raw = rec.tobytes()
    rows = [raw[r * width * point_step : (r + 1) * width * point_step] for r in range(height)]
    pad = b"\xab" * (row_step - width * point_step)
    data = (pad.join(rows) + (pad if draw(st.booleans()) else b"")) if n else b""

    fields = [SimpleNamespace(name=s, offset=offsets[s], datatype=t, count=1) for s, t in (specs[i] for i in order)]
    msg = SimpleNamespace(
        height=height,
        width=width,
        fields=fields,
        is_bigendian=big,
        point_step=point_step,
        row_step=row_step,
        data=data,
        is_dense=False,
    )
    expected = np.zeros((n, 4), np.float32)
    for i, a in enumerate("xyz"):
        expected[:, i] = rec[a].astype(np.float32)
    if intensity_type is not None:
        expected[:, 3] = rec["intensity"].astype(np.float32)
    keep = np.isfinite(expected[:, :3]).all(axis=1)
    return msg, expected[keep], int(n - keep.sum())


@SETTINGS
@given(cloud_layouts(), st.sampled_from(["bytes", "numpy", "list"]))
def test_random_cloud_layouts_convert_exactly(case, container):
    msg, expected, n_dropped = case
    if container == "numpy":
        msg.data = np.frombuffer(msg.data, np.uint8)
    elif container == "list":
        msg.data = list(msg.data)
    out, dropped = cv.pointcloud2_to_xyzi_counted(msg)
    assert dropped == n_dropped
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(cv.pointcloud2_to_xyz(msg), expected[:, :3])


# ------------------------------------------------------------------------------------ Image generator


@st.composite
def image_layouts(draw):
    enc = draw(st.sampled_from(sorted(cv.IMAGE_ENCODINGS)))
    dtype, ch = cv.IMAGE_ENCODINGS[enc]
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    pad = draw(st.integers(0, 7))
    big = draw(st.booleans()) if dtype.itemsize > 1 else False
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    px = rng.integers(0, np.iinfo(dtype).max, (h, w, ch), endpoint=True).astype(dtype)
    row_bytes = w * ch * dtype.itemsize
    wire = px.astype(dtype.newbyteorder(">" if big else "<"))
    data = b"".join(wire[r].tobytes() + b"\x5a" * pad for r in range(h))
    if draw(st.booleans()) and pad:
        data = data[:-pad]  # last row's padding may be absent
    msg = SimpleNamespace(encoding=enc, height=h, width=w, step=row_bytes + pad, is_bigendian=int(big), data=data)
    return msg, px


def expected_rgb(enc, px):
    if enc == "mono16":
        return np.repeat((px >> 8).astype(np.uint8), 3, axis=2)
    if enc == "mono8":
        return np.repeat(px, 3, axis=2)
    return {"rgb8": px, "bgr8": px[:, :, ::-1], "rgba8": px[:, :, :3], "bgra8": px[:, :, 2::-1]}[enc]


@SETTINGS
@given(image_layouts())
def test_random_image_layouts_convert_exactly(case):
    msg, px = case
    raw = cv.image_to_array(msg)
    np.testing.assert_array_equal(raw, px[:, :, 0] if px.shape[2] == 1 else px)
    assert raw.dtype == px.dtype
    rgb = cv.image_to_rgb(msg)
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, expected_rgb(msg.encoding, px))


# -------------------------------------------------------------------------------------- corruptions

CLOUD_CORRUPTIONS = [
    "truncate",
    "point_step_small",
    "point_step_zero",
    "row_step_small",
    "bad_offset",
    "bad_datatype",
    "missing_xyz",
    "int_xyz",
    "negative",
    "not_int",
    "data_type",
    "no_fields",
]


def pick(rng, options):
    return options[int(rng.integers(len(options)))]


def corrupt_cloud(msg, how, rng):
    m = SimpleNamespace(**vars(msg))
    m.fields = [SimpleNamespace(**vars(f)) for f in msg.fields]
    xyz = [f for f in m.fields if f.name in "xyz"]
    if how == "truncate":
        m.data = m.data[: rng.integers(0, len(m.data))]
    elif how == "point_step_small":
        m.point_step = int(rng.integers(0, max(f.offset for f in m.fields)))
    elif how == "point_step_zero":
        m.point_step = 0
    elif how == "row_step_small":
        m.height = 2
        m.row_step = int(rng.integers(0, m.width * m.point_step))
    elif how == "bad_offset":
        f = m.fields[rng.integers(len(m.fields))]
        f.offset = int(m.point_step + rng.integers(0, 1000))
    elif how == "bad_datatype":
        m.fields[rng.integers(len(m.fields))].datatype = int(rng.choice([0, 9, 200]))
    elif how == "missing_xyz":
        drop = xyz[rng.integers(3)]
        m.fields = [f for f in m.fields if f is not drop]
    elif how == "int_xyz":
        xyz[rng.integers(3)].datatype = int(rng.integers(1, 7))
    elif how == "negative":
        setattr(m, str(rng.choice(["height", "width", "point_step", "row_step"])), -int(rng.integers(1, 5)))
    elif how == "not_int":
        setattr(m, str(rng.choice(["height", "width", "point_step"])), pick(rng, [1.5, "3", None]))
    elif how == "data_type":
        m.data = pick(rng, [None, "abc", 3.0, [300, 2], [-1]])
    elif how == "no_fields":
        m.fields = None
    return m


@SETTINGS
@given(cloud_layouts(), st.sampled_from(CLOUD_CORRUPTIONS), st.integers(0, 2**31 - 1))
def test_cloud_corruptions_raise_conversion_error(case, how, seed):
    msg, _, _ = case
    if msg.width == 0 and how in ("truncate", "point_step_zero", "row_step_small"):
        msg.width, msg.height = 1, 1  # these corruptions need a point to matter
        msg.row_step = msg.point_step
        msg.data = bytes(msg.point_step)
    bad = corrupt_cloud(msg, how, np.random.default_rng(seed))
    try:
        cv.pointcloud2_to_xyzi(bad)
    except cv.ConversionError as e:
        assert str(e).startswith("PointCloud2"), str(e)
        assert e.field and e.problem
    else:
        raise AssertionError(f"corruption {how!r} was accepted: {vars(bad)}")


IMAGE_CORRUPTIONS = ["truncate", "step_small", "unknown_encoding", "zero_size", "negative", "data_type", "not_int"]


@SETTINGS
@given(image_layouts(), st.sampled_from(IMAGE_CORRUPTIONS), st.integers(0, 2**31 - 1))
def test_image_corruptions_raise_conversion_error(case, how, seed):
    msg, _ = case
    rng = np.random.default_rng(seed)
    m = SimpleNamespace(**vars(msg))
    dtype, ch = cv.IMAGE_ENCODINGS[m.encoding]
    if how == "truncate":
        need = (m.height - 1) * m.step + m.width * ch * dtype.itemsize
        m.data = m.data[: rng.integers(0, need)]
    elif how == "step_small":
        m.step = int(rng.integers(0, m.width * ch * dtype.itemsize))
    elif how == "unknown_encoding":
        m.encoding = str(rng.choice(["yuv422", "RGB8", "", "bayer_rggb8", "32FC1"]))
    elif how == "zero_size":
        setattr(m, str(rng.choice(["height", "width"])), 0)
    elif how == "negative":
        setattr(m, str(rng.choice(["height", "width", "step"])), -1)
    elif how == "data_type":
        m.data = pick(rng, [None, "abc", {"a": 1}, [256]])
    elif how == "not_int":
        m.height = 2.5
    for fn in (cv.image_to_rgb, cv.image_to_array):
        try:
            fn(m)
        except cv.ConversionError as e:
            assert str(e).startswith("Image"), str(e)
        else:
            raise AssertionError(f"corruption {how!r} was accepted")


@SETTINGS
@given(
    st.sampled_from(["S16LE", "F32LE", "U8", "", "s16le"]),
    st.integers(-2, 300),
    st.integers(-5, 96000),
    st.binary(max_size=64),
    st.booleans(),
)
def test_audio_fuzz_only_conversion_errors(encoding, channels, rate, data, nan):
    if nan and encoding == "F32LE" and channels > 0 and len(data) >= 4:
        data = np.float32(np.nan).tobytes() + data[4:]
    msg = SimpleNamespace(encoding=encoding, channels=channels, sample_rate=rate, data=data)
    try:
        out, r = cv.audio_to_array(msg)
    except cv.ConversionError as e:
        assert str(e).startswith("AudioFrame")
    else:  # accepted only when it really is a valid frame
        assert encoding in cv.AUDIO_ENCODINGS and channels >= 1 and rate > 0
        assert out.shape[1] == channels and np.isfinite(out).all()
        assert out.shape[0] * channels * cv.AUDIO_ENCODINGS[encoding].itemsize == len(data)


@SETTINGS
@given(
    st.integers(-3, 6),
    st.integers(-3, 6),
    st.integers(-3, 40),
    st.integers(-3, 200),
    st.lists(
        st.tuples(
            st.sampled_from(["x", "y", "z", "intensity", "q"]),
            st.integers(-2, 40),
            st.integers(-1, 10),
            st.integers(-1, 3),
        ),
        max_size=6,
    ),
    st.binary(max_size=300),
    st.booleans(),
)
def test_cloud_fuzz_only_conversion_errors(height, width, point_step, row_step, fields, data, big):
    """Arbitrary headers over arbitrary bytes: a result or a ConversionError, nothing else."""
    msg = SimpleNamespace(
        height=height,
        width=width,
        point_step=point_step,
        row_step=row_step,
        is_bigendian=big,
        fields=[SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields],
        data=data,
    )
    try:
        out = cv.pointcloud2_to_xyzi(msg)
    except cv.ConversionError:
        return
    assert out.ndim == 2 and out.shape[1] == 4 and np.isfinite(out[:, :3]).all()
