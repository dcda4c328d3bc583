"""Tissue classes of the synthetic spine and their MR signal on T1, T2 and STIR.

The signal values are relative magnitudes (fat on T1 = 1.0) at 1.5 T for the clinical
sagittal protocols: T1 TSE (short TR/TE), T2 TSE (long TR/TE) and STIR (fat nulled by the
inversion). They encode the textbook rules the radiologist reads:

* fat bright on T1 and T2, dark on STIR;
* CSF dark on T1, bright on T2 and STIR;
* fatty marrow bright on T1 (brighter with age), intermediate on T2, dark on STIR;
* metastasis replaces marrow fat: low on T1 (at or below disc and muscle), high on T2/STIR;
* haemangioma (fat + vascular channels) bright on T1 and T2, intermediate on STIR;
* Modic type 1 and a fresh benign fracture are oedema (T1 low, STIR high): the classic mimic;
* Modic type 2 is fatty (T1 and T2 bright, STIR dark);
* cortical bone, ligaments and flowing blood give no signal on these sequences.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

SEQUENCES: tuple[str, ...] = ("T1", "T2", "STIR")


class Tissue(IntEnum):
    """Label codes of the ground-truth tissue volume (uint8)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    MARROW = 3
    CORTEX = 4          # cortical bone, end plates, ligaments
    ANNULUS = 5
    NUCLEUS = 6
    CSF = 7
    CORD = 8
    VESSEL = 9          # aorta / IVC flow void
    VISCERA = 10        # bowel and abdominal organs
    LUNG = 11
    NERVE_ROOT = 12
    SKIN = 13
    NUCLEUS_DEGENERATED = 14
    METASTASIS = 20
    HAEMANGIOMA = 21
    MODIC1 = 22
    MODIC2 = 23
    FRACTURE_OEDEMA = 24


#: Relative signal per tissue: (T1, T2, STIR).
SIGNAL: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (0.0, 0.0, 0.0),
    Tissue.FAT: (1.00, 0.86, 0.06),
    Tissue.MUSCLE: (0.33, 0.22, 0.17),
    Tissue.MARROW: (0.70, 0.48, 0.16),  # replaced per patient by marrow_signal()
    Tissue.CORTEX: (0.05, 0.04, 0.04),
    Tissue.ANNULUS: (0.27, 0.20, 0.17),
    Tissue.NUCLEUS: (0.34, 0.80, 0.72),
    Tissue.CSF: (0.13, 1.00, 1.00),
    Tissue.CORD: (0.44, 0.38, 0.34),
    Tissue.VESSEL: (0.06, 0.05, 0.08),
    Tissue.VISCERA: (0.38, 0.42, 0.38),
    Tissue.LUNG: (0.03, 0.03, 0.03),
    Tissue.NERVE_ROOT: (0.40, 0.35, 0.30),
    Tissue.SKIN: (0.45, 0.35, 0.30),
    Tissue.NUCLEUS_DEGENERATED: (0.30, 0.30, 0.26),
    Tissue.METASTASIS: (0.22, 0.74, 0.82),
    Tissue.HAEMANGIOMA: (0.95, 0.92, 0.42),
    Tissue.MODIC1: (0.26, 0.62, 0.74),
    Tissue.MODIC2: (0.95, 0.64, 0.10),
    Tissue.FRACTURE_OEDEMA: (0.27, 0.60, 0.76),
}

#: Tissues that belong to bone (vertebral body or posterior elements).
BONE = (Tissue.MARROW, Tissue.CORTEX, Tissue.METASTASIS, Tissue.HAEMANGIOMA,
        Tissue.MODIC1, Tissue.MODIC2, Tissue.FRACTURE_OEDEMA)


def marrow_signal(fat_fraction: float) -> tuple[float, float, float]:
    """Signal of normal marrow for a marrow fat fraction (0.3 young adult .. 0.8 elderly).

    Fat raises T1 and T2 and is nulled on STIR; the cellular (red) marrow is the rest.
    """
    ff = float(np.clip(fat_fraction, 0.0, 1.0))
    fat, red = np.array(SIGNAL[Tissue.FAT]), np.array((0.30, 0.25, 0.30))
    return tuple(float(v) for v in ff * fat + (1.0 - ff) * red)


def signal_lut(sequence: str, fat_fraction: float) -> np.ndarray:
    """A 256-entry float32 lookup table from tissue code to relative signal."""
    idx = SEQUENCES.index(sequence)
    lut = np.zeros(256, np.float32)
    for tissue, values in SIGNAL.items():
        lut[int(tissue)] = values[idx]
    lut[int(Tissue.MARROW)] = marrow_signal(fat_fraction)[idx]
    return lut
