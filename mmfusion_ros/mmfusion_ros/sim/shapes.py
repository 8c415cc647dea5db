"""3D shapes of the object classes, composed of open3d primitives (boxes, cylinders, spheres, cones).

Each object is one triangle soup in its own frame (origin on the ground under its centre, x along
its heading, z up) with a colour and a texture code per triangle, so a single ray-cast geometry id
identifies the object and the primitive id its part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import open3d as o3d

# texture codes the camera shader understands (see render.shade)
PLAIN, PLANKS, CHECKER, GRAIN, STRIPES = 0, 1, 2, 3, 4


@dataclass
class Shape:
    """A class's mesh in its local frame."""

    vertices: np.ndarray  # (N, 3) float32
    triangles: np.ndarray  # (M, 3) uint32
    colors: np.ndarray  # (M, 3) float32 RGB in [0, 1]
    textures: np.ndarray  # (M,) int8 texture code
    size: np.ndarray  # (3,) length, width, height of the bounding box, metres
    emissive: np.ndarray  # (M,) bool: lit regardless of shading (alarm beacon)
    reflectivity: Optional[np.ndarray] = None  # (M,) float32 LiDAR reflectivity in [0, 1] (material, not colour)


class _Builder:
    """Collects parts; written by hand because open3d meshes carry no per-triangle attributes."""

    def __init__(self):
        self.parts = []

    def add(self, mesh: o3d.geometry.TriangleMesh, color, center=(0, 0, 0), rot=None, texture=PLAIN, emissive=False):
        v = np.asarray(mesh.vertices, np.float64)  # (N, 3)
        if rot is not None:
            v = v @ np.asarray(rot).T
        v = v + np.asarray(center, np.float64)
        t = np.asarray(mesh.triangles, np.int64)  # (M, 3)
        self.parts.append((v, t, np.asarray(color, np.float32), texture, emissive))

    def box(self, size, center, color, texture=PLAIN, emissive=False):
        """Axis-aligned box of `size` (l, w, h) centred at `center`."""
        m = o3d.geometry.TriangleMesh.create_box(*size)
        self.add(m, color, np.asarray(center) - np.asarray(size) / 2.0, texture=texture, emissive=emissive)

    def cylinder(self, radius, height, center, color, axis="z", texture=PLAIN, res=12):
        """Cylinder centred at `center` (open3d's is centred on its origin) along `axis`."""
        m = o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=res, split=1)
        self.add(m, color, center, _axis_rot(axis), texture)

    def sphere(self, radius, center, color, texture=PLAIN, emissive=False, res=6):
        m = o3d.geometry.TriangleMesh.create_sphere(radius, resolution=res)
        self.add(m, color, center, texture=texture, emissive=emissive)

    def cone(self, radius, height, base_center, color, texture=PLAIN, res=16):
        m = o3d.geometry.TriangleMesh.create_cone(radius, height, resolution=res, split=1)
        self.add(m, color, base_center, texture=texture)

    def build(self) -> Shape:
        vs, ts, cs, xs, es = [], [], [], [], []
        off = 0
        for v, t, c, tex, em in self.parts:
            vs.append(v)
            ts.append(t + off)
            cs.append(np.repeat(c[None], len(t), 0))
            xs.append(np.full(len(t), tex, np.int8))
            es.append(np.full(len(t), em, bool))
            off += len(v)
        V = np.concatenate(vs).astype(np.float32)
        lo, hi = V.min(0), V.max(0)
        return Shape(V, np.concatenate(ts).astype(np.uint32), np.concatenate(cs).astype(np.float32),
                     np.concatenate(xs), (hi - lo).astype(np.float32), np.concatenate(es))


def _axis_rot(axis: str) -> np.ndarray:
    if axis == "x":
        return np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], float)
    if axis == "y":
        return np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
    return np.eye(3)


def _jitter(rng: np.random.Generator, color, amount=0.06):
    return np.clip(np.asarray(color, float) + rng.uniform(-amount, amount, 3), 0, 1)


def person(rng: np.random.Generator) -> Shape:
    b = _Builder()
    s = rng.uniform(0.92, 1.08)  # body scale: 1.6 .. 1.9 m tall
    shirt = _jitter(rng, [(0.15, 0.35, 0.85), (0.55, 0.25, 0.7), (0.2, 0.7, 0.3), (0.95, 0.85, 0.2)][rng.integers(4)])
    skin = _jitter(rng, [(0.93, 0.76, 0.62), (0.62, 0.44, 0.3), (0.42, 0.28, 0.2)][rng.integers(3)], 0.03)
    trousers = _jitter(rng, (0.15, 0.17, 0.3))
    for y in (-0.11, 0.11):
        b.cylinder(0.08 * s, 0.85 * s, (0, y * s, 0.425 * s), trousers)
    b.box((0.28 * s, 0.46 * s, 0.62 * s), (0, 0, 1.16 * s), shirt, texture=CHECKER)
    for y in (-0.29, 0.29):
        b.cylinder(0.055 * s, 0.6 * s, (0, y * s, 1.15 * s), shirt)
    b.sphere(0.12 * s, (0, 0, 1.6 * s), skin, res=8)
    return b.build()


