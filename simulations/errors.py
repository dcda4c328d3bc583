"""Which patients a model gets wrong, read against the synthetic cohort's ground truth.

Only for cohorts written by ``spinemet cohort`` (``DATA/ground_truth/<patient>.npz``): a
real site has no such truth. The question it answers: do the errors look like a
radiologist's (a mild case with one small or faint lesion called normal; a normal case
with a benign mimic called mild; a subtle apparent case called mild), or are they
scattered at random?
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..common.models import CLASS_NAMES


def _meta(truth: Path, patient_id: str) -> dict | None:
    path = truth / f"{patient_id}.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return json.loads(str(z["meta"]))


def describe_patient(meta: dict) -> dict:
    mets = [f for f in meta.get("lesions", []) if f.get("kind") == "metastasis"]
    return {
        "lesions": len(mets),
        "largest_mm": round(max((2 * max(f["radii"]) for f in mets), default=0.0), 1),
        "faintest_contrast": round(min((f["contrast"] for f in mets), default=1.0), 2),
        "locations": sorted({f["location"] for f in mets}),
        "mimics": sorted({f["kind"] for f in meta.get("mimics", [])}),
        "collapse": bool(meta.get("collapse")),
    }


def error_analysis(cohort: Path, patient_ids: list[str], y_true, y_pred) -> dict | None:
    """Summary of the errors and of the correct calls they should be compared with;
    None when the data folder has no ground truth."""
    truth = Path(cohort) / "ground_truth"
    if not truth.is_dir():
        return None
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    info = {}
    for pid in patient_ids:
        meta = _meta(truth, pid)
        if meta is not None:
            info[pid] = describe_patient(meta)
    if not info:
        return None
    out: dict = {"errors": [], "groups": {}}
    for pid, t, p in zip(patient_ids, y_true, y_pred):
        if t != p and pid in info:
            out["errors"].append({"patient_id": pid, "true": CLASS_NAMES[t],
                                  "predicted": CLASS_NAMES[p], **info[pid]})
    for t, name in enumerate(CLASS_NAMES):
        sel = [(pid, p) for pid, tt, p in zip(patient_ids, y_true, y_pred)
               if tt == t and pid in info]
        right = [info[pid] for pid, p in sel if p == t]
        wrong = [info[pid] for pid, p in sel if p != t]
        out["groups"][name] = {
            "n": len(sel), "wrong": len(wrong),
            "with_mimic_right": sum(bool(i["mimics"]) for i in right),
            "with_mimic_wrong": sum(bool(i["mimics"]) for i in wrong),
            "median_largest_mm_right": float(np.median([i["largest_mm"] for i in right]))
            if right and t else None,
            "median_largest_mm_wrong": float(np.median([i["largest_mm"] for i in wrong]))
            if wrong and t else None,
            "median_lesions_right": float(np.median([i["lesions"] for i in right]))
            if right and t else None,
            "median_lesions_wrong": float(np.median([i["lesions"] for i in wrong]))
            if wrong and t else None,
        }
    return out


def errors_markdown(analysis: dict) -> str:
    g = analysis["groups"]
    lines = ["| true class | test patients | wrong | with a mimic: right / wrong | "
             "lesions (median): right / wrong | largest lesion mm (median): right / wrong |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:g}"   # noqa: E731
    for name in CLASS_NAMES:
        x = g[name]
        right = x["n"] - x["wrong"]
        lines.append(
            f"| {name} | {x['n']} | {x['wrong']} | {x['with_mimic_right']}/{right} / "
            f"{x['with_mimic_wrong']}/{x['wrong']} | {fmt(x['median_lesions_right'])} / "
            f"{fmt(x['median_lesions_wrong'])} | {fmt(x['median_largest_mm_right'])} / "
            f"{fmt(x['median_largest_mm_wrong'])} |")
    lines += ["", "| patient | true | predicted | metastases | largest mm | faintest contrast | "
              "where | mimics |", "|---|---|---|---|---|---|---|---|"]
    for e in analysis["errors"]:
        lines.append(f"| {e['patient_id']} | {e['true']} | {e['predicted']} | {e['lesions']} | "
                     f"{e['largest_mm']} | {e['faintest_contrast']} | "
                     f"{', '.join(e['locations']) or '-'} | {', '.join(e['mimics']) or '-'} |")
    return "\n".join(lines)
