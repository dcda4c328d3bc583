"""Write a whole cohort: patients in parallel, labels per site and overall, a manifest.

Layout::

    DIR/cohort.json                     settings, version, sites, class counts
    DIR/labels.csv                      patient_id, study_uid, label, label_name, site
    DIR/<site>/labels.csv               the same, one site
    DIR/<site>/<patient_id>/<series>/<instance>.dcm
    DIR/ground_truth/<patient_id>.npz   masks, lesion tables, bias fields, scanner profile

A run that stops half-way resumes: finished patients are kept and skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__
from ..parallel import one_thread_per_worker
from .dicom_writer import derived_uid
from .patient import PatientRecord, is_complete, synthesise_patient
from .scanners import profile_for_site, site_name
from .spec import CLASS_NAMES, CohortSpec, PatientPlan, plan_cohort

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("patient_id", "study_uid", "label", "label_name", "site")


class CohortError(RuntimeError):
    """The cohort cannot be written as asked (message says what to do)."""


@dataclass
class CohortSummary:
    out: Path
    spec: CohortSpec
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0


def _worker(args: tuple[CohortSpec, PatientPlan, str]) -> PatientRecord:
    # Each worker process renders one patient at a time on one core.
    spec, plan, out = args
    return synthesise_patient(spec, plan, Path(out))


def _check_manifest(out: Path, spec: CohortSpec, overwrite: bool) -> None:
    manifest = out / "cohort.json"
    if not manifest.exists():
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise CohortError(f"{out} exists, is not empty and holds no cohort.json: choose an "
                              "empty or new --out folder")
        return
    try:
        old = json.loads(manifest.read_text())["spec"]
    except (ValueError, KeyError) as exc:
        raise CohortError(f"{manifest} is unreadable ({exc}); remove it or choose another --out")
    if old != spec.to_dict() and not overwrite:
        raise CohortError(f"{out} holds a cohort made with {old}, not {spec.to_dict()}: choose "
                          "another --out, or pass --overwrite to replace it")


def _write_manifest(out: Path, spec: CohortSpec, plans: list[PatientPlan], done: bool) -> None:
    sites = {}
    for p in plans:
        s = sites.setdefault(p.site, {"patients": 0, "classes": [0, 0, 0]})
        s["patients"] += 1
        s["classes"][p.label] += 1
    for i in range(spec.sites):
        prof = profile_for_site(i)
        if site_name(i) in sites:
            sites[site_name(i)]["scanner"] = (f"{prof.manufacturer} {prof.model} "
                                              f"{prof.field_strength:g}T")
    manifest = {"spec": spec.to_dict(), "spinemet_version": __version__, "complete": done,
                "class_names": list(CLASS_NAMES), "class_counts": list(spec.class_counts()),
                "sites": sites}
    tmp = out / "cohort.json.partial"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "cohort.json")


def write_labels(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(sorted(records, key=lambda r: r["patient_id"]))
    os.replace(tmp, path)


def _existing_record(spec: CohortSpec, plan: PatientPlan) -> dict:
    """The labels row of a patient an earlier run finished (its UIDs are derived, not read)."""
    return {"patient_id": plan.patient_id, "label": plan.label, "label_name": plan.label_name,
            "site": plan.site, "study_uid": str(derived_uid(spec.seed, plan.patient_id, "study"))}


def write_cohort(spec: CohortSpec, out: Path, workers: int | None = None,
                 overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> CohortSummary:
    """Synthesise the cohort ``spec`` into ``out``; ``progress(done, total)`` after each patient.

    Failures of single patients are logged and reported in the summary; they do not stop
    the others.
    """
    out = Path(out)
    _check_manifest(out, spec, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(spec)
    _write_manifest(out, spec, plans, done=False)
    summary = CohortSummary(out, spec)
    todo = [p for p in plans if overwrite or not is_complete(out, p)]
    records: dict[str, dict] = {p.patient_id: _existing_record(spec, p)
                                for p in plans if p not in todo}
    summary.skipped = len(records)
    workers = max(1, workers or os.cpu_count() or 1)
    t0 = time.perf_counter()
    done = summary.skipped
    if progress:
        progress(done, len(plans))
    with ProcessPoolExecutor(max_workers=workers, initializer=one_thread_per_worker) as pool:
        futures = {pool.submit(_worker, (spec, p, str(out))): p for p in todo}
        for fut in as_completed(futures):
            plan = futures[fut]
            try:
                rec = fut.result()
                records[plan.patient_id] = asdict(rec)
                summary.written += 1
                summary.bytes += rec.bytes
            except Exception as exc:  # one patient never stops the cohort
                log.error("patient %s failed: %s", plan.patient_id, exc)
                summary.failed.append((plan.patient_id, f"{type(exc).__name__}: {exc}"))
            done += 1
            if progress:
                progress(done, len(plans))
    summary.seconds = time.perf_counter() - t0
    rows = list(records.values())
    write_labels(out / "labels.csv", rows)
    for site in sorted({p.site for p in plans}):
        write_labels(out / site / "labels.csv", [r for r in rows if r["site"] == site])
    _write_manifest(out, spec, plans, done=not summary.failed)
    return summary


def read_labels(path: Path) -> list[dict]:
    """Rows of a labels.csv with ``label`` as int."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = int(r["label"])
    return rows
