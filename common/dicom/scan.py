"""Walk DICOM files in any folder layout and group them into studies and series.

``scan(paths)`` reads every file's header (never the pixels), in parallel when there are
many, and returns the usable series grouped by study plus every file it could not use,
each with a reason (:mod:`.header`). Within a series, slices (files, or frames of an
enhanced multi-frame file) are ordered along the slice normal and checked: same orientation,
matrix and pixel spacing, no two slices at one position, even gaps, positions stacked along
the normal. A series failing a check is rejected whole, file by file, with the reason.

Hidden files and folders (``.partial``, ``.git``) are skipped; so are files whose extension
says they are not DICOM (``.csv``, ``.json``, ``.png``, ``.npz``...): they are counted in
``ScanResult.ignored``, not rejected. A file without an extension is always read.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import geometry as geo
from .header import (DUPLICATE, INCONSISTENT_GEOMETRY, NOT_FOUND, FileHeader, Frame,
                     Rejected, read_header)
from .sequence import SEQUENCES, classify_sequence
from .volume import load_series

NOT_DICOM_EXTENSIONS = frozenset({
    ".csv", ".tsv", ".json", ".txt", ".md", ".rst", ".html", ".xml", ".yaml", ".yml", ".log",
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".svg", ".pdf",
    ".npz", ".npy", ".pt", ".pth", ".pkl", ".h5", ".nii", ".gz", ".zip", ".tar", ".py",
})
POSITION_TOL = 0.01          # mm: two slices closer than this along the normal coincide
SPACING_TOL = 1e-3           # relative tolerance on PixelSpacing within a series
PARALLEL_FROM = 64           # files; fewer are read in this process


@dataclass
class Series:
    """One usable series: slices ordered along the normal, with its voxel geometry."""

    series_uid: str
    study_uid: str
    sequence: str                    # 'T1' | 'T2' | 'STIR' | 'other'
    orientation: str                 # 'sagittal' | 'axial' | 'coronal' | 'oblique'
    patient_position: str            # 'HFS', 'HFP', 'FFS', ... ('' when absent)
    description: str
    manufacturer: str
    field_strength: float | None
    transfer_syntax: str
    files: list[Path]                # ordered along the slice normal
    frames: list[tuple[Path, Frame]]  # one per slice, same order
    shape: tuple[int, int, int]      # (slices, rows, cols)
    spacing: tuple[float, float, float]   # (slice, row, column) spacing, mm
    origin: tuple[float, float, float]    # patient position of voxel (0, 0, 0)
    direction: np.ndarray            # rows: row cosine, column cosine, slice direction
    multiframe: bool = False
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    frame_of_reference: str = ""

    @property
    def n_slices(self) -> int:
        return self.shape[0]

    @property
    def affine(self) -> np.ndarray:
        """4x4: voxel index (k, r, c, 1) -> patient LPS mm."""
        return geo.affine(self.origin, self.spacing, self.direction)

    def load(self, slices: range | None = None) -> np.ndarray:
        """(slices, rows, cols) float32 with RescaleSlope/Intercept applied (``slices``: only
        that range of slices). Raises :class:`~.volume.DicomLoadError` naming the file that
        failed to decode."""
        return load_series(self, slices)

    def folder(self) -> Path:
        parents = {f.parent for f in self.files}
        return parents.pop() if len(parents) == 1 else Path(os.path.commonpath(
            [str(p) for p in parents]))

    def to_dict(self) -> dict:
        """What ``spinemet inspect --json`` prints: geometry and acquisition, no free text."""
        return {"series_uid": self.series_uid, "sequence": self.sequence,
                "orientation": self.orientation, "patient_position": self.patient_position,
                "slices": self.shape[0], "shape": list(self.shape),
                "spacing": [round(float(s), 6) for s in self.spacing],
                "origin": [round(float(s), 6) for s in self.origin],
                "direction": np.round(self.direction, 6).tolist(),
                "multiframe": self.multiframe, "transfer_syntax": self.transfer_syntax,
                "field_strength": self.field_strength,
                "repetition_time": self.repetition_time, "echo_time": self.echo_time,
                "inversion_time": self.inversion_time,
                "folder": str(self.folder()), "files": len(self.files)}


@dataclass
class Study:
    study_uid: str
    patient_id: str                  # kept locally: never leaves the site
    series: list[Series] = field(default_factory=list)

    def series_for(self, sequence: str) -> Series | None:
        """The best sagittal series of that sequence (most slices, then finest in-plane
        matrix; ties by UID so the choice is stable), or None."""
        cands = [s for s in self.series if s.sequence == sequence and
                 s.orientation == "sagittal"]
        if not cands:
            return None
        return max(cands, key=lambda s: (s.shape[0], s.shape[1] * s.shape[2],
                                         s.series_uid))

    def missing(self) -> list[str]:
        return [q for q in SEQUENCES if self.series_for(q) is None]

    def to_dict(self, with_patient: bool = True) -> dict:
        d = {"study_uid": self.study_uid}
        if with_patient:
            d["patient_id"] = self.patient_id
        d["series"] = [s.to_dict() for s in self.series]
        d["missing_sequences"] = self.missing()
        return d


@dataclass
class ScanResult:
    studies: list[Study] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    files_read: int = 0

    @property
    def series(self) -> list[Series]:
        return [s for st in self.studies for s in st.series]

    def study(self, study_uid: str) -> Study | None:
        return next((s for s in self.studies if s.study_uid == study_uid), None)

    def rejected_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.rejected:
            out[r.reason] += 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict:
        return {"files_read": self.files_read, "ignored": len(self.ignored),
                "studies": [s.to_dict() for s in self.studies],
                "rejected": [r.to_dict() for r in self.rejected],
                "rejected_by_reason": self.rejected_by_reason()}


# ----------------------------------------------------------------------------- walking


def _walk(paths: Iterable[Path], rejected: list[Rejected], ignored: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    f = Path(root) / name
                    if f.suffix.lower() in NOT_DICOM_EXTENSIONS:
                        ignored.append(f)
                    else:
                        out.append(f)
        elif p.is_file():
            out.append(p)                 # named explicitly: always read
        else:
            rejected.append(Rejected(p, NOT_FOUND, "no such file or folder"))
    seen, uniq = set(), []
    for f in out:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            uniq.append(f)
    return uniq


def walk_files(paths: Iterable[Path], rejected: list[Rejected] | None = None,
               ignored: list[Path] | None = None) -> list[Path]:
    """Every candidate DICOM file under ``paths`` (what :func:`scan` reads)."""
    return _walk(paths, [] if rejected is None else rejected, [] if ignored is None else ignored)


def _read_all(files: list[Path], workers: int | None,
              progress: Callable[[int, int], None] | None) -> list[FileHeader | Rejected]:
    n = len(files)
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or n < PARALLEL_FROM:
        out = []
        for i, f in enumerate(files, 1):
            out.append(read_header(f))
            if progress and (i % 32 == 0 or i == n):
                progress(i, n)
        return out
    chunk = max(8, min(256, n // (workers * 8) or 1))
    out = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, h in enumerate(pool.map(read_header, files, chunksize=chunk), 1):
            out.append(h)
            if progress and (i % chunk == 0 or i == n):
                progress(i, n)
    return out


# ----------------------------------------------------------------------------- grouping


def _reject_all(headers: list[FileHeader], reason: str, detail: str) -> list[Rejected]:
    return [Rejected(h.path, reason, detail) for h in headers]


def _build_series(headers: list[FileHeader]) -> tuple[Series | None, list[Rejected]]:
    """Order, check and describe one series' files; reject what does not fit."""
    rejected: list[Rejected] = []
    slices = [(h, fr) for h in headers for fr in h.frames]
    h0, f0 = slices[0]
    iop0 = np.asarray(f0.orientation)
    ps0 = np.asarray(f0.pixel_spacing)
    for h, fr in slices:
        if h.rows != h0.rows or h.cols != h0.cols:
            return None, _reject_all(headers, INCONSISTENT_GEOMETRY,
                                     "the series mixes images of different sizes")
        if np.max(np.abs(np.asarray(fr.orientation) - iop0)) > geo.ORIENTATION_TOL:
            return None, _reject_all(headers, INCONSISTENT_GEOMETRY,
                                     "the series mixes slice orientations")
        if np.max(np.abs(np.asarray(fr.pixel_spacing) - ps0)) > SPACING_TOL * ps0.max():
            return None, _reject_all(headers, INCONSISTENT_GEOMETRY,
                                     "the series mixes pixel spacings")
    normal = geo.normal_of(iop0)
    d = np.array([float(np.dot(normal, fr.position)) for _, fr in slices])
    order = np.argsort(d, kind="stable")
    kept: list[int] = []
    bad_files: set[Path] = set()
    for i in order:
        if kept and abs(d[i] - d[kept[-1]]) < POSITION_TOL:
            h, other = slices[i][0], slices[kept[-1]][0]
            if h.path == other.path:        # one multi-frame file repeats positions
                return None, _reject_all(headers, DUPLICATE, "frames of this file repeat "
                                         "slice positions (multi-echo or temporal frames)")
            # keep the first path in sorted order, reject the other
            first, second = sorted([h, other], key=lambda x: str(x.path))
            rejected.append(Rejected(second.path, DUPLICATE,
                                     f"a slice at the same position as {first.path}"))
            bad_files.add(second.path)
            if second is other:
                kept[-1] = i
            continue
        kept.append(i)
    if bad_files:
        keep_headers = [h for h in headers if h.path not in bad_files]
        kept = [i for i in kept if slices[i][0].path not in bad_files]
        headers = keep_headers
    if not kept:
        return None, rejected
    pos = d[kept]
    ipps = np.array([slices[i][1].position for i in kept])
    if geo.uneven_gaps(pos):
        return None, rejected + _reject_all(
            headers, INCONSISTENT_GEOMETRY,
            f"uneven gaps between the {len(kept)} slices (a missing slice?)")
    if geo.sheared(ipps, normal):
        return None, rejected + _reject_all(
            headers, INCONSISTENT_GEOMETRY,
            "slice positions are not stacked along the slice normal (tilted or sheared stack)")
    if len(kept) > 1:
        slice_sp = float((pos[-1] - pos[0]) / (len(kept) - 1))
    else:
        slice_sp = float(h0.spacing_between_slices or h0.slice_thickness or 1.0)
    direction = np.vstack([iop0[:3], iop0[3:], normal])
    ordered = [(slices[i][0].path, slices[i][1]) for i in kept]
    files: list[Path] = []
    for p, _ in ordered:
        if not files or files[-1] != p:
            if p not in files:
                files.append(p)
    tags = h0.sequence_tags
    s = Series(
        series_uid=h0.series_uid, study_uid=h0.study_uid,
        sequence=classify_sequence(tags), orientation=geo.orientation_label(iop0),
        patient_position=h0.patient_position, description=h0.description,
        manufacturer=h0.manufacturer, field_strength=h0.field_strength,
        transfer_syntax=h0.transfer_syntax, files=files, frames=ordered,
        shape=(len(kept), h0.rows, h0.cols),
        spacing=(slice_sp, float(ps0[0]), float(ps0[1])),
        origin=tuple(float(x) for x in slices[kept[0]][1].position),
        direction=direction, multiframe=any(h.multiframe for h in headers),
        repetition_time=tags.repetition_time, echo_time=tags.echo_time,
        inversion_time=tags.inversion_time, frame_of_reference=h0.frame_of_reference)
    return s, rejected


