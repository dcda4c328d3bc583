"""What a patient of each class carries: metastases, and the benign mimics every class has.

Class 0 (no metastasis) is normal anatomy with benign findings that look like tumour to a
naive reader: haemangiomas (T1 and T2 bright), Modic type 1 (oedema along end plates, T1 low
and STIR high) and type 2 (fatty), Schmorl nodes, degenerative discs, benign osteoporotic
wedge fractures with preserved marrow (some fresh, with a band of oedema).

Class 1 (mild) adds one or two small focal metastases in a body or a pedicle: no collapse, no
epidural extension.

Class 2 (apparent) adds multiple or diffuse metastases with at least one sign of advanced
disease: pathological collapse with a posterior-wall bulge, pedicle involvement, epidural
extension, or three or more lesions.

The mimics occur in every class at the same rate, so their presence says nothing about the
label. Lesion size, count and conspicuity of mild and apparent overlap; ``difficulty`` (0..1)
sets how much (see :class:`Difficulty`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .anatomy import LESION_LEVELS, LEVELS, SpineAnatomy, SpineMaps, _Block
from .grid import Grid
from .tissues import BONE, Tissue

METASTASIS_KINDS = ("metastasis", "epidural")
MIMIC_KINDS = ("haemangioma", "modic1", "modic2", "schmorl", "wedge_fracture")


@dataclass(frozen=True)
class Difficulty:
    """How hard the cohort is, from the images alone (never from labels).

    ``level`` runs from 0 (textbook: mild lesions 12-18 mm and fully conspicuous, few mimics,
    apparent cases with many lesions) to 1 (mild lesions 5-14 mm, some barely brighter than
    marrow, a mimic of each kind in about a quarter of the patients, a third of the
    apparent cases with only two lesions and one advanced sign). Every range moves linearly
    with ``level``. The cohort's default is the level tuned so that the paper's CNN lands
    near the paper's accuracy (:data:`spinemet.common.cohort.spec.DEFAULT_DIFFICULTY`).
    """

    level: float = 0.5

    @property
    def conspicuity(self) -> tuple[float, float]:
        """Range of a metastasis's contrast against marrow (1 = textbook)."""
        return (1.0 - 0.4 * self.level, 1.0)

    @property
    def mild_diameter(self) -> tuple[float, float]:
        """Diameter range (mm) of a mild case's lesions."""
        return (12.0 - 7.0 * self.level, 18.0 - 4.0 * self.level)

    @property
    def apparent_diameter(self) -> tuple[float, float]:
        return (8.0 - 1.0 * self.level, 26.0)

    @property
    def subtle_apparent(self) -> float:
        """Chance that an apparent case shows only two lesions and one advanced sign."""
        return 0.15 + 0.2 * self.level

    @property
    def mimic_rate(self) -> float:
        """Chance of each kind of mimic per patient."""
        return 0.06 + 0.21 * self.level


@dataclass
class Finding:
    """One lesion or mimic, placed in the curvilinear frame of its vertebra."""

    kind: str
    level: str
    location: str          # body | pedicle | posterior | canal | endplate
    du: float              # offset from the body centre along the spine (mm, + caudal)
    v: float               # normal distance from the centre line (mm, + posterior)
    x: float               # lateral (mm, + left)
    radii: tuple[float, float, float]
    contrast: float        # 0..1 conspicuity (metastasis) or 1
    seed: int              # shape irregularity

    def to_dict(self) -> dict:
        return asdict(self)


def plan_findings(rng: np.random.Generator, label: int, anatomy: SpineAnatomy,
                  difficulty: Difficulty) -> list[Finding]:
    """Draw the findings of a patient and change the anatomy they deform (collapse, wedge).

    Call before :func:`anatomy.build_centre_line`, which stacks the changed heights.
    """
    findings: list[Finding] = []
    findings += _mimics(rng, anatomy, difficulty)
    if label == 1:
        n = 1 if rng.random() < 0.65 else 2
        levels = rng.choice(LESION_LEVELS, size=n, replace=False)
        for lvl in levels:
            site = rng.choice(["body", "pedicle", "posterior"], p=[0.75, 0.2, 0.05])
            d = rng.uniform(*difficulty.mild_diameter)
            findings.append(_focal(rng, anatomy, str(lvl), str(site), d, difficulty))
    elif label == 2:
        findings += _apparent(rng, anatomy, difficulty)
    return findings


