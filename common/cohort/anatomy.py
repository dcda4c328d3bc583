"""A parametric thoracolumbar spine and its rasterisation into a 3-D tissue-label volume.

The spine is built along a curved centre line (thoracic kyphosis, lumbar lordosis, sacral
slope) by stacking vertebral bodies and discs of patient-specific size. Every structure near
the spine is defined in curvilinear coordinates of that line: ``s`` (arc length, mm, growing
downwards), ``v`` (distance along the normal, mm, positive posteriorly) and ``x`` (patient
left, mm, minus a small scoliotic offset). Soft tissue far from the spine (back, abdomen,
lungs) is defined in patient coordinates.

Patient coordinates are DICOM LPS in millimetres: +x left, +y posterior, +z superior. The
scanner's isocentre (0, 0, 0) lies near the L3 body: a lumbar exam is centred there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .grid import Grid
from .tissues import Tissue

LEVELS: tuple[str, ...] = ("T6", "T7", "T8", "T9", "T10", "T11", "T12",
                           "L1", "L2", "L3", "L4", "L5", "S1", "S2", "S3", "S4")
#: Levels a metastasis or a mimic may sit in: always inside the field of view of the
#: lumbar protocols (FOV >= 280 mm centred on L3-L4).
LESION_LEVELS: tuple[str, ...] = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")

# Typical adult dimensions (mm): body height, AP depth, LR width; disc height.
_BODY = {"T": (22.0, 29.0, 38.0), "L": (27.0, 34.0, 47.0), "S": (24.0, 32.0, 95.0)}
_DISC = {"T": 5.5, "L": 10.0, "S": 2.0}
# Tangent angle (deg) of the centre line at each level, from vertical towards posterior,
# walking downwards: kyphosis above the thoracolumbar junction, lordosis below, sacral slope.
_ANGLE = {"T6": 10, "T7": 7, "T8": 4, "T9": 1, "T10": -2, "T11": -5, "T12": -7, "L1": -7,
          "L2": -5, "L3": -1, "L4": 5, "L5": 13, "S1": 32, "S2": 45, "S3": 56, "S4": 64}


@dataclass
class Vertebra:
    """One vertebra; ``s`` is its body centre along the centre line."""

    name: str
    height: float
    depth: float
    width: float
    pedicle_x: float
    canal_ap: float
    canal_width: float
    spinous_length: float
    collapse: float = 1.0      # fraction of height kept (pathological collapse < 1)
    wedge: float = 0.0         # fraction of anterior height lost (benign wedge fracture)
    bulge: float = 0.0         # posterior-wall bulge into the canal (mm)
    s: float = 0.0

    @property
    def region(self) -> str:
        return self.name[0]

    @property
    def body_height(self) -> float:
        return self.height * self.collapse


@dataclass
class Disc:
    """The disc below vertebra ``upper``."""

    upper: str
    lower: str
    height: float
    degeneration: float        # 0 healthy .. 1 desiccated, collapsed
    s_top: float = 0.0
    s_bottom: float = 0.0


@dataclass
class SpineAnatomy:
    """Everything needed to rasterise one patient's spine and soft tissue."""

    vertebrae: list[Vertebra]
    discs: list[Disc]
    marrow_fat: float            # marrow fat fraction (age)
    scoliosis_mm: float
    scoliosis_phase: float
    back_muscle: float           # paraspinal muscle depth behind the laminae (mm)
    back_fat: float              # subcutaneous fat thickness (mm)
    prevertebral_fat: float
    abdomen_depth: float         # from the front of the spine to the anterior skin (mm)
    aorta_radius: float
    psoas_scale: float
    lateral_offset: float        # patient not exactly centred (mm)
    bowel_fluid: float = 0.03    # fraction of the bowel holding fluid (T2/STIR bright)
    fluid_signal: float = 0.25   # how bright that fluid is on T2/STIR (relative)
    disc_hydration: float = 1.0  # nucleus T2/STIR signal relative to a young healthy disc
    centre_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    centre_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    centre_z: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def vertebra(self, name: str) -> Vertebra:
        for v in self.vertebrae:
            if v.name == name:
                return v
        raise KeyError(name)

    def level_index(self, name: str) -> int:
        """1-based index used in the ground-truth vertebra mask."""
        return LEVELS.index(name) + 1

    def x_centre(self, s: np.ndarray) -> np.ndarray:
        """Lateral position of the spine at arc length s (scoliosis + positioning)."""
        return self.lateral_offset + self.scoliosis_mm * np.sin(s / 180.0 * np.pi
                                                                + self.scoliosis_phase)

    def point(self, s: float) -> tuple[float, float]:
        """(y, z) of the centre line at arc length s."""
        return (float(np.interp(s, self.centre_s, self.centre_y)),
                float(np.interp(s, self.centre_s, self.centre_z)))

    def depth_at(self, s: np.ndarray) -> np.ndarray:
        centres = [v.s for v in self.vertebrae]
        return np.interp(s, centres, [v.depth for v in self.vertebrae])

    def canal_at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centres = [v.s for v in self.vertebrae]
        return (np.interp(s, centres, [v.canal_ap for v in self.vertebrae]),
                np.interp(s, centres, [v.canal_width for v in self.vertebrae]))

    @property
    def conus_s(self) -> float:
        """The cord ends at the L1-L2 disc."""
        return self.vertebra("L1").s + 0.5 * self.vertebra("L1").body_height + 4.0

    @property
    def sac_end_s(self) -> float:
        """The thecal sac ends at S2."""
        return self.vertebra("S2").s


