"""From tissue labels to what a scanner stores: signal, texture, blur, bias, ghosts, noise.

One sagittal series is rendered in these steps (each a function, in this order):

1. relative signal per tissue for the sequence (:mod:`.tissues`), lesions blended into
   marrow by their conspicuity;
2. tissue texture (marrow heterogeneity, bowel contents, muscle fibres), multiplicative;
3. the point-spread function of k-space truncation (Gaussian blur in plane);
4. resampling to the protocol's matrix (STIR is often acquired coarser);
5. the receive-coil bias field: the spine array lies under the patient, so signal falls off
   anteriorly; coil elements add a ripple along the spine;
6. motion/pulsation ghosts along the phase-encoding direction (some series);
7. complex Gaussian noise and the magnitude image: Rician statistics, Rayleigh in air;
8. vendor scaling (receiver gain varies per series) and quantisation to the stored bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage, signal
from scipy.stats import norm
import torch

from .grid import Grid
from .scanners import ScannerProfile, SequenceProtocol
from .tissues import Tissue, marrow_signal, signal_lut

#: Stored value scale of each sequence relative to T1 (vendors scale sequences differently).
SEQUENCE_GAIN = {"T1": 1.0, "T2": 0.85, "STIR": 1.5}
#: SNR of each sequence relative to T1 (STIR pays for its inversion).
SEQUENCE_SNR = {"T1": 1.0, "T2": 0.85, "STIR": 0.6}

# Multiplicative texture amplitude per tissue.
_TEXTURE = {Tissue.MARROW: 0.10, Tissue.MUSCLE: 0.07, Tissue.FAT: 0.03, Tissue.VISCERA: 0.22,
            Tissue.METASTASIS: 0.12, Tissue.HAEMANGIOMA: 0.15, Tissue.CORD: 0.03,
            Tissue.MODIC1: 0.10, Tissue.MODIC2: 0.08, Tissue.FRACTURE_OEDEMA: 0.12,
            Tissue.NUCLEUS: 0.05, Tissue.ANNULUS: 0.05}


@dataclass
class RenderedSeries:
    stored: np.ndarray          # uint16 (slices, rows, cols) as written to PixelData
    grid: Grid                  # this series' grid
    bias: np.ndarray            # float32 multiplicative field on this grid
    ghost: float                # ghost amplitude (0 = none)
    noise_sigma: float          # noise standard deviation in stored units x slope
    gain: float                 # stored units per relative signal (before slope)


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights mapping n_in samples over the same extent
    (pixel-area aligned, as ``grid_mode``) onto n_out samples."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1.0 - w
    m[np.arange(n_out), hi] += w
    return m


def texture_field(shape: tuple[int, int, int], rng: np.random.Generator,
                  scale_px: float = 4.0) -> np.ndarray:
    """Smooth zero-mean unit-variance noise: drawn coarse, upsampled by two small matrix
    products per slice (linear interpolation; much cheaper than a spline zoom)."""
    k, r, c = shape
    coarse = rng.standard_normal((k, int(np.ceil(r / scale_px)),
                                  int(np.ceil(c / scale_px)))).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, (0.6, 0.8, 0.8))
    coarse /= coarse.std() + 1e-6
    rows = _interpolation_matrix(r, coarse.shape[1])
    cols = _interpolation_matrix(c, coarse.shape[2])
    return rows @ coarse @ cols.T


def nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Index of the n_in-grid pixel whose centre is nearest each n_out-grid pixel centre."""
    return np.clip(np.rint((np.arange(n_out) + 0.5) * n_in / n_out - 0.5), 0, n_in - 1
                   ).astype(int)


