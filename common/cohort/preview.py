"""Montages of a cohort, per class and sequence, and a side-by-side with real scanner slices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from .patient import SERIES_FOLDERS  # noqa: E402
from .spec import CLASS_NAMES  # noqa: E402
from .writer import read_labels  # noqa: E402


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Modality-LUT pixels scaled for display by the 1st-99.5th percentile window."""
    img = pydicom.pixels.apply_rescale(ds.pixel_array, ds).astype(np.float32)
    lo, hi = np.percentile(img, (1.0, 99.5))
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def middle_slice(series_dir: Path) -> pydicom.Dataset:
    """The slice nearest the middle of a series, by position along the slice normal."""
    items = []
    for f in series_dir.glob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        normal = np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3)))
        items.append((float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))), f))
    items.sort()
    return pydicom.dcmread(items[len(items) // 2][1])


def write_montages(cohort: Path, out: Path, per_class: int = 6) -> list[Path]:
    """One PNG per class and sequence: the mid-sagittal slice of the first patients."""
    rows = read_labels(cohort / "labels.csv")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label, name in enumerate(CLASS_NAMES):
        chosen = [r for r in rows if r["label"] == label][:per_class]
        if not chosen:
            continue
        for seq, folder in SERIES_FOLDERS.items():
            cols = min(len(chosen), 3)
            nrows = int(np.ceil(len(chosen) / cols))
            fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows),
                                     squeeze=False, facecolor="black")
            for ax in axes.ravel():
                ax.axis("off")
            for ax, r in zip(axes.ravel(), chosen):
                ds = middle_slice(cohort / r["site"] / r["patient_id"] / folder)
                ax.imshow(_display(ds), cmap="gray", interpolation="lanczos")
                ax.set_title(f"{r['patient_id']} {ds.Manufacturer.split()[0]} "
                             f"{ds.MagneticFieldStrength}T", color="white", fontsize=8)
            fig.suptitle(f"class {label} ({name}), sagittal {seq}", color="white")
            fig.tight_layout()
            path = out / f"class{label}_{name}_{seq}.png"
            fig.savefig(path, dpi=80, facecolor="black")
            plt.close(fig)
            written.append(path)
    return written


def write_comparison(cohort: Path, real: list[Path], out_png: Path) -> Path:
    """Synthetic T1/T2/STIR of one patient per class beside real scanner slices."""
    rows = read_labels(cohort / "labels.csv")
    picks = [next(r for r in rows if r["label"] == c) for c in range(3)]
    n_cols = 3 + 1
    fig, axes = plt.subplots(3, n_cols, figsize=(3.3 * n_cols, 10), facecolor="black")
    for ax in axes.ravel():
        ax.axis("off")
    for i, r in enumerate(picks):
        for j, (seq, folder) in enumerate(SERIES_FOLDERS.items()):
            ds = middle_slice(cohort / r["site"] / r["patient_id"] / folder)
            axes[i, j].imshow(_display(ds), cmap="gray")
            axes[i, j].set_title(f"synthetic {CLASS_NAMES[r['label']]} {seq}", color="white",
                                 fontsize=9)
    for i, path in enumerate(real[:3]):
        ds = middle_slice(path) if path.is_dir() else pydicom.dcmread(path)
        axes[i, 3].imshow(_display(ds), cmap="gray")
        desc = str(ds.get("SeriesDescription", "")) or path.name
        axes[i, 3].set_title(f"REAL {ds.get('Manufacturer', '')} {desc}"[:42], color="yellow",
                             fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=72, facecolor="black")
    plt.close(fig)
    return out_png
