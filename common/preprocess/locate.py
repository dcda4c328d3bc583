"""Spine segmentation (the canal's centre line) and the crop around the spine.

The spinal canal is the one long tube of sagittal spine MRI that runs the whole field of
view: bright on STIR and T2 (CSF), dark on T1. ``LocateSpine`` finds it on a coarse
copy (3 mm) of one sequence (STIR preferred: fat is nulled; then T2; then T1):

1. tubeness: scikit-image's Sato filter (Hessian eigenvalues) at the canal's scale, which
   answers to tubes of any direction (the sacral canal slopes back at up to 60 degrees);
2. depth: a tube within ``depth_mm`` of the body's surface (skin, scalp, subcutaneous fat
   layers, which are long bright tubes too) counts less, fading to nothing at the surface;
   and one more than ``max_back_mm`` in front of the back's skin (the abdomen: bright
   fluid-filled bowel) counts less, fading to nothing 40 mm further forwards;
3. the path: dynamic programming finds the best connected path from top to bottom on the
   mean over slices (the canal and its surroundings persist over several slices, bowel
   contents change from slice to slice); moving anteriorly costs more than moving
   posteriorly (the lordosis bends the canal gently forwards, the sacrum sharply back), so
   the path does not leave the spine for the bright bowel in front of it;
4. the mid-sagittal plane: the plane of left-right mirror symmetry of the slices (with too
   few slices to mirror, the slice where the canal's tubeness along the path is strongest);
   the path is refined on the slice nearest it.

An earlier version weighted candidates by the band-pass energy of the image in front of
them (the vertebral column's periodicity), but bowel texture has more of that energy than
the column does, and it followed the bowel in some studies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import sato

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


def best_path(score: np.ndarray, max_step: int = 2, step_cost: float = 0.1,
              anterior_factor: float = 6.0) -> np.ndarray:
    """Column per row maximising the summed score (dynamic programming), moving at most
    ``max_step`` columns per row; each column of sideways move costs ``step_cost`` times
    the score's maximum, ``anterior_factor`` times more towards lower columns (anterior)."""
    rows, cols = score.shape
    cost = step_cost * float(score.max() or 1.0)
    shifts = np.arange(-max_step, max_step + 1)
    # Arriving at column c from column c + d: d > 0 is a move towards anterior.
    penalty = cost * np.abs(shifts) * np.where(shifts > 0, anterior_factor, 1.0)
    total = score[0].astype(float).copy()
    back = np.zeros((rows, cols), np.int8)
    for r in range(1, rows):
        stack = np.full((shifts.size, cols), -np.inf)
        for i, d in enumerate(shifts):
            if d >= 0:
                stack[i, : cols - d] = total[d:] - penalty[i]
            else:
                stack[i, -d:] = total[: cols + d] - penalty[i]
        choice = np.argmax(stack, axis=0)
        total = stack[choice, np.arange(cols)] + score[r]
        back[r] = shifts[choice]
    path = np.zeros(rows, int)
    path[-1] = int(np.argmax(total))
    for r in range(rows - 1, 0, -1):
        path[r - 1] = path[r] + back[r, path[r]]
    return path


def body_mask(img: np.ndarray, level: float = 0.1) -> np.ndarray:
    """Where the body is: brighter than ``level`` times the 99th percentile after a 5-pixel
    mean filter (``img`` is scaled so that its 99th percentile is 1)."""
    return ndimage.uniform_filter(img, (1, 5, 5)) > level


def depth_weight(body: np.ndarray, px_mm: float, depth_mm: float) -> np.ndarray:
    """Per slice: 0 from the body's surface to ``depth_mm / 2`` inside it, rising to 1 at
    ``depth_mm`` (holes in the body mask filled)."""
    out = np.zeros(body.shape, np.float32)
    for k in range(body.shape[0]):
        inside = ndimage.binary_fill_holes(ndimage.binary_opening(body[k], iterations=2))
        dist = ndimage.distance_transform_edt(inside) * px_mm
        out[k] = np.clip((dist - depth_mm / 2) / (depth_mm / 2), 0.0, 1.0)
    return out


def back_weight(body: np.ndarray, px_mm: float, max_mm: float) -> np.ndarray:
    """Per row: 1 up to ``max_mm - 40`` mm in front of the back's skin (the body's most
    posterior column on that row), falling to 0 at ``max_mm``; the canal lies 40-130 mm in
    front of it, the abdomen further forwards."""
    cols = np.arange(body.shape[2])
    last = np.where(body.any(axis=2), body.shape[2] - 1 - np.argmax(body[:, :, ::-1], axis=2), 0)
    last = ndimage.median_filter(last, size=(1, 9), mode="nearest")
    depth = (last[:, :, None] - cols[None, None, :]) * px_mm
    return np.clip((max_mm - depth) / 40.0, 0.0, 1.0).astype(np.float32)


