"""Settings from the environment, API keys, and the metrics' bounded labels."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from services.config import (
    ConfigError,
    DeploymentConfig,
    Settings,
    load_api_keys,
    parse_deployments,
)
from services.deployments.app import app_builder
from services.gateway.auth import ApiKeyStore
from services.metrics import UNKNOWN, ServingMetrics


def test_settings_read_every_variable_once():
    settings = Settings.from_env(
        {
            "EQUISERVE_API_KEYS": "a:key-a,b:key-b",
            "EQUISERVE_DEPLOYMENTS": "sevennet-0/fused, sevennet-0/cp:rank=32",
            "EQUISERVE_REPLICA_CPUS": "2",
            "EQUISERVE_BATCH_MAX_WAIT_MS": "5",
            "EQUISERVE_MAX_MESSAGE_BYTES": "1024",
        }
    )
    assert settings.api_keys == {"key-a": "a", "key-b": "b"}
    assert settings.deployments == (
        DeploymentConfig("sevennet-0", "fused"),
        DeploymentConfig("sevennet-0", "cp:rank=32"),
    )
    assert settings.replica.num_cpus == 2.0 and settings.replica.torch_threads == 2
    assert settings.replica.batch_max_wait_s == pytest.approx(0.005)
    assert settings.max_message_bytes == 1024
    assert Settings.from_env({"EQUISERVE_API_KEYS": "a:k"}).max_message_bytes == (
        64 * 1024 * 1024
    )


def test_no_keys_is_refused_unless_explicitly_unauthenticated():
    with pytest.raises(ConfigError, match="EQUISERVE_API_KEYS"):
        Settings.from_env({})
    settings = Settings.from_env({"EQUISERVE_ALLOW_UNAUTHENTICATED": "true"})
    assert ApiKeyStore(settings.api_keys, True).tenant_for(None) == "anonymous"


def test_keys_come_from_a_mounted_secret_file(tmp_path: Path):
    secret = tmp_path / "keys"
    secret.write_text("# tenants\nalpha:k1\n\nbeta:k2\n")
    assert load_api_keys("gamma:k3", str(secret)) == {
        "k1": "alpha",
        "k2": "beta",
        "k3": "gamma",
    }


@pytest.mark.parametrize(
    ("inline", "match"),
    [("nokey", "not 'tenant:key'"), ("a:k,b:k", "two tenants"), (":k", "tenant:key")],
)
def test_malformed_keys_are_refused(inline: str, match: str):
    with pytest.raises(ConfigError, match=match):
        load_api_keys(inline, None)


def test_a_malformed_variable_is_named():
    with pytest.raises(ConfigError, match="EQUISERVE_REPLICAS"):
        Settings.from_env({"EQUISERVE_API_KEYS": "a:k", "EQUISERVE_REPLICAS": "two"})
    with pytest.raises(ConfigError, match="model/backend"):
        parse_deployments("sevennet-0")


def test_the_key_store_finds_the_tenant_and_nothing_else():
    store = ApiKeyStore({"k1": "alpha", "k2": "beta"})
    assert store.tenant_for("k2") == "beta"
    assert store.tenant_for("k3") is None and store.tenant_for(None) is None
    assert store.tenant_for("k") is None


def test_metric_labels_stay_bounded():
    metrics = ServingMetrics([("sevennet-0", "fused")])
    assert metrics.labels("sevennet-0", "fused") == ("sevennet-0", "fused")
    assert metrics.labels("structure-123", "x") == (UNKNOWN, UNKNOWN)
    metrics.observe_request("m", "b", "NotAnRpc", 0.1)
    metrics.observe_error("sevennet-0", "e3nn", grpc.StatusCode.NOT_FOUND)
    samples = [s for family in metrics.registry.collect() for s in family.samples]
    allowed = {
        "model": {"sevennet-0", UNKNOWN},
        "backend": {"fused", UNKNOWN},
        "method": {UNKNOWN},
        "code": {"NOT_FOUND"},
    }
    for sample in samples:
        for label, value in sample.labels.items():
            if label != "le":
                assert value in allowed[label], (label, value)


def test_the_serve_config_builder_checks_its_arguments():
    with pytest.raises(ValueError, match="need model and backend"):
        app_builder({"model": "sevennet-0"})
    with pytest.raises(ValueError, match="accept"):
        app_builder({"model": "sevennet-0", "backend": "fused", "colour": "red"})
    app = app_builder({"model": "sevennet-0", "backend": "fused", "num_cpus": 2})
    assert app is not None
