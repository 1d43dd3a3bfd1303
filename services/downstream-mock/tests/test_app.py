from __future__ import annotations

import tempfile
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from typing import Any

import httpx
import pytest

import downstream_mock.app as app_module
from downstream_mock.app import create_app, package_version
from downstream_mock.settings import Settings
from downstream_mock.state import STATE_DIR_PREFIX
from servicekit.settings import SettingsError

from .support import assert_problem, running

HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def operations(settings: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) for every route in the app's OpenAPI document."""
    document = create_app(settings).openapi()
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def test_every_route_is_documented(settings: Settings) -> None:
    found = operations(settings)
    # Seven methods each for echo (twice), status, delay and flaky, plus the rest.
    assert len(found) > 40
    for path, method, operation in found:
        where = f"{method.upper()} {path}"
        assert operation.get("operationId"), where
        summary = operation.get("summary", "")
        assert summary, where
        assert "\n" not in summary, where
        description = operation.get("description", "")
        assert description, where
        assert len(description) <= 300, (where, len(description))


def test_operation_ids_are_unique(settings: Settings) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(settings)]
    assert len(ids) == len(set(ids))


def test_descriptions_fit_with_default_bounds() -> None:
    # The bounds are written into some descriptions; the largest defaults must fit too.
    for path, method, operation in operations(Settings()):
        assert len(operation["description"]) <= 300, (method, path)


def test_every_endpoint_is_in_the_document(settings: Settings) -> None:
    paths = {path for path, _, _ in operations(settings)}
    assert paths == {
        "/livez",
        "/metrics",
        "/readyz",
        "/health",
        "/echo",
        "/echo/{path}",
        "/status/{code}",
        "/delay/{seconds}",
        "/bytes/{n}",
        "/stream/{chunks}",
        "/upload",
        "/items",
        "/items/{item_id}",
        "/info",
        "/flaky/{key}",
        "/admin/readyz/enable",
        "/admin/readyz/disable",
        "/admin/faults",
    }


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    # Warnings fail the tests, so this also proves FastAPI found no duplicate ids.
    document = (await client.get("/openapi.json")).json()
    assert document["info"]["title"] == "downstream-mock"
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert all(op.get("operationId") for op in operations)
    assert {"/echo", "/echo/{path}", "/items/{item_id}", "/admin/faults"} <= set(document["paths"])


async def test_probes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "alive"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_unknown_path_is_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not-found")


async def test_request_id_is_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/echo", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["headers"]["x-request-id"] == "abc-123"


async def test_private_state_is_removed_at_shutdown(settings: Settings) -> None:
    def state_dirs() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob(f"{STATE_DIR_PREFIX}*"))

    before = state_dirs()
    app = create_app(settings.model_copy(update={"state_dir": None}))
    async with running(app) as client:
        created = (await client.post("/items", json={"name": "gone", "price": 1})).json()
        assert (await client.get(f"/items/{created['id']}")).status_code == 200
        (private,) = state_dirs() - before
        assert (private / "state.sqlite3").exists()
    assert not private.exists()


async def test_given_state_dir_is_kept(settings: Settings) -> None:
    async with running(create_app(settings)) as client:
        await client.post("/items", json={"name": "kept", "price": 1})
    assert settings.state_dir is not None
    assert (settings.state_dir / "state.sqlite3").exists()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_MAX_ITEMS", "7")
    monkeypatch.setenv("MOCK_ACCESS_LOG", "false")
    document = create_app().openapi()
    assert "7 items" in document["paths"]["/items"]["post"]["description"]


def test_a_bad_setting_stops_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_MAX_DELAY_SECONDS", "forever")
    with pytest.raises(SettingsError) as excinfo:
        create_app()
    message = str(excinfo.value)
    assert message.startswith("invalid setting MOCK_MAX_DELAY_SECONDS:")
    assert "\n" not in message


def test_version_falls_back_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert package_version() != "0.0.0+unknown"

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(app_module, "distribution_version", missing)
    assert package_version() == "0.0.0+unknown"