def _contrast(rng, difficulty: Difficulty) -> float:
    return float(rng.uniform(*difficulty.conspicuity))


def _focal(rng, anatomy: SpineAnatomy, level: str, site: str, diameter: float,
           difficulty: Difficulty, kind: str = "metastasis") -> Finding:
    v = anatomy.vertebra(level)
    h, half_d = v.height, v.depth / 2.0
    r = diameter / 2.0
    radii = (r * rng.uniform(0.8, 1.1), r * rng.uniform(0.85, 1.15), r * rng.uniform(0.9, 1.2))
    side = float(rng.choice([-1.0, 1.0]))
    if site == "body":
        du = rng.uniform(-0.5, 0.5) * max(h - diameter, 0.0)
        vv = rng.uniform(-0.6, 0.6) * max(half_d - r, 0.0)
        x = rng.uniform(-0.5, 0.5) * max(v.width / 2 - r, 0.0)
    elif site == "pedicle":
        du, vv, x = -0.12 * h, half_d + v.canal_ap * 0.35, side * v.pedicle_x
    else:  # lamina / spinous process
        du, vv, x = 0.0, half_d + v.canal_ap + 4.0 + rng.uniform(0, 8), rng.uniform(-4, 4)
    contrast = _contrast(rng, difficulty) if kind == "metastasis" else 1.0
    return Finding(kind, level, site, float(du), float(vv), float(x),
                   tuple(float(t) for t in radii), contrast, int(rng.integers(2**31)))


def _apparent(rng, anatomy: SpineAnatomy, difficulty: Difficulty) -> list[Finding]:
    out: list[Finding] = []
    subtle = rng.random() < difficulty.subtle_apparent
    n = 2 if subtle else int(rng.integers(3, 9))
    levels = [str(x) for x in rng.choice(LESION_LEVELS, size=min(n, len(LESION_LEVELS)),
                                         replace=False)]
    signs = ["collapse", "pedicle", "epidural", "diffuse"]
    chosen = {str(rng.choice(signs))} if subtle else \
        {s for s, p in zip(signs, (0.45, 0.5, 0.35, 0.35)) if rng.random() < p}
    for i, lvl in enumerate(levels):
        d = rng.uniform(*difficulty.apparent_diameter)
        site = "pedicle" if ("pedicle" in chosen and i == 0) else \
            str(rng.choice(["body", "pedicle", "posterior"], p=[0.75, 0.17, 0.08]))
        out.append(_focal(rng, anatomy, lvl, site, d, difficulty))
    main = levels[0] if "pedicle" not in chosen else levels[-1]
    v = anatomy.vertebra(main)
    if "diffuse" in chosen or "collapse" in chosen:
        # The whole body is replaced by tumour (heterogeneously).
        out.append(Finding("metastasis", main, "body", 0.0, 0.0, 0.0,
                           (v.height, v.depth, v.width), max(_contrast(rng, difficulty), 0.7),
                           int(rng.integers(2**31))))
    if "collapse" in chosen:
        v.collapse = float(rng.uniform(0.45, 0.8))
        v.bulge = float(rng.uniform(1.5, 4.5))
    if "epidural" in chosen:
        out.append(Finding("epidural", main, "canal", float(rng.uniform(-3, 3)),
                           v.depth / 2 + 1.0, float(rng.uniform(-4, 4)),
                           (float(rng.uniform(8, 15)), float(rng.uniform(2.5, 5.5)),
                            float(rng.uniform(6, 9))), 1.0, int(rng.integers(2**31))))
    return out


