"""The voxel grid of a sagittal series in DICOM patient coordinates (LPS, mm).

Slices are sagittal planes stacked along the DICOM slice normal (row cosine x column cosine
= -x: patient left to right), as GDCM/ITK and most readers order them. Within a slice, rows
run from superior to inferior (column direction cosine (0, 0, -1)) and columns from anterior
to posterior (row direction cosine (0, 1, 0)): the usual display with the patient facing
left and the head up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ROW_COSINE = (0.0, 1.0, 0.0)      # direction of increasing column index
COLUMN_COSINE = (0.0, 0.0, -1.0)  # direction of increasing row index
SLICE_COSINE = (-1.0, 0.0, 0.0)   # direction of increasing slice index (= the normal)


@dataclass(frozen=True)
class Grid:
    """shape = (slices, rows, columns); spacing = (slice spacing, row, column) in mm;
    origin = patient position of the centre of voxel (0, 0, 0)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centred(cls, slices: int, matrix: int, fov: float, slice_spacing: float,
                centre: tuple[float, float, float]) -> "Grid":
        """A square FOV of ``matrix`` pixels and ``slices`` slices centred on ``centre``."""
        px = fov / matrix
        cx, cy, cz = centre
        origin = (cx + (slices - 1) / 2 * slice_spacing,
                  cy - (matrix - 1) / 2 * px,
                  cz + (matrix - 1) / 2 * px)
        return cls((slices, matrix, matrix), (slice_spacing, px, px), origin)

    def x_of_slices(self) -> np.ndarray:
        return self.origin[0] + np.arange(self.shape[0]) * self.spacing[0] * SLICE_COSINE[0]

    def z_of_rows(self) -> np.ndarray:
        return self.origin[2] - np.arange(self.shape[1]) * self.spacing[1]

    def y_of_columns(self) -> np.ndarray:
        return self.origin[1] + np.arange(self.shape[2]) * self.spacing[2]

    def image_position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice k (centre of its first transmitted pixel)."""
        return (self.origin[0] + k * self.spacing[0] * SLICE_COSINE[0], self.origin[1],
                self.origin[2])

    @property
    def image_orientation(self) -> tuple[float, ...]:
        return ROW_COSINE + COLUMN_COSINE

    def voxel_to_patient(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (k, r, c) -> (N, 3) patient (x, y, z)."""
        index = np.asarray(index, float)
        o = np.asarray(self.origin)
        return o + index[:, :1] * self.spacing[0] * np.array(SLICE_COSINE) \
            + index[:, 1:2] * self.spacing[1] * np.array(COLUMN_COSINE) \
            + index[:, 2:3] * self.spacing[2] * np.array(ROW_COSINE)

    def to_dict(self) -> dict:
        return asdict(self)
