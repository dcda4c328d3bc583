"""Preprocess a site's DICOM folder into the cache, in parallel, resuming what is done."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..parallel import one_thread_per_worker
from ..dicom.scan import Series, Study, group, walk_files
from ..dicom.header import Rejected, read_header
from .cache import (FileMemo, TensorCache, file_sha256, read_last_run, tree_signature,
                    write_last_run)
from .pipeline import SEQUENCES, Pipeline, StudyImage, default_pipeline
from .volume import LazyVolume

log = logging.getLogger(__name__)


@dataclass
class PreprocessSummary:
    studies: int = 0
    computed: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (study, reason)
    rejected_files: int = 0
    unlabelled: int = 0
    seconds: float = 0.0
    index: Path | None = None
    pipeline_hash: str = ""


def study_image(study: Study) -> StudyImage:
    """Load a study's sagittal T1, T2 and STIR series as canonical volumes."""
    volumes, frames = {}, {}
    for seq in SEQUENCES:
        series = study.series_for(seq)
        if series is None:
            continue
        # Decoded when first used: the sequences the spine is not located on are read only
        # in the slices the crop needs (ResampleAligned).
        volumes[seq] = LazyVolume(series.shape, series.affine, series.load)
        frames[seq] = series.frame_of_reference
    return StudyImage(study.study_uid, volumes, frames)


def used_series(study: Study) -> list[Series]:
    return [s for s in (study.series_for(q) for q in SEQUENCES) if s is not None]


def _header_and_hash(path: str):
    p = Path(path)
    header = read_header(p)
    sha = file_sha256(p) if not isinstance(header, Rejected) else ""
    return path, header, sha


def scan_with_memo(data: Path, memo: FileMemo, workers: int,
                   progress: Callable[[str, int, int], None] | None = None):
    """Headers of every file under ``data``, reading only files new or changed since the
    memo was written. Returns (studies, rejected, sha by path)."""
    rejected: list[Rejected] = []
    files = walk_files([data], rejected)
    headers, shas, todo = [], {}, []
    for f in files:
        st = f.stat()
        hit = memo.get(f, st)
        if hit is None:
            todo.append(f)
        else:
            headers.append(hit[0])
            shas[str(f)] = hit[1]
    if todo:
        with ProcessPoolExecutor(max_workers=workers, initializer=one_thread_per_worker) as pool:
            for i, (path, header, sha) in enumerate(
                    pool.map(_header_and_hash, [str(f) for f in todo], chunksize=32)):
                memo.put(Path(path), Path(path).stat(), header, sha)
                headers.append(header)
                shas[path] = sha
                if progress:
                    progress("reading headers", i + 1, len(todo))
        memo.save()
    good = [h for h in headers if not isinstance(h, Rejected)]
    rejected += [h for h in headers if isinstance(h, Rejected)]
    studies, rej = group(good)
    return studies, rejected + rej, shas


def _run_one(pipeline: Pipeline, study: Study, cache: TensorCache, key: str) -> dict:
    img = pipeline(study_image(study))
    meta = {"study_uid": study.study_uid, "pipeline_hash": cache.pipeline_hash,
            "missing": [q for q in SEQUENCES if q not in img.volumes], "log": img.log}
    cache.save(key, img.image, meta)
    return meta


def _worker(args) -> tuple[str, str | None]:
    pipeline, study, cache, key = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        _run_one(pipeline, study, cache, key)
        return study.study_uid, None
    except Exception as exc:   # one bad study never stops the site's run
        # Name the study and the failure's kind, not file contents.
        return study.study_uid, f"{type(exc).__name__}: {exc}"


def preprocess(data: Path, cache_dir: Path, labels: list[dict] | None = None,
               pipeline: Pipeline | None = None, workers: int | None = None,
               progress: Callable[[str, int, int], None] | None = None) -> PreprocessSummary:
    """Preprocess every study under ``data`` into ``cache_dir``; write the index.

    ``labels`` (rows with patient_id, study_uid, label, label_name, site) attach labels to
    the index; studies without a row are indexed as unlabelled (label -1).
    """
    t0 = time.perf_counter()
    pipeline = pipeline or default_pipeline()
    workers = max(1, workers or os.cpu_count() or 1)
    cache = TensorCache(Path(cache_dir), pipeline.hash(), pipeline.params())
    signature = tree_signature(Path(data), labels)
    last = read_last_run(cache, Path(data), signature)
    if last is not None:   # nothing changed since the last run: its index stands
        summary = PreprocessSummary(studies=last["studies_found"],
                                    rejected_files=last["rejected_files"],
                                    cached=len(last["studies"]),
                                    unlabelled=sum(e["label"] < 0 for e in last["studies"]),
                                    pipeline_hash=pipeline.hash(),
                                    failed=[tuple(f) for f in last["failed"]])
        summary.index = cache.root / "index.json"
        if progress:
            progress("preprocessing", summary.cached, summary.cached)
        summary.seconds = time.perf_counter() - t0
        return summary
    memo = FileMemo.load(Path(cache_dir))
    studies, rejected, shas = scan_with_memo(Path(data), memo, workers, progress)
    by_uid = {r["study_uid"]: r for r in labels or [] if r.get("study_uid")}
    by_pid = {r["patient_id"]: r for r in labels or []}
    summary = PreprocessSummary(studies=len(studies), rejected_files=len(rejected),
                                pipeline_hash=pipeline.hash())
    entries, todo = [], []
    for st in studies:
        series = used_series(st)
        if not series:
            summary.failed.append((st.study_uid, "no sagittal T1, T2 or STIR series"))
            continue
        key = cache.key([shas[str(f)] for s in series for f in s.files])
        row = by_uid.get(st.study_uid) or by_pid.get(st.patient_id)
        if row is None:
            summary.unlabelled += 1
        entries.append({"study_uid": st.study_uid, "patient_id": st.patient_id,
                        "label": int(row["label"]) if row else -1,
                        "site": (row or {}).get("site", ""), "key": key,
                        "missing": st.missing()})
        if cache.has(key):
            summary.cached += 1
        else:
            todo.append((pipeline, st, cache, key))
    done = summary.cached
    if progress:
        progress("preprocessing", done, len(entries))
    failed = set()
    if todo:
        with ProcessPoolExecutor(max_workers=workers, initializer=one_thread_per_worker) as pool:
            futures = [pool.submit(_worker, t) for t in todo]
            for fut in as_completed(futures):
                uid, err = fut.result()
                if err is None:
                    summary.computed += 1
                else:
                    log.error("study %s failed: %s", uid, err)
                    summary.failed.append((uid, err))
                    failed.add(uid)
                done += 1
                if progress:
                    progress("preprocessing", done, len(entries))
    entries = [e for e in entries if e["study_uid"] not in failed]
    summary.index = cache.write_index(entries)
    write_last_run(cache, Path(data), signature,
                   {"studies_found": summary.studies, "rejected_files": summary.rejected_files,
                    "failed": summary.failed})
    summary.seconds = time.perf_counter() - t0
    return summary
