"""Fixtures of the deploy tests: the rendered overlays and the tools they need."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "gpu")


def require_tool(name: str, package: str) -> str:
    """Path of a command-line tool, or a failure that says how to install it.

    A missing tool fails (never skips): these checks are the only ones the manifests
    get before a real cluster sees them.
    """
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH; install it (Debian: apt-get install -y {package}) "
            "- .ci/run installs it when missing"
        )
    return path


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/overlays/<overlay>`` as a list of documents."""
    kubectl = require_tool("kubectl", "kubernetes-client")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kustomize failed for overlay {overlay}:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered once per session: overlay -> documents."""
    return {overlay: render(overlay) for overlay in OVERLAYS}
