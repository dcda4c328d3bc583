"""The ``spinemet`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from spinemet.common.cohort.writer import read_labels

SPINEMET = [sys.executable, "-m", "spinemet.common.cli"]


def run(*args, timeout=300):
    return subprocess.run(SPINEMET + list(args), capture_output=True, text=True,
                          timeout=timeout)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "spinemet"
    assert script.exists()
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "cohort" in res.stdout


def test_help_exits_zero_and_lists_cohort():
    res = run("--help")
    assert res.returncode == 0, res.stderr
    assert "cohort" in res.stdout


def test_cohort_help_mentions_out_and_patients():
    res = run("cohort", "--help")
    assert res.returncode == 0, res.stderr
    assert "--out" in res.stdout and "--patients" in res.stdout


def test_cohort_with_two_patients_fails_with_message(tmp_path):
    res = run("cohort", "--out", str(tmp_path / "c"), "--patients", "2", "--sites", "1")
    assert res.returncode != 0
    assert "at least 3" in (res.stdout + res.stderr)
    assert not (tmp_path / "c" / "labels.csv").exists()


def test_cohort_command_writes_labels_and_previews(tmp_path):
    out = tmp_path / "tiny"
    res = run("cohort", "--out", str(out), "--patients", "6", "--sites", "2", "--seed", "3",
              "--workers", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = read_labels(out / "labels.csv")
    assert len(rows) == 6
    assert {r["site"] for r in rows} == {"hospital-a", "hospital-b"}
    assert sorted(r["label"] for r in rows) == [0, 0, 1, 1, 2, 2]
    pngs = sorted((out / "preview").glob("*.png"))
    assert len(pngs) == 9     # 3 classes x 3 sequences
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (out / "cohort.json").exists()
    assert len(list((out / "ground_truth").glob("*.npz"))) == 6


def test_cohort_command_refuses_folder_of_another_spec(tmp_path):
    out = tmp_path / "c"
    assert run("cohort", "--out", str(out), "--patients", "3", "--sites", "1", "--seed", "1",
               "--workers", "1", "--no-preview").returncode == 0
    res = run("cohort", "--out", str(out), "--patients", "3", "--sites", "1", "--seed", "2",
              "--workers", "1", "--no-preview")
    assert res.returncode == 2
    assert "--overwrite" in res.stdout + res.stderr


def test_flower_server_refuses_to_start_a_new_run_in_a_run_folder(tmp_path):
    """A second run in RUN would append to the first one's rounds.jsonl: refused, pointing
    at --resume, and nothing in RUN touched."""
    from typer.testing import CliRunner

    from spinemet.server.cli import app, existing_run

    run = tmp_path / "run"
    (run / "superlink").mkdir(parents=True)
    (run / "superlink" / "state.db").write_bytes(b"")
    assert existing_run(run) == ""          # a start that failed early: free to use
    (run / "status.json").write_text('{"state": "completed", "round": 3}')
    (run / "rounds.jsonl").write_text('{"round": 1}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["--out", str(run), "--insecure", "--rounds", "2"])
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())   # rich wraps it in a box
    assert "already holds a run (completed at round 3)" in text and "--resume" in text
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
