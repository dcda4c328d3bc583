"""``model.pt``: the weights and everything needed to use them safely elsewhere.

Saved as a plain dict of tensors and JSON-like metadata, so it loads with
``torch.load(path, weights_only=True)`` (no pickled code runs)::

    {"state_dict": {...}, "meta": {"format": 1, "model": "paper", "input_shape": [5, 180, 52],
     "class_names": [...], "temperature": 1.3, "preprocessing": {"hash": ..., "params": ...},
     "spinemet_version": "0.1.0", "config": {...}, "best_epoch": 41, ...}}

:func:`load_model` refuses a file whose preprocessing hash, input shape or package version
does not match what this installation produces, and says what to do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..models import CLASS_NAMES, build_model

FORMAT = 1


class ModelMismatch(ValueError):
    """The model file cannot be used with this installation or this pipeline."""


def save_model(path: Path, model: nn.Module, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "spinemet_version": __version__,
            "class_names": list(CLASS_NAMES), **meta}
    tmp = path.with_suffix(".partial")
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "meta": meta}, tmp)
    tmp.replace(path)
    return path


def read_model_file(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelMismatch(f"{path}: no such model file (expected RUN/model.pt from "
                            "`spinemet train`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelMismatch(f"{path}: not a SpineMet model file ({type(exc).__name__}); "
                            "expected RUN/model.pt from `spinemet train`") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise ModelMismatch(f"{path}: not a SpineMet model file (no state_dict/meta); "
                            "expected RUN/model.pt from `spinemet train`")
    return blob


def load_model(path: Path, pipeline_hash: str | None = None,
               input_shape: tuple[int, int, int] | None = None,
               check_version: bool = True) -> tuple[nn.Module, dict]:
    """The model and its metadata; raises :class:`ModelMismatch` naming the field."""
    blob = read_model_file(path)
    meta = blob["meta"]
    if check_version and meta.get("spinemet_version") != __version__:
        raise ModelMismatch(
            f"{path}: trained with spinemet {meta.get('spinemet_version')}, this is "
            f"{__version__}; retrain with this version or install the one it was trained with")
    if pipeline_hash is not None and meta.get("preprocessing", {}).get("hash") != pipeline_hash:
        raise ModelMismatch(
            f"{path}: preprocessing hash {str(meta.get('preprocessing', {}).get('hash'))[:16]} "
            f"differs from this installation's pipeline {pipeline_hash[:16]}; the model would see "
            "differently prepared images: retrain it on data preprocessed by this pipeline")
    if input_shape is not None and tuple(meta.get("input_shape", ())) != tuple(input_shape):
        raise ModelMismatch(
            f"{path}: input shape {meta.get('input_shape')} differs from the pipeline's "
            f"{list(input_shape)}; retrain the model on this pipeline's tensors")
    model = build_model(meta["model"], tuple(meta["input_shape"]), len(meta["class_names"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, meta
