"""Tell T1, T2, STIR and other MR series apart from their DICOM tags.

Rules, applied in this order (times in ms, field strength B0 in tesla):

1. **STIR** when the series is an inversion-recovery acquisition (``IR`` in
   ScanningSequence, or InversionRecovery = YES in an enhanced MR file) with a short
   inversion time (TI < 300 ms at B0 <= 3 T, < 400 ms above), or when the description
   (SeriesDescription, ProtocolName, SequenceName) names STIR or TIRM.
2. **other** when the description names FLAIR or T2* (T2star, MEDIC, ...), or the series is an
   inversion recovery with a long TI (FLAIR, T1-FLAIR): these are not the three sequences the
   classifier reads.
3. From TR/TE when both are present:
   spin echo (or unknown): **T1** if TR < 1000 and TE < 30; **T2** if TR > 2000 and TE > 60;
   gradient echo: **T1** only when TR < 1000 and TE < 10 (spoiled T1 GRE such as FLASH/fl2d);
   a longer-TE gradient echo is T2*-weighted and stays undecided here.
4. Still undecided (PD, intermediate weighting, missing TR/TE): the description's ``T1`` /
   ``T2`` token (``t1_tse_sag``, ``sT2W_TSE``, ``Sag T1 FSE``), then an enhanced file's
   AcquisitionContrast (``T1`` / ``T2``).
5. Otherwise **other** (PD, diffusion, gradient echo T2*, ...).

Tags win over descriptions when both decide (descriptions are free text and sometimes wrong),
except for STIR/TIRM, which names the fat suppression that TR/TE alone cannot show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEQUENCES = ("T1", "T2", "STIR")

_STIR = re.compile(r"stir|tirm", re.I)
_OTHER = re.compile(r"flair|t2\s*\*|t2_?star|medic|\bswi\b|\bdwi\b|diffusion|\bpd\b|proton", re.I)
_T1 = re.compile(r"(?<![0-9])t1(?![0-9])", re.I)
_T2 = re.compile(r"(?<![0-9])t2(?![0-9])", re.I)


@dataclass(frozen=True)
class SequenceTags:
    """The tags the classification reads (times in ms, B0 in tesla; None when absent)."""

    scanning_sequence: tuple[str, ...] = ()
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    inversion_recovery: bool | None = None     # enhanced MR: MRModifierSequence
    field_strength: float | None = None
    echo_pulse_sequence: str = ""              # enhanced MR: SPIN | GRADIENT | BOTH
    acquisition_contrast: str = ""             # enhanced MR: T1 | T2 | PROTON_DENSITY ...
    texts: tuple[str, ...] = ()                # SeriesDescription, ProtocolName, SequenceName


def _stir_ti_limit(b0: float | None) -> float:
    return 300.0 if b0 is None or b0 <= 3.0 else 400.0


def classify_sequence(t: SequenceTags) -> str:
    """'T1' | 'T2' | 'STIR' | 'other' following the rules of the module docstring."""
    text = " ".join(x for x in t.texts if x)
    is_ir = "IR" in t.scanning_sequence or bool(t.inversion_recovery)
    if is_ir and t.inversion_time is not None and 0 < t.inversion_time < _stir_ti_limit(
            t.field_strength):
        return "STIR"
    if _STIR.search(text):
        return "STIR"
    if _OTHER.search(text):
        return "other"
    if is_ir and t.inversion_time is not None and t.inversion_time > 0:
        return "other"                       # long TI: FLAIR / T1-FLAIR
    gradient = ("GR" in t.scanning_sequence and "SE" not in t.scanning_sequence) or \
        t.echo_pulse_sequence.upper() == "GRADIENT"
    tr, te = t.repetition_time, t.echo_time
    if tr is not None and te is not None and tr > 0:
        if gradient:
            if tr < 1000 and te < 10:
                return "T1"
        else:
            if tr < 1000 and te < 30:
                return "T1"
            if tr > 2000 and te > 60:
                return "T2"
    t1, t2 = bool(_T1.search(text)), bool(_T2.search(text))
    if t1 != t2:
        return "T1" if t1 else "T2"
    contrast = t.acquisition_contrast.upper()
    if contrast in ("T1", "T2"):
        return contrast
    return "other"
