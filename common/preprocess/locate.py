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

from .pipeline import Reformat, SpineLocation, StudyImage
from .volume import Box, Volume, resample


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


def _best_path(score: np.ndarray, max_step: int = 2, step_cost: float = 0.05) -> np.ndarray:
    """Column per row maximising the summed score, moving at most ``max_step`` columns per
    row (the sacrum slopes at up to ~60 degrees), each column of sideways move costing
    ``step_cost`` times the score's maximum (a smooth path wins over a jumpy one)."""
    rows, cols = score.shape
    cost = step_cost * float(score.max() or 1.0)
    shifts = np.arange(-max_step, max_step + 1)
    total = score[0].astype(float).copy()
    back = np.zeros((rows, cols), np.int8)
    for r in range(1, rows):
        stack = np.full((shifts.size, cols), -np.inf)
        for i, d in enumerate(shifts):   # arrive at column c from column c + d
            if d >= 0:
                stack[i, : cols - d] = total[d:] - cost * abs(d)
            else:
                stack[i, -d:] = total[: cols + d] - cost * abs(d)
        choice = np.argmax(stack, axis=0)
        total = stack[choice, np.arange(cols)] + score[r]
        back[r] = shifts[choice]
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
    column_depth_mm: float = 40.0
    refine_mm: float = 8.0

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
        # The canal runs just behind the vertebral column, whose bodies and discs repeat
        # every 15-45 mm along the spine: band-pass the image along the rows, take the local
        # energy, and weight each candidate column by that energy in front of it. Bright fat
        # layers and the skull are long ridges too, but have nothing periodic in front.
        px = self.coarse_mm
        band = ndimage.gaussian_filter1d(img, 3.0 / px, axis=1) - \
            ndimage.gaussian_filter1d(img, 10.0 / px, axis=1)
        energy = ndimage.gaussian_filter1d(band * band, 20.0 / px, axis=1)
        lo, hi = int(round(8.0 / px)), int(round(self.column_depth_mm / px))
        front = ndimage.uniform_filter1d(energy, hi - lo + 1, axis=2, mode="constant")
        # front[c] should average energy over columns c-hi .. c-lo (anterior of c).
        front = np.roll(front, (hi + lo) // 2, axis=2)
        front[:, :, : (hi + lo) // 2] = 0.0
        front /= float(front.max()) + 1e-9
        # The body is where there is signal: a dark line in air is not a canal.
        body = ndimage.uniform_filter(img, (1, 9, 9)) > 0.05
        raw = np.where(body, np.clip(ridge, 0, None), 0.0)
        ridge = raw * front
        per_slice = np.clip(ridge, 0, None).max(axis=2).sum(axis=1)
        k = int(np.argmax(per_slice))
        # The canal spans several slices: the midline is the score-weighted centre of the
        # best slice and its neighbours (finer than one slice).
        near = np.arange(max(k - 1, 0), min(k + 2, len(per_slice)))
        mid_k = float((near * per_slice[near]).sum() / (per_slice[near].sum() + 1e-9))
        path = _best_path(np.clip(ridge[k], 0, None))
        # Refine: the vertebral-column weighting found the right structure; the canal's own
        # ridge places it within a few millimetres of that path.
        reach = int(round(self.refine_mm / self.coarse_mm))
        cols = raw.shape[2]
        offsets = np.arange(-reach, reach + 1)
        cand = np.clip(path[:, None] + offsets[None, :], 0, cols - 1)
        local = raw[k][np.arange(len(path))[:, None], cand]
        best = cand[np.arange(len(path)), np.argmax(local, axis=1)]
        path = np.where(local.max(axis=1) > 0, best, path)
        path = np.rint(ndimage.median_filter(path.astype(float), size=5, mode="nearest")
                       ).astype(int)
        strength = ridge[k, np.arange(ridge.shape[1]), path]
        idx = np.column_stack([np.full(path.size, k), np.arange(path.size), path]).astype(float)
        pts = box.volume().index_to_patient(idx)
        mid_x = float(box.volume().index_to_patient(np.array([[mid_k, 0.0, 0.0]]))[0, 0])
        study.spine = SpineLocation(mid_x=mid_x, z=pts[:, 2], y=pts[:, 1],
                                    strength=strength.astype(np.float32), source=source)
        study.note("LocateSpine", source=source, mid_x_mm=mid_x,
                   canal_rows=int((strength > 0.3 * strength.max()).sum()))
        return study


@dataclass
class CropToSpine:
    """A box around the spine: ``height_mm`` along it, from ``anterior_mm`` in front of the
    canal to ``posterior_mm`` behind it, ``half_width_mm`` either side of the mid-sagittal
    plane (the vertebral bodies, pedicles and facets), at ``spacing_mm`` in plane."""

    height_mm: float = 288.0
    anterior_mm: float = 56.0
    posterior_mm: float = 40.0
    half_width_mm: float = 28.0
    spacing_mm: float = 1.6
    margin_mm: float = 4.0
    slab_half_mm: dict | None = None   # per sequence; default: T1/T2 mid slab, STIR full width

    @property
    def rows(self) -> int:
        return int(round(self.height_mm / self.spacing_mm))

    @property
    def cols(self) -> int:
        """Columns of the straightened image, from anterior_mm to posterior_mm."""
        return int(round((self.anterior_mm + self.posterior_mm) / self.spacing_mm))

    def __call__(self, study: StudyImage) -> StudyImage:
        sp = study.spine
        # Rows: centred on the field of view, which the technologist centres on the region
        # the exam is for (a lumbar FOV of 280-320 mm holds the 256 mm the tensor shows).
        z_centre = float((sp.z.max() + sp.z.min()) / 2.0)
        z_top, z_bottom = z_centre + self.height_mm / 2, z_centre - self.height_mm / 2
        inside = (sp.z <= z_top) & (sp.z >= z_bottom)
        ys = sp.y[inside] if inside.any() else sp.y
        y0 = float(ys.min()) - self.anterior_mm - self.margin_mm
        y1 = float(ys.max()) + self.posterior_mm + self.margin_mm
        ref = study.volumes[sp.source]
        slice_mm = float(min(ref.spacing[0], 5.5))
        n_slices = int(np.ceil(2 * self.half_width_mm / slice_mm)) + 1
        x0 = sp.mid_x - (n_slices - 1) / 2 * slice_mm
        cols = int(np.ceil((y1 - y0) / self.spacing_mm)) + 1
        study.reformat = Reformat(self.anterior_mm, self.spacing_mm, self.rows, self.cols)
        study.box = Box((float(x0), y0, z_top - self.spacing_mm / 2), (n_slices, self.rows, cols),
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

