"""The Flower app bundle (FAB) that ``flower-server`` submits: a ``pyproject.toml`` and
nothing else.

Sites run their *installed* SpineMet; the coordinator ships no code (the ClientApp
component resolves to ``spinemet.client.app`` in the site's own installation, and the hello
message's fingerprint makes a site with other code refuse). The bundle's ``pyproject.toml``
is generated from :class:`.settings.Settings`, the same source as the project's own
``[tool.flwr.app]`` table (a test keeps the two equal), so an installed SpineMet needs no
source tree to start a run.
"""

from __future__ import annotations

import hashlib

import tomli_w

from ..common import __version__
from .settings import Settings

COMPONENTS = {"serverapp": "spinemet.server.app:app", "clientapp": "spinemet.client.app:app"}


def app_table() -> dict:
    """``[tool.flwr.app]`` as a dict."""
    return {"publisher": "spinemet", "fab-include": ["pyproject.toml"],
            "components": dict(COMPONENTS), "config": Settings().run_config()}


def pyproject_text() -> str:
    return tomli_w.dumps({
        "project": {"name": "spinemet", "version": __version__.split("+")[0],
                    "description": "SpineMet-FL federated run (runs the installed spinemet)",
                    "dependencies": []},
        "tool": {"flwr": {"app": app_table()}}})


def build_fab() -> tuple[bytes, str]:
    """(FAB bytes, their sha256) via Flower's own builder."""
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files({"pyproject.toml": pyproject_text().encode()})
    return fab, hashlib.sha256(fab).hexdigest()
