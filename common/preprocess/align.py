"""Resampling every sequence onto the spine box: alignment from the header geometry.

All series of a study normally share a frame of reference (FrameOfReferenceUID): their
ImagePositionPatient/ImageOrientationPatient then place them exactly, and resampling through
patient coordinates aligns them. Only when a series carries another frame of reference (a
re-positioned patient, a series imported from another exam) is the header geometry refined by
a translation found with phase correlation against the reference sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pipeline import StudyImage
from .volume import LazyVolume, resample


def phase_correlation_shift(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Integer voxel shift that best aligns ``moving`` to ``fixed`` (3-D, FFT)."""
    f = np.fft.fftn(fixed - fixed.mean())
    m = np.fft.fftn(moving - moving.mean())
    cross = f * np.conj(m)
    cross /= np.abs(cross) + 1e-9
    corr = np.fft.ifftn(cross).real
    peak = np.array(np.unravel_index(np.argmax(corr), corr.shape))
    dims = np.array(corr.shape)
    peak[peak > dims // 2] -= dims[peak > dims // 2]
    return peak


@dataclass
class ResampleAligned:
    order: int = 1
    refine_max_mm: float = 30.0

    def __call__(self, study: StudyImage) -> StudyImage:
        ref_seq = study.spine.source
        ref_frame = study.frames.get(ref_seq)
        study.crop = {}
        for seq in study.sequences:
            box = study.crop_box(seq)
            vol = study.volumes[seq]
            if isinstance(vol, LazyVolume):   # decode only the slices the crop touches
                vol = vol.slab_for(box)
            study.slab_sources[seq] = vol
            data = resample(vol, box, order=self.order)
            refined = None
            if seq != ref_seq and ref_frame and study.frames.get(seq) not in (None, ref_frame):
                ref = resample(study.volumes[ref_seq], box, order=self.order)
                shift_vox = phase_correlation_shift(_edges(ref), _edges(data))
                shift_mm = box.volume().index_to_patient(shift_vox[None].astype(float))[0] - \
                    np.asarray(box.origin)
                if np.linalg.norm(shift_mm) <= self.refine_max_mm:
                    data = resample(vol, box, order=self.order, shift_mm=shift_mm)
                    refined = shift_mm
            study.crop[seq] = data.astype(np.float32)
            study.note("ResampleAligned", sequence=seq,
                       refined_shift_mm=None if refined is None else refined.tolist())
        return study


def _edges(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude: sequences differ in contrast but share edges."""
    g = np.gradient(img / (np.percentile(img, 99) + 1e-6))
    return np.sqrt(sum(x * x for x in g))