@dataclass
class TissueModel:
    """What the three series of a patient share: tissue labels, lesion conspicuity, and the
    tissue structure (texture modulation, fluid-filled bowel) computed once."""

    labels: np.ndarray
    mix: np.ndarray
    modulation: np.ndarray      # 1 + texture amplitude of the tissue x texture field
    fluid: np.ndarray           # bool: fluid-filled bowel (T2/STIR bright)

    @classmethod
    def build(cls, labels: np.ndarray, mix: np.ndarray, texture: np.ndarray,
              bowel_fluid: float) -> "TissueModel":
        amp = np.zeros(256, np.float32)
        for tissue, a in _TEXTURE.items():
            amp[int(tissue)] = a
        modulation = amp.take(labels)    # = amp[labels], without widening the uint8 index
        modulation *= texture
        modulation += 1.0
        fluid = (labels == Tissue.VISCERA) & (texture > norm.isf(bowel_fluid))
        return cls(labels, mix, modulation, fluid)

    @cached_property
    def blended(self) -> np.ndarray:
        """Flat indices of the lesion voxels of lower conspicuity (mix < 1): a few hundred."""
        return np.flatnonzero(self.mix < 1.0)

    @cached_property
    def fluid_at(self) -> np.ndarray:
        """Flat indices of the fluid-filled bowel voxels."""
        return np.flatnonzero(self.fluid)

    def sampled(self, rows: np.ndarray, cols: np.ndarray) -> "TissueModel":
        """The model at the given (1-D) row and column indices of each slice."""
        k, _, c = self.labels.shape
        at = (rows[:, None] * c + cols[None, :]).ravel()   # flat in-plane indices, row-major
        shape = (k, rows.size, cols.size)
        return TissueModel(*(a.reshape(k, -1).take(at, axis=1).reshape(shape)
                             for a in (self.labels, self.mix, self.modulation, self.fluid)))


def relative_signal(model: TissueModel, sequence: str, marrow_fat: float,
                    fluid_signal: float = 0.25, disc_hydration: float = 1.0) -> np.ndarray:
    """Noise-free relative signal of the sequence (fat on T1 = 1)."""
    lut = signal_lut(sequence, marrow_fat)
    if sequence != "T1":
        lut[int(Tissue.NUCLEUS)] *= disc_hydration
    # On the flattened volume: lesions and fluid are a few voxels, reached by their indices.
    img = lut.take(model.labels.reshape(-1))    # = lut[labels], not widening the uint8 index
    at = model.blended
    if at.size:   # a lesion of lower conspicuity: part-way between marrow and tumour
        marrow = marrow_signal(marrow_fat)[("T1", "T2", "STIR").index(sequence)]
        img[at] = marrow + model.mix.reshape(-1)[at] * (img[at] - marrow)
    img *= model.modulation.reshape(-1)
    if sequence != "T1":   # fluid-filled bowel loops are bright on T2 and STIR
        img[model.fluid_at] += fluid_signal
    return np.clip(img, 0.0, None, out=img).reshape(model.labels.shape)


#: In-plane point-spread function of k-space truncation and filtering, Gaussian sigma (pixels).
PSF_SIGMA_PX = 0.6


def psf_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane Gaussian blur of each slice (scipy's separable FIR filter, mirror edges;
    per slice it is 30 % faster here than ``ndimage.gaussian_filter`` and equal to it to
    float precision away from the edges)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = np.empty_like(img, dtype=np.float32)
    for k, plane in enumerate(img):
        out[k] = signal.sepfir2d(plane, taps, taps)
    return out


def bias_field(grid: Grid, profile: ScannerProfile, coil_y: float, spine_z: float,
               rng: np.random.Generator) -> np.ndarray:
    """Receive-coil sensitivity on the grid, 1.0 at the spine."""
    x = grid.x_of_slices()[:, None, None]
    y = grid.y_of_columns()[None, None, :]
    z = grid.z_of_rows()[None, :, None]
    depth = np.clip(coil_y - y, 0.0, None)             # distance from the posterior coil
    falloff = np.exp(-profile.bias_strength * depth / 120.0)
    period = rng.uniform(90.0, 140.0)
    ripple = 1.0 + profile.bias_ripple * np.sin(2 * np.pi * (z - spine_z) / period
                                                + rng.uniform(0, 2 * np.pi))
    lateral = 1.0 + 0.15 * profile.bias_strength * (x / 60.0) ** 2
    ref = np.exp(-profile.bias_strength * 100.0 / 120.0)  # the spine lies ~10 cm from the coil
    plane = (falloff * ripple / ref).astype(np.float32)
    return plane * lateral.astype(np.float32)