def dog(rng: np.random.Generator) -> Shape:
    b = _Builder()
    s = rng.uniform(0.9, 1.15)  # 0.9 .. 1.2 m long
    fur = _jitter(rng, [(0.55, 0.33, 0.14), (0.85, 0.65, 0.3), (0.12, 0.1, 0.09)][rng.integers(3)])
    b.box((0.8 * s, 0.32 * s, 0.32 * s), (0, 0, 0.55 * s), fur, texture=GRAIN)
    for x in (-0.3, 0.3):
        for y in (-0.11, 0.11):
            b.cylinder(0.05 * s, 0.42 * s, (x * s, y * s, 0.21 * s), fur, res=8)
    b.box((0.3 * s, 0.2 * s, 0.2 * s), (0.5 * s, 0, 0.78 * s), fur, texture=GRAIN)  # head
    b.box((0.12 * s, 0.12 * s, 0.1 * s), (0.68 * s, 0, 0.74 * s), (0.08, 0.06, 0.05))  # snout
    b.box((0.35 * s, 0.05 * s, 0.05 * s), (-0.52 * s, 0, 0.72 * s), fur)  # tail
    return b.build()


def car(rng: np.random.Generator) -> Shape:
    b = _Builder()
    L, W = rng.uniform(3.9, 4.6), rng.uniform(1.7, 1.9)
    paint = _jitter(rng, [(0.8, 0.05, 0.05), (0.1, 0.2, 0.7), (0.75, 0.75, 0.78), (0.05, 0.05, 0.06)][rng.integers(4)])
    b.box((L, W, 0.75), (0, 0, 0.7), paint)
    b.box((L * 0.5, W * 0.9, 0.55), (-0.1 * L, 0, 1.35), (0.15, 0.2, 0.28))  # cabin glass
    for x in (-0.32 * L, 0.32 * L):
        for y in (-W / 2 + 0.1, W / 2 - 0.1):
            b.cylinder(0.33, 0.22, (x, y, 0.33), (0.05, 0.05, 0.05), axis="y")
    b.box((0.05, 0.3, 0.12), (L / 2, W / 2 - 0.3, 0.8), (1.0, 1.0, 0.85), emissive=True)  # headlights
    b.box((0.05, 0.3, 0.12), (L / 2, -W / 2 + 0.3, 0.8), (1.0, 1.0, 0.85), emissive=True)
    return b.build()


def bicycle(rng: np.random.Generator) -> Shape:
    b = _Builder()
    frame = _jitter(rng, [(0.1, 0.75, 0.2), (0.95, 0.8, 0.05), (0.1, 0.7, 0.8)][rng.integers(3)])
    for x in (-0.55, 0.55):
        b.cylinder(0.36, 0.09, (x, 0, 0.36), (0.08, 0.08, 0.08), axis="y", res=16)
    b.box((1.1, 0.07, 0.07), (0, 0, 0.62), frame)
    b.box((0.07, 0.07, 0.55), (-0.2, 0, 0.62), frame)
    b.box((0.07, 0.07, 0.55), (0.45, 0, 0.75), frame)
    b.box((0.28, 0.12, 0.06), (-0.2, 0, 0.95), (0.1, 0.1, 0.1))  # saddle
    b.box((0.06, 0.6, 0.05), (0.45, 0, 1.05), (0.6, 0.6, 0.6))  # handlebar
    return b.build()


def traffic_cone(rng: np.random.Generator) -> Shape:
    b = _Builder()
    h = rng.uniform(0.9, 1.1)
    b.box((0.55, 0.55, 0.05), (0, 0, 0.025), (0.1, 0.1, 0.1))
    b.cone(0.22, h, (0, 0, 0.05), _jitter(rng, (1.0, 0.45, 0.05), 0.04), texture=STRIPES)
    return b.build()


def box(rng: np.random.Generator) -> Shape:
    b = _Builder()
    s = rng.uniform(0.8, 1.2, 3) * np.array([1.0, 1.0, 0.9])
    b.box(tuple(s), (0, 0, s[2] / 2), _jitter(rng, (0.78, 0.6, 0.35)), texture=PLANKS)
    return b.build()


