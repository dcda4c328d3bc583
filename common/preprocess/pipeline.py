"""The preprocessing pipeline: named steps with parameters, composed, written out and hashed.

Steps follow the seed paper (sec. 2.2: format conversion, filtering/denoising, segmentation,
registration, resampling, smoothing, 3-D to 2-D mapping), ordered so that the cheap steps
shrink the data before the expensive filters run:

1. ``LocateSpine``     find the spinal canal's centre line and the mid-sagittal plane (coarse);
2. ``CropToSpine``     a box around the spine and the slab the 2-D mapping uses;
3. ``ResampleAligned`` every sequence onto that box at a common spacing, through the header
                       geometry (alignment); refined by registration only when the headers
                       do not share a frame of reference;
4. ``Denoise``         non-local means (scikit-image), slice by slice;
5. ``CorrectBias``     N4 bias-field correction (SimpleITK) on a shrunk copy;
6. ``NormaliseIntensity`` per-sequence percentile scaling to [0, 1];
7. ``Smooth``          a light Gaussian;
8. ``ProjectTo2D``     straighten along the canal and project slabs to a fixed-size tensor.

Each step is a small dataclass: its fields are its parameters and ``__call__`` takes and
returns a :class:`StudyImage`, logging what it did. ``Pipeline.params()`` is the JSON that
is hashed into the cache key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol

import numpy as np

from .volume import Box, Volume

SEQUENCES = ("T1", "T2", "STIR")
PIPELINE_VERSION = 2


@dataclass
class SpineLocation:
    """The canal centre line in patient coordinates: for rows at height ``z`` (mm), the
    canal's antero-posterior position ``y`` (mm), in the mid-sagittal plane ``mid_x``."""

    mid_x: float
    z: np.ndarray
    y: np.ndarray
    strength: np.ndarray
    source: str


@dataclass(frozen=True)
class Reformat:
    """The straightened 2-D grid the crop defines: ``rows`` along the spine and ``cols`` from
    ``anterior_mm`` in front of the canal, at ``spacing_mm``."""

    anterior_mm: float
    spacing_mm: float
    rows: int
    cols: int


@dataclass
class StudyImage:
    """A study as it moves through the pipeline."""

    study_uid: str
    volumes: dict[str, Volume]                 # canonical, per sequence, source resolution
    frames: dict[str, str] = field(default_factory=dict)   # FrameOfReferenceUID per sequence
    spine: SpineLocation | None = None
    box: Box | None = None
    reformat: Reformat | None = None
    slabs: dict[str, np.ndarray] = field(default_factory=dict)  # slice indices of box, per seq
    crop: dict[str, np.ndarray] = field(default_factory=dict)
    # Per sequence, the source slices the crop was sampled from (ResampleAligned): the
    # bias field is estimated on them.
    slab_sources: dict[str, Volume] = field(default_factory=dict)
    image: np.ndarray | None = None
    log: list[dict] = field(default_factory=list)

    @property
    def sequences(self) -> list[str]:
        return [s for s in SEQUENCES if s in self.volumes]

    def crop_box(self, seq: str) -> Box:
        """The part of the box a sequence's crop covers (its slab of slices)."""
        idx = self.slabs.get(seq)
        if idx is None or len(idx) == len(range(self.box.shape[0])):
            return self.box
        x0 = self.box.origin[0] + int(idx[0]) * self.box.spacing[0]
        return Box((x0, self.box.origin[1], self.box.origin[2]),
                   (len(idx),) + tuple(self.box.shape[1:]), self.box.spacing)

    def crop_x(self, seq: str) -> np.ndarray:
        """Patient x (mm) of each slice of a sequence's crop."""
        b = self.crop_box(seq)
        return b.origin[0] + np.arange(b.shape[0]) * b.spacing[0]

    def note(self, step: str, **what) -> None:
        self.log.append({"step": step, **{k: _plain(v) for k, v in what.items()}})


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


class Step(Protocol):
    def __call__(self, study: StudyImage) -> StudyImage: ...


def step_params(step) -> dict:
    return {"step": type(step).__name__, **{f.name: getattr(step, f.name) for f in fields(step)}}


@dataclass
class Pipeline:
    steps: list

    def __call__(self, study: StudyImage) -> StudyImage:
        for step in self.steps:
            study = step(study)
        return study

    def params(self) -> dict:
        return {"version": PIPELINE_VERSION, "steps": [step_params(s) for s in self.steps]}

    def hash(self) -> str:
        text = json.dumps(self.params(), sort_keys=True, default=_jsonable)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(channels, rows, cols): the crop decides the grid, the mapping the channels."""
        from .locate import CropToSpine
        from .mapping import CHANNELS

        crop = next(s for s in self.steps if isinstance(s, CropToSpine))
        return (len(CHANNELS), crop.rows, crop.cols)


def _jsonable(v):
    if isinstance(v, tuple):
        return list(v)
    if hasattr(v, "__dataclass_fields__"):
        return asdict(v)
    raise TypeError(type(v))


def default_pipeline() -> Pipeline:
    """The pipeline every site and the coordinator use unless told otherwise."""
    from .align import ResampleAligned
    from .filters import CorrectBias, Denoise, NormaliseIntensity, Smooth
    from .locate import CropToSpine, LocateSpine
    from .mapping import ProjectTo2D

    return Pipeline([LocateSpine(), CropToSpine(), ResampleAligned(), Denoise(), CorrectBias(),
                     NormaliseIntensity(), Smooth(), ProjectTo2D()])
