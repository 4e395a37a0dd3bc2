"""How the Ollama backend reaches a host: credentials, TLS, proxies. Built once per host.

- Credentials: `OLLAMA_API_KEY` as `Authorization: Bearer`, unless a header for that host sets
  Authorization itself; `user:password@` in the host URL as HTTP basic auth (the ollama client
  would silently drop it); headers for every host, then those for this host.
- TLS: verified by default (httpx: certifi, or SSL_CERT_FILE / SSL_CERT_DIR); a CA bundle
  replaces that trust store, as curl's --cacert does; `insecure` turns checking off.
- Proxies: HTTP(S)_PROXY, ALL_PROXY and NO_PROXY as httpx applies them, except that a loopback
  host is always reached directly; an explicit `proxy` is used for every host.
- The HTTP stack: `ollama.AsyncClient` (an httpx client) over an aiohttp transport
  (aiohttp_transport.py), about half the CPU a request; `BATCH_HTTP=httpx` keeps httpx's own
  transport. Either way the client, its headers, auth, timeouts and errors are httpx's.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit

import httpx

from batch.core.errors import ConfigError
from batch.serving.access import Headers, display_host, headers_for, normal_host
from batch.serving.aiohttp_transport import AiohttpTransport

log = logging.getLogger(__name__)

SHORTEST_SECRET = 4  # shorter values would blank out ordinary words if redacted
HTTP_VARIABLE = "BATCH_HTTP"
HttpStack = Literal["aiohttp", "httpx"]


@dataclass(frozen=True)
class AccessSettings:
    """What every host of a run shares; from `JobConfig` via `from_config`."""

    api_key: str | None = None
    headers: Headers = field(default_factory=dict)
    ca_bundle: Path | None = None
    insecure: bool = False
    proxy: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> AccessSettings:
        return cls(
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            headers=config.headers,
            ca_bundle=config.ca_bundle,
            insecure=config.insecure,
            proxy=config.proxy.get_secret_value() if config.proxy else None,
        )


@dataclass(frozen=True)
class Connection:
    """How to reach one host, and what the user may be told about it."""

    host: str  # the URL for the client, without credentials
    headers: dict[str, str]
    secrets: tuple[str, ...]  # values that must never be shown
    credentials: tuple[str, ...]  # what is sent, by name, for error messages
    stack: HttpStack = "aiohttp"
    auth: httpx.BasicAuth | None = None
    verify: ssl.SSLContext | bool = True
    proxy: str | None = None  # the explicit one, for every host
    route: str | None = None  # aiohttp: the proxy this host is reached through (None: directly)
    loopback: bool = False

    def client_kwargs(self, connections: int) -> dict[str, Any]:
        """Arguments for an httpx client (`ollama.AsyncClient` passes them on) with at most
        `connections` connections to the host, all kept alive; a new transport each call."""
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.auth is not None:
            # httpx's auth flow sets Authorization last: the URL's credentials win.
            kwargs["auth"] = self.auth
        if self.stack == "aiohttp":
            kwargs["transport"] = AiohttpTransport(
                connections=connections, tls=self.verify, proxy=self.route
            )
            return kwargs
        # The default pool keeps only 20 connections alive.
        kwargs["limits"] = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections
        )
        kwargs["verify"] = self.verify
        if self.proxy:
            kwargs["proxy"] = self.proxy
        elif self.loopback:
            # httpx sends even localhost through HTTP(S)_PROXY unless NO_PROXY names it.
            kwargs["mounts"] = {f"all://{_pattern_host(urlsplit(self.host).hostname or '')}": None}
        return kwargs

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def http_stack() -> HttpStack:
    """The transport `BATCH_HTTP` chooses: aiohttp unless it says httpx."""
    value = os.environ.get(HTTP_VARIABLE, "").strip().lower() or "aiohttp"
    if value not in get_args(HttpStack):
        raise ConfigError(
            f"{HTTP_VARIABLE}={value}: use aiohttp (the default) or httpx "
            "(httpx's own transport, slower)"
        )
    return value  # type: ignore[return-value]


def connect(host: str, access: AccessSettings) -> Connection:
    name = display_host(host)
    # One URL for chat, probes, the model check and display, as the client would read it.
    url, user, password = _split_userinfo(normal_host(host))
    headers = headers_for(access.headers, host)
    secrets = [*headers.values(), password or ""]
    credentials = [f"header {h}" for h in headers if h.lower() != "authorization"]
    if any(h.lower() == "authorization" for h in headers):
        credentials.insert(0, "the Authorization header given for it")
    elif api_key := access.api_key or os.environ.get("OLLAMA_API_KEY"):
        # Sent explicitly; the ollama client would add the variable's value on its own anyway.
        headers["Authorization"] = f"Bearer {api_key}"
        secrets.append(api_key)
        credentials.insert(0, "the OLLAMA_API_KEY token")
    auth = None
    if user is not None or password is not None:
        auth = httpx.BasicAuth(user or "", password or "")
        credentials.insert(0, "the user and password in the host URL")
    if access.proxy:
        secrets.append(urlsplit(access.proxy).password or "")
    hostname = urlsplit(name).hostname or ""
    loopback = _is_loopback(hostname)
    if credentials and name.startswith("http://") and not loopback:
        log.warning("%s: credentials go over plain http, readable on the way: use https", name)
    stack = http_stack()
    verify = _verify(name, access)
    route = None
    if stack == "aiohttp":
        route = access.proxy or (None if loopback else _environment_proxy(url))
        verify = _aiohttp_tls(verify, name, route)
    return Connection(
        url,
        headers,
        tuple(s for s in dict.fromkeys(secrets) if len(s) >= SHORTEST_SECRET),
        tuple(credentials),
        stack=stack,
        auth=auth,
        verify=verify,
        proxy=access.proxy,
        route=_checked_proxy(name, route),
        loopback=loopback,
    )


def _environment_proxy(url: str) -> str | None:
    """The proxy httpx would take from HTTP(S)_PROXY, ALL_PROXY and NO_PROXY for `url`, by
    httpx's own rules (its client applies them only to its own transport)."""
    from httpx._utils import URLPattern, get_environment_proxies

    target = httpx.URL(url)
    mounts = sorted((URLPattern(k), v) for k, v in get_environment_proxies().items())
    return next((proxy for pattern, proxy in mounts if pattern.matches(target)), None)


