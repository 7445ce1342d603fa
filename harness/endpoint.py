"""Where and how to reach a deployment: its base URL, extra headers, API key and TLS settings.

Pure functions, no network: the base URL is normalised here and nowhere else (with or
without a trailing `/v1`), `Name: value` headers are parsed and checked, and the API key is
kept out of every text the harness writes (`redact`).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from .errors import UsageError

__all__ = ["ADMIN_TOKEN_ENV", "API_KEY_ENV", "auth_headers", "check_header", "header_problem",
           "normalize_base_url", "parse_header", "redact", "resolve_api_key", "secret_values",
           "tls_context"]

API_KEY_ENV = "OPENAI_API_KEY"
# the reference target's admin token, where a run that did not start the target reads it
ADMIN_TOKEN_ENV = "LLM_CHAOS_ADMIN_TOKEN"
REDACTED = "[redacted]"

# RFC 9110 token characters: what a header name may hold
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# the client frames the body itself; a user's copy of these would corrupt the request
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def normalize_base_url(url: str) -> str:
    """`url` as the base the API paths (`/v1/...`) go under: no trailing `/`, no trailing
    `/v1` (so `http://h:8000`, `http://h:8000/` and `http://h:8000/v1` are one base); a gateway
    prefix such as `/openai` is kept. UsageError for anything that is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"host {url!r}: give a URL like http://127.0.0.1:8000 (with or "
                         "without /v1)")
    if parts.query or parts.fragment:
        raise UsageError(f"host {url!r}: a base URL has no ?query or #fragment; remove it")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def header_problem(name: str, value: str) -> str | None:
    """What keeps `name: value` off the wire as given, or None when it can go."""
    if not _TOKEN.match(name):
        return (f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~ "
                "only)")
    if name.lower() in _FRAMING:
        return f"{name} is set by the load client itself; remove it"
    if any(c in value for c in "\r\n\0"):
        return f"the value of {name} holds a line break or NUL; remove it"
    return None


def check_header(name: str, value: str, where: str) -> tuple[str, str]:
    """`(name, value)` when both can go on the wire as given; UsageError naming `where`."""
    problem = header_problem(name, value)
    if problem is not None:
        raise UsageError(f"{where}: {problem}")
    return name, value.strip()


def parse_header(text: str) -> tuple[str, str]:
    """`'Name: value'` (as `curl -H` takes it) -> `(name, value)`; UsageError naming it."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"--header {text!r}: write it as 'Name: value', e.g. "
                         "--header 'X-Org: research'")
    return check_header(name.strip(), value, f"--header {text!r}")


def resolve_api_key(given: str | None, environ: Mapping[str, str] = os.environ,
                    env: str = API_KEY_ENV) -> tuple[str | None, str | None]:
    """The API key to send and where it came from (`--api-key` or `$OPENAI_API_KEY`), or
    `(None, None)`; an empty value means no key."""
    if given:
        return given, "--api-key"
    found = environ.get(env)
    return (found, f"${env}") if found else (None, None)


def auth_headers(headers: Iterable[tuple[str, str]], api_key: str | None,
                 explicit_key: bool = True) -> list[tuple[str, str]]:
    """`headers` plus `Authorization: Bearer KEY`. A header named Authorization wins over a
    key taken from the environment; given both explicitly, UsageError."""
    out = list(headers)
    has_auth = any(n.lower() == "authorization" for n, _ in out)
    if api_key and has_auth:
        if explicit_key:
            raise UsageError("--api-key and --header 'Authorization: ...' both set the "
                             "Authorization header; give one of them")
        return out
    if api_key:
        out.append(("Authorization", f"Bearer {api_key}"))
    return out


def tls_context(ca_bundle: str | None, insecure: bool) -> ssl.SSLContext | None:
    """The TLS settings for https endpoints: None for the system's defaults, a context that
    trusts `ca_bundle` (a PEM file), or one that checks nothing (`insecure`)."""
    if ca_bundle and insecure:
        raise UsageError("--ca-bundle and --insecure contradict each other: --ca-bundle checks "
                         "the server against that CA, --insecure checks nothing; give one")
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca_bundle:
        try:
            return ssl.create_default_context(cafile=ca_bundle)
        except FileNotFoundError as exc:
            raise UsageError(f"--ca-bundle {ca_bundle}: no such file") from exc
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--ca-bundle {ca_bundle}: not a PEM file of CA certificates "
                             f"({exc})") from exc
    return None


def secret_values(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The values of headers that carry credentials (Authorization, cookies, *key*, *token*,
    *secret*), with the token alone where a scheme such as `Bearer` comes first."""
    out: list[str] = []
    for name, value in headers:
        low = name.lower()
        if low in ("authorization", "proxy-authorization", "cookie") or any(
                word in low for word in ("key", "token", "secret")):
            out.append(value)
            scheme, _, token = value.partition(" ")
            if token.strip() and scheme.isalpha():
                out.append(token.strip())
    return sorted((v for v in out if len(v) >= 4), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret in it replaced (a server may echo the key it refused)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
