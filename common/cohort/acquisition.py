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

import numpy as np
from scipy import ndimage

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


def texture_field(shape: tuple[int, int, int], rng: np.random.Generator,
                  scale_px: float = 4.0) -> np.ndarray:
    """Smooth zero-mean unit-variance noise, made coarse and upsampled (cheap)."""
    k, r, c = shape
    coarse = rng.standard_normal((k, int(np.ceil(r / scale_px)) + 1,
                                  int(np.ceil(c / scale_px)) + 1)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, (0.6, 0.8, 0.8))
    coarse /= coarse.std() + 1e-6
    fine = ndimage.zoom(coarse, (1, r / coarse.shape[1], c / coarse.shape[2]), order=1,
                        grid_mode=True, mode="nearest")
    return fine[:, :r, :c]


def relative_signal(labels: np.ndarray, mix: np.ndarray, sequence: str, marrow_fat: float,
                    texture: np.ndarray) -> np.ndarray:
    """Noise-free relative signal of the sequence (fat on T1 = 1)."""
    img = signal_lut(sequence, marrow_fat)[labels]
    blended = mix < 1.0
    if blended.any():   # a lesion of lower conspicuity: part-way between marrow and tumour
        marrow = marrow_signal(marrow_fat)[("T1", "T2", "STIR").index(sequence)]
        img[blended] = marrow + mix[blended] * (img[blended] - marrow)
    amp = np.zeros(256, np.float32)
    for tissue, a in _TEXTURE.items():
        amp[int(tissue)] = a
    img *= 1.0 + amp[labels] * texture
    if sequence != "T1":   # fluid-filled bowel loops are bright on T2 and STIR
        fluid = (labels == Tissue.VISCERA) & (texture > 1.8)
        img[fluid] += 0.25
    return np.clip(img, 0.0, None)


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
    field = (falloff * ripple * lateral).astype(np.float32)
    ref = np.exp(-profile.bias_strength * 100.0 / 120.0)  # the spine lies ~10 cm from the coil
    return field / ref


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


def render_series(labels: np.ndarray, mix: np.ndarray, texture: np.ndarray, reference: Grid,
                  marrow_fat: float, profile: ScannerProfile, protocol: SequenceProtocol,
                  coil_y: float, spine_z: float, rng: np.random.Generator) -> RenderedSeries:
    """Render one sagittal series of a patient as stored pixel values.

    ``texture`` (from :func:`texture_field`) is the patient's tissue structure: the same
    field for all sequences, as the marrow's heterogeneity is anatomy, not noise.
    """
    seq = protocol.sequence
    img = relative_signal(labels, mix, seq, marrow_fat, texture)
    img = ndimage.gaussian_filter(img, (0.0, 0.6, 0.6))
    grid = series_grid(reference, protocol.matrix)
    if grid is not reference:
        img = ndimage.zoom(img, (1.0, grid.shape[1] / img.shape[1], grid.shape[2] / img.shape[2]),
                           order=1, grid_mode=True, mode="nearest")
    bias = bias_field(grid, profile, coil_y, spine_z, rng)
    img = img * bias
    ghost = 0.0
    if rng.random() < profile.ghost_probability:
        ghost = float(rng.uniform(0.03, 0.08))
        axis = 2 if profile.phase_direction == "ROW" else 1
        img = img + ghost * np.roll(img, img.shape[axis] // 2, axis=axis)
    gain = profile.intensity_scale * SEQUENCE_GAIN[seq] * float(rng.uniform(0.85, 1.15))
    sigma_rel = marrow_signal(0.5)[0] / (profile.snr * SEQUENCE_SNR[seq])
    signal = img * gain
    sigma = sigma_rel * gain
    real = signal + rng.standard_normal(signal.shape, np.float32) * sigma
    imag = rng.standard_normal(signal.shape, np.float32) * sigma
    magnitude = np.sqrt(real * real + imag * imag)
    top = 2 ** profile.bits_stored - 1
    stored = np.clip(np.rint(magnitude / profile.rescale_slope), 0, top).astype(np.uint16)
    return RenderedSeries(stored, grid, bias, ghost, float(sigma), float(gain))
