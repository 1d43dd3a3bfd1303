from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings
from servicekit.settings import SettingsError, load_settings


def test_reads_gateway_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_ROUTES_FILE", str(tmp_path / "routes.yaml"))
    monkeypatch.setenv("GATEWAY_PORT", "9090")
    monkeypatch.setenv("GATEWAY_UPSTREAM_MAX_CONNECTIONS", "50")
    settings = load_settings(Settings)
    assert settings.routes_file == tmp_path / "routes.yaml"
    assert settings.port == 9090
    assert settings.upstream_max_connections == 50
    assert settings.upstream_keepalive_seconds == 15.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_PORT", "notaport"),
        ("GATEWAY_UPSTREAM_KEEPALIVE_SECONDS", "0"),
        ("GATEWAY_UPSTREAM_MAX_CONNECTIONS", "0"),
        ("GATEWAY_WORKERS", "many"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("GATEWAY_ROUTES_FILE", "routes.yaml")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(Settings)
    message = str(caught.value.code)
    assert message.startswith(f"invalid setting {variable}: ")
    assert "\n" not in message


def test_the_route_file_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_ROUTES_FILE", raising=False)
    with pytest.raises(SettingsError) as caught:
        load_settings(Settings)
    assert caught.value.code == "invalid setting GATEWAY_ROUTES_FILE: Field required"