def _mimics(rng, anatomy: SpineAnatomy, difficulty: Difficulty) -> list[Finding]:
    out: list[Finding] = []
    p = difficulty.mimic_rate
    if rng.random() < p * 1.5:   # haemangiomas are the commonest incidental finding
        for lvl in rng.choice(LESION_LEVELS, size=int(rng.integers(1, 3)), replace=False):
            out.append(_focal(rng, anatomy, str(lvl), "body", rng.uniform(5, 16),
                              difficulty, kind="haemangioma"))
    degenerated = [d for d in anatomy.discs if d.degeneration > 0.5 and d.lower in LEVELS[7:13]]
    for kind in ("modic1", "modic2"):
        if degenerated and rng.random() < p:
            # One or two degenerated discs, with end-plate changes from thin bands to half
            # the body: extensive Modic 1 is as STIR-bright as a metastasis.
            n = min(len(degenerated), 1 if rng.random() < 0.6 else 2)
            for i in rng.choice(len(degenerated), size=n, replace=False):
                d = degenerated[int(i)]
                depth = float(rng.uniform(3.0, 14.0))
                for lvl, sign in ((d.upper, 1.0), (d.lower, -1.0)):
                    v = anatomy.vertebra(lvl)
                    out.append(Finding(kind, lvl, "endplate", sign * (v.height / 2 - depth / 2),
                                       float(rng.uniform(-4, 4)), 0.0,
                                       (depth / 2 + 0.5, v.depth * rng.uniform(0.3, 0.45),
                                        v.width * 0.4), 1.0, int(rng.integers(2**31))))
    if rng.random() < p:
        lvl = str(rng.choice(LESION_LEVELS[:-1]))
        v = anatomy.vertebra(lvl)
        sign = float(rng.choice([-1.0, 1.0]))
        r = float(rng.uniform(2.5, 4.5))
        out.append(Finding("schmorl", lvl, "endplate", sign * (v.height / 2 - r * 0.6),
                           float(rng.uniform(-5, 5)), float(rng.uniform(-6, 6)),
                           (r, r * 1.3, r * 1.3), 1.0, int(rng.integers(2**31))))
    if rng.random() < p * 0.6:
        lvl = str(rng.choice(["T11", "T12", "L1", "L2", "L3"]))
        v = anatomy.vertebra(lvl)
        v.wedge = float(rng.uniform(0.15, 0.35))
        acute = rng.random() < 0.5
        depth = float(rng.uniform(4, 14)) if acute else 0.0
        out.append(Finding("wedge_fracture", lvl, "endplate", -(v.height / 2 - depth / 2),
                           -v.depth * 0.15, 0.0, (depth / 2 + 0.5, v.depth * 0.4, v.width * 0.4),
                           1.0 if acute else 0.0, int(rng.integers(2**31))))
    return out


@dataclass
class PaintedFindings:
    lesions: np.ndarray      # uint8 instance id (1-based) of metastasis voxels
    mimics: np.ndarray       # uint8 instance id (1-based) of mimic voxels
    mix: np.ndarray          # float32 per-voxel conspicuity of lesion voxels (1 elsewhere)
    lesion_table: list[dict]
    mimic_table: list[dict]


_TISSUE = {"metastasis": Tissue.METASTASIS, "epidural": Tissue.METASTASIS,
           "haemangioma": Tissue.HAEMANGIOMA, "modic1": Tissue.MODIC1,
           "modic2": Tissue.MODIC2, "schmorl": Tissue.NUCLEUS,
           "wedge_fracture": Tissue.FRACTURE_OEDEMA}


