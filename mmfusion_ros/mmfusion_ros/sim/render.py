"""Camera and LiDAR rendering by ray casting one open3d `RaycastingScene`, so both sensors agree.

The camera shader is deliberately simple (Lambert + ambient + sky, procedural textures, Gaussian
noise): enough that each class has its own look, and cheap enough for 20+ dataset samples/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import open3d as o3d

from .config import SimConfig
from .shapes import CHECKER, GRAIN, PLANKS, STRIPES
from .world import Scene

LIGHT_DIR = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])  # towards the sun, world frame
LIGHT_DIR32 = LIGHT_DIR.astype(np.float32)
SKY_TOP = np.array([0.55, 0.72, 0.92], np.float32)  # sky colour overhead
SKY_HORIZON = np.array([0.25, 0.17, 0.06], np.float32)  # added towards the horizon
INVALID = o3d.t.geometry.RaycastingScene.INVALID_ID


@dataclass
class CameraImage:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    object_ids: np.ndarray  # (H, W) int32 track id of the object seen, 0 for background
    depth: np.ndarray  # (H, W) float32 metres along the optical axis, inf for sky


@dataclass
class LidarSweep:
    points: np.ndarray  # (N, 5) float32 x, y, z, intensity (0..255), ring, in the LiDAR frame (base_link)
    object_ids: np.ndarray  # (N,) int32 track id of the object hit, 0 for ground/buildings


def rot_zyx(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3,3) body -> world rotation, R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def lidar_directions(cfg: SimConfig) -> tuple:
    """(beams*columns, 3) unit directions in the LiDAR frame and (beams*columns,) ring numbers."""
    lc = cfg.lidar
    el = np.deg2rad(np.linspace(lc.fov_down, lc.fov_up, lc.beams))  # ring 0 lowest
    az = np.pi - 2.0 * np.pi * np.arange(lc.columns) / lc.columns  # one revolution, clockwise from behind
    E, A = np.meshgrid(el, az, indexing="ij")  # (beams, columns)
    d = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)
    ring = np.repeat(np.arange(lc.beams), lc.columns)
    return d.astype(np.float32), ring.astype(np.float32)


class Renderer:
    """Renders one Scene's sensors at any time; the static world is merged into one geometry once."""

    def __init__(self, scene: Scene, cam_width: Optional[int] = None, cam_height: Optional[int] = None,
                 nthreads: int = 0):
        self.scene = scene
        self.cfg = scene.config
        self.nthreads = nthreads
        self.intr = self.cfg.camera.intrinsics(cam_width, cam_height)
        # a smaller render stands for the full image resized down (INTER_AREA averages pixels), which
        # also averages the sensor noise: scale it so both paths see the same noise level
        area = (self.intr.width * self.intr.height) / float(self.cfg.camera.width * self.cfg.camera.height)
        self.noise_std = self.cfg.camera.noise_std * float(np.sqrt(min(1.0, area)))
        # per-frame noise is a random window into one bank: drawing 0.9 M normals per frame costs more
        # than the shading
        n_px = self.intr.width * self.intr.height * 3
        self.noise_bank = (np.random.default_rng(12345).standard_normal(n_px + 65536, dtype=np.float32)
                           * np.float32(self.noise_std))
        T = self.cfg.camera.lidar_to_camera()  # LiDAR -> optical
        self.R_cam = T[:3, :3].T  # optical -> LiDAR
        self.t_cam = -self.R_cam @ T[:3, 3]  # camera centre in the LiDAR frame
        w, h = self.intr.width, self.intr.height
        u, v = np.meshgrid(np.arange(w) + 0.0, np.arange(h) + 0.0)
        pix = np.stack([u.ravel(), v.ravel(), np.ones(w * h)], 0)  # (3, HW)
        d_opt = np.linalg.solve(self.intr.K, pix).T  # (HW, 3), z = 1
        self.cam_zdepth_scale = 1.0 / np.linalg.norm(d_opt, axis=1)  # t_hit -> depth along z
        self.cam_dirs = ((d_opt * self.cam_zdepth_scale[:, None]) @ self.R_cam.T).astype(np.float32)  # (HW, 3)
        self.lidar_dirs, self.lidar_ring = lidar_directions(self.cfg)
        st = scene.static
        off = np.cumsum([0] + [len(s.vertices) for s in st])
        self.static_V = np.concatenate([s.vertices for s in st]).astype(np.float32)
        tris = [s.triangles.astype(np.int64) + off[i] for i, s in enumerate(st)]
        self.static_T = np.concatenate(tris).astype(np.uint32)
        self.static_C = np.concatenate([s.colors for s in st])
        self.static_X = np.concatenate([s.textures for s in st])
        self.static_E = np.concatenate([s.emissive for s in st])
        self.static_R = np.concatenate([s.reflectivity for s in st])

    # --- geometry -----------------------------------------------------------------------------
    def _build(self, t: float):
        """Ray-casting scene at time t and flat per-triangle lookup tables over all geometries.

        Geometry g's triangle p is row tri_offset[g] + p of the tables (geometry 0 = static world).
        """
        rs = o3d.t.geometry.RaycastingScene(nthreads=self.nthreads)
        rs.add_triangles(o3d.core.Tensor(self.static_V), o3d.core.Tensor(self.static_T))
        colors, textures, emissive, refl = [self.static_C], [self.static_X], [self.static_E], [self.static_R]
        track, counts = [np.zeros(len(self.static_T), np.int32)], [len(self.static_T)]
        for o in self.scene.objects:
            p = o.position([t])[0]
            yaw = float(o.heading([t])[0])
            c, s = np.cos(yaw), np.sin(yaw)
            R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)
            V = o.shape.vertices @ R.T + np.array([p[0], p[1], 0.0], np.float32)  # (N, 3) world
            rs.add_triangles(o3d.core.Tensor(V.astype(np.float32)), o3d.core.Tensor(o.shape.triangles))
            colors.append(o.shape.colors)
            textures.append(o.shape.textures)
            refl.append(o.shape.reflectivity)
            lit = bool(o.sounding([t])[0]) or o.cls == "car"  # beacons flash while sounding, headlights always on
            emissive.append(o.shape.emissive & lit)
            track.append(np.full(len(o.shape.triangles), o.track_id, np.int32))
            counts.append(len(o.shape.triangles))
        tables = {"offset": np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64),
                  "color": np.concatenate(colors), "texture": np.concatenate(textures),
                  "emissive": np.concatenate(emissive), "track": np.concatenate(track),
                  "reflectivity": np.concatenate(refl)}
        return rs, tables

    def sensor_pose(self, t: float) -> tuple:
        """(R (3,3) LiDAR -> world, origin (3,)) of the LiDAR at time t."""
        e = self.scene.ego.at(t)
        R = rot_zyx(e["yaw"], e["pitch"], e["roll"])
        origin = np.array([e["xy"][0], e["xy"][1], self.cfg.lidar_height + e["z"]])
        return R, origin

    def render(self, t: float, rng: np.random.Generator, camera: bool = True, lidar: bool = True) -> Dict:
        """Render the sensors at time t: {"camera": CameraImage, "lidar": LidarSweep}."""
        rs, tables = self._build(t)
        R, origin = self.sensor_pose(t)
        out = {}
        if camera:
            out["camera"] = self._camera(rs, R, origin, tables, rng)
        if lidar:
            out["lidar"] = self._lidar(rs, R, origin, tables, rng)
        return out

    def _cast(self, rs, origin, dirs):
        """origin: (3,) shared or (N,3) per ray; dirs (N,3)."""
        rays = np.empty((len(dirs), 6), np.float32)  # (N, 6) origin, direction
        rays[:, :3] = origin
        rays[:, 3:] = dirs
        return rs.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=self.nthreads)

    # --- camera -------------------------------------------------------------------------------
    def _camera(self, rs, R, origin, tables, rng) -> CameraImage:
        w, h = self.intr.width, self.intr.height
        R32 = R.astype(np.float32)
        cam_o = (origin + R @ self.t_cam).astype(np.float32)
        dirs = _rotate(self.cam_dirs, R32)  # (HW, 3) world
        r = self._cast(rs, cam_o, dirs)
        th = r["t_hit"].numpy()  # (HW,)
        gid = r["geometry_ids"].numpy()
        hit = gid != INVALID
        img = np.empty((w * h, 3), np.float32)
        ids = np.zeros(w * h, np.int32)
        # sky: brighter towards the horizon
        miss = ~hit
        elev = np.clip(dirs[miss, 2] * 3.0, 0.0, 1.0)
        img[miss] = SKY_TOP + (1.0 - elev)[:, None] * SKY_HORIZON
        if hit.any():
            hidx = np.flatnonzero(hit)
            tri = tables["offset"][gid[hidx].astype(np.int64)] + r["primitive_ids"].numpy()[hidx]  # (M,) table rows
            base = tables["color"][tri]  # (M, 3)
            tex = tables["texture"][tri]
            d = dirs[hidx]
            t_hit = th[hidx]
            pts = cam_o + d * t_hit[:, None]  # (M, 3) world hit points
            fac, white = _texture(pts, tex)
            base *= fac[:, None]
            base[white] = 0.15 * base[white] + np.float32(0.85 * 0.95)
            n = r["primitive_normals"].numpy()[hidx]  # (M, 3)
            nl = _dot(n, LIGHT_DIR32)
            # two-sided Lambert: the side the viewer sees is lit only if it faces the sun
            shade = np.where((_dot(n, d) < 0) == (nl > 0), np.abs(nl), 0.0)
            if self.cfg.camera.shadows:
                lit = np.flatnonzero(shade > 0)
                if len(lit):  # shadow rays towards the sun from the lit points
                    o = pts[lit] + np.float32(0.02) * np.where((nl[lit] > 0)[:, None], n[lit], -n[lit])
                    sr = self._cast(rs, o, np.broadcast_to(LIGHT_DIR32, o.shape))
                    shade[lit[np.isfinite(sr["t_hit"].numpy())]] = 0.0
            col = base * (0.38 + 0.62 * shade)[:, None]
            fog = np.minimum(t_hit / 150.0, 0.5)[:, None]  # aerial perspective towards the horizon colour
            col = col * (1.0 - fog) + (SKY_TOP + SKY_HORIZON) * fog
            emi = tables["emissive"][tri]
            col[emi] = np.minimum(1.0, base[emi] * 1.3)  # lit beacons and headlights
            img[hidx] = col
            ids[hidx] = tables["track"][tri]
        img *= 255.0
        k = int(rng.integers(65536))
        img += self.noise_bank[k:k + img.size].reshape(img.shape)
        image = np.clip(img, 0, 255).astype(np.uint8).reshape(h, w, 3)
        depth = np.where(hit, th * self.cam_zdepth_scale, np.inf).astype(np.float32).reshape(h, w)
        return CameraImage(image, ids.reshape(h, w), depth)

    # --- LiDAR --------------------------------------------------------------------------------
    def _lidar(self, rs, R, origin, tables, rng) -> LidarSweep:
        lc = self.cfg.lidar
        dirs = _rotate(self.lidar_dirs, R.astype(np.float32))  # (N, 3) world
        r = self._cast(rs, origin, dirs)
        th = r["t_hit"].numpy()
        gid = r["geometry_ids"].numpy().astype(np.int64)
        pid = r["primitive_ids"].numpy().astype(np.int64)
        nrm = r["primitive_normals"].numpy()
        rng_noisy = th + rng.normal(0.0, lc.range_noise, th.shape)
        keep = (gid != INVALID) & (th >= lc.min_range) & (th <= lc.max_range)
        keep &= rng.random(th.shape) >= lc.dropout
        tri = tables["offset"][gid[keep]] + pid[keep]
        refl = tables["reflectivity"][tri]  # (M,) material
        refl = np.where(tables["texture"][tri] == STRIPES, np.maximum(refl, 0.95), refl)  # retro-reflective bands
        cosi = np.abs(_dot(nrm[keep], dirs[keep]))
        inten = np.clip(255.0 * (0.1 + 0.9 * refl) * np.sqrt(cosi), 0, 255)
        xyz = self.lidar_dirs[keep] * rng_noisy[keep, None]  # (M, 3) LiDAR frame
        pts = np.concatenate([xyz, inten[:, None], self.lidar_ring[keep, None]], 1).astype(np.float32)
        return LidarSweep(pts, tables["track"][tri].astype(np.int32))


