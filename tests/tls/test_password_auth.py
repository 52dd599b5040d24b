"""Password hashing, users files and HTTP Basic parsing."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.listener.auth import (
    BASIC_CHALLENGE,
    AuthResult,
    ListenerCertificateAuthenticator,
    ListenerPasswordAuthenticator,
    authenticate_request,
    check_basic_auth,
    hash_password,
    load_users_file,
    verify_password,
)


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _plain(users: dict[str, str]) -> ListenerPasswordAuthenticator:
    return ListenerPasswordAuthenticator(lambda u, p: users.get(u) == p)


def test_hash_format_and_verification() -> None:
    stored = hash_password("s3cret")
    scheme, n, r, p, salt, _digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt + "==")) == 16
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cret ")
    assert not verify_password(stored, "")
    assert hash_password("s3cret") != stored  # salted


def test_unicode_passwords() -> None:
    stored = hash_password("pässwörd-密码-🔑", n=1024)
    assert verify_password(stored, "pässwörd-密码-🔑")
    assert not verify_password(stored, "passwörd-密码-🔑")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "bcrypt$12$abc$def",
        "scrypt$16384$8$1$AAAA",
        "scrypt$abc$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$1000$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$8$1$!!!$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$4194304$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_stored_hashes_raise(stored: str) -> None:
    with pytest.raises(ValueError):
        verify_password(stored, "x")


def test_from_users() -> None:
    authenticator = ListenerPasswordAuthenticator.from_users(
        {"alice": hash_password("wonderland", n=1024), "bob": hash_password("builder", n=1024)}
    )
    assert authenticator.authenticate("alice", "wonderland") == AuthResult(True, "alice", "")
    assert not authenticator.authenticate("alice", "builder").ok
    assert not authenticator.authenticate("carol", "wonderland").ok
    with pytest.raises(ValueError, match="user 'eve'"):
        ListenerPasswordAuthenticator.from_users({"eve": "nope"})


def test_users_file(tmp_path: Path) -> None:
    alice = hash_password("wonderland", n=1024)
    path = tmp_path / "users"
    path.write_text(f"# device users\n\nalice:{alice}\n  bob : {hash_password('b', n=1024)}\n")
    users = load_users_file(path)
    assert sorted(users) == ["alice", "bob"] and users["alice"] == alice
    authenticator = ListenerPasswordAuthenticator.from_users_file(path)
    assert check_basic_auth(authenticator, _basic(b"bob:b")).ok

    path.write_text(f"alice:{alice}\nalice:{alice}\n")
    with pytest.raises(ValueError, match=r"users:2: user 'alice' is listed twice"):
        load_users_file(path)
    path.write_text("just-a-name\n")
    with pytest.raises(ValueError, match=r"users:1: expected 'name:hash'"):
        load_users_file(path)
    path.write_text("carol:plaintext-password\n")
    with pytest.raises(ValueError, match=r"users:1: user 'carol'"):
        load_users_file(path)
    path.write_bytes(b"\xff\xfe:x\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_users_file(path)


def test_basic_header_accepted() -> None:
    authenticator = _plain({"alice": "wonder:land"})  # a colon inside the password
    result = check_basic_auth(authenticator, _basic(b"alice:wonder:land"))
    assert result == AuthResult(True, "alice", "")
    assert check_basic_auth(authenticator, "basic " + _basic(b"alice:wonder:land")[6:]).ok
    assert check_basic_auth(authenticator, "  BASIC   " + _basic(b"alice:wonder:land")[6:]).ok


def test_basic_header_unicode() -> None:
    authenticator = _plain({"jürgen": "пароль"})
    assert check_basic_auth(authenticator, _basic("jürgen:пароль".encode())).username == "jürgen"
    latin1 = check_basic_auth(authenticator, _basic("jürgen:x".encode("latin-1")))
    assert latin1 == AuthResult(False, None, "malformed Basic credentials (not UTF-8)")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no credentials (Authorization header missing)"),
        ("", "no credentials (Authorization header missing)"),
        ("   ", "no credentials (Authorization header missing)"),
        ("Bearer abc", "unsupported authorization scheme 'Bearer'"),
        ("Basic", "malformed Basic credentials (empty)"),
        ("Basic !!!not-base64!!!", "malformed Basic credentials (bad base64)"),
        ("Basic YWxpY2U6d29uZGVyMQ", "malformed Basic credentials (bad base64)"),
        ("Basic 8J+UkQ==ü", "malformed Basic credentials (bad base64)"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "(no ':' after the user name)"),
        ("Basic " + base64.b64encode(b":password").decode(), "(empty user name)"),
    ],
)
def test_basic_header_malformed(header: str | None, reason: str) -> None:
    result = check_basic_auth(_plain({"alice": "wonder"}), header)
    assert not result.ok
    assert result.username is None
    assert reason in result.reason


def test_wrong_password_names_the_user() -> None:
    result = check_basic_auth(_plain({"alice": "wonder"}), _basic(b"alice:nope"))
    assert result == AuthResult(False, "alice", "incorrect user name or password")


def test_no_authenticator_lets_everyone_in() -> None:
    assert check_basic_auth(None, None).ok
    assert authenticate_request(None).ok


def test_callback_failures_refuse() -> None:
    def broken(user: str, password: str) -> bool:
        raise RuntimeError("database down")

    assert check_basic_auth(ListenerPasswordAuthenticator(broken), _basic(b"a:b")) == AuthResult(
        False, "a", "authenticator error"
    )
    sloppy = ListenerPasswordAuthenticator(lambda u, p: "yes")  # type: ignore[arg-type,return-value]
    assert not check_basic_auth(sloppy, _basic(b"a:b")).ok
    with pytest.raises(TypeError):
        ListenerPasswordAuthenticator("not callable")  # type: ignore[arg-type]


def test_authenticate_request_dispatch() -> None:
    from fieldsync.tls.identity import TLSIdentity

    passwords = _plain({"alice": "w"})
    assert authenticate_request(passwords, authorization_header=_basic(b"alice:w")).ok
    assert not authenticate_request(passwords, authorization_header=None).ok
    phone = TLSIdentity.create_identity(False, {"CN": "phone"}, key_type="ec")
    certificates = ListenerCertificateAuthenticator([phone.leaf])
    assert authenticate_request(certificates, peer_chain=phone.certs).username == "phone"
    # a password header does not satisfy a certificate authenticator
    assert not authenticate_request(certificates, authorization_header=_basic(b"alice:w")).ok
    assert not authenticate_request(object()).ok  # type: ignore[arg-type]


def test_challenge_matches_couchbase_lite() -> None:
    assert BASIC_CHALLENGE == 'Basic charset="UTF-8"'


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(), st.text().map(lambda t: "Basic " + t)))
def test_basic_parsing_never_raises(header: str | None) -> None:
    result = check_basic_auth(_plain({"a": "b"}), header)
    assert isinstance(result, AuthResult)
    assert not result.ok


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1).filter(lambda u: ":" not in u), st.text())
def test_basic_round_trip(username: str, password: str) -> None:
    header = _basic(f"{username}:{password}".encode("utf-8", "surrogatepass"))
    seen: list[tuple[str, str]] = []

    def record(user: str, pw: str) -> bool:
        seen.append((user, pw))
        return True

    result = check_basic_auth(ListenerPasswordAuthenticator(record), header)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in username + password):
        assert not result.ok  # lone surrogates are not valid UTF-8
    else:
        assert result.ok and seen == [(username, password)]
