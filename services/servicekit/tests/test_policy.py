"""The server policy an app carries for its gunicorn worker."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from servicekit.health import HealthState
from servicekit.policy import HeadLimits, ServerPolicy, attach_policy, policy_of
from servicekit.service import new_service_app
from servicekit.settings import ServiceSettings


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")


def test_a_service_app_carries_its_health_delay_and_head_ceilings() -> None:
    health = HealthState()
    settings = DemoSettings(
        drain_delay=3, max_header_count=50, max_header_bytes=16384, client_header_timeout=7
    )
    app = new_service_app(settings, title="t", version="1", description="d", health=health)

    policy = policy_of(app)

    assert policy is not None
    assert policy.health is health  # the very object /readyz reads
    assert policy.drain_delay == 3
    # Twice the settings: just over the limit is the app's to refuse, with a problem+json.
    assert policy.head_limits == HeadLimits(max_count=100, max_bytes=32768, timeout=7)


def test_each_app_has_its_own() -> None:
    settings = DemoSettings()
    first, second = HealthState(), HealthState()
    a = new_service_app(settings, title="a", version="1", description="d", health=first)
    b = new_service_app(settings, title="b", version="1", description="d", health=second)
    policy_a, policy_b = policy_of(a), policy_of(b)
    assert policy_a is not None
    assert policy_b is not None
    assert policy_a.health is first
    assert policy_b.health is second


def test_apps_without_one_have_none() -> None:
    assert policy_of(FastAPI()) is None
    assert policy_of(object()) is None


def test_attach_and_read_back() -> None:
    app = FastAPI()
    policy = ServerPolicy(HealthState(), 0.5, HeadLimits(max_count=1, max_bytes=2, timeout=3))
    attach_policy(app, policy)
    assert policy_of(app) is policy
