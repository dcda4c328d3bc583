"""Layout, labels, class counts, determinism and resumption of a written cohort."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import numpy as np
import pydicom
import pytest

from conftest import SMALL_SPEC, series_files
from spinemet.common.cohort.ground_truth import load_ground_truth
from spinemet.common.cohort.patient import SERIES_FOLDERS, synthesise_patient
from spinemet.common.cohort.spec import CLASS_NAMES, CohortSpec, plan_cohort
from spinemet.common.cohort.writer import CohortError, read_labels, write_cohort

COLUMNS = ["patient_id", "study_uid", "label", "label_name", "site"]


def _header(path):
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def test_labels_csv_has_exactly_the_documented_columns(small_cohort):
    assert _header(small_cohort.path / "labels.csv") == COLUMNS
    assert len(small_cohort.labels) == SMALL_SPEC.patients
    for row in small_cohort.labels:
        assert row["label_name"] == CLASS_NAMES[row["label"]]
        assert row["patient_id"] and row["study_uid"] and row["site"]
    assert len({r["patient_id"] for r in small_cohort.labels}) == SMALL_SPEC.patients


def test_per_site_labels_union_equals_global_labels(small_cohort):
    sites = sorted({r["site"] for r in small_cohort.labels})
    assert len(sites) == SMALL_SPEC.sites
    union = []
    for site in sites:
        path = small_cohort.path / site / "labels.csv"
        assert _header(path) == COLUMNS
        rows = read_labels(path)
        assert {r["site"] for r in rows} == {site}
        union += rows
    key = lambda r: r["patient_id"]  # noqa: E731
    assert sorted(union, key=key) == sorted(small_cohort.labels, key=key)


def test_written_class_counts_match_spec(small_cohort):
    counts = Counter(r["label"] for r in small_cohort.labels)
    assert tuple(counts[c] for c in range(3)) == SMALL_SPEC.class_counts()
    manifest = json.loads((small_cohort.path / "cohort.json").read_text())
    assert manifest["spec"] == SMALL_SPEC.to_dict()
    assert manifest["complete"] is True
    assert tuple(manifest["class_counts"]) == SMALL_SPEC.class_counts()


def test_paper_class_counts_for_941_patients():
    assert CohortSpec(patients=941).class_counts() == (305, 320, 316)


def test_plan_cohort_of_941_has_paper_class_counts():
    plans = plan_cohort(CohortSpec(patients=941, sites=5, seed=0))
    assert len(plans) == 941
    counts = Counter(p.label for p in plans)
    assert (counts[0], counts[1], counts[2]) == (305, 320, 316)
    assert len({p.patient_id for p in plans}) == 941
    assert {p.site for p in plans} == {f"hospital-{c}" for c in "abcde"}


def test_plan_cohort_is_deterministic_for_a_seed():
    a = plan_cohort(CohortSpec(patients=200, sites=4, seed=3))
    b = plan_cohort(CohortSpec(patients=200, sites=4, seed=3))
    assert a == b


def test_plan_cohort_differs_for_another_seed():
    a = plan_cohort(CohortSpec(patients=200, sites=4, seed=3))
    b = plan_cohort(CohortSpec(patients=200, sites=4, seed=4))
    assert [(p.label, p.site) for p in a] != [(p.label, p.site) for p in b]


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError):
        CohortSpec(patients=2)
    with pytest.raises(ValueError):
        CohortSpec(patients=10, sites=0)
    with pytest.raises(ValueError):
        CohortSpec(patients=10, difficulty=1.5)


@pytest.fixture(scope="module")
def regenerated(small_cohort, tmp_path_factory):
    """Patients 0 and 5 of the small cohort synthesised again, alone, into another folder."""
    out = tmp_path_factory.mktemp("regenerated")
    plans = [plan_cohort(SMALL_SPEC)[i] for i in (0, 5)]
    records = [synthesise_patient(SMALL_SPEC, p, out) for p in plans]
    return out, plans, records


def _pairs(small_cohort, out, plan):
    for folder in SERIES_FOLDERS.values():
        ours = series_files(out / plan.site / plan.patient_id / folder)
        theirs = series_files(small_cohort.path / plan.site / plan.patient_id / folder)
        assert [p.name for p in ours] == [p.name for p in theirs] and ours
        for a, b in zip(ours, theirs):
            yield pydicom.dcmread(a), pydicom.dcmread(b)


def test_regenerated_patient_has_byte_identical_pixels(small_cohort, regenerated):
    """A patient synthesised alone (from its plan) has the cohort copy's pixel bytes
    (encapsulated and decoded) and ground truth."""
    out, plans, _ = regenerated
    for plan in plans:
        for da, db in _pairs(small_cohort, out, plan):
            assert da.PixelData == db.PixelData
            np.testing.assert_array_equal(da.pixel_array, db.pixel_array)
        ga = load_ground_truth(out / "ground_truth" / f"{plan.patient_id}.npz")
        gb = small_cohort.gt(plan.patient_id)
        np.testing.assert_array_equal(ga.tissue, gb.tissue)
        np.testing.assert_array_equal(ga.lesions, gb.lesions)


def test_regenerated_patient_has_identical_uids(small_cohort, regenerated):
    """Study/series/SOP/frame-of-reference UIDs are derived from the cohort seed and the
    patient, so a regenerated patient carries the same UIDs (and labels.csv stays valid)."""
    out, plans, records = regenerated
    for plan, rec in zip(plans, records):
        row = next(r for r in small_cohort.labels if r["patient_id"] == plan.patient_id)
        diffs = []
        for da, db in _pairs(small_cohort, out, plan):
            for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                       "FrameOfReferenceUID"):
                if da[kw].value != db[kw].value:
                    diffs.append((kw, da[kw].value, db[kw].value))
        assert not diffs, f"{len(diffs)} UIDs differ, e.g. {diffs[:2]}"
        assert rec.study_uid == row["study_uid"]


def test_derived_uid_is_deterministic():
    from spinemet.common.cohort.dicom_writer import derived_uid
    assert derived_uid(7, "sm7-0001", "study") == derived_uid(7, "sm7-0001", "study")
    assert derived_uid(7, "sm7-0001", "study") != derived_uid(7, "sm7-0002", "study")


@pytest.fixture()
def cohort_copy(small_cohort, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(small_cohort.path, dst)
    return dst


def test_resumed_write_keeps_existing_patients(cohort_copy):
    first_t1 = sorted(cohort_copy.glob("hospital-*/sm7-*/t1_sag/0001.dcm"))[0]
    mtime = first_t1.stat().st_mtime_ns
    summary = write_cohort(SMALL_SPEC, cohort_copy, workers=1)
    assert summary.written == 0
    assert summary.skipped == SMALL_SPEC.patients
    assert not summary.failed
    assert first_t1.stat().st_mtime_ns == mtime
    assert len(read_labels(cohort_copy / "labels.csv")) == SMALL_SPEC.patients


def test_resumed_write_keeps_labels_consistent_with_dicom(cohort_copy):
    """After a resume, labels.csv's study_uid must still equal the stored DICOM's
    StudyInstanceUID (the writer re-derives the UIDs of kept patients)."""
    before = (cohort_copy / "labels.csv").read_bytes()
    write_cohort(SMALL_SPEC, cohort_copy, workers=1)
    rows = read_labels(cohort_copy / "labels.csv")
    wrong = []
    for r in rows:
        f = cohort_copy / r["site"] / r["patient_id"] / "t1_sag" / "0001.dcm"
        uid = pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
        if uid != r["study_uid"]:
            wrong.append(r["patient_id"])
    assert not wrong, f"{len(wrong)}/{len(rows)} study_uids in labels.csv no longer match"
    assert (cohort_copy / "labels.csv").read_bytes() == before


def test_resume_regenerates_a_missing_patient(tmp_path):
    spec = CohortSpec(patients=4, sites=2, seed=5)
    write_cohort(spec, tmp_path / "c", workers=1)
    first = (tmp_path / "c" / "labels.csv").read_bytes()
    plan = plan_cohort(spec)[1]
    (tmp_path / "c" / "ground_truth" / f"{plan.patient_id}.npz").unlink()
    summary = write_cohort(spec, tmp_path / "c", workers=1)
    assert (summary.written, summary.skipped) == (1, 3)
    assert (tmp_path / "c" / "labels.csv").read_bytes() == first


def test_existing_cohort_with_another_spec_is_refused(small_cohort):
    other = CohortSpec(patients=SMALL_SPEC.patients, sites=SMALL_SPEC.sites,
                       seed=SMALL_SPEC.seed + 1)
    before = sorted(p.name for p in small_cohort.path.iterdir())
    with pytest.raises(CohortError):
        write_cohort(other, small_cohort.path, workers=1)
    assert sorted(p.name for p in small_cohort.path.iterdir()) == before
    manifest = json.loads((small_cohort.path / "cohort.json").read_text())
    assert manifest["spec"] == SMALL_SPEC.to_dict()


def test_non_empty_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "stray.txt").write_text("not a cohort")
    with pytest.raises(CohortError):
        write_cohort(CohortSpec(patients=3, sites=1, seed=1), tmp_path, workers=1)