def _rotate(a: np.ndarray, R: np.ndarray) -> np.ndarray:
    """(N,3) @ R.T written out: numpy's matmul with a tiny matrix is slow when BLAS threads contend."""
    return a[:, 0:1] * R[:, 0] + a[:, 1:2] * R[:, 1] + a[:, 2:3] * R[:, 2]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (N,3) with (N,3) or (3,)."""
    b = np.broadcast_to(b, a.shape)
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _texture(p: np.ndarray, tex: np.ndarray) -> tuple:
    """(M,3) world points, (M,) texture codes -> (M,) brightness factor and (M,) white-band mask.

    Procedural (no image files to ship): planks, checker, grain and white reflective bands.
    """
    f = np.ones(len(p), np.float32)
    white = np.zeros(len(p), bool)
    m = tex == PLANKS
    if m.any():
        f[m] = np.where(np.mod(p[m, 2], 0.16) < 0.025, 0.62, 1.0)
    m = tex == CHECKER
    if m.any():
        q = np.floor(p[m] / 0.5).astype(np.int64)
        f[m] = np.where((q.sum(1) & 1) == 0, 1.0, 0.82)
    m = tex == GRAIN
    if m.any():
        q = np.floor(p[m] / 0.05)
        hsh = np.sin(q[:, 0] * 12.9898 + q[:, 1] * 78.233 + q[:, 2] * 37.719) * 43758.5453
        f[m] = 0.78 + 0.3 * (hsh - np.floor(hsh))
    m = tex == STRIPES
    if m.any():
        white[m] = np.mod(p[m, 2], 0.3) < 0.1
    return f, white
