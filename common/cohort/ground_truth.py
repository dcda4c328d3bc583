"""The ground truth of a synthetic patient, kept outside the DICOM tree.

``DIR/ground_truth/<patient_id>.npz`` holds, on the T1/T2 grid (the reference grid):

* ``tissue``: uint8 :class:`~.tissues.Tissue` codes;
* ``vertebra``: uint8 level index (``LEVELS.index(name) + 1``) of every bone voxel;
* ``canal``: the spinal canal (thecal sac, cord, epidural space);
* ``lesions`` / ``mimics``: uint8 instance masks of metastases and of benign mimics;
* ``bias_<SEQ>``: the multiplicative bias field applied to each series, stored every 8th
  pixel in plane (it is smooth): :meth:`GroundTruth.bias` returns it on the series' grid;
* ``meta``: JSON with the label, site, grids of the reference and each series, the lesion and
  mimic tables (kind, level, location, size, conspicuity, centre), the vertebral body heights
  in mm, the scanner profile, marrow fat fraction, ghosts, noise and gain per series.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .anatomy import LEVELS, SpineAnatomy
from .findings import PaintedFindings
from .grid import Grid
from .scanners import ScannerProfile
from .tissues import Tissue

_BIAS_STEP = 8


@dataclass
class GroundTruth:
    tissue: np.ndarray
    vertebra: np.ndarray
    canal: np.ndarray
    lesions: np.ndarray
    mimics: np.ndarray
    meta: dict
    bias_coarse: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        g = self.meta["grid"]
        return Grid(tuple(g["shape"]), tuple(g["spacing"]), tuple(g["origin"]))

    def series_grid(self, sequence: str) -> Grid:
        g = self.meta["series"][sequence]["grid"]
        return Grid(tuple(g["shape"]), tuple(g["spacing"]), tuple(g["origin"]))

    def bias(self, sequence: str) -> np.ndarray:
        """The bias field applied to the series, on that series' grid."""
        shape = self.series_grid(sequence).shape
        coarse = self.bias_coarse[sequence].astype(np.float32)
        full = ndimage.zoom(coarse, (1, _BIAS_STEP, _BIAS_STEP), order=1, grid_mode=False)
        out = np.empty(shape, np.float32)
        r, c = min(shape[1], full.shape[1]), min(shape[2], full.shape[2])
        out[:, :r, :c] = full[:, :r, :c]
        out[:, r:, :] = out[:, r - 1:r, :]
        out[:, :, c:] = out[:, :, c - 1:c]
        return out

    def level_mask(self, name: str) -> np.ndarray:
        return self.vertebra == LEVELS.index(name) + 1

    def tissue_mask(self, *tissues: Tissue) -> np.ndarray:
        return np.isin(self.tissue, [int(t) for t in tissues])

    @classmethod
    def build(cls, plan, study_uid: str, grid: Grid, tissue, painted: PaintedFindings,
              anatomy: SpineAnatomy, profile: ScannerProfile, series: dict, age: float,
              sex: str) -> "GroundTruth":
        bias = {seq: s.pop("bias")[:, ::_BIAS_STEP, ::_BIAS_STEP].astype(np.float16)
                for seq, s in series.items()}
        meta = {
            "patient_id": plan.patient_id, "study_uid": study_uid, "label": plan.label,
            "label_name": plan.label_name, "site": plan.site, "age": age, "sex": sex,
            "grid": grid.to_dict(), "series": series, "levels": list(LEVELS),
            "lesions": painted.lesion_table, "mimics": painted.mimic_table,
            "body_height_mm": {v.name: float(v.body_height) for v in anatomy.vertebrae},
            "collapse": {v.name: float(v.collapse) for v in anatomy.vertebrae if v.collapse < 1},
            "wedge": {v.name: float(v.wedge) for v in anatomy.vertebrae if v.wedge > 0},
            "marrow_fat_fraction": anatomy.marrow_fat,
            "disc_degeneration": {f"{d.upper}-{d.lower}": d.degeneration for d in anatomy.discs},
            "scanner": profile.to_dict(),
            "tissue_codes": {t.name: int(t) for t in Tissue},
        }
        return cls(tissue.labels, tissue.vertebra, tissue.canal, painted.lesions,
                   painted.mimics, meta, bias)


def save_ground_truth(path: Path, gt: GroundTruth) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.npz")
    arrays = {"tissue": gt.tissue, "vertebra": gt.vertebra, "canal": gt.canal.astype(np.uint8),
              "lesions": gt.lesions, "mimics": gt.mimics, "meta": np.array(json.dumps(gt.meta)),
              **{f"bias_{k}": v for k, v in gt.bias_coarse.items()}}
    # An ordinary .npz (np.load reads it), deflated at level 1: label volumes are long runs,
    # so the fastest level costs little space.
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
    os.replace(tmp, path)


def load_ground_truth(path: Path) -> GroundTruth:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        bias = {k[5:]: z[k] for k in z.files if k.startswith("bias_")}
        return GroundTruth(z["tissue"], z["vertebra"], z["canal"].astype(bool), z["lesions"],
                           z["mimics"], meta, bias)