def paint_findings(labels: np.ndarray, vertebra_map: np.ndarray, canal: np.ndarray,
                   anatomy: SpineAnatomy, maps: SpineMaps, grid: Grid,
                   findings: list[Finding]) -> PaintedFindings:
    """Paint the findings into the tissue volume and return their instance masks."""
    lesions = np.zeros(labels.shape, np.uint8)
    mimics = np.zeros(labels.shape, np.uint8)
    mix = np.ones(labels.shape, np.float32)
    tables: dict[str, list[dict]] = {"lesion": [], "mimic": []}
    xs = grid.x_of_slices()
    is_bone = np.zeros(256, bool)              # tissue code -> bone (a lookup table)
    is_bone[[int(t) for t in BONE]] = True
    for f in findings:
        if f.kind == "wedge_fracture" and f.contrast == 0.0:
            tables["mimic"].append(dict(f.to_dict(), id=0, voxels=0, acute=False))
            continue   # an old fracture: only the shape changed, the marrow is preserved
        v = anatomy.vertebra(f.level)
        reach = max(f.radii) + 2.0
        s_c = v.s + f.du
        b = _Block(maps, anatomy, xs, (s_c - reach, s_c + reach), (f.v - reach, f.v + reach))
        if b.empty:
            continue
        rng = np.random.default_rng(f.seed)
        du, dv, dx = (b.s - s_c) / f.radii[0], (b.v - f.v) / f.radii[1], (b.x - f.x) / f.radii[2]
        k = rng.uniform(1.5, 3.0, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        ragged = 1.0 + 0.22 * (np.sin(k[0] * du + ph[0]) + np.sin(k[1] * dv + ph[1])
                               + np.sin(k[2] * dx + ph[2])) / 3.0
        inside = du * du + dv * dv + dx * dx <= ragged
        lab = labels[b.sl]
        level = anatomy.level_index(f.level)
        own_bone = (vertebra_map[b.sl] == level) & is_bone.take(lab)
        if f.kind == "epidural":
            region = inside & canal[b.sl]
        elif f.kind == "schmorl":
            region = inside & own_bone
        elif f.kind in ("metastasis",) and f.location == "body" and max(f.radii) > 8.0:
            region = inside & own_bone            # large lesions destroy the cortex too
        else:
            region = inside & own_bone & (lab != Tissue.CORTEX)
        if f.location == "body" and f.kind != "schmorl":
            region &= b.v < v.depth / 2 + v.bulge + 1.0   # stay in the body
        table = "lesion" if f.kind in METASTASIS_KINDS else "mimic"
        ids = lesions if table == "lesion" else mimics
        ident = len(tables[table]) + 1
        lab[region] = _TISSUE[f.kind]
        ids[b.sl][region] = ident
        if table == "lesion":
            # Heterogeneous tumour: the conspicuity varies inside the lesion.
            m = mix[b.sl]
            m[region] = np.clip(f.contrast * (0.85 + 0.15 * ragged[region]), 0.0, 1.0)
        voxels = int(region.sum())
        entry = dict(f.to_dict(), id=ident, voxels=voxels,
                     volume_mm3=voxels * float(np.prod(grid.spacing)))
        if voxels:
            idx = np.argwhere(region)
            idx += np.array([0, b.sl[1].start, b.sl[2].start])
            entry["centre_patient_mm"] = [float(c) for c in
                                          grid.voxel_to_patient(idx.mean(0, keepdims=True))[0]]
        if f.kind == "wedge_fracture":
            entry["acute"] = True
        tables[table].append(entry)
    # A later finding can paint over part or all of an earlier one (two metastases in one
    # body merge): "voxels" is what the final instance map holds, "voxels_painted" what was
    # painted; a lesion with no voxels left is part of another one.
    for table, ids in (("lesion", lesions), ("mimic", mimics)):
        # Counted over the painted voxels only (counts[0] is unused): a fraction of the volume.
        counts = np.bincount(ids[ids != 0], minlength=len(tables[table]) + 1)
        for entry in tables[table]:
            entry["voxels_painted"] = entry["voxels"]
            if entry["id"]:
                entry["voxels"] = int(counts[entry["id"]])
                entry["volume_mm3"] = entry["voxels"] * float(np.prod(grid.spacing))
    return PaintedFindings(lesions, mimics, mix, tables["lesion"], tables["mimic"])
