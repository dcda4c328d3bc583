"""The 3-D to 2-D mapping: a straightened sagittal view with slab projections as channels.

Lesions are not all on the midline: pedicles lie 15-20 mm off it and focal lesions anywhere
in a 45-50 mm wide vertebral body. One mid-sagittal slice would miss them, so the tensor has
five channels:

====  ==================================================================================
0     T1, mean of the mid-sagittal slab (|x - mid| <= ``mid_half_mm``)
1     T2, mean of the mid-sagittal slab
2     STIR, mean of the mid-sagittal slab
3     STIR, maximum over the vertebral width (|x - mid| <= ``width_half_mm``): tumour,
      oedema and fluid are STIR-bright and fat is nulled, so a lesion anywhere across the
      bodies and posterior elements shows up
4     STIR, maximum beside the canal (``lateral_inner_mm`` <= |x - mid| <= ``width_half_mm``):
      the pedicles sit level with the canal, so in channel 3 the CSF's own STIR signal
      covers a pedicle lesion; without the canal's 10 mm either side of the midline it
      stands out against the fat-suppressed pedicle marrow and the foraminal fat
====  ==================================================================================

Each row is resampled so that the canal centre line sits at a fixed column (a curved planar
reformation in the sagittal plane): the lordosis no longer moves the vertebrae sideways, and
every tensor has the shape ``CropToSpine`` sets (``Pipeline.output_shape``). A missing
sequence gives a zero channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .pipeline import StudyImage

CHANNELS = ("T1 mid-sagittal", "T2 mid-sagittal", "STIR mid-sagittal", "STIR max over width",
            "STIR max beside the canal")


@dataclass
class ProjectTo2D:
    """Straightened slab projections on the grid ``CropToSpine`` chose (``study.reformat``)."""

    mid_half_mm: float = 3.0
    width_half_mm: float = 25.0
    lateral_inner_mm: float = 10.0

    def straight_coordinates(self, study: StudyImage) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) indices into the box for every output pixel."""
        box, grid = study.box, study.reformat
        z = box.origin[2] - np.arange(grid.rows) * box.spacing[1]
        canal_y = self._canal_y(study)
        y = canal_y[:, None] - grid.anterior_mm + np.arange(grid.cols)[None, :] * grid.spacing_mm
        rows = (box.origin[2] - z) / box.spacing[1]
        cols = (y - box.origin[1]) / box.spacing[2]
        return np.broadcast_to(rows[:, None], cols.shape), cols

    @staticmethod
    def _canal_y(study: StudyImage) -> np.ndarray:
        """Patient y (mm) of the canal centre line at each output row."""
        box, grid = study.box, study.reformat
        z = box.origin[2] - np.arange(grid.rows) * box.spacing[1]
        order = np.argsort(study.spine.z)
        canal_y = np.interp(z, study.spine.z[order], study.spine.y[order])
        # A smooth centre line: the path is found on a coarse grid, smooth out its steps.
        return ndimage.gaussian_filter1d(canal_y, 3.0, mode="nearest")

    def image_coordinates(self, study: StudyImage, points: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where patient points (N, 3; LPS mm) land in the 2-D image: fractional (row,
        column) and whether each lies in the image and within the projected width."""
        box, grid = study.box, study.reformat
        pts = np.asarray(points, float).reshape(-1, 3)
        r = (box.origin[2] - pts[:, 2]) / box.spacing[1]
        cy = np.interp(r, np.arange(grid.rows), self._canal_y(study))
        c = (pts[:, 1] - cy + grid.anterior_mm) / grid.spacing_mm
        inside = ((r >= 0) & (r < grid.rows) & (c >= 0) & (c < grid.cols) &
                  (np.abs(pts[:, 0] - study.spine.mid_x) <= self.width_half_mm))
        return r, c, inside

    def slab(self, study: StudyImage, seq: str, half_mm: float, inner_mm: float = -1.0
             ) -> np.ndarray:
        """Indices into the sequence's crop of the slices within ``half_mm`` of the midline
        (and at least ``inner_mm`` from it)."""
        x = study.crop_x(seq)
        off = np.abs(x - study.spine.mid_x)
        sel = np.flatnonzero((off <= half_mm + 1e-6) & (off >= inner_mm - 1e-6))
        if sel.size == 0:
            sel = np.array([int(np.argmin(np.abs(off - max(inner_mm, 0.0))))])
        return sel

    def __call__(self, study: StudyImage) -> StudyImage:
        rr, cc = self.straight_coordinates(study)

        def straighten(seq: str, half_mm: float, inner_mm: float = -1.0) -> np.ndarray | None:
            if seq not in study.crop:
                return None
            vol = study.crop[seq]
            return np.stack([ndimage.map_coordinates(vol[k], [rr, cc], order=1, mode="nearest")
                             for k in self.slab(study, seq, half_mm, inner_mm)])

        out = np.zeros((len(CHANNELS), study.reformat.rows, study.reformat.cols), np.float32)
        missing = []
        for ch, seq in enumerate(("T1", "T2", "STIR")):
            s = straighten(seq, self.mid_half_mm)
            if s is None:
                missing.append(seq)
            else:
                out[ch] = s.mean(axis=0)
        wide_stir = straighten("STIR", self.width_half_mm)
        if wide_stir is not None:
            out[3] = wide_stir.max(axis=0)
            out[4] = straighten("STIR", self.width_half_mm, self.lateral_inner_mm).max(axis=0)
        study.image = out
        study.note("ProjectTo2D", shape=list(out.shape), missing=missing)
        return study