def chair(rng: np.random.Generator) -> Shape:
    b = _Builder()
    c = _jitter(rng, [(0.2, 0.45, 0.9), (0.92, 0.92, 0.92), (0.1, 0.6, 0.55)][rng.integers(3)])
    s = rng.uniform(1.0, 1.2)
    for x in (-0.22, 0.22):
        for y in (-0.22, 0.22):
            b.box((0.05 * s, 0.05 * s, 0.5 * s), (x * s, y * s, 0.25 * s), (0.3, 0.3, 0.32))
    b.box((0.55 * s, 0.55 * s, 0.06 * s), (0, 0, 0.52 * s), c)
    b.box((0.06 * s, 0.55 * s, 0.55 * s), (-0.25 * s, 0, 0.82 * s), c, texture=CHECKER)
    return b.build()


def door(rng: np.random.Generator) -> Shape:
    b = _Builder()
    panel = _jitter(rng, [(0.55, 0.12, 0.1), (0.15, 0.4, 0.2), (0.9, 0.9, 0.85)][rng.integers(3)])
    b.box((0.2, 0.15, 2.3), (0, -0.6, 1.15), (0.35, 0.3, 0.28))  # frame posts
    b.box((0.2, 0.15, 2.3), (0, 0.6, 1.15), (0.35, 0.3, 0.28))
    b.box((0.2, 1.35, 0.15), (0, 0, 2.3), (0.35, 0.3, 0.28))
    b.box((0.06, 1.05, 2.15), (0, 0, 1.08), panel, texture=PLANKS)
    b.sphere(0.05, (0.07, 0.38, 1.0), (0.85, 0.75, 0.2))  # knob
    return b.build()


def alarm(rng: np.random.Generator) -> Shape:
    b = _Builder()
    b.cylinder(0.06, 1.4, (0, 0, 0.7), (0.55, 0.55, 0.58))  # pole
    b.box((0.45, 0.45, 0.45), (0, 0, 1.6), _jitter(rng, (0.85, 0.03, 0.12), 0.04), texture=CHECKER)
    b.sphere(0.17, (0, 0, 1.95), (1.0, 0.85, 0.1), emissive=True, res=8)  # beacon
    return b.build()


#: class name -> mesh factory; names and order follow core.types.OBJECT_CLASSES
BUILDERS: Dict[str, Callable[[np.random.Generator], Shape]] = {
    "person": person, "dog": dog, "car": car, "bicycle": bicycle, "traffic_cone": traffic_cone,
    "box": box, "chair": chair, "door": door, "alarm": alarm,
}


#: LiDAR reflectivity of each class's main material: a real sensor's intensity tells fur from metal
#: from retro-reflective plastic, whatever the visible colour
REFLECTIVITY: Dict[str, float] = {"person": 0.3, "dog": 0.12, "car": 0.75, "bicycle": 0.7, "traffic_cone": 0.6,
                                  "box": 0.5, "chair": 0.22, "door": 0.65, "alarm": 0.88}


def _with_reflectivity(shape: Shape, base: float, rng: Optional[np.random.Generator] = None) -> Shape:
    lum = shape.colors @ np.array([0.2126, 0.7152, 0.0722], np.float32)  # (M,)
    r = np.full(len(shape.triangles), base + (rng.uniform(-0.04, 0.04) if rng is not None else 0.0), np.float32)
    r[lum < 0.1] = 0.08  # black rubber and glass return little
    r[shape.emissive] = 0.9  # lamps and beacons
    shape.reflectivity = np.clip(r, 0.0, 1.0)
    return shape


def make_shape(cls: str, rng: np.random.Generator) -> Shape:
    if cls not in BUILDERS:
        raise ValueError(f"unknown object class {cls!r}; known: {sorted(BUILDERS)}")
    return _with_reflectivity(BUILDERS[cls](rng), REFLECTIVITY[cls], rng)


def ground_and_walls(rng: np.random.Generator, extent: float, rough: bool, urban: bool) -> List[Shape]:
    """Static world: a ground plane and a row of buildings or walls on both sides of the path."""
    out = []
    b = _Builder()
    g = (0.33, 0.31, 0.28) if rough else (0.42, 0.42, 0.44)
    b.box((2 * extent, 2 * extent, 0.02), (extent * 0.5, 0, -0.01), g, texture=GRAIN if rough else CHECKER)
    out.append(_with_reflectivity(b.build(), 0.22 if rough else 0.3))
    for side in (-1, 1):
        x = -extent * 0.5
        while x < extent * 1.5:
            L = rng.uniform(6, 14)
            H = rng.uniform(2.5, 8.0) if urban else rng.uniform(1.0, 2.5)
            D = rng.uniform(3, 6)
            y = side * (rng.uniform(7.5, 11.0) + D / 2)
            wb = _Builder()
            col = _jitter(rng, (0.62, 0.55, 0.5) if urban else (0.5, 0.5, 0.48), 0.1)
            wb.box((L, D, H), (x + L / 2, y, H / 2), col, texture=PLANKS if urban else PLAIN)
            out.append(_with_reflectivity(wb.build(), 0.4))
            x += L + rng.uniform(1.0, 5.0)
    return out