def sample_anatomy(rng: np.random.Generator, age: float) -> SpineAnatomy:
    """Draw a patient's spine: overall size, proportions, curvature and soft tissue."""
    size = rng.normal(1.0, 0.06)
    vertebrae = []
    for name in LEVELS:
        h, d, w = _BODY[name[0]]
        grow = 1.0 + 0.012 * (LEVELS.index(name) - 7) if name[0] != "S" else 1.0
        sac = name[0] == "S"
        k = LEVELS.index(name) - LEVELS.index("S1") if sac else 0
        vertebrae.append(Vertebra(
            name=name,
            height=h * size * grow * rng.normal(1.0, 0.04) * (0.82 ** k),
            depth=d * size * grow * rng.normal(1.0, 0.04) * (0.85 ** k),
            width=w * size * grow * rng.normal(1.0, 0.04) * (0.8 ** k),
            pedicle_x=(0.36 * w * size * grow if not sac else 16.0) * rng.normal(1.0, 0.04),
            canal_ap=(rng.normal(16.5, 1.5) if name[0] == "L" else rng.normal(14.5, 1.0))
            * (0.7 ** k),
            canal_width=(rng.normal(23.0, 1.5) if name[0] == "L" else rng.normal(18.0, 1.2))
            * (0.8 ** k),
            spinous_length=(rng.normal(26.0, 2.5) if name[0] != "S" else 14.0 * 0.8 ** k)))
    # Discs degenerate with age, most at L4-L5 and L5-S1.
    discs = []
    for upper, lower in zip(LEVELS[:-1], LEVELS[1:]):
        base = _DISC["S" if lower[0] == "S" and upper[0] == "S" else upper[0]]
        lumbar_low = upper in ("L4", "L5")
        p_degen = np.clip((age - 30.0) / 60.0, 0.0, 0.9) * (1.4 if lumbar_low else 0.6)
        degeneration = float(rng.uniform(0.5, 1.0)) if rng.random() < p_degen else \
            float(rng.uniform(0.0, 0.3))
        height = base * size * rng.normal(1.0, 0.06) * (1.0 - 0.4 * degeneration)
        if upper == "L5":
            height *= 0.85
        discs.append(Disc(upper, lower, height, degeneration))
    fat = float(np.clip(0.25 + 0.007 * (age - 20.0) + rng.normal(0.0, 0.06), 0.2, 0.85))
    return SpineAnatomy(
        vertebrae=vertebrae, discs=discs, marrow_fat=fat,
        scoliosis_mm=float(abs(rng.normal(0.0, 1.5))),
        scoliosis_phase=float(rng.uniform(0, 2 * np.pi)),
        back_muscle=float(rng.normal(48.0, 7.0) * size),
        back_fat=float(np.clip(rng.gamma(4.0, 5.0), 5.0, 55.0)),
        prevertebral_fat=float(rng.uniform(1.0, 4.0)),
        abdomen_depth=float(rng.normal(170.0, 25.0)),
        aorta_radius=float(rng.normal(10.0, 1.2)),
        psoas_scale=float(rng.normal(1.0, 0.12)),
        lateral_offset=float(rng.normal(0.0, 2.0)),
        # Bowel contents vary a lot between patients (fasting, prep, time of day).
        bowel_fluid=float(np.exp(rng.uniform(np.log(0.005), np.log(0.25)))),
        fluid_signal=float(rng.uniform(0.2, 1.0)),
        # Nucleus water content varies from patient to patient beyond age alone.
        disc_hydration=float(rng.uniform(0.55, 1.2)),
    )


