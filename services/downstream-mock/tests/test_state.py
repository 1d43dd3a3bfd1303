from __future__ import annotations

from pathlib import Path

from downstream_mock.state import CONTROL_NAME, DB_NAME, STATE_DIR_PREFIX, SharedState


def test_private_directory_is_made_and_removed() -> None:
    shared = SharedState.open(None)
    directory = shared.directory
    assert shared.owns_directory
    assert directory.name.startswith(STATE_DIR_PREFIX)
    assert (directory / DB_NAME).exists()
    shared.close()
    assert not directory.exists()


def test_given_directory_is_created_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    shared = SharedState.open(directory)
    assert not shared.owns_directory
    shared.control.update(lambda c: c.model_copy(update={"ready": False}))
    shared.close()
    assert (directory / DB_NAME).exists()
    assert (directory / CONTROL_NAME).exists()


def test_reopening_a_directory_keeps_the_state(tmp_path: Path) -> None:
    # A worker restarted by gunicorn opens the same directory and finds its data.
    first = SharedState.open(tmp_path)
    item_id = first.store.create_item("{}", max_items=10)
    first.control.update(lambda c: c.model_copy(update={"ready": False}))
    first.close()
    second = SharedState.open(tmp_path)
    assert item_id is not None
    assert second.store.get_item(item_id) == "{}"
    assert not second.control.read().ready
    second.close()