def symmetry_centre(img: np.ndarray, min_pairs: int = 3) -> float | None:
    """The slice position (in slice units, half-slice steps) about which the volume is most
    nearly mirror-symmetric: the mid-sagittal plane.

    For each candidate centre, the slice pairs mirrored about it are compared by their
    correlation, less the mean correlation of all pairs equally far apart (neighbouring
    slices correlate whatever the symmetry); candidates need ``min_pairs`` pairs at least
    two slices apart. None when no candidate has them (a thin slab: use another cue).
    """
    n = img.shape[0]
    flat = img.reshape(n, -1).astype(float)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True) + 1e-9
    corr = flat @ flat.T
    baseline = {d: float(np.mean(np.diagonal(corr, d))) for d in range(1, n)}
    best, best_c = -np.inf, None
    for twice in range(1, 2 * n - 2):
        c = twice / 2.0
        pairs = [(a, twice - a) for a in range(n) if a < twice - a < n and twice - 2 * a >= 2]
        if len(pairs) < min_pairs:
            continue
        value = float(np.mean([corr[a, b] - baseline[b - a] for a, b in pairs]))
        if value > best:
            best, best_c = value, c
    return best_c


def back_weight(img: np.ndarray, px_mm: float, max_mm: float, level: float = 0.1
                ) -> np.ndarray:
    """Per row: 1 up to ``max_mm - 40`` mm in front of the back's skin (the body's most
    posterior column on that row), falling to 0 at ``max_mm``; the canal lies 40-130 mm in
    front of it, the abdomen further forwards."""
    body = ndimage.uniform_filter(img, (1, 5, 5)) > level
    cols = np.arange(img.shape[2])
    last = np.where(body.any(axis=2), img.shape[2] - 1 - np.argmax(body[:, :, ::-1], axis=2), 0)
    last = ndimage.median_filter(last, size=(1, 9), mode="nearest")
    depth = (last[:, :, None] - cols[None, None, :]) * px_mm
    return np.clip((max_mm - depth) / 40.0, 0.0, 1.0).astype(np.float32)


@dataclass
class LocateSpine:
    coarse_mm: float = 3.0
    canal_sigmas_mm: tuple = (3.0, 5.0)
    depth_mm: float = 30.0
    body_level: float = 0.1
    step_cost: float = 0.1
    anterior_factor: float = 6.0
    max_back_mm: float = 150.0
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
        px = self.coarse_mm
        sigmas = [s / px for s in self.canal_sigmas_mm]
        tube = np.stack([sato(plane, sigmas=sigmas, black_ridges=source == "T1")
                         for plane in img]).astype(np.float32)
        tube /= float(tube.max()) + 1e-9
        body = body_mask(img, self.body_level)
        score = tube * depth_weight(body, px, self.depth_mm)
        if self.max_back_mm > 0:
            score *= back_weight(body, px, self.max_back_mm)
        if not score.any():
            raise SpineNotFound(f"study {study.study_uid}: no tube-like structure in {source}")
        path = best_path(score.mean(axis=0), step_cost=self.step_cost,
                         anterior_factor=self.anterior_factor)
        rows = np.arange(score.shape[1])
        mid_k = symmetry_centre(img)
        if mid_k is None:   # too few slices to mirror: where the canal's tubeness is strongest
            near_path = np.clip(path[:, None] + np.arange(-2, 3)[None, :], 0, score.shape[2] - 1)
            per_slice = score[:, rows[:, None], near_path].max(axis=2).sum(axis=1)
            mid_k = float(np.argmax(per_slice))
        k = int(np.clip(np.rint(mid_k), 0, score.shape[0] - 1))
        # Refine on that slice: the canal's own tubeness within refine_mm of the path.
        reach = int(round(self.refine_mm / px))
        cand = np.clip(path[:, None] + np.arange(-reach, reach + 1)[None, :], 0,
                       score.shape[2] - 1)
        local = score[k][rows[:, None], cand]
        path = np.where(local.max(axis=1) > 0, cand[rows, np.argmax(local, axis=1)], path)
        path = np.rint(ndimage.median_filter(path.astype(float), size=5, mode="nearest")
                       ).astype(int)
        strength = score[k, rows, path]
        idx = np.column_stack([np.full(path.size, k), rows, path]).astype(float)
        grid = box.volume(img)
        pts = grid.index_to_patient(idx)
        mid_x = float(grid.index_to_patient(np.array([[mid_k, 0.0, 0.0]]))[0, 0])
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
    # The spine reaches 36-48 mm in front of the canal centre (the vertebral bodies) and
    # 7-40 mm behind it (laminae, spinous processes; 10th-90th percentiles, synthetic cohort).
    anterior_mm: float = 46.0
    posterior_mm: float = 38.0
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
        # the exam is for (a lumbar FOV of 280-320 mm; the tensor shows 288 mm along the spine).
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

