"""Image volumes with their patient geometry, and moving them between grids.

A :class:`Volume` is a 3-D array indexed (k, r, c) with the patient position of every
voxel: ``origin`` (voxel (0,0,0), LPS mm), ``axes`` (3x3, row i = unit vector of index i in
patient space) and ``spacing`` (mm per index step). The canonical orientation used by the
pipeline is sagittal: k towards patient left (+x), r towards the feet (-z), c towards the back
(+y), i.e. the usual sagittal display of a supine, head-first patient.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

CANONICAL_AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass
class Volume:
    data: np.ndarray
    origin: np.ndarray
    axes: np.ndarray
    spacing: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        """4x4 from index (k, r, c, 1) to patient (x, y, z, 1)."""
        a = np.eye(4)
        a[:3, :3] = (self.axes * self.spacing[:, None]).T
        a[:3, 3] = self.origin
        return a

    def index_to_patient(self, idx: np.ndarray) -> np.ndarray:
        return idx @ (self.axes * self.spacing[:, None]) + self.origin

    def patient_to_index(self, pts: np.ndarray) -> np.ndarray:
        return np.linalg.solve((self.axes * self.spacing[:, None]).T, (pts - self.origin).T).T

    def with_data(self, data: np.ndarray) -> "Volume":
        return replace(self, data=data)


def from_affine(data: np.ndarray, affine: np.ndarray) -> Volume:
    m = np.asarray(affine, float)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    return Volume(np.asarray(data), np.asarray(affine, float)[:3, 3].copy(),
                  (m / spacing).T.copy(), spacing)


def canonical_permutation(axes: np.ndarray) -> tuple[list[int], list[bool]] | None:
    """For each canonical axis, the array axis most parallel to it and whether it runs the
    other way; None when two canonical axes would take the same array axis."""
    dots = axes @ CANONICAL_AXES.T                 # (array axis, canonical axis)
    order = [int(np.argmax(np.abs(dots[:, j]))) for j in range(3)]
    if sorted(order) != [0, 1, 2]:
        return None
    flips = [bool(axes[order[j]] @ CANONICAL_AXES[j] < 0) for j in range(3)]
    return order, flips


def to_canonical(vol: Volume) -> Volume:
    """Permute and flip the array so that it lies in the canonical sagittal orientation.

    Only exact 90-degree re-indexing (no interpolation): the nearest canonical axis of each
    array axis is chosen, so an oblique sagittal series stays oblique by a few degrees and the
    resampling step takes care of the rest.
    """
    perm = canonical_permutation(vol.axes)
    if perm is None:                             # degenerate (should not happen): keep as is
        return vol
    order, flips = perm
    data = np.transpose(vol.data, order)
    origin, axes, spacing = _canonical_geometry(vol, data.shape, order, flips)
    for j in range(3):
        if flips[j]:
            data = np.flip(data, axis=j)
    return Volume(np.ascontiguousarray(data), origin, axes, spacing)


def _canonical_geometry(vol: Volume, canon_shape, order, flips):
    axes = vol.axes[order].copy()
    spacing = vol.spacing[order].copy()
    origin = vol.origin.copy()
    for j in range(3):
        if flips[j]:
            origin = origin + axes[j] * spacing[j] * (canon_shape[j] - 1)
            axes[j] = -axes[j]
    return origin, axes, spacing


class LazyVolume(Volume):
    """A canonical volume whose pixels are decoded when first needed, and of which a range
    of canonical slices can be decoded alone (:meth:`slab`): the preprocessing reads only
    the slices its crop uses from the sequences it does not locate the spine on.

    ``load(slices)`` returns the series' slices (a ``range`` of the series' own order) as a
    (slices, rows, cols) array; ``affine`` is the series' voxel-to-patient matrix.
    """

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray, load):
        self._shape, self._affine, self._load, self._data = tuple(shape), affine, load, None
        geo = from_affine(np.zeros((1, 1, 1), np.float32), affine)
        self._perm = canonical_permutation(geo.axes)
        order, flips = self._perm or ([0, 1, 2], [False] * 3)
        self.canonical_shape = tuple(self._shape[o] for o in order)
        origin, axes, spacing = _canonical_geometry(geo, self.canonical_shape, order, flips)
        super().__init__(None, origin, axes, spacing)

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = to_canonical(from_affine(self._load(None), self._affine)).data
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = value

    def slab(self, lo: int, hi: int) -> Volume:
        """Canonical slices lo..hi-1 as a volume of their own (decoding only those when the
        series' slices are the canonical slices, as in any sagittal series)."""
        n = self.canonical_shape[0]
        if self._data is not None or self._perm is None or self._perm[0][0] != 0:
            full = self.data
            return Volume(full[lo:hi], self.origin + self.axes[0] * self.spacing[0] * lo,
                          self.axes, self.spacing)
        flipped = self._perm[1][0]
        first, last = (n - hi, n - lo) if flipped else (lo, hi)
        part = self._load(range(first, last))
        affine = self._affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([first, 0.0, 0.0]) + self._affine[:3, 3]
        return to_canonical(from_affine(part, affine))

    def slab_for(self, box: "Box", margin: int = 1) -> Volume:
        """The slices that sampling on ``box`` touches (and ``margin`` either side)."""
        n = np.array(box.shape) - 1
        corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1])
                            for k in (0, n[2])], float)
        idx = self.patient_to_index(box.volume().index_to_patient(corners))[:, 0]
        n_slices = self.canonical_shape[0]
        lo = int(np.clip(np.floor(idx.min()) - margin, 0, n_slices - 1))
        hi = int(np.clip(np.ceil(idx.max()) + margin + 1, lo + 1, n_slices))
        return self.slab(lo, hi)


@dataclass(frozen=True)
class Box:
    """An axis-aligned (canonical) target grid: origin, shape (k, r, c), spacing (mm)."""

    origin: tuple[float, float, float]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def volume(self, data: np.ndarray | None = None) -> Volume:
        return Volume(np.zeros(self.shape, np.float32) if data is None else data,
                      np.asarray(self.origin, float), CANONICAL_AXES.copy(),
                      np.asarray(self.spacing, float))


def resample(vol: Volume, box: Box, order: int = 1, shift_mm: np.ndarray | None = None,
             cval: float = 0.0) -> np.ndarray:
    """Sample ``vol`` on the grid ``box`` through patient coordinates (header geometry).

    ``shift_mm`` moves the source by a translation (from a registration refinement).
    """
    target = box.volume()
    k, r, c = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in box.shape], indexing="ij")
    # Only the three axis vectors are needed: coordinates are affine in the index.
    src = np.linalg.inv((vol.axes * vol.spacing[:, None]).T)
    step = src @ (target.axes * target.spacing[:, None]).T       # index step -> source index
    offset = src @ (target.origin - vol.origin - (0 if shift_mm is None else shift_mm))
    coords = [step[i, 0] * k + step[i, 1] * r + step[i, 2] * c + offset[i] for i in range(3)]
    # A voxel covers half a step either side of its centre: points there take the edge value
    # (this matters for thick slices and single-slice series).
    for i, n in enumerate(vol.data.shape):
        edge = (coords[i] >= -0.5) & (coords[i] <= n - 0.5)
        coords[i] = np.where(edge, np.clip(coords[i], 0, n - 1), coords[i])
    return ndimage.map_coordinates(vol.data.astype(np.float32, copy=False), coords, order=order,
                                   mode="constant", cval=cval, prefilter=False)