def build_centre_line(anatomy: SpineAnatomy, rng: np.random.Generator) -> None:
    """Stack the bodies and discs along a curved line and place L3 near the isocentre.

    Sets ``Vertebra.s``, ``Disc.s_top/s_bottom`` and the sampled centre line. Call it after
    findings changed heights (collapse), so a collapsed spine is really shorter.
    """
    lordosis = rng.normal(1.0, 0.2)
    s = 0.0
    for i, v in enumerate(anatomy.vertebrae):
        s += v.body_height / 2.0
        v.s = s
        s += v.body_height / 2.0
        if i < len(anatomy.discs):
            d = anatomy.discs[i]
            d.s_top, d.s_bottom = s, s + d.height
            s += d.height
    length = s
    centres = np.array([v.s for v in anatomy.vertebrae])
    angles = np.deg2rad(np.array([_ANGLE[v.name] for v in anatomy.vertebrae], float)
                        * lordosis + rng.normal(0.0, 2.0))
    step = 0.5
    ss = np.arange(-60.0, length + 80.0, step)
    phi = np.interp(ss, centres, angles)
    y = np.cumsum(np.sin(phi)) * step
    z = -np.cumsum(np.cos(phi)) * step
    l3 = anatomy.vertebra("L3").s
    y0 = float(np.interp(l3, ss, y)) - rng.normal(70.0, 8.0)  # spine ~7 cm behind isocentre
    z0 = float(np.interp(l3, ss, z)) - rng.normal(0.0, 15.0)
    anatomy.centre_s, anatomy.centre_y, anatomy.centre_z = ss, y - y0, z - z0


@dataclass
class SpineMaps:
    """Curvilinear coordinates of every pixel of a sagittal plane (rows x cols)."""

    s: np.ndarray
    v: np.ndarray
    y: np.ndarray   # patient y of each column
    z: np.ndarray   # patient z of each row

    @cached_property
    def row_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Smallest and largest s, then v, of each row."""
        return self.s.min(axis=1), self.s.max(axis=1), self.v.min(axis=1), self.v.max(axis=1)


def spine_maps(anatomy: SpineAnatomy, grid: Grid, coarse: int = 4) -> SpineMaps:
    """Arc length and normal distance to the centre line for each pixel of the plane.

    Both are smooth, so they are computed on every ``coarse``-th pixel and interpolated.
    """
    y = grid.y_of_columns()
    z = grid.z_of_rows()
    yc, zc = y[::coarse], z[::coarse]
    yy, zz = np.meshgrid(np.append(yc, y[-1]), np.append(zc, z[-1]))
    pts = np.column_stack([anatomy.centre_y, anatomy.centre_z])
    _, idx = cKDTree(pts).query(np.column_stack([yy.ravel(), zz.ravel()]))
    ds = np.gradient(anatomy.centre_s)
    ty = np.gradient(anatomy.centre_y) / ds
    tz = np.gradient(anatomy.centre_z) / ds
    dy = yy.ravel() - anatomy.centre_y[idx]
    dz = zz.ravel() - anatomy.centre_z[idx]
    s = (anatomy.centre_s[idx] + dy * ty[idx] + dz * tz[idx]).reshape(yy.shape)
    # Normal pointing posteriorly: the tangent (ty, tz) rotated by -90 degrees, (-tz, ty).
    v = (dy * (-tz[idx]) + dz * ty[idx]).reshape(yy.shape)
    # Bilinear interpolation back to every pixel as two small matrix products.
    rows = _linear_weights(z.size, yy.shape[0], coarse)
    cols = _linear_weights(y.size, yy.shape[1], coarse)
    fine = [(rows @ a.astype(np.float32) @ cols.T) for a in (s, v)]
    return SpineMaps(fine[0], fine[1], y, z)


def _linear_weights(n: int, n_coarse: int, step: int) -> np.ndarray:
    """(n, n_coarse) weights interpolating samples taken at pixels 0, step, 2 step, ...
    and at the last pixel (n - 1) linearly onto every pixel."""
    knots = np.append(np.arange(0, n, step)[: n_coarse - 1], n - 1).astype(float)
    pos = np.arange(n, dtype=float)
    hi = np.clip(np.searchsorted(knots, pos, side="right"), 1, n_coarse - 1)
    lo = hi - 1
    gap = knots[hi] - knots[lo]          # 0 where the last pixel is itself a sample
    w = np.clip(np.divide(pos - knots[lo], gap, out=np.zeros(n), where=gap > 0), 0.0, 1.0)
    m = np.zeros((n, n_coarse), np.float32)
    m[np.arange(n), lo] = 1.0 - w
    m[np.arange(n), hi] += w
    return m


@dataclass
class TissueVolume:
    """The rasterised ground truth on one grid."""

    labels: np.ndarray      # uint8 Tissue codes, (slices, rows, cols)
    vertebra: np.ndarray    # uint8 level index (LEVELS.index + 1) of bone voxels, else 0
    canal: np.ndarray       # bool, the spinal canal (sac, cord, epidural space)


class _Block:
    """Curvilinear coordinates of a sub-block of the volume around one spinal segment."""

    def __init__(self, maps: SpineMaps, anatomy: SpineAnatomy, xs: np.ndarray,
                 s_range: tuple[float, float], v_range: tuple[float, float]):
        # Only the rows whose ranges of s and v meet the block's can hold a pixel of it.
        s_lo, s_hi, v_lo, v_hi = maps.row_bounds
        near = np.flatnonzero((s_hi >= s_range[0]) & (s_lo <= s_range[1])
                              & (v_hi >= v_range[0]) & (v_lo <= v_range[1]))
        self.empty = near.size == 0
        if self.empty:
            return
        s, v = maps.s[near[0]:near[-1] + 1], maps.v[near[0]:near[-1] + 1]
        inside = (s >= s_range[0]) & (s <= s_range[1]) & (v >= v_range[0]) & (v <= v_range[1])
        rows = np.flatnonzero(inside.any(axis=1)) + near[0]
        cols = np.flatnonzero(inside.any(axis=0))
        self.empty = rows.size == 0
        if self.empty:
            return
        self.sl = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        s2 = maps.s[self.sl[1:]]
        self.s = s2[None]
        self.v = maps.v[self.sl[1:]][None]
        self._xs, self._xc = xs[:, None, None], anatomy.x_centre(s2)[None]

    @cached_property
    def x(self) -> np.ndarray:
        """Lateral position of each voxel relative to the spine's centre (mm)."""
        return self._xs - self._xc

    def x_at(self, k: tuple[slice, slice, slice]) -> np.ndarray:
        """``x[k]`` for a box ``k`` of the block, computed on that box only."""
        return self._xs - self._xc[k]


