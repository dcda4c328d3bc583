"""Spine segmentation (the canal's centre line) and the crop around the spine.

The spinal canal is the one long, narrow, vertical structure of sagittal spine MRI: bright
on STIR and T2 (CSF), dark on T1. ``LocateSpine`` looks for it on a coarse copy: a ridge
filter (the pixel minus the mean of its ±12 mm horizontal neighbourhood), smoothed along the
spine, picks the mid-sagittal slice (strongest ridge) and then the best connected path of the
ridge from top to bottom (dynamic programming, at most one coarse pixel sideways per row).
STIR is preferred (fat is nulled, so the bright subcutaneous fat does not compete), then T2,
then T1 (dark ridge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .pipeline import SpineLocation, StudyImage
from .volume import CANONICAL_AXES, Box, Volume, resample


class SpineNotFound(ValueError):
    """No canal-like structure in the study."""


def bounding_box(vol: Volume, spacing: tuple[float, float, float]) -> Box:
    """The canonical box covering ``vol`` at ``spacing`` (slices, rows, columns)."""
    n = np.array(vol.data.shape) - 1
    corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], float)
    pts = vol.index_to_patient(corners)
    x0, y0, z1 = pts[:, 0].min(), pts[:, 1].min(), pts[:, 2].max()
    ext = np.ptp(pts, axis=0)[[0, 2, 1]]
    shape = tuple(int(e // s) + 1 for e, s in zip(ext, spacing))
    return Box((float(x0), float(y0), float(z1)), shape, tuple(float(s) for s in spacing))


def _best_path(score: np.ndarray) -> np.ndarray:
    """Column per row maximising the summed score, moving at most one column per row."""
    rows, cols = score.shape
    total = score[0].copy()
    back = np.zeros((rows, cols), np.int8)
    for r in range(1, rows):
        left = np.concatenate(([-np.inf], total[:-1]))
        right = np.concatenate((total[1:], [-np.inf]))
        stack = np.stack([left, total, right])
        choice = np.argmax(stack, axis=0)
        total = stack[choice, np.arange(cols)] + score[r]
        back[r] = choice - 1
    path = np.zeros(rows, int)
    path[-1] = int(np.argmax(total))
    for r in range(rows - 1, 0, -1):
        path[r - 1] = path[r] + back[r, path[r]]
    return path


@dataclass
class LocateSpine:
    coarse_mm: float = 2.0
    ridge_halfwidth_mm: float = 12.0
    along_spine_mm: float = 12.0

    def __call__(self, study: StudyImage) -> StudyImage:
        source = next((s for s in ("STIR", "T2", "T1") if s in study.volumes), None)
        if source is None:
            raise SpineNotFound(f"study {study.study_uid}: no T1, T2 or STIR series")
        vol = study.volumes[source]
        slice_mm = float(min(vol.spacing[0], 6.0))
        box = bounding_box(vol, (slice_mm, self.coarse_mm, self.coarse_mm))
        img = resample(vol, box)
        img /= np.percentile(img, 99.0) + 1e-6
        size = int(round(2 * self.ridge_halfwidth_mm / self.coarse_mm)) | 1
        ridge = img - ndimage.uniform_filter1d(img, size, axis=2, mode="nearest")
        if source == "T1":
            ridge = -ridge
        ridge = ndimage.gaussian_filter1d(ridge, self.along_spine_mm / self.coarse_mm, axis=1)
        # The body is where there is signal: a dark line in air is not a canal.
        body = ndimage.uniform_filter(img, (1, 9, 9)) > 0.05
        ridge = np.where(body, ridge, 0.0)
        per_slice = np.clip(ridge, 0, None).max(axis=2).sum(axis=1)
        k = int(np.argmax(per_slice))
        path = _best_path(np.clip(ridge[k], 0, None))
        strength = ridge[k, np.arange(ridge.shape[1]), path]
        idx = np.column_stack([np.full(path.size, k), np.arange(path.size), path]).astype(float)
        pts = box.volume().index_to_patient(idx)
        study.spine = SpineLocation(mid_x=float(pts[0, 0]), z=pts[:, 2], y=pts[:, 1],
                                    strength=strength.astype(np.float32), source=source)
        study.note("LocateSpine", source=source, mid_x_mm=float(pts[0, 0]),
                   canal_rows=int((strength > 0.3 * strength.max()).sum()))
        return study


@dataclass
class CropToSpine:
    """A box around the spine: ``height_mm`` along it, from ``anterior_mm`` in front of the
    canal to ``posterior_mm`` behind it, ``half_width_mm`` either side of the mid-sagittal
    plane (the vertebral bodies, pedicles and facets), at ``spacing_mm`` in plane."""

    height_mm: float = 256.0
    anterior_mm: float = 64.0
    posterior_mm: float = 38.4
    half_width_mm: float = 28.0
    spacing_mm: float = 1.6
    margin_mm: float = 4.0
    slab_half_mm: dict | None = None   # per sequence; default: T1/T2 mid slab, STIR full width

    def __call__(self, study: StudyImage) -> StudyImage:
        sp = study.spine
        strong = sp.strength > 0.3 * max(float(sp.strength.max()), 1e-6)
        z_centre = float(np.median(sp.z[strong])) if strong.any() else float(np.median(sp.z))
        z_top, z_bottom = z_centre + self.height_mm / 2, z_centre - self.height_mm / 2
        inside = (sp.z <= z_top) & (sp.z >= z_bottom)
        ys = sp.y[inside] if inside.any() else sp.y
        y0 = float(ys.min()) - self.anterior_mm - self.margin_mm
        y1 = float(ys.max()) + self.posterior_mm + self.margin_mm
        ref = study.volumes[sp.source]
        slice_mm = float(min(ref.spacing[0], 5.5))
        n_slices = int(np.ceil(2 * self.half_width_mm / slice_mm)) + 1
        x0 = sp.mid_x - (n_slices - 1) / 2 * slice_mm
        rows = int(round(self.height_mm / self.spacing_mm))
        cols = int(np.ceil((y1 - y0) / self.spacing_mm)) + 1
        study.box = Box((float(x0), y0, z_top - self.spacing_mm / 2), (n_slices, rows, cols),
                        (slice_mm, self.spacing_mm, self.spacing_mm))
        # Only the slices the 2-D mapping uses go on: T1 and T2 feed the mid-sagittal channels,
        # STIR also the projection over the vertebral width.
        halves = self.slab_half_mm or {"T1": 5.0, "T2": 5.0, "STIR": self.half_width_mm}
        x = x0 + np.arange(n_slices) * slice_mm
        for seq in study.sequences:
            sel = np.flatnonzero(np.abs(x - sp.mid_x) <= halves.get(seq, self.half_width_mm))
            study.slabs[seq] = sel if sel.size else np.array([int(np.argmin(np.abs(x - sp.mid_x)))])
        study.note("CropToSpine", shape=list(study.box.shape), z_top=z_top,
                   y_range=[y0, y1], mid_x=sp.mid_x)
        return study


__all__ = ["LocateSpine", "CropToSpine", "SpineNotFound", "bounding_box", "CANONICAL_AXES"]
