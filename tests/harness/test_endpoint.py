"""Reaching a deployment: one normalised base URL, headers parsed with errors that name the bad
one, the API key's precedence, TLS options, and credentials redacted from text."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from harness.endpoint import (
    auth_headers,
    normalize_base_url,
    parse_header,
    redact,
    resolve_api_key,
    secret_values,
    tls_context,
)
from harness.errors import UsageError


@pytest.mark.parametrize(("given", "base"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
    ("https://gw.example/openai/v1", "https://gw.example/openai"),
    ("https://gw.example/openai", "https://gw.example/openai"),
    ("http://h/v10", "http://h/v10"),
    (" http://user@h:9/ ", "http://user@h:9"),
])
def test_base_url_with_or_without_v1(given: str, base: str) -> None:
    assert normalize_base_url(given) == base


@pytest.mark.parametrize(("given", "says"), [
    ("127.0.0.1:8000", "give a URL like http://127.0.0.1:8000"),
    ("ftp://h/v1", "give a URL like"),
    ("http:///v1", "give a URL like"),
    ("http://h/v1?key=x", "no ?query or #fragment"),
])
def test_bad_base_url_is_a_usage_error(given: str, says: str) -> None:
    with pytest.raises(UsageError, match=r"host .*") as err:
        normalize_base_url(given)
    assert says in str(err.value) and repr(given.strip()) in str(err.value)


def test_header_parsed_like_curl() -> None:
    assert parse_header("X-Org:  research ") == ("X-Org", "research")
    assert parse_header("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    assert parse_header("X-Empty:") == ("X-Empty", "")


@pytest.mark.parametrize(("text", "says"), [
    ("X-Org research", "write it as 'Name: value'"),
    (": value", "write it as 'Name: value'"),
    ("Bad Name: x", "'Bad Name' is not a header name"),
    ("Content-Length: 3", "Content-Length is set by the load client itself"),
    ("X-A: b\r\nX-Injected: c", "line break"),
])
def test_bad_header_names_the_value(text: str, says: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_header(text)
    assert str(err.value).startswith(f"--header {text!r}: ")
    assert says in str(err.value)


def test_api_key_from_option_then_environment() -> None:
    env = {"OPENAI_API_KEY": "sk-env"}
    assert resolve_api_key("sk-opt", env) == ("sk-opt", "--api-key")
    assert resolve_api_key(None, env) == ("sk-env", "$OPENAI_API_KEY")
    assert resolve_api_key(None, {"OPENAI_API_KEY": ""}) == (None, None)
    assert resolve_api_key(None, {}) == (None, None)


def test_bearer_header_and_its_conflicts() -> None:
    assert auth_headers([("X-Org", "r")], "sk-1") == [("X-Org", "r"),
                                                     ("Authorization", "Bearer sk-1")]
    assert auth_headers([("X-Org", "r")], None) == [("X-Org", "r")]
    mine = [("authorization", "Basic dXNlcjpwdw==")]
    assert auth_headers(mine, "sk-env", explicit_key=False) == mine
    with pytest.raises(UsageError, match="give one of them"):
        auth_headers(mine, "sk-1")


def test_tls_options(tmp_path: Path) -> None:
    assert tls_context(None, False) is None
    insecure = tls_context(None, True)
    assert insecure is not None and insecure.verify_mode == ssl.CERT_NONE
    assert not insecure.check_hostname
    with pytest.raises(UsageError, match="contradict"):
        tls_context(str(tmp_path / "ca.pem"), True)
    with pytest.raises(UsageError, match=r"--ca-bundle .*missing.pem: no such file"):
        tls_context(str(tmp_path / "missing.pem"), False)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="not a PEM file of CA certificates"):
        tls_context(str(junk), False)


def test_credentials_are_redacted() -> None:
    headers = [("Authorization", "Bearer sk-secret-1"), ("X-Api-Key", "k-2222"),
               ("X-Org", "research"), ("Cookie", "s=abcd")]
    secrets = secret_values(headers)
    assert "research" not in secrets
    text = "refused Bearer sk-secret-1 (sk-secret-1), key k-2222, cookie s=abcd, org research"
    out = redact(text, secrets)
    for secret in ("sk-secret-1", "k-2222", "s=abcd"):
        assert secret not in out
    assert "research" in out and "[redacted]" in out