def series_grid(reference: Grid, matrix: int) -> Grid:
    """The same slices and field of view as ``reference`` at another matrix."""
    k, r, _ = reference.shape
    if matrix == r:
        return reference
    fov = reference.spacing[1] * r
    px = fov / matrix
    centre_y = reference.origin[1] + (r - 1) / 2 * reference.spacing[2]
    centre_z = reference.origin[2] - (r - 1) / 2 * reference.spacing[1]
    return Grid((k, matrix, matrix), (reference.spacing[0], px, px),
                (reference.origin[0], centre_y - (matrix - 1) / 2 * px,
                 centre_z + (matrix - 1) / 2 * px))


def _gaussian_stream(rng: np.random.Generator, sigma: float):
    """Normal float32 samples (mean 0, ``sigma``) for the noise, seeded from the patient's
    generator.

    torch's vectorised sampler draws them about three times faster than numpy's here
    (5.7 vs 16.5 ms for a 13 x 320 x 320 series on this machine's core), and the noise is
    the largest array a series draws.
    """
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 63 - 1)))

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return torch.empty(shape, dtype=torch.float32).normal_(0.0, sigma, generator=gen).numpy()

    return draw


def render_series(model: TissueModel, reference: Grid, marrow_fat: float,
                  profile: ScannerProfile, protocol: SequenceProtocol, coil_y: float,
                  spine_z: float, rng: np.random.Generator, fluid_signal: float = 0.25,
                  disc_hydration: float = 1.0) -> RenderedSeries:
    """Render one sagittal series of a patient as stored pixel values."""
    seq = protocol.sequence
    grid = series_grid(reference, protocol.matrix)
    if grid is not reference:
        # A coarser acquisition of the same anatomy: sample the tissue model on its grid.
        model = model.sampled(nearest_indices(grid.shape[1], reference.shape[1]),
                              nearest_indices(grid.shape[2], reference.shape[2]))
    img = relative_signal(model, seq, marrow_fat, fluid_signal, disc_hydration)
    img = psf_blur(img, PSF_SIGMA_PX)
    bias = bias_field(grid, profile, coil_y, spine_z, rng)
    img *= bias
    ghost = 0.0
    if rng.random() < profile.ghost_probability:
        ghost = float(rng.uniform(0.03, 0.08))
        axis = 2 if profile.phase_direction == "ROW" else 1
        img += ghost * np.roll(img, img.shape[axis] // 2, axis=axis)
    gain = profile.intensity_scale * SEQUENCE_GAIN[seq] * float(rng.uniform(0.85, 1.15))
    sigma_rel = marrow_signal(0.5)[0] / (profile.snr * SEQUENCE_SNR[seq])
    sigma = sigma_rel * gain
    # Magnitude of signal plus complex Gaussian noise, in stored units: Rician.
    scale = np.float32(gain / profile.rescale_slope)
    noise = np.float32(sigma / profile.rescale_slope)
    img *= scale
    # Where the signal is well above the noise (> 5 sigma), the magnitude of signal plus
    # complex noise equals signal + real noise to within 0.1 sigma (the imaginary part adds
    # n_i^2 / 2S): draw the imaginary part only where it matters (air, cortex, dark tissue).
    low = np.flatnonzero(img < 5.0 * noise)     # flat indices, in the order of a mask
    gaussian = _gaussian_stream(rng, float(noise))
    img += gaussian(img.shape)
    magnitude = img.reshape(-1)
    magnitude[low] = np.hypot(magnitude[low], gaussian((low.size,)))
    # Quantise: round to the nearest stored value (adding 0.5 and truncating), clipped to
    # BitsStored. Above 5 sigma the magnitude is signal + real noise, negative with
    # probability 3e-7: such a voxel is stored as 0 rather than as its absolute value.
    magnitude += 0.5
    top = 2 ** profile.bits_stored - 1
    stored = np.clip(magnitude, 0.0, top, out=magnitude).astype(np.uint16).reshape(img.shape)
    return RenderedSeries(stored, grid, bias, ghost, float(sigma), float(gain))
