from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings, SettingsError, load_settings


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    name: str
    ratio: float = Field(default=0.5, ge=0, le=1)


def failure(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(DemoSettings)
    message = caught.value.code
    assert isinstance(message, str)
    assert "\n" not in message
    return message


def test_reads_prefixed_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEMO_NAME", "demo")
    monkeypatch.setenv("DEMO_PORT", "9000")
    monkeypatch.setenv("DEMO_LOG_FILE", str(tmp_path / "api.log"))
    monkeypatch.setenv("PORT", "1")  # unprefixed: not ours

    settings = load_settings(DemoSettings)

    assert settings.name == "demo"
    assert settings.port == 9000
    assert settings.log_file == tmp_path / "api.log"
    assert settings.workers == 2
    assert settings.log_level == "info"


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_NAME", "demo")
    settings = load_settings(DemoSettings)
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    message = failure(monkeypatch, DEMO_NAME="demo", DEMO_PORT="notaport")
    assert message.startswith("invalid setting DEMO_PORT: ")
    assert "(got 'notaport')" in message
    assert "more" not in message


def test_missing_value_says_so_without_an_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_NAME", raising=False)
    message = failure(monkeypatch)
    assert message == "invalid setting DEMO_NAME: Field required"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEMO_PORT", "70000"),
        ("DEMO_WORKERS", "0"),
        ("DEMO_GRACEFUL_TIMEOUT", "-1"),
        ("DEMO_LOG_LEVEL", "loud"),
        ("DEMO_RATIO", "2"),
        ("DEMO_ACCESS_LOG", "perhaps"),
    ],
)
def test_each_bad_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    message = failure(monkeypatch, DEMO_NAME="demo", **{variable: value})
    assert message.startswith(f"invalid setting {variable}: ")
    assert repr(value) in message


def test_several_problems_report_the_first_and_count_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = failure(monkeypatch, DEMO_NAME="demo", DEMO_PORT="x", DEMO_WORKERS="y")
    assert message.startswith("invalid setting DEMO_PORT: ")
    assert message.endswith("; and 1 more")


def test_settings_error_stops_the_process() -> None:
    # gunicorn lets SystemExit out of its config file untouched: exit 1 and our line.
    assert issubclass(SettingsError, SystemExit)


def test_drain_and_head_defaults() -> None:
    settings = DemoSettings(name="demo")
    assert settings.drain_delay == 5
    assert settings.graceful_timeout == 30
    assert settings.max_header_count == 100
    assert settings.max_header_bytes == 32 * 1024
    assert settings.client_header_timeout == 10


def test_header_bytes_take_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_NAME", "demo")
    monkeypatch.setenv("DEMO_MAX_HEADER_BYTES", "64KiB")
    assert load_settings(DemoSettings).max_header_bytes == 64 * 1024


def test_a_drain_delay_of_zero_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_NAME", "demo")
    monkeypatch.setenv("DEMO_DRAIN_DELAY", "0")
    assert load_settings(DemoSettings).drain_delay == 0


@pytest.mark.parametrize(("delay", "grace"), [("30", "30"), ("31", "30"), ("5", "5")])
def test_a_drain_delay_not_shorter_than_the_grace_is_one_line_naming_both(
    monkeypatch: pytest.MonkeyPatch, delay: str, grace: str
) -> None:
    message = failure(
        monkeypatch, DEMO_NAME="demo", DEMO_DRAIN_DELAY=delay, DEMO_GRACEFUL_TIMEOUT=grace
    )
    assert message.startswith("invalid settings: DEMO_DRAIN_DELAY ")
    assert f"must be less than DEMO_GRACEFUL_TIMEOUT ({grace})" in message
    assert "Value error" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEMO_DRAIN_DELAY", "-1"),
        ("DEMO_MAX_HEADER_COUNT", "0"),
        ("DEMO_MAX_HEADER_BYTES", "10"),
        ("DEMO_MAX_HEADER_BYTES", "lots"),
        ("DEMO_CLIENT_HEADER_TIMEOUT", "0"),
    ],
)
def test_each_bad_drain_or_head_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    message = failure(monkeypatch, DEMO_NAME="demo", **{variable: value})
    assert message.startswith(f"invalid setting {variable}: ")
