"""``spinemet inspect`` and ``spinemet validate``: broken files are rejected with the right
reason and never stop the walk; exit codes; JSON output; no patient data in the output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from typer.testing import CliRunner

from spinemet.common.cli import app
from spinemet.common.dicom import scan

SECRET_NAME = "Zyxwvut^Secretname"
SECRET_DESC = "QWERTY-private-description"


def _run(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def _with_syntax(src: Path, dst: Path, uid: str) -> None:
    """``src`` re-labelled with another transfer syntax UID (pixel data untouched)."""
    ds = pydicom.dcmread(src)
    meta = ds.file_meta
    meta.TransferSyntaxUID = uid
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    dst.write_bytes(head.getvalue() + body.getvalue())


@pytest.fixture
def good(tmp_path) -> Path:
    """MR_small with a recognisable patient name and description, as file 'good'."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName, ds.SeriesDescription = SECRET_NAME, SECRET_DESC
    ds.save_as(tmp_path / "good")
    return tmp_path / "good"


def _broken(folder: Path, kind: str) -> Path:
    jls = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    p = folder / f"broken_{kind}"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        p.write_text("patient list\nnot an image\n")
    elif kind == "truncated":
        data = jls.read_bytes()
        p.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "jpegxl":
        _with_syntax(jls, p, "1.2.840.10008.1.2.4.110")
    elif kind == "mpeg2":
        _with_syntax(jls, p, "1.2.840.10008.1.2.4.100")
    elif kind == "not_mr":
        shutil.copyfile(get_testdata_file("CT_small.dcm"), p)
    elif kind == "no_pixels":
        shutil.copyfile(get_testdata_file("rtplan.dcm"), p)
    return p


CASES = [("empty", "empty file"), ("random", "not DICOM"), ("text", "not DICOM"),
         ("truncated", "truncated pixel data"), ("jpegxl", "unsupported transfer syntax"),
         ("mpeg2", "unsupported transfer syntax"), ("not_mr", "not MR"),
         ("no_pixels", "no pixel data")]


@pytest.mark.parametrize("kind,reason", CASES)
def test_broken_file_rejected_with_reason_and_walk_continues(tmp_path, good, kind, reason):
    bad = _broken(tmp_path, kind)
    res = scan([tmp_path])
    assert [(r.path, r.reason) for r in res.rejected] == [(bad, reason)]
    assert [s.files for s in res.series] == [[good]]


def test_duplicate_copy_rejected_naming_the_original(tmp_path, good):
    shutil.copyfile(good, tmp_path / "zz_copy")
    res = scan([tmp_path])
    (r,) = res.rejected
    assert (r.path.name, r.reason) == ("zz_copy", "duplicate instance")
    assert str(good) in r.detail and len(res.series) == 1


def test_two_slices_at_one_position_are_duplicates(tmp_path, good):
    ds = pydicom.dcmread(good)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "other_uid_same_place")
    res = scan([tmp_path])
    assert [r.reason for r in res.rejected] == ["duplicate instance"]
    assert res.series[0].shape[0] == 1


def _stack(folder: Path, positions, iops=None) -> list[Path]:
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    out = []
    for i, z in enumerate(positions):
        ds = src.copy()
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(folder), str(i)])
        ds.ImagePositionPatient = [0, 0, z]
        if iops is not None:
            ds.ImageOrientationPatient = iops[i]
        ds.save_as(folder / f"s{i}")
        out.append(folder / f"s{i}")
    return out


def test_uneven_gaps_reject_the_series_as_inconsistent_geometry(tmp_path):
    _stack(tmp_path, [0, 5, 10, 20, 25])
    res = scan([tmp_path])
    assert not res.series
    assert {r.reason for r in res.rejected} == {"inconsistent geometry"}
    assert len(res.rejected) == 5


def test_mixed_orientations_reject_the_series_as_inconsistent_geometry(tmp_path):
    axial, coronal = [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1]
    _stack(tmp_path, [0, 5, 10], [axial, coronal, axial])
    res = scan([tmp_path])
    assert not res.series and {r.reason for r in res.rejected} == {"inconsistent geometry"}


def test_even_stack_given_in_any_name_order_is_one_ordered_series(tmp_path):
    files = _stack(tmp_path, [20, 0, 10, 30, 40])
    (s,) = scan([tmp_path]).series
    assert s.files == [files[i] for i in (1, 2, 0, 3, 4)]
    assert s.spacing[0] == pytest.approx(10.0) and s.shape == (5, 64, 64)


def test_files_with_non_dicom_extensions_are_ignored_not_rejected(tmp_path, good):
    (tmp_path / "labels.csv").write_text("patient_id,label\n")
    (tmp_path / ".partial").mkdir()
    shutil.copyfile(good, tmp_path / ".partial" / "hidden")
    res = scan([tmp_path])
    assert not res.rejected and [p.name for p in res.ignored] == ["labels.csv"]
    assert len(res.series) == 1


# ----------------------------------------------------------------------------- inspect


def test_inspect_exit_0_when_a_series_is_usable(tmp_path, good):
    for kind, _ in CASES:
        _broken(tmp_path, kind)
    r = _run("inspect", tmp_path)
    assert r.exit_code == 0, r.output
    assert "truncated pixel data" in r.output and "T2" in r.output


