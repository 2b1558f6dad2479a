"""Fixtures of the deploy tests: the rendered overlays and the tools they need."""

from __future__ import annotations

import json
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
        pytest.fail(f"{name} is not on PATH; install {package}")
    return path


# The manifests use kustomize features (labels, patches with targets, generator
# options) of kustomize v4 and later; Debian's kubernetes-client embeds v2.
MIN_KUSTOMIZE_MAJOR = 4


def require_kustomize(kubectl: str) -> None:
    """Fail with a clear message when kubectl embeds too old a kustomize."""
    result = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    try:
        version = json.loads(result.stdout)["kustomizeVersion"]
        major = int(version.lstrip("v").split(".")[0])
    except (ValueError, KeyError):
        pytest.fail(f"cannot read kubectl's kustomize version from {result.stdout!r}")
    if major < MIN_KUSTOMIZE_MAJOR:
        pytest.fail(
            f"kubectl embeds kustomize {version}; the manifests need v"
            f"{MIN_KUSTOMIZE_MAJOR}+: install kubectl 1.27 or later (e.g. from "
            "pkgs.k8s.io) or put a kustomize v5 kubectl first on PATH"
        )


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/overlays/<overlay>`` as a list of documents."""
    kubectl = require_tool("kubectl", "kubectl (1.27 or later)")
    require_kustomize(kubectl)
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
