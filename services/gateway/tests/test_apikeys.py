from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.apikeys import ApiKeyStore, StoredKey, key_digest, parse_keys, split_variable

A = key_digest(b"key-a")
B = key_digest(b"key-b")


def test_key_digest_is_what_sha256sum_prints() -> None:
    # printf %s test | sha256sum
    assert key_digest(b"test") == (
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    )


def test_entries_with_names_comments_and_blank_lines() -> None:
    keys = parse_keys(
        ["# a comment", "", f"  ci-bot : {A}  # trailing comment", B.upper(), "   "],
        source="keys_file k",
    )
    assert keys == (
        StoredKey(bytes.fromhex(A), "ci-bot"),
        StoredKey(bytes.fromhex(B), f"api-key:{B[:8]}"),
    )


def test_a_shared_name_is_allowed_for_rotation() -> None:
    keys = parse_keys([f"ci:{A}", f"ci:{B}"], source="s")
    assert {k.subject for k in keys} == {"ci"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("my-plain-key", r"keys_file k line 2: expected \[name:\]<64 hex digits"),
        ("ci:" + A[:-1], r"line 2: expected .*not the key"),
        ("ci:" + A + "0", r"line 2: expected"),
        ("a:b:" + A, r"line 2: expected"),
        ("bad name:" + A, r"line 2: a name is 1-64"),
        (":" + A, r"line 2: a name is 1-64"),
        ("-x:" + A, r"line 2: a name is 1-64"),
        ("n" * 65 + ":" + A, r"line 2: a name is 1-64"),
        (A.upper(), r"line 2: the same key as line 1"),
    ],
)
def test_bad_entries_name_their_line_and_never_echo_it(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_keys([A, entry], source="keys_file k")
    assert entry not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_source_without_keys_is_an_error() -> None:
    with pytest.raises(ValueError, match="keys_env K holds no keys"):
        parse_keys(["# nothing", ""], source="keys_env K", unit="entry")


def test_a_variable_splits_on_commas_and_newlines() -> None:
    assert split_variable(f"a:{A},b:{B}\n{A}") == [f"a:{A}", f"b:{B}", A]


def test_match_finds_the_key_and_compares_against_all(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ApiKeyStore(parse_keys([f"a:{A}", f"b:{B}"], source="s"))
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    found = store.match(b"key-a")
    assert found is not None
    assert found.subject == "a"
    assert compared == [bytes.fromhex(A), bytes.fromhex(B)]  # no early exit on a match
    compared.clear()
    assert store.match(b"key-c") is None
    assert len(compared) == len(store) == 2


def test_the_presented_key_is_hashed_before_comparing() -> None:
    # The stored digest itself is not a key: knowing the file must not be enough.
    store = ApiKeyStore(parse_keys([A], source="s"))
    assert store.match(A.encode()) is None
    assert store.match(bytes.fromhex(A)) is None
    assert store.match(b"key-a") is not None
    assert hashlib.sha256(b"key-a").hexdigest() == A


def test_a_store_needs_keys() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        ApiKeyStore([])


def test_stored_keys_do_not_show_their_digest() -> None:
    assert A not in repr(parse_keys([A], source="s"))
    assert bytes.fromhex(A).hex() not in repr(parse_keys([A], source="s"))
