"""The Flower app declaration in pyproject.toml matches the code that reads it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from spinemet.server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _flwr() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_every_setting_is_declared_with_its_default():
    declared = _flwr()["config"]
    assert declared == Settings().run_config()


def test_components_point_at_the_apps():
    from spinemet.client.app import app as client_app
    from spinemet.server.app import app as server_app

    components = _flwr()["components"]
    assert components == {"serverapp": "spinemet.server.app:app",
                          "clientapp": "spinemet.client.app:app"}
    assert type(server_app).__name__ == "ServerApp" and type(client_app).__name__ == "ClientApp"


def test_run_config_overrides_are_typed_and_checked():
    s = Settings.from_run_config({"out-dir": "/tmp/x", "num-rounds": "3", "resume": "true",
                                  "strategy": "fedadam"})
    assert (s.num_rounds, s.resume, s.strategy) == (3, True, "fedadam")
    assert s.train_config().epochs == 3 * s.local_epochs
    import pytest
    with pytest.raises(ValueError, match="strategy 'fedsgd'"):
        Settings.from_run_config({"out-dir": "/tmp/x", "strategy": "fedsgd"})
    with pytest.raises(ValueError, match="out-dir is empty"):
        Settings.from_run_config({})


def test_the_submitted_bundle_declares_the_same_app_as_the_project():
    import io
    import zipfile

    from spinemet.server.fab import app_table, build_fab

    assert _flwr() == app_table()
    fab, digest = build_fab()
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert [n for n in names if not n.startswith(".info/")] == ["pyproject.toml"]
    shipped = tomllib.loads(zipfile.ZipFile(io.BytesIO(fab)).read("pyproject.toml").decode())
    assert shipped["tool"]["flwr"]["app"] == app_table()
    assert len(digest) == 64
