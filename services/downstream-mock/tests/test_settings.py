from __future__ import annotations

from pathlib import Path

import pytest

from downstream_mock.settings import MIB, Settings
from servicekit.settings import SettingsError, load_settings


def test_defaults() -> None:
    settings = Settings()
    assert settings.port == 8081
    assert settings.max_delay_seconds == 30
    assert settings.max_bytes == 256 * MIB
    assert settings.max_chunks == 1000
    assert settings.max_upload_bytes == 256 * MIB
    assert settings.max_items == 10_000
    assert settings.state_dir is None


def test_read_with_the_mock_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOCK_PORT", "18081")
    monkeypatch.setenv("MOCK_WORKERS", "3")
    monkeypatch.setenv("MOCK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PORT", "1")
    settings = load_settings(Settings)
    assert settings.port == 18081
    assert settings.workers == 3
    assert settings.state_dir == tmp_path


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MOCK_MAX_BYTES", "-1"),
        ("MOCK_MAX_CHUNKS", "0"),
        ("MOCK_MAX_DELAY_SECONDS", "3601"),
        ("MOCK_PORT", "70000"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"^invalid setting {name}:"):
        load_settings(Settings)
