"""Synthesise one patient: anatomy, findings, three sagittal series, DICOM and ground truth."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .acquisition import TissueModel, render_series, texture_field
from .anatomy import build_centre_line, rasterize, sample_anatomy, spine_maps
from .dicom_writer import StudyInfo, derived_uid, write_series
from .findings import Difficulty, paint_findings, plan_findings
from .grid import Grid
from .ground_truth import GroundTruth, save_ground_truth
from .scanners import profile_for_site
from .spec import CohortSpec, PatientPlan, patient_seed
from .tissues import SEQUENCES, Tissue

SERIES_FOLDERS = {"T1": "t1_sag", "T2": "t2_sag", "STIR": "stir_sag"}


class PatientError(RuntimeError):
    """A patient could not be generated."""


@dataclass
class PatientRecord:
    patient_id: str
    study_uid: str
    label: int
    label_name: str
    site: str
    bytes: int


def ground_truth_path(out: Path, patient_id: str) -> Path:
    return out / "ground_truth" / f"{patient_id}.npz"


def patient_dir(out: Path, plan: PatientPlan) -> Path:
    return out / plan.site / plan.patient_id


def is_complete(out: Path, plan: PatientPlan) -> bool:
    return ground_truth_path(out, plan.patient_id).exists() and patient_dir(out, plan).is_dir()


def _study_info(spec: CohortSpec, plan: PatientPlan, rng: np.random.Generator, age: float,
                sex: str) -> StudyInfo:
    day = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 7 * 365)))
    birth = day - dt.timedelta(days=int(age * 365.25) + int(rng.integers(0, 365)))
    return StudyInfo(
        patient_id=plan.patient_id,
        patient_name=f"SYNTHETIC^{plan.patient_id.upper()}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age_years=int(age),
        weight_kg=float(np.clip(rng.normal(74 if sex == "M" else 64, 12), 40, 140)),
        study_uid=str(derived_uid(spec.seed, plan.patient_id, "study")),
        study_date=day.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        accession=f"ACC{spec.seed:03d}{plan.index + 1:06d}",
        frame_of_reference_uid=str(derived_uid(spec.seed, plan.patient_id, "frame")),
        station=f"MR{plan.site_index + 1:02d}",
    )


def _draw(spec: CohortSpec, plan: PatientPlan, attempt: int):
    rng = np.random.default_rng(patient_seed(spec.seed, plan.index, attempt))
    profile = profile_for_site(plan.site_index)
    age = float(np.clip(rng.normal(62.0, 12.0), 25.0, 90.0))
    sex = "M" if rng.random() < 0.5 else "F"
    anatomy = sample_anatomy(rng, age)
    findings = plan_findings(rng, plan.label, anatomy, Difficulty(spec.difficulty))
    build_centre_line(anatomy, rng)
    # The FOV is centred on the L3-L4 disc (with the technologist's positioning error) and
    # places the spine a little behind the middle of the image.
    disc = next(d for d in anatomy.discs if d.upper == "L3")
    y, z = anatomy.point((disc.s_top + disc.s_bottom) / 2.0)
    fov = profile.fov_mm
    centre = (anatomy.lateral_offset + rng.normal(0.0, 2.0),
              y - 0.08 * fov + rng.normal(0.0, 6.0), z + rng.normal(0.0, 8.0))
    grid = Grid.centred(profile.slices, profile.protocol("T1").matrix, fov,
                        profile.slice_spacing, centre)
    maps = spine_maps(anatomy, grid)
    tissue = rasterize(anatomy, grid, maps)
    painted = paint_findings(tissue.labels, tissue.vertebra, tissue.canal, anatomy, maps, grid,
                             findings)
    return rng, profile, age, sex, anatomy, grid, tissue, painted


def synthesise_patient(spec: CohortSpec, plan: PatientPlan, out: Path) -> PatientRecord:
    """Write one patient's DICOM series and ground truth under ``out``; return its record.

    Files go to a hidden folder first and are renamed into place, so an interrupted run never
    leaves a half-written patient that looks complete.
    """
    for attempt in range(5):
        rng, profile, age, sex, anatomy, grid, tissue, painted = _draw(spec, plan, attempt)
        # Every metastasis must be visible; a rare draw puts one outside the slab: redraw.
        if all(e["voxels_painted"] > 0 for e in painted.lesion_table):
            break
    else:  # pragma: no cover - never seen
        raise PatientError(f"{plan.patient_id}: could not place its lesions in the field of view")
    study = _study_info(spec, plan, rng, age, sex)
    final = patient_dir(out, plan)
    partial = final.parent / f".{plan.patient_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    # The posterior coil lies under the skin of the back, at the mid-sagittal slice.
    mid = tissue.labels[tissue.labels.shape[0] // 2]
    body_cols = np.flatnonzero((mid != Tissue.AIR).any(axis=0))
    coil_y = float(grid.y_of_columns()[body_cols[-1]] + 5.0) if body_cols.size else 0.0
    spine_z = anatomy.point(anatomy.vertebra("L3").s)[1]
    texture = texture_field(tissue.labels.shape, rng)
    model = TissueModel.build(tissue.labels, painted.mix, texture, anatomy.bowel_fluid)
    series, total = {}, 0
    for number, seq in enumerate(SEQUENCES, start=1):
        protocol = profile.protocol(seq)
        rendered = render_series(model, grid, anatomy.marrow_fat, profile, protocol, coil_y,
                                 spine_z, rng, anatomy.fluid_signal, anatomy.disc_hydration)
        uid, nbytes = write_series(partial / SERIES_FOLDERS[seq], rendered.stored, rendered.grid,
                                   study, profile, protocol, number, spec.seed)
        total += nbytes
        series[seq] = {"series_uid": uid, "folder": SERIES_FOLDERS[seq],
                       "grid": rendered.grid.to_dict(), "ghost": rendered.ghost,
                       "noise_sigma": rendered.noise_sigma, "gain": rendered.gain,
                       "bias": rendered.bias}
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    gt = GroundTruth.build(plan, study.study_uid, grid, tissue, painted, anatomy, profile,
                           series, age, sex)
    save_ground_truth(ground_truth_path(out, plan.patient_id), gt)
    return PatientRecord(plan.patient_id, study.study_uid, plan.label, plan.label_name,
                         plan.site, total)

