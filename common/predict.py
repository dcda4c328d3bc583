"""Predict studies with a trained model: the same reading and preprocessing as training,
temperature-scaled probabilities, and a Grad-CAM map over the 2-D image (the paper's
"focus signs").

The model file is checked before any study is read: its preprocessing hash must be this
installation's pipeline's, its input shape the pipeline's output, its package version
this one (:func:`spinemet.common.training.artifacts.load_model`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dicom.scan import scan
from .models import CLASS_NAMES, probabilities
from .preprocess.pipeline import Pipeline, StudyImage, default_pipeline
from .preprocess.runner import study_image
from .training.artifacts import load_model


@dataclass
class Prediction:
    source: str                      # the folder given on the command line
    study_uid: str = ""
    label: int | None = None
    label_name: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    saliency: str | None = None      # PNG written
    cam: np.ndarray | None = field(default=None, repr=False)
    image: StudyImage | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"source": self.source, "study_uid": self.study_uid, "label": self.label,
                "label_name": self.label_name, "probabilities": self.probabilities,
                "saliency": self.saliency, "error": self.error}


class Predictor:
    """A loaded, checked model and the pipeline it was trained behind."""

    def __init__(self, model_path: Path, pipeline: Pipeline | None = None):
        self.pipeline = pipeline or default_pipeline()
        self.model, self.meta = load_model(model_path, self.pipeline.hash(),
                                           self.pipeline.output_shape)
        self.temperature = float(self.meta.get("temperature", 1.0))

    def predict_tensor(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return probabilities(self.model(x), self.temperature).numpy()

    def grad_cam(self, x: torch.Tensor, target: int) -> np.ndarray:
        """Grad-CAM (Selvaraju et al. 2017, Captum's ``LayerGradCam``) of class ``target``
        at the model's last convolutional stage, upsampled to the image, scaled to 0..1."""
        from captum.attr import LayerAttribution, LayerGradCam

        cam = LayerGradCam(self.model, self.model.cam_layer).attribute(
            x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")
        cam = cam[0, 0].detach().numpy()
        top = cam.max()
        return cam / top if top > 0 else cam

    def predict_study_dirs(self, folders: list[Path], saliency_dir: Path | None = None,
                           keep: bool = False) -> list[Prediction]:
        out: list[Prediction] = []
        for folder in folders:
            out += self._predict_folder(Path(folder), saliency_dir, keep)
        return out

    def _predict_folder(self, folder: Path, saliency_dir: Path | None,
                        keep: bool) -> list[Prediction]:
        if not folder.exists():
            return [Prediction(str(folder), error="no such file or folder")]
        res = scan([folder], workers=1)
        if not res.studies:
            why = "; ".join(f"{r.path}: {r.reason}" for r in res.rejected[:3])
            return [Prediction(str(folder), error="no readable DICOM study" +
                               (f" ({why})" if why else ""))]
        preds = []
        for st in res.studies:
            p = Prediction(str(folder), study_uid=st.study_uid)
            try:
                img = self.pipeline(study_image(st))
            except Exception as exc:   # one unreadable study never stops the others
                p.error = f"preprocessing failed: {type(exc).__name__}: {exc}"
                preds.append(p)
                continue
            missing = [q for q in ("T1", "T2", "STIR") if q not in img.volumes]
            x = torch.from_numpy(np.ascontiguousarray(img.image))[None]
            proba = self.predict_tensor(x)[0]
            p.label = int(proba.argmax())
            p.label_name = CLASS_NAMES[p.label]
            p.probabilities = {n: float(v) for n, v in zip(CLASS_NAMES, proba)}
            if missing:
                p.error = f"warning: no sagittal {', '.join(missing)} (zero channel)"
            if saliency_dir is not None or keep:
                p.cam = self.grad_cam(x, p.label)
            if saliency_dir is not None:
                p.saliency = str(write_saliency(saliency_dir, folder, st.study_uid,
                                                img.image, p.cam, p))
            if keep:
                p.image = img
            preds.append(p)
        return preds


def write_saliency(out_dir: Path, folder: Path, study_uid: str, image: np.ndarray,
                   cam: np.ndarray, pred: Prediction) -> Path:
    """``OUT/<folder name>-<uid hash>_gradcam.png`` (the STIR width maximum and T1 with the
    map over them) and ``.npy`` (the map, 0..1, on the image's grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{folder.name}-{hashlib.sha256(study_uid.encode()).hexdigest()[:8]}_gradcam"
    np.save(out_dir / f"{stem}.npy", cam.astype(np.float32))
    fig, axes = plt.subplots(1, 3, figsize=(6.4, 6.2), dpi=110)
    for ax, (chan, name) in zip(axes[:2], ((0, "T1"), (3, "STIR max"))):
        ax.imshow(image[chan], cmap="gray")
        ax.set_title(name, fontsize=9)
    axes[2].imshow(image[3], cmap="gray")
    axes[2].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    axes[2].plot([c], [r], "w+", ms=10)
    axes[2].set_title(f"Grad-CAM: {pred.label_name}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    probs = ", ".join(f"{k} {v:.2f}" for k, v in pred.probabilities.items())
    fig.suptitle(f"{folder.name}: {probs}", fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{stem}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def cam_peak(cam: np.ndarray) -> tuple[int, int]:
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(r), int(c)

