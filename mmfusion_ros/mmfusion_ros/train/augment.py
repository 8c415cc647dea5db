"""Camera augmentation for the training stages that update the camera encoder.

Why: the heldout split pairs classes with situations training never showed them in (a person on rough ground,
a bicycle on a collision course). Without augmentation the camera learns the situation's look (a tilted,
shaking frame; an object filling the view) as a cue for the class. A random roll, zoom and shift in one
warp, plus brightness/contrast jitter, take those cues away. The warp is torch's affine_grid/grid_sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class CameraAugment:
    """How far each random change may go (0 turns it off)."""

    shift: int = 0  # translation, pixels either way (the caption's left/right/ahead survive a few pixels)
    roll_deg: float = 0.0  # rotation about the optical axis, degrees either way (a robot rocking on rough ground)
    zoom: float = 0.0  # scale in [1/(1+zoom), 1+zoom] (an object nearer or farther than training showed it)
    jitter: float = 0.0  # brightness/contrast: x * (1 +- jitter) +- jitter (on the normalised image)

    def validate(self) -> None:
        if not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"camera_shift must be an integer >= 0, got {self.shift!r}")
        if not 0.0 <= self.roll_deg <= 45.0:
            raise ValueError(f"camera_roll must be in [0, 45] degrees, got {self.roll_deg!r}")
        if not 0.0 <= self.zoom <= 1.0:
            raise ValueError(f"camera_zoom must be in [0, 1], got {self.zoom!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"camera_jitter must be in [0, 1], got {self.jitter!r}")

    @property
    def active(self) -> bool:
        return bool(self.shift or self.roll_deg or self.zoom or self.jitter)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """(B,3,S,S) normalised images -> the same shape, each image changed at random (offsets, angles and
        scales from rng, jitter from torch's generator). Without roll and zoom, a shift is a crop of the
        edge-padded image, the draws in the order earlier recipes made them, so they train as they did."""
        b, s = x.shape[0], x.shape[-1]
        if self.roll_deg or self.zoom:
            ang = np.deg2rad(rng.uniform(-self.roll_deg, self.roll_deg, b))
            scale = np.exp(rng.uniform(-math.log1p(self.zoom), math.log1p(self.zoom), b))
            # affine_grid works in [-1, 1] coordinates: a pixel is 2/S of them
            t = rng.integers(-self.shift, self.shift + 1, (b, 2)) * (2.0 / s)
            cos, sin = np.cos(ang) / scale, np.sin(ang) / scale  # output pixel -> input pixel: zoom in = sample less
            theta = np.stack([np.stack([cos, -sin, t[:, 0]], 1), np.stack([sin, cos, t[:, 1]], 1)], 1)  # (B, 2, 3)
            grid = F.affine_grid(torch.as_tensor(theta, dtype=x.dtype, device=x.device), list(x.shape),
                                 align_corners=False)  # (B, S, S, 2)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        elif self.shift:
            sh = self.shift
            pad = F.pad(x, (sh, sh, sh, sh), mode="replicate")  # (B, 3, S+2sh, S+2sh)
            off = rng.integers(0, 2 * sh + 1, (b, 2))
            x = torch.stack([pad[i, :, o[0]:o[0] + s, o[1]:o[1] + s] for i, o in enumerate(off)])
        if self.jitter:
            gain = 1 + self.jitter * (2 * torch.rand(b, 1, 1, 1, device=x.device) - 1)
            bias = self.jitter * (2 * torch.rand(b, 1, 1, 1, device=x.device) - 1)
            x = x * gain + bias
        return x
