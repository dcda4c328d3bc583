"""Slice geometry in DICOM patient coordinates (LPS, mm).

Conventions used by :class:`~spinemet.common.dicom.scan.Series`:

* ImageOrientationPatient = row cosine (direction of increasing column index) followed by the
  column cosine (direction of increasing row index); the slice normal is row x column.
* PixelSpacing = [row spacing, column spacing]: the distance between adjacent rows (along the
  column cosine) and between adjacent columns (along the row cosine).
* Slices are ordered by the projection of ImagePositionPatient on the normal, ascending (the
  order GDCM/ITK and dcm2niix use), never by file name or InstanceNumber.
"""

from __future__ import annotations

import numpy as np

ORIENTATION_TOL = 1e-3       # cosines of slices of one series must agree this closely
OBLIQUE_BELOW = 0.866        # |normal component| below cos(30 deg) on every axis: oblique


def normal_of(iop) -> np.ndarray:
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:6], float)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def orientation_label(iop) -> str:
    """'sagittal' | 'coronal' | 'axial' by the dominant axis of the slice normal, 'oblique'
    when the normal is more than 30 degrees away from every axis."""
    n = np.abs(normal_of(iop))
    k = int(np.argmax(n))
    if n[k] < OBLIQUE_BELOW:
        return "oblique"
    return ("sagittal", "coronal", "axial")[k]


def valid_orientation(iop) -> bool:
    if iop is None or len(iop) != 6:
        return False
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:6], float)
    if not (np.all(np.isfinite(row)) and np.all(np.isfinite(col))):
        return False
    return abs(np.linalg.norm(row) - 1) < 0.01 and abs(np.linalg.norm(col) - 1) < 0.01 and \
        abs(float(row @ col)) < 0.01


def affine(origin, spacing, direction) -> np.ndarray:
    """4x4 matrix taking a voxel index (k, r, c, 1) to patient LPS mm.

    ``direction`` rows: row cosine, column cosine, slice direction; ``spacing`` =
    (slice, row, column) spacing."""
    d = np.asarray(direction, float)
    a = np.eye(4)
    a[:3, 0] = d[2] * spacing[0]
    a[:3, 1] = d[1] * spacing[1]
    a[:3, 2] = d[0] * spacing[2]
    a[:3, 3] = origin
    return a


def uneven_gaps(positions: np.ndarray, rel_tol: float = 0.02, abs_tol: float = 0.01) -> bool:
    """True when the gaps between sorted slice positions along the normal differ by more than
    ``rel_tol`` of their mean (and ``abs_tol`` mm): a missing slice or a mixed stack."""
    if len(positions) < 3:
        return False
    gaps = np.diff(np.asarray(positions, float))
    mean = gaps.mean()
    return bool(np.max(np.abs(gaps - mean)) > max(abs_tol, rel_tol * mean))


def sheared(ipps: np.ndarray, normal: np.ndarray, tol: float = 0.05) -> bool:
    """True when slice positions do not lie on one line along the normal (in-plane offsets
    between slices, e.g. a gantry-tilted or reformatted stack): a volume with the given
    origin, spacing and direction would misplace such slices."""
    p = np.asarray(ipps, float)
    if len(p) < 2:
        return False
    rel = p - p[0]
    inplane = rel - np.outer(rel @ normal, normal)
    return bool(np.max(np.linalg.norm(inplane, axis=1)) > tol)
