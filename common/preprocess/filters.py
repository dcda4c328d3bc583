"""Intensity steps on the cropped volumes: denoising, bias-field correction, normalisation,
smoothing. They run after the crop, on a few hundred thousand voxels per sequence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .locate import bounding_box
from .pipeline import StudyImage
from .volume import Volume, resample


@dataclass
class Denoise:
    """Non-local means (scikit-image), per slice, with the noise level estimated per series.

    ``h_factor`` scales the filtering strength relative to the estimated noise sigma.
    """

    patch_size: int = 3
    patch_distance: int = 4
    h_factor: float = 0.8

    def __call__(self, study: StudyImage) -> StudyImage:
        from skimage.restoration import denoise_nl_means, estimate_sigma

        for seq, img in study.crop.items():
            scale = float(np.percentile(img, 99.0)) or 1.0
            norm = img / scale
            sigma = float(estimate_sigma(norm))
            out = np.empty_like(norm)
            for k in range(norm.shape[0]):
                out[k] = denoise_nl_means(norm[k], h=self.h_factor * sigma, sigma=sigma,
                                          patch_size=self.patch_size,
                                          patch_distance=self.patch_distance, fast_mode=True)
            study.crop[seq] = (out * scale).astype(np.float32)
            study.note("Denoise", sequence=seq, sigma=sigma * scale)
        return study


@dataclass
class CorrectBias:
    """Bias-field (coil sensitivity) correction, estimated on the full field of view of the
    slices each sequence's crop was sampled from, applied to the crop.

    ``method="homomorphic"`` (default): the low-pass of the log image within the body,
    by normalised convolution (a Gaussian of ``sigma_mm`` over the body mask divided by the
    same Gaussian of the mask), on a coarse copy of the full field of view: the coil fall-off
    and ripple are far smoother than the anatomy. ``method="n4"``: SimpleITK's N4 on the same
    coarse copy; more principled, but about 1.4 s per series on this project's 2-core
    machine (measured), which is more than the whole pipeline's budget per study.
    """

    method: str = "homomorphic"
    coarse_mm: float = 4.0
    sigma_mm: float = 18.0
    body_fraction: float = 0.1
    n4_iterations: tuple[int, ...] = (15, 10)

    def log_field(self, vol: Volume) -> Volume:
        """The estimated log bias field of a canonical series on a coarse grid."""
        box = bounding_box(vol, (float(vol.spacing[0]), self.coarse_mm, self.coarse_mm))
        img = resample(vol, box)
        body = img > self.body_fraction * float(np.percentile(img, 99.0))
        if self.method == "n4":
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(img + 1.0)
            image.SetSpacing([self.coarse_mm, self.coarse_mm, float(vol.spacing[0])])
            mask = sitk.GetImageFromArray(body.astype(np.uint8))
            mask.CopyInformation(image)
            n4 = sitk.N4BiasFieldCorrectionImageFilter()
            n4.SetMaximumNumberOfIterations(list(self.n4_iterations))
            n4.Execute(image, mask)
            log = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image))
        elif self.method == "homomorphic":
            sig = (0.0, self.sigma_mm / self.coarse_mm, self.sigma_mm / self.coarse_mm)
            logi = np.where(body, np.log(np.maximum(img, 1e-3)), 0.0)
            weight = ndimage.gaussian_filter(body.astype(np.float32), sig)
            log = ndimage.gaussian_filter(logi, sig) / np.maximum(weight, 1e-3)
            log = np.where(weight > 0.05, log, 0.0)
            log -= np.median(log[body]) if body.any() else 0.0
        else:
            raise ValueError(f"CorrectBias.method must be 'homomorphic' or 'n4', not {self.method!r}")
        return box.volume(log.astype(np.float32))

    def __call__(self, study: StudyImage) -> StudyImage:
        for seq, img in study.crop.items():
            # The field is smoothed within each slice, so estimating it on the slices the
            # crop was sampled from gives those slices' field.
            field = self.log_field(study.slab_sources.get(seq) or study.volumes[seq])
            log = resample(field, study.crop_box(seq), order=1)
            study.crop[seq] = (img / np.exp(log)).astype(np.float32)
            study.note("CorrectBias", sequence=seq, method=self.method,
                       field_range=[float(np.exp(log.min())), float(np.exp(log.max()))])
        return study


@dataclass
class NormaliseIntensity:
    """Per-sequence scaling of the ``lower``..``upper`` percentiles (of the body) to 0..1."""

    lower: float = 1.0
    upper: float = 99.0

    def __call__(self, study: StudyImage) -> StudyImage:
        for seq, img in study.crop.items():
            body = img[img > 0.05 * np.percentile(img, 99.0)]
            lo, hi = np.percentile(body if body.size else img, (self.lower, self.upper))
            study.crop[seq] = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.5).astype(np.float32)
            study.note("NormaliseIntensity", sequence=seq, lo=float(lo), hi=float(hi))
        return study


@dataclass
class Smooth:
    """A light in-plane Gaussian (mm), after denoising, before the projection."""

    sigma_mm: float = 0.8

    def __call__(self, study: StudyImage) -> StudyImage:
        s = self.sigma_mm / study.box.spacing[1]
        for seq, img in study.crop.items():
            study.crop[seq] = ndimage.gaussian_filter(img, (0.0, s, s)).astype(np.float32)
        study.note("Smooth", sigma_px=s)
        return study
