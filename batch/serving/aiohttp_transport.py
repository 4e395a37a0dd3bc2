"""An httpx transport over one aiohttp session: what `ollama.AsyncClient` sends through.

The official client on httpx's own transport (httpcore, h11, anyio streams) costs about twice
the CPU a request that it costs on this one (a bare client loop, measured); the client API, its
request building and its errors stay httpx's. Written
here rather than taken from httpx-aiohttp (0.2.0), whose error map turns a server that
disconnects, and a refused connection, into `httpx.ConnectTimeout`: a dropped connection would
be counted as "cannot connect", and the client's own `ConnectionError` never raised.

aiohttp's errors come out as the ones httpx's transport raises for the same event, with the
original as their cause (so a TLS error is still found behind a `ConnectError`):

    ConnectionTimeoutError ................ ConnectTimeout
    SocketTimeoutError, other timeouts .... ReadTimeout
    ClientHttpProxyError .................. ProxyError ("407 ..." when the tunnel is refused)
    ClientConnectorError (refused, DNS,
      TLS, the proxy unreachable) ......... ConnectError
    ServerDisconnectedError,
      ClientPayloadError (a cut body),
      ClientResponseError (bad HTTP) ...... RemoteProtocolError
    ClientConnectionError (reset) ......... ReadError
    InvalidURL ............................ UnsupportedProtocol

The session is opened on the first request, inside the running event loop, and holds at most
`connections` connections to the host, each kept alive `keepalive_s` between requests.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

_TIMEOUT_KEYS = ("connect", "read", "pool")
_RESPONSE_EXTENSIONS = {"http_version": b"HTTP/1.1"}


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Requests to one host, through `proxy` (an http:// URL, credentials allowed) or
    directly; `tls` is the context for https (True: aiohttp's default, False: no checks)."""

    def __init__(
        self,
        *,
        connections: int,
        tls: ssl.SSLContext | bool = True,
        proxy: str | None = None,
        keepalive_s: float = 5.0,
    ) -> None:
        self._connections = connections
        self._tls = tls
        self._keepalive_s = keepalive_s
        self._proxy, self._proxy_headers = _split_proxy(proxy)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        body = _body(request)  # first: a streamed upload drops its Transfer-Encoding header
        headers = request.headers.multi_items()
        if self._proxy_headers and request.url.scheme == "http":
            # Forwarded as it is, the request itself carries them (aiohttp puts its proxy
            # headers only on the CONNECT of an https tunnel), as httpx's transport does.
            headers += self._proxy_headers.items()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body,
                allow_redirects=False,  # the httpx client follows them itself
                timeout=self._timeout(request.extensions.get("timeout", {})),
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc, request) from _cause(exc)
        if response.content.is_eof():
            # The whole body came with the headers (a short reply): handed over already read,
            # it spares httpx its streaming path, and the connection is free at once.
            body = response.content.read_nowait()
            response.release()
            return httpx.Response(
                response.status,
                headers=response.raw_headers,
                content=body,
                request=request,
                extensions=_RESPONSE_EXTENSIONS,
            )
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            request=request,
            extensions=_RESPONSE_EXTENSIONS,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_s,
            ssl=self._tls,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # the httpx client keeps the cookies
            auto_decompress=False,  # and decodes the body
            trust_env=False,  # the proxy is chosen once, for the host (http_client.py)
        )
        return self._session

    def _timeout(self, timeout: dict[str, float | None]) -> aiohttp.ClientTimeout:
        """httpx's connect, read and pool timeouts as aiohttp's; the same for every request
        of a client, so made once. No total: the caller bounds the whole request."""
        key = tuple(timeout.get(name) for name in _TIMEOUT_KEYS)
        found = self._timeouts.get(key)
        if found is None:
            connect, read, pool = key
            found = aiohttp.ClientTimeout(
                total=None, sock_connect=connect, sock_read=read, connect=pool
            )
            self._timeouts[key] = found
        return found


class _ResponseBody(httpx.AsyncByteStream):
    """The body as it arrives; closing it before the end closes the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc, self._request) from _cause(exc)

    async def aclose(self) -> None:
        self._response.release()


def _body(request: httpx.Request) -> bytes | httpx.AsyncByteStream | None:
    try:
        return request.content or None
    except httpx.RequestNotRead:  # a streamed upload: aiohttp sends it chunked
        request.headers.pop("Transfer-Encoding", None)
        assert isinstance(request.stream, httpx.AsyncByteStream)
        return request.stream


def _split_proxy(proxy: str | None) -> tuple[str | None, dict[str, str] | None]:
    """The proxy URL without credentials, and the header that carries them."""
    if not proxy:
        return None, None
    url = httpx.URL(proxy)
    if url.scheme not in ("http", "https"):
        raise ValueError(f"a {url.scheme} proxy is not supported")
    if not url.username and not url.password:
        return proxy, None
    # As httpx's own transport sends them (UTF-8); aiohttp's BasicAuth is deprecated.
    userpass = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
    without = str(url.copy_with(username=None, password=None))
    return without, {"Proxy-Authorization": f"Basic {userpass}"}


def _cause(exc: BaseException) -> BaseException:
    """The error to chain: for TLS, the `ssl` error itself (aiohttp's wrapper subclasses
    `ssl.CertificateError` without its fields)."""
    cause: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
    elif isinstance(exc, aiohttp.ClientConnectorSSLError):
        cause = exc.os_error
    return cause


def _httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error its own transport raises for what `exc` says happened."""
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, TimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        # httpcore says "407 Proxy Authentication Required" when a tunnel is refused.
        return httpx.ProxyError(f"{exc.status} {exc.message}", request=request)
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.InvalidURL):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, aiohttp.ClientConnectionError):
        kind = httpx.ReadError
    else:  # a response aiohttp could not parse
        kind = httpx.RemoteProtocolError
    return kind(str(exc) or type(exc).__name__, request=request)