def _ipow(t: np.ndarray, p: int) -> np.ndarray:
    """t**p for a small even integer p, by multiplication (numpy's float pow is slow)."""
    t2 = t * t
    out = t2
    for _ in range(p // 2 - 1):
        out = out * t2
    return out


def _shape(*terms: np.ndarray, p: int = 2) -> np.ndarray:
    """Sum of the p-th powers of normalised coordinates: a rounded box (large p) or an
    ellipsoid (p = 2). A voxel lies inside at q <= 1 and deeper than a fraction ``f`` of
    the way to the surface at q <= (1 - f) ** p."""
    total = _ipow(terms[0], p)
    for t in terms[1:]:
        total = total + _ipow(t, p)
    return total


def _nest(q_inner: np.ndarray, p_inner: int, p_outer: int) -> np.ndarray:
    """Re-express an inner shape sum as a term of an outer sum (p_outer multiple of p_inner)."""
    out = q_inner
    for _ in range(p_outer // p_inner - 1):
        out = out * q_inner
    return out


#: A sum of even powers is at most 1 only where each term is within 1 (in floating point
#: too: adding non-negative terms never decreases a sum); the margin only absorbs rounding.
_NEAR = 1.001


def _near(*terms: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The box (all slices, index of a block) of the pixels where each in-plane term of a
    shape lies within 1: the shape is evaluated there only, with the same values."""
    mask = np.abs(terms[0]) <= _NEAR
    for t in terms[1:]:
        mask &= np.abs(t) <= _NEAR
    return _box(mask)


def _paint_bone(lab: np.ndarray, vm: np.ndarray, q: np.ndarray, p: int, shell: float,
                level: int) -> None:
    """Marrow where the shape sum q lies deeper than ``shell`` (fraction), cortex outside
    (``lab`` and ``vm``: the labels and vertebra map where q was evaluated)."""
    bone = q <= 1.0
    # Where two elements of one vertebra meet (pedicle base and body), keep the marrow
    # continuous rather than cutting a cortical line through it.
    own_marrow = (lab == Tissue.MARROW) & (vm == level)
    lab[bone & ~own_marrow] = Tissue.CORTEX
    lab[q <= (1.0 - shell) ** p] = Tissue.MARROW
    vm[bone] = level


def rasterize(anatomy: SpineAnatomy, grid: Grid, maps: SpineMaps | None = None
              ) -> TissueVolume:
    """Paint the tissue-label volume of a patient on a sagittal grid."""
    maps = maps or spine_maps(anatomy, grid)
    xs = grid.x_of_slices()
    shape = grid.shape
    labels = np.zeros(shape, np.uint8)
    vertebra_map = np.zeros(shape, np.uint8)
    canal = np.zeros(shape, bool)
    _paint_soft_tissue(labels, anatomy, maps, xs)
    _paint_canal(labels, canal, anatomy, maps, xs)
    for disc in anatomy.discs:
        _paint_disc(labels, anatomy, maps, xs, disc)
    for v in anatomy.vertebrae:
        _paint_vertebra(labels, vertebra_map, anatomy, maps, xs, v)
    return TissueVolume(labels, vertebra_map, canal)


def _paint_soft_tissue(labels, anatomy: SpineAnatomy, maps: SpineMaps, xs) -> None:
    """Back, abdomen, psoas, great vessels, lung bases, in patient coordinates."""
    z = maps.z
    # Soft tissue follows the spine down to S1; below, the sacrum turns back but the body
    # wall goes on down (buttocks), so hold the S1 position there.
    above = anatomy.centre_s <= anatomy.vertebra("S1").s
    cz, cy, cs = (a[above][::-1] for a in (anatomy.centre_z, anatomy.centre_y, anatomy.centre_s))
    yc = np.interp(z, cz, cy)                                                  # per row
    s_row = np.interp(z, cz, cs)
    half_d = anatomy.depth_at(s_row) / 2.0
    canal_ap, _ = anatomy.canal_at(s_row)
    y = maps.y[None, None, :]
    x = xs[:, None, None]
    front = (yc - half_d)[None, :, None]
    # The back follows the lordosis only partly: smooth the posterior surface.
    lamina = yc + half_d + canal_ap + 6.0
    back = np.convolve(np.pad(lamina, 40, mode="edge"), np.ones(81) / 81, mode="valid")
    skin_post = (back + anatomy.back_muscle + anatomy.back_fat)[None, :, None]
    skin_ant = (yc - half_d - anatomy.abdomen_depth)[None, :, None]
    # The body narrows laterally (sagittal slices far off the midline leave the back sooner).
    lateral = 1.0 - (x / 160.0) ** 2
    inside = (y < skin_post * 1.0 - (1 - lateral) * 60.0) & (y > skin_ant)
    # Front to back the layers depend on the row and column only: paint them on one plane,
    # then copy it into every slice where the body is.
    plane = np.full((1,) + labels.shape[1:], Tissue.MUSCLE, np.uint8)
    plane[y > skin_post - anatomy.back_fat - 2.0] = Tissue.FAT
    plane[y > skin_post - 2.0] = Tissue.SKIN
    plane[y < skin_ant + 2.0] = Tissue.SKIN
    belly_fat = (y >= skin_ant + 2.0) & (y < skin_ant + 2.0 + anatomy.back_fat * 0.8)
    plane[belly_fat] = Tissue.FAT
    wall = (y >= skin_ant + 2.0 + anatomy.back_fat * 0.8) & \
        (y < skin_ant + 14.0 + anatomy.back_fat * 0.8)
    plane[wall] = Tissue.MUSCLE
    visc = ~belly_fat & ~wall & (y > skin_ant + 14.0 + anatomy.back_fat * 0.8) & \
        (y < front - anatomy.prevertebral_fat)
    plane[visc] = Tissue.VISCERA
    plane[(y >= front - anatomy.prevertebral_fat) & (y < front + 2.0)] = Tissue.FAT
    np.copyto(labels, plane, where=inside)
    # The organs below are evaluated only in the box of rows and columns where they can lie
    # (a sum of squares is below a bound only where each term is; a dome is above its
    # midline height), with the same arithmetic as on the whole volume.
    zr = z[None, :, None]
    # Lung bases: above the diaphragm (about the T12 body) lateral to the spine, posterior recess.
    # The diaphragm is a dome, lowest in the posterior recess beside the spine.
    z_diaph = anatomy.point(anatomy.vertebra("T12").s)[1] + 10.0
    dome_mid = z_diaph + 0.004 * (front - y) ** 2
    box = _box((zr > dome_mid) & (y < front + 8.0) & (plane == Tissue.VISCERA))
    if box:
        dome = dome_mid[box] + 0.002 * x ** 2
        lung = (zr[box[:2]] > dome) & inside[box] & (np.abs(x) > 14.0) & \
            (labels[box] == Tissue.VISCERA)
        labels[box][lung] = Tissue.LUNG
    # Psoas: lumbar, lateral and anterolateral to the bodies, growing downwards.
    s_l1, s_l5 = anatomy.vertebra("L1").s, anatomy.vertebra("L5").s
    grow = np.clip((s_row - s_l1) / (s_l5 - s_l1), 0.0, 1.0)[None, :, None]
    psoas_r = (8.0 + 14.0 * grow) * anatomy.psoas_scale
    psoas_c = (front + half_d[None, :, None] * 0.4 - psoas_r * 0.3)
    lr = ((np.abs(x) - (22.0 + psoas_r)) / psoas_r) ** 2
    ap = ((y - psoas_c) / (psoas_r * 1.3)) ** 2
    box = _box((ap < 1.0) & (grow > 0))
    if box:
        psoas = (lr[box[:2]] + ap[box] < 1.0) & (grow[box[:2]] > 0) & inside[box]
        labels[box][psoas] = Tissue.MUSCLE
    # Aorta (left) down to the L4 bifurcation; IVC (right) below the diaphragm.
    s_bif = anatomy.vertebra("L4").s
    z_bif = anatomy.point(s_bif)[1]
    r = anatomy.aorta_radius
    lr, ap = (x - 14.0) ** 2, (y - (front - r - 3.0)) ** 2
    box = _box((ap < r ** 2) & (zr > z_bif))
    if box:
        aorta = (lr + ap[box] < r ** 2) & (zr[box[:2]] > z_bif)
        labels[box][aorta & inside[box]] = Tissue.VESSEL
    lr, ap = ((x + 22.0) / (r * 1.2)) ** 2, ((y - (front - r - 4.0)) / r) ** 2
    box = _box((ap < 1.0) & (zr > z_bif - 10.0) & (zr < z_diaph))
    if box:
        ivc = (lr + ap[box] < 1.0) & (zr[box[:2]] > z_bif - 10.0) & (zr[box[:2]] < z_diaph)
        labels[box][ivc & inside[box]] = Tissue.VESSEL


def _box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Index of the rows and columns (all slices) bounding the True pixels of a
    (slices or 1, rows, columns) mask; None if there are none."""
    plane = mask.any(axis=0)
    rows = np.flatnonzero(plane.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(plane.any(axis=0))
    return (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


def _paint_canal(labels, canal, anatomy: SpineAnatomy, maps: SpineMaps, xs) -> None:
    top, bottom = anatomy.centre_s[0] + 40.0, anatomy.vertebra("S4").s
    b = _Block(maps, anatomy, xs, (top, bottom), (0.0, 60.0))
    if b.empty:
        return
    half_d = anatomy.depth_at(b.s) / 2.0
    ap, width = anatomy.canal_at(b.s)
    front = half_d + 1.0
    centre = front + ap / 2.0
    sac_end = anatomy.sac_end_s
    sac_ap = np.where(b.s < sac_end, ap * 0.84, ap * 0.84 * np.exp(-(b.s - sac_end) / 6.0))
    sac_centre = front + 0.3 + sac_ap / 2.0
    # The tube and the sac (which holds the cord and roots) lie in the box of the block
    # where their in-plane terms are within 1: everything is evaluated there.
    tube_v, sac_v = (b.v - centre) / (ap / 2.0), (b.v - sac_centre) / (sac_ap / 2.0)
    k = _box((np.abs(tube_v) <= _NEAR) | (np.abs(sac_v) <= _NEAR))
    if k is None:
        return
    x, s, bv, width, sac_ap, sac_centre = b.x_at(k), b.s[k], b.v[k], width[k], sac_ap[k], \
        sac_centre[k]
    tube = _shape(tube_v[k], x / (width / 2.0), p=2) <= 1.0
    lab = labels[b.sl][k]
    canal[b.sl][k] |= tube
    lab[tube] = Tissue.FAT                         # epidural fat
    sac = _shape(sac_v[k], x / (width * 0.44), p=2) <= 1.0
    lab[sac & tube] = Tissue.CSF
    # Cord down to the conus (tapering), then the cauda equina lying dependent (posterior).
    conus = anatomy.conus_s
    taper = np.clip((conus - s) / 25.0, 0.0, 1.0)
    cord_r = 4.2 * np.sqrt(taper) + 1e-3
    cord = _shape((bv - sac_centre + 0.5) / cord_r, x / (cord_r * 1.25)) <= 1.0
    lab[cord & sac & (s < conus)] = Tissue.CORD
    roots = sac & (s > conus) & (s < sac_end) & (bv > sac_centre + sac_ap * 0.18)
    roots[roots] = np.abs(np.sin(x[roots] * 1.3)) > 0.75    # sin only where it decides
    lab[roots] = Tissue.NERVE_ROOT


def _paint_disc(labels, anatomy: SpineAnatomy, maps: SpineMaps, xs, disc: Disc) -> None:
    up, low = anatomy.vertebra(disc.upper), anatomy.vertebra(disc.lower)
    depth = (up.depth + low.depth) / 2.0
    width = (up.width + low.width) / 2.0
    if disc.upper[0] == "S":
        width = min(width, 60.0)
    b = _Block(maps, anatomy, xs, (disc.s_top - 3.0, disc.s_bottom + 3.0),
               (-depth / 2 - 5.0, depth / 2 + 5.0))
    if b.empty:
        return
    mid = (disc.s_top + disc.s_bottom) / 2.0
    half_h = (disc.s_bottom - disc.s_top) / 2.0 + 1.0   # tucks under the end plates
    bulge = 1.5 + 3.0 * disc.degeneration
    axial = _shape(b.v / (depth / 2 + bulge), b.x / (width / 2.0), p=2)
    q = _shape((b.s - mid) / half_h, p=8) + _nest(axial, 2, 8)
    lab = labels[b.sl]
    inside = q <= 1.0
    if disc.upper[0] == "S":
        lab[inside] = Tissue.CORTEX               # fused sacral segments: a bony ridge
        return
    lab[inside] = Tissue.ANNULUS
    nucleus = _shape((b.s - mid) / (half_h * 0.65), (b.v + depth * 0.06) / (depth * 0.30),
                     b.x / (width * 0.30)) <= 1.0
    lab[nucleus & inside] = (Tissue.NUCLEUS_DEGENERATED if disc.degeneration > 0.5
                             else Tissue.NUCLEUS)


def _paint_vertebra(labels, vertebra_map, anatomy: SpineAnatomy, maps: SpineMaps, xs,
                    v: Vertebra) -> None:
    level = anatomy.level_index(v.name)
    h = v.body_height
    half_d = v.depth / 2.0
    # The body and the posterior elements are painted on two blocks of their own extent
    # (each shape is evaluated only where it can lie).
    b = _Block(maps, anatomy, xs, (v.s - h / 2 - 3.0, v.s + h / 2 + 3.0),
               (-half_d - 3.0, half_d + v.bulge + 3.0))
    if not b.empty:
        _paint_body(labels, vertebra_map, b, v, level)
    if v.name in ("S3", "S4"):
        return
    reach = half_d + v.canal_ap + v.spinous_length + 12.0
    b = _Block(maps, anatomy, xs, (v.s - h / 2 - 14.0, v.s + h / 2 + 14.0),
               (half_d - 4.0, reach))
    if not b.empty:
        _paint_posterior(labels, vertebra_map, b, v, level)


def _paint_body(labels, vertebra_map, b: _Block, v: Vertebra, level: int) -> None:
    """A rounded box; a wedge lowers the superior end plate anteriorly; a bulge pushes the
    posterior wall into the canal."""
    h = v.body_height
    u = b.s - v.s
    half_d = v.depth / 2.0
    top_drop = v.wedge * h * np.clip(0.5 - b.v / v.depth, 0.0, 1.0)
    half_h = h / 2.0 - top_drop / 2.0
    post = half_d + v.bulge * np.clip(1.0 - (u / (h / 2.0)) ** 2, 0.0, 1.0)
    vv = np.where(b.v > 0, b.v / post, b.v / half_d)
    q_body = _shape((u - top_drop / 2.0) / half_h, p=6) + \
        _nest(_shape(vv, b.x / (v.width / 2.0), p=2), 2, 6)
    _paint_bone(labels[b.sl], vertebra_map[b.sl], q_body, 6, 1.0 / min(h / 2.0, half_d),
                level)


def _paint_posterior(labels, vertebra_map, b: _Block, v: Vertebra, level: int) -> None:
    """Foramina and roots, the interspinous ligament, pedicles, laminae, articular pillars
    and the spinous process."""
    h = v.body_height
    u = b.s - v.s
    half_d = v.depth / 2.0
    sacral = v.region == "S"
    lab, vm = labels[b.sl], vertebra_map[b.sl]
    disc_h = 9.0 if v.region == "L" else 5.5
    v0 = half_d + v.canal_ap + 4.0
    # Each structure is evaluated on the box of the block where its in-plane terms allow it
    # (``k``, from :func:`_near`): in-plane terms are computed once, |x| per box.

    def ax(k):
        return np.abs(b.x_at(k))

    # Foramen (fat with the exiting root) and ligament, before the bone over them.
    fu, fv = (u - 0.45 * h - 0.2 * disc_h) / (0.4 * h + disc_h / 2), (b.v - half_d - 6.0) / 7.0
    k = _near(fu, fv)
    if k:
        foramen = _shape(fu[k], (ax(k) - v.pedicle_x) / 7.0, fv[k]) <= 1.0
        lab[k][foramen & (lab[k] != Tissue.CSF)] = Tissue.FAT
        root = _shape((u[k] - 0.40 * h) / 3.2, (ax(k) - v.pedicle_x) / 3.5,
                      (b.v[k] - half_d - 5.0) / 3.2) <= 1.0
        lab[k][root & foramen] = Tissue.NERVE_ROOT
    # Interspinous ligament: a thin dark midline band between the spinous processes.
    band = (b.v > v0) & (b.v < v0 + v.spinous_length) & (np.abs(u) < h / 2 + disc_h)
    k = _box(band)
    if k:
        lab[k][(ax(k) < 1.2) & band[k] & (lab[k] == Tissue.MUSCLE)] = Tissue.CORTEX
    # Pedicles: short cylinders from the posterior wall to the articular pillar, upper half.
    ped_len = v.canal_ap * 0.8
    v_ped = half_d + ped_len / 2.0 - 1.0
    pu, pv = (u + 0.12 * h) / (0.30 * h), (b.v - v_ped) / (ped_len / 2.0 + 1.5)
    # Lamina: a plate behind the canal, sloping down and back (shingled).
    v_lam = half_d + v.canal_ap + 3.0 + 0.12 * u
    lu, lv = (u - 0.08 * h) / (0.55 * h), (b.v - v_lam) / 3.4
    # Articular pillar: superior process (upper end) meets the inferior process of the
    # level above across the facet joint; this level's inferior process reaches down.
    v_fac = half_d + v.canal_ap * 0.6 + 3.0
    su, sv = (u + 0.42 * h) / (0.32 * h), (b.v - v_fac) / 7.5
    iu, iv = (u - 0.5 * h - 0.5 * disc_h) / (0.3 * h + 2.0), (b.v - v_fac - 4.0) / 7.5

    def pillar_x(k):
        return (ax(k) - v.pedicle_x - 1.0) / 6.5

    # Spinous process: a midline plate sloping caudally.
    along = (b.v - v0) / v.spinous_length
    tu, tv = (u - 0.05 * h - 0.25 * (b.v - v0)) / (0.34 * h), (along - 0.5) / 0.55
    bones = (   # (shell, in-plane terms, shape sum on a box k), painted in this order
        (0.2, (pu, pv), lambda k: _nest(_shape(pu[k], (ax(k) - v.pedicle_x) / 5.0, p=2), 2, 4)
         + _shape(pv[k], p=4)),
        (0.3, (lu, lv), lambda k: _shape(lu[k], b.x_at(k) / (v.pedicle_x + 3.0), lv[k], p=4)),
        (0.2, (su, sv), lambda k: _shape(su[k], sv[k], pillar_x(k), p=4)),
        (0.2, (iu, iv), lambda k: _shape(iu[k], iv[k], pillar_x(k), p=4)),
        (0.2, (tu, tv), lambda k: _shape(tu[k], b.x_at(k) / 3.8, tv[k], p=4)),
    )
    for i, (shell, terms, q_of) in enumerate(bones):
        if sacral and i == 3:    # the sacrum has no inferior articular process
            continue
        k = _near(*terms)
        if k:
            _paint_bone(lab[k], vm[k], q_of(k), 4, shell, level)