def _aiohttp_tls(
    verify: ssl.SSLContext | bool, name: str, route: str | None
) -> ssl.SSLContext | bool:
    """The trust httpx would use (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built only where
    TLS is spoken: aiohttp's default would be the system's store instead."""
    https = name.startswith("https://") or (route or "").startswith("https://")
    if verify is True and https:
        return httpx.create_ssl_context(verify=True)
    return verify


def _checked_proxy(name: str, proxy: str | None) -> str | None:
    if proxy and urlsplit(proxy).scheme.lower() not in ("http", "https"):
        raise ConfigError(
            f"the proxy for {name} is a {urlsplit(proxy).scheme} proxy, which only httpx's own "
            f"transport speaks: set {HTTP_VARIABLE}=httpx (and install httpx[socks])"
        )
    return proxy


def _split_userinfo(host: str) -> tuple[str, str | None, str | None]:
    """The host without `user:password@`, and the two parts (percent-decoded)."""
    scheme, sep, rest = host.strip().partition("://")
    if not sep:
        scheme, rest = "", host.strip()
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return host, None, None
    user, colon, password = userinfo.partition(":")
    clean = f"{scheme}{sep}{hostport}{slash}{path}"
    return clean, unquote(user), unquote(password) if colon else None


def _verify(name: str, access: AccessSettings) -> ssl.SSLContext | bool:
    if access.insecure:
        if name.startswith("https://"):
            log.warning(
                "%s: TLS certificate verification is off (--insecure): anyone on the way "
                "can pose as the server and read the credentials and the rows",
                name,
            )
        return False
    if access.ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(access.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--ca-bundle {access.ca_bundle}: cannot read CA certificates from it ({exc}); "
            "give a PEM file"
        ) from None


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _pattern_host(hostname: str) -> str:
    return f"[{hostname}]" if ":" in hostname else hostname


class _Cookies(httpx.Cookies):
    """httpx's cookies, without reading a response that sets none: httpx builds a urllib
    request and an email message from every response's headers just to find that out."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            super().extract_cookies(response)


def skip_empty_cookie_work(client: httpx.AsyncClient) -> None:
    """Cookies work as before (a proxy's session cookie is kept and sent back), for about 30 us
    less CPU a request (measured); httpx offers no public way to swap its cookie store."""
    client._cookies = _Cookies(client.cookies)


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a connection failure, however deep the client wrapped it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe_tls_failure(name: str, error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or error.reason or "verification failed"
        return (
            f"the TLS certificate of {name} is not trusted ({reason}): give the CA that signed "
            "it with --ca-bundle FILE (BATCH_CA_BUNDLE, ca_bundle in the job file), or skip "
            "the check with --insecure"
        )
    return (
        f"the TLS handshake with {name} failed ({error.reason or error}): check that it serves "
        "https on that port, and the scheme of --host"
    )
