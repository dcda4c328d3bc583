"""A site's readiness before training: what ``spinemet validate`` reports.

A study is *trainable* when a labels row names it with a known label (0 normal, 1 mild,
2 apparent) and it has a sagittal T1, T2 and STIR series. Label rows are matched to studies
by ``study_uid``; a row without one is matched by ``patient_id`` when that patient has exactly
one study.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .scan import ScanResult, Study
from .sequence import SEQUENCES

LABEL_NAMES = {0: "normal", 1: "mild", 2: "apparent"}
LABEL_COLUMNS = ("patient_id", "study_uid", "label", "label_name", "site")


@dataclass
class SiteReport:
    data: str
    labels_file: str | None
    studies_found: int = 0
    series_found: int = 0
    labelled: int = 0
    unlabelled: list[str] = field(default_factory=list)          # study UIDs
    trainable: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)   # trainable studies
    site_counts: dict[str, int] = field(default_factory=dict)    # trainable studies
    missing_sequences: dict[str, list[str]] = field(default_factory=dict)  # study -> seqs
    labels_without_study: list[dict] = field(default_factory=list)  # {row, study_uid, ...}
    unknown_labels: list[dict] = field(default_factory=list)       # {row, label}
    duplicate_patients: list[dict] = field(default_factory=list)   # {patient_id, why}
    rejected: list[dict] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.trainable > 0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d


def read_label_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a labels CSV (row numbers counted from 2, the first data line) and problems
    with the file itself."""
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("patient_id", "label") if c not in cols]
        if missing:
            return [], [f"{path}: missing column(s) {', '.join(missing)} (expected "
                        f"{', '.join(LABEL_COLUMNS)})"]
        rows = []
        for i, r in enumerate(reader, 2):
            r = {(k or "").strip(): (v or "").strip() for k, v in r.items()}
            r["_row"] = i
            rows.append(r)
    return rows, []


def _label(value: str) -> int | None:
    try:
        v = int(value)
    except ValueError:
        return None
    return v if v in LABEL_NAMES else None


def validate_site(result: ScanResult, data: Path, labels: Path | None) -> SiteReport:
    rep = SiteReport(data=str(data), labels_file=str(labels) if labels else None)
    rep.studies_found = len(result.studies)
    rep.series_found = len(result.series)
    rep.rejected = [r.to_dict() for r in result.rejected]
    rep.rejected_by_reason = result.rejected_by_reason()
    rows: list[dict] = []
    if labels is None or not Path(labels).is_file():
        rep.errors.append(f"labels file {labels} not found: every study is unlabelled "
                          "(pass --labels CSV)")
    else:
        rows, errs = read_label_rows(Path(labels))
        rep.errors.extend(errs)
    by_uid = {s.study_uid: s for s in result.studies}
    by_patient: dict[str, list[Study]] = defaultdict(list)
    for s in result.studies:
        by_patient[s.patient_id].append(s)
    for pid, sts in sorted(by_patient.items()):
        if pid and len(sts) > 1:
            rep.duplicate_patients.append({"patient_id": pid, "why": f"{len(sts)} studies "
                                           "found for this patient"})
    seen_pid = Counter(r.get("patient_id", "") for r in rows if r.get("patient_id"))
    for pid, n in sorted(seen_pid.items()):
        if n > 1:
            rep.duplicate_patients.append({"patient_id": pid, "why": f"{n} rows in the "
                                           "labels file"})
    matched: dict[str, dict] = {}
    for r in rows:
        uid = r.get("study_uid", "")
        st = by_uid.get(uid) if uid else None
        if st is None and not uid:
            cands = by_patient.get(r.get("patient_id", ""), [])
            st = cands[0] if len(cands) == 1 else None
        if st is None:
            rep.labels_without_study.append({"row": r["_row"], "patient_id": r.get(
                "patient_id", ""), "study_uid": uid})
            continue
        if _label(r.get("label", "")) is None:
            rep.unknown_labels.append({"row": r["_row"], "label": r.get("label", "")})
        matched.setdefault(st.study_uid, r)
    classes: Counter = Counter()
    sites: Counter = Counter()
    for st in result.studies:
        miss = st.missing()
        if miss:
            rep.missing_sequences[st.study_uid] = miss
        r = matched.get(st.study_uid)
        if r is None:
            rep.unlabelled.append(st.study_uid)
            continue
        lab = _label(r.get("label", ""))
        if lab is None:
            continue
        rep.labelled += 1
        if not miss:
            rep.trainable += 1
            classes[LABEL_NAMES[lab]] += 1
            sites[r.get("site", "") or "(no site)"] += 1
    rep.class_counts = {n: classes.get(n, 0) for n in LABEL_NAMES.values()}
    rep.site_counts = dict(sorted(sites.items()))
    return rep


__all__ = ["SiteReport", "validate_site", "read_label_rows", "LABEL_NAMES", "SEQUENCES"]
