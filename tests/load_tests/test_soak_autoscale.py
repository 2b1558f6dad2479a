"""Soak verdicts, autoscaling verdicts, and (slow) the real runs behind them."""

from __future__ import annotations

import json

import pytest

from load_tests.autoscale import verdict
from load_tests.soak import flatness


def _series(values):
    return [(10.0 * i, v) for i, v in enumerate(values)]


def test_memory_that_settles_after_warm_up_is_flat():
    warm = [900.0, 1200.0, 1400.0, 1450.0]  # first 20%: ignored
    steady = [1500.0 + (i % 3) for i in range(16)]
    result = flatness(_series(warm + steady), max_growth=0.05)
    assert result["flat"] and abs(result["growth"]) < 0.01


def test_memory_that_keeps_growing_is_not_flat():
    result = flatness(_series([1000.0 + 20 * i for i in range(30)]), max_growth=0.05)
    assert not result["flat"]
    assert result["slope_mb_per_h"] == pytest.approx(20 * 360, rel=1e-6)


def test_too_few_memory_samples_are_refused():
    with pytest.raises(ValueError, match="at least 10"):
        flatness(_series([1.0] * 5), max_growth=0.05)


def _sample(t, phase, running, starting=0):
    replicas = {"RUNNING": running}
    if starting:
        replicas["STARTING"] = starting
    return {"t_s": t, "phase": phase, "completed": 0, "replicas": replicas}


def test_autoscaling_verdict_needs_up_within_limits_and_back_down():
    good = [_sample(0, "base", 1), _sample(1, "step", 1, 1), _sample(2, "step", 3),
            _sample(3, "cool", 2), _sample(4, "cool", 1)]  # fmt: skip
    assert verdict(good, max_replicas=3) == {
        "structures_per_s_by_phase": {"step": 0.0},
        "base_replicas": 1,
        "peak_replicas": 3,
        "final_replicas": 1,
        "scaled_up": True,
        "within_limits": True,
        "scaled_down": True,
    }
    stuck = [*good[:3], _sample(3, "cool", 3)]
    assert not verdict(stuck, max_replicas=3)["scaled_down"]
    assert not verdict(good, max_replicas=2)["within_limits"]
    flat = [_sample(0, "base", 1), _sample(1, "step", 1), _sample(2, "cool", 1)]
    assert not verdict(flat, max_replicas=3)["scaled_up"]


@pytest.mark.slow
def test_a_load_step_scales_the_cpu_deployment_up_and_back_down(tmp_path):
    from load_tests.autoscale import main

    code = main(["--step", "45", "--cool", "60", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "autoscale.json").read_text())
    assert code == 0, result["verdict"]
    assert result["verdict"]["peak_replicas"] >= 2


@pytest.mark.slow
def test_short_load_test_against_the_real_platform_has_no_errors(tmp_path):
    from load_tests.run_local import main

    code = main(["--scenario", "small,tenants", "--duration", "8",
                 "--out", str(tmp_path)])  # fmt: skip
    report = json.loads((tmp_path / "loadtest.json").read_text())
    assert code == 0, report
    assert all(run["ok"] > 0 for run in report["runs"])
    # the dashboard and rules read only what the running platform exports
    check = json.loads((tmp_path / "monitoring_check.json").read_text())
    assert check == {"problems": []}
