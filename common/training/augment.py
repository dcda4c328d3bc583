"""Training augmentation that respects the anatomy of the straightened 2-D spine image.

The image's rows run head to feet along the canal (1.6 mm each), its columns from in front
of the vertebral bodies to behind the spinous processes, and the channels are T1, T2, STIR
(slab means) and the STIR maximum over the vertebral width. What varies between patients
and scanners, and is drawn per image:

* shift along the spine (``shift_rows``, +-10 px = +-16 mm: which levels the field of view
  shows differs from patient to patient) and across it (``shift_cols``, +-2 px: where the
  canal was found);
* a small in-plane rotation (``rotate_deg``) and scale (``scale``): residual curvature and
  body size after straightening;
* per-sequence gain (``gain``, log-normal) and a common gamma (``gamma``): receiver and
  vendor scaling that the 1st-99th percentile normalisation leaves;
* Gaussian noise (``noise``): field strength.

Left-right or head-feet flips are not used: the image has no left-right axis (a projection
over the width), and head-feet order is anatomy (the sacrum is caudal; collapse and
wedging read differently upside down). Geometry goes through torch's ``affine_grid`` /
``grid_sample`` (bilinear, border padding), one batched call.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    shift_rows: float = 10.0
    shift_cols: float = 2.0
    rotate_deg: float = 4.0
    scale: float = 0.06
    gain: float = 0.10
    gamma: float = 0.10
    noise: float = 0.02

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape

        def uniform(*shape) -> torch.Tensor:
            return torch.rand(*shape, generator=generator) * 2 - 1

        theta = uniform(n) * math.radians(self.rotate_deg)
        s = 1 + uniform(n) * self.scale
        cos, sin = torch.cos(theta) / s, torch.sin(theta) / s
        aspect = h / w   # rotation in pixel space on a non-square grid
        # normalised coordinates: x across columns [-1, 1], y along rows [-1, 1]
        tx = uniform(n) * 2 * self.shift_cols / w
        ty = uniform(n) * 2 * self.shift_rows / h
        mat = torch.stack([torch.stack([cos, -sin * aspect, tx], 1),
                           torch.stack([sin / aspect, cos, ty], 1)], 1)
        grid = F.affine_grid(mat, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        gain = torch.exp(uniform(n, c, 1, 1) * self.gain)
        gamma = torch.exp(uniform(n, 1, 1, 1) * self.gamma)
        out = out.clamp_min(0).pow(gamma) * gain
        if self.noise:
            out = out + torch.randn(out.shape, generator=generator) * self.noise
        return out