def group(headers: Iterable[FileHeader]) -> tuple[list[Study], list[Rejected]]:
    """Studies of series from readable headers; duplicates and inconsistent series rejected."""
    rejected: list[Rejected] = []
    by_sop: dict[str, FileHeader] = {}
    series: dict[tuple[str, str], list[FileHeader]] = defaultdict(list)
    for h in sorted(headers, key=lambda x: str(x.path)):
        if h.sop_uid in by_sop:
            rejected.append(Rejected(h.path, DUPLICATE, "same SOPInstanceUID as "
                                     f"{by_sop[h.sop_uid].path}"))
            continue
        by_sop[h.sop_uid] = h
        series[(h.study_uid, h.series_uid)].append(h)
    studies: dict[str, Study] = {}
    for (study_uid, _), hs in sorted(series.items()):
        s, rej = _build_series(hs)
        rejected.extend(rej)
        if s is None:
            continue
        st = studies.setdefault(study_uid, Study(study_uid, hs[0].patient_id))
        st.series.append(s)
    for st in studies.values():
        st.series.sort(key=lambda s: (SEQUENCES.index(s.sequence) if s.sequence in SEQUENCES
                                      else 9, s.orientation != "sagittal", s.series_uid))
    return list(studies.values()), rejected


def scan(paths: Iterable[Path] | Path | str, workers: int | None = None,
         progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Read every file under ``paths`` (files or folders, any layout, any names) and group
    the usable ones into studies and series. Never raises on a bad file.

    ``workers``: header-reading processes (default: all cores; small inputs are read in
    this process). ``progress(done, total)`` is called as headers are read."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result = ScanResult()
    files = _walk(paths, result.rejected, result.ignored)
    result.files_read = len(files)
    headers: list[FileHeader] = []
    for h in _read_all(files, workers, progress):
        (result.rejected if isinstance(h, Rejected) else headers).append(h)
    result.studies, rej = group(headers)
    result.rejected.extend(rej)
    result.rejected.sort(key=lambda r: str(r.path))
    result.studies.sort(key=lambda s: (s.patient_id, s.study_uid))
    return result