def test_inspect_exit_2_when_nothing_is_usable(tmp_path):
    for kind, _ in CASES:
        _broken(tmp_path, kind)
    assert _run("inspect", tmp_path).exit_code == 2
    assert _run("inspect", "--json", tmp_path).exit_code == 2


def test_inspect_json_parses_and_lists_series_and_reasons(tmp_path, good):
    for kind, _ in CASES:
        _broken(tmp_path, kind)
    r = _run("inspect", "--json", tmp_path)
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    (study,) = out["studies"]
    (series,) = study["series"]
    assert (series["sequence"], series["orientation"], series["slices"],
            series["shape"]) == ("T2", "axial", 1, [1, 64, 64])
    assert series["spacing"] == [0.8, 0.3125, 0.3125]
    assert sorted(x["reason"] for x in out["rejected"]) == sorted(r for _, r in CASES)
    assert all(x["path"].startswith(str(tmp_path)) for x in out["rejected"])


def test_inspect_output_never_shows_patient_name_or_description(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) - 3000])     # rejected, same name inside
    for args in (("inspect", tmp_path), ("inspect", "--json", tmp_path)):
        out = _run(*args).output
        assert "cut" in out
        for secret in (SECRET_NAME, "Zyxwvut", "Secretname", SECRET_DESC):
            assert secret not in out


def test_inspect_on_a_missing_path_reports_it(tmp_path):
    r = _run("inspect", "--json", tmp_path / "nope")
    assert r.exit_code == 2 and json.loads(r.stdout)["rejected"][0]["reason"] == "not found"


# ----------------------------------------------------------------------------- validate


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from spinemet.common.cohort.spec import CohortSpec
    from spinemet.common.cohort.writer import write_cohort

    out = tmp_path_factory.mktemp("validate_cohort") / "cohort"
    assert not write_cohort(CohortSpec(patients=6, sites=2, seed=3), out, workers=2).failed
    return out


def _labels(cohort: Path) -> list[dict]:
    with (cohort / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_labels(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["patient_id", "study_uid", "label", "label_name", "site"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_validate_cohort_is_ready_with_class_counts_of_labels(cohort):
    r = _run("validate", "--data", cohort, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    rows = _labels(cohort)
    names = {"0": "normal", "1": "mild", "2": "apparent"}
    expected = {n: sum(1 for x in rows if names[x["label"]] == n) for n in names.values()}
    assert (rep["studies_found"], rep["labelled"], rep["trainable"]) == (6, 6, 6)
    assert rep["class_counts"] == expected
    assert sum(rep["site_counts"].values()) == 6 and not rep["rejected"]
    assert not (rep["unlabelled"] or rep["missing_sequences"] or rep["unknown_labels"] or
                rep["labels_without_study"] or rep["duplicate_patients"])


def test_validate_human_report_exit_0(cohort):
    r = _run("validate", "--data", cohort)
    assert r.exit_code == 0 and "trainable studies" in r.output and "ready" in r.output


def test_validate_reports_label_problems(cohort, tmp_path):
    rows = _labels(cohort)
    rows[1]["label"] = "7"
    rows.append(dict(rows[0]))                                   # duplicate patient row
    rows.append({"patient_id": "ghost", "study_uid": "1.2.3.4", "label": "1",
                 "label_name": "mild", "site": "x"})
    csv_path = _write_labels(tmp_path / "labels.csv", rows[2:] + rows[:2])
    rep = json.loads(_run("validate", "--data", cohort, "--labels", csv_path, "--json").stdout)
    assert [x["label"] for x in rep["unknown_labels"]] == ["7"]
    assert [x["study_uid"] for x in rep["labels_without_study"]] == ["1.2.3.4"]
    assert [x["patient_id"] for x in rep["duplicate_patients"]] == [rows[0]["patient_id"]]
    assert rep["trainable"] == 5 and rep["labelled"] == 5


def test_validate_reports_unlabelled_and_missing_sequence(cohort, tmp_path):
    data = tmp_path / "site"
    shutil.copytree(cohort / _labels(cohort)[0]["site"], data)
    rows = [r for r in _labels(cohort) if (data / r["patient_id"]).is_dir()]
    shutil.rmtree(data / rows[0]["patient_id"] / "stir_sag")
    _write_labels(data / "labels.csv", rows[:-1])
    rep = json.loads(_run("validate", "--data", data, "--json").stdout)
    assert rep["missing_sequences"] == {rows[0]["study_uid"]: ["STIR"]}
    assert rep["unlabelled"] == [rows[-1]["study_uid"]]
    assert rep["trainable"] == len(rows) - 2


def test_validate_exit_1_when_no_trainable_study(tmp_path, good):
    _broken(tmp_path, "truncated")
    r = _run("validate", "--data", tmp_path, "--json")
    assert r.exit_code == 1
    rep = json.loads(r.stdout)
    assert rep["trainable"] == 0 and rep["rejected_by_reason"] == {"truncated pixel data": 1}
    assert _run("validate", "--data", tmp_path).exit_code == 1
