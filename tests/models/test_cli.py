"""`python -m models predict` writes every frame, errors included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read, write

import models


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "models", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_predict_writes_results_and_marks_bad_frames(tmp_path: Path) -> None:
    frames = [
        bulk("Si", "diamond", a=5.43),
        Atoms("Og", positions=[[0, 0, 0]], cell=np.eye(3) * 5, pbc=True),
        molecule("H2O"),
    ]
    src, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    write(src, frames)
    proc = _run(
        "predict",
        "--model",
        "sevennet-0",
        "--backend",
        "fused",
        str(src),
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    got = read(out, index=":")
    assert len(got) == 3
    expected = models.load_model("sevennet-0", "fused").predict([frames[0]])[0]
    assert isinstance(expected, models.Prediction)
    assert got[0].get_potential_energy() == np.float64(expected.energy).item()
    assert got[0].get_stress().shape == (6,)
    assert got[0].get_forces().shape == (2, 3)
    assert "Og" in got[1].info["error"] and got[1].calc is None
    assert got[2].get_forces().shape == (3, 3)


def test_reads_cif_and_poscar(tmp_path: Path) -> None:
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    for name in ("x.cif", "POSCAR"):
        write(tmp_path / name, atoms, format="cif" if name.endswith("cif") else "vasp")
        out = tmp_path / f"result_{name.replace('.', '_')}.extxyz"
        proc = _run("predict", str(tmp_path / name), "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert len(read(out, index=":", format="extxyz")) == 1


def test_unreadable_input_and_unknown_model_fail_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xyz"
    bad.write_text("not a structure\n")
    proc = _run("predict", str(bad), "-o", str(tmp_path / "o.extxyz"))
    assert proc.returncode != 0 and "cannot read" in proc.stderr
    good = tmp_path / "g.extxyz"
    write(good, bulk("Si"))
    proc = _run("predict", "--model", "nope", str(good), "-o", str(tmp_path / "o.xyz"))
    assert proc.returncode != 0 and "registered models" in proc.stderr
