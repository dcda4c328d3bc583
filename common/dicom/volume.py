"""Load the pixels of an ordered series as one float32 volume (modality LUT applied)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom

if TYPE_CHECKING:  # pragma: no cover
    from .scan import Series


class DicomLoadError(RuntimeError):
    """Pixels of a file could not be decoded; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: Path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = Path(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def _charls_available() -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    return "pyjpegls" in get_decoder(JPEGLSLossless).available_plugins


_JPEG_LS = (pydicom.uid.JPEGLSLossless, pydicom.uid.JPEGLSNearLossless)
_CHARLS = _charls_available()


def _pixels(path: Path) -> np.ndarray:
    from .header import TRUNCATED

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            if _CHARLS and ds.file_meta.get("TransferSyntaxUID") in _JPEG_LS:
                # CharLS (pyjpegls) decodes JPEG-LS about 4x faster than pylibjpeg-libjpeg,
                # which pydicom tries first; both are lossless decoders of the same bytes.
                ds.pixel_array_options(decoding_plugin="pyjpegls")
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - report which file and why, never a traceback
        raise DicomLoadError(path, TRUNCATED, f"pixel data could not be decoded "
                                              f"({type(exc).__name__})") from exc
    return arr


def load_series(series: "Series", slices: range | None = None) -> np.ndarray:
    """(slices, rows, cols) float32, slices in the series' order along the normal, each
    slice's stored values x RescaleSlope + RescaleIntercept (per frame for enhanced MR).
    ``slices`` loads only that range of them (only those files are decoded)."""
    slices = range(series.shape[0]) if slices is None else slices
    out = np.empty((len(slices),) + tuple(series.shape[1:]), np.float32)
    cache: dict[Path, np.ndarray] = {}
    for k, (path, frame) in enumerate(series.frames[i] for i in slices):
        if path not in cache:
            cache = {path: _pixels(path)}          # files are visited in order: keep one
        arr = cache[path]
        img = arr[frame.index] if frame.index is not None and arr.ndim == 3 else arr
        if img.shape != series.shape[1:]:
            raise DicomLoadError(path, "inconsistent geometry",
                                 f"decoded {img.shape}, header says {series.shape[1:]}")
        out[k] = img.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
    return out
