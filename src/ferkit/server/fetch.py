"""Fetching an image from a user-given URL without opening a door into the host's network (SSRF).

Rules, applied to the first URL and again to every redirect hop:

- only ``http`` and ``https``; no credentials in the URL;
- the host name is resolved once, here; every address it resolves to must be public (not loopback, private,
  link-local, multicast, reserved, unspecified, shared/CGNAT; IPv4-mapped IPv6 is unwrapped first) unless
  ``allow_private`` is set;
- the connection goes to the address that was checked (the URL's host is replaced by that IP; the original
  name travels in the ``Host`` header and as the TLS SNI / certificate name), so a DNS answer that changes
  between the check and the connect (DNS rebinding) cannot redirect the request;
- environment proxies are ignored (a proxy would make the address check meaningless);
- a total deadline over all hops, a byte limit enforced while streaming (``Content-Length`` is checked first
  when present), and the response's ``Content-Type`` must be an image type (or a generic binary type; the
  bytes themselves are checked by the decoder anyway).

Errors are :class:`FetchError` with the HTTP status the API answers: 422 bad URL, 403 refused address,
413 too large, 415 not an image, 502 the remote side failed, 504 timeout.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin

import httpx

from .errors import ApiError

Resolver = Callable[[str, int], list[str]]

USER_AGENT = "ferkit-server (image fetcher; +https://pypi.org/project/ferkit/)"
_GENERIC_BINARY_TYPES = ("application/octet-stream", "binary/octet-stream", "application/binary")


class FetchError(ApiError):
    """A refused or failed fetch; ``status`` is the HTTP status to answer, ``code`` a short name."""


@dataclass
class FetchedImage:
    data: bytes
    url: str  # the final URL after redirects
    content_type: str


def address_problem(address: str) -> str | None:
    """Why ``address`` (an IP string) must not be fetched from, or None when it is a public address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private-network address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses ``host`` resolves to for TCP, in the system's preferred order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = sockaddr[0]
        if addr not in seen:
            seen.append(addr)
    return seen


_resolver_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ferkit-dns")


class UrlFetcher:
    """Fetches one image per :meth:`fetch` call under the rules in the module doc. Thread-safe (no shared state
    besides the settings)."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_bytes: int = 20 * 1024 * 1024,
        timeout_s: float = 10.0,
        max_redirects: int = 5,
        resolver: Resolver | None = None,
        address_check: Callable[[str], str | None] | None = None,
    ):
        self.allow_private = allow_private
        self.max_bytes = int(max_bytes)
        self.timeout_s = float(timeout_s)
        self.max_redirects = int(max_redirects)
        self.resolver = resolver or system_resolver
        self.address_check = address_check or address_problem  # address -> reason to refuse, or None

    # -- one hop ---------------------------------------------------------------------------------------------
    def _parse(self, url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as e:
            raise FetchError(422, "invalid_url", f"{url!r} is not a valid URL ({e})") from None
        if parsed.scheme not in ("http", "https"):
            shown = parsed.scheme or "no scheme"
            raise FetchError(422, "invalid_url", f"only http:// and https:// image URLs can be fetched, not {shown}")
        try:
            host = parsed.host  # decodes an internationalised name: "xn--" alone is not one
        except (UnicodeError, ValueError) as e:
            raise FetchError(422, "invalid_url", f"{url!r} has an invalid host name ({e})") from None
        if not host:
            raise FetchError(422, "invalid_url", f"the URL {url!r} has no host name")
        if parsed.userinfo:
            raise FetchError(422, "invalid_url", "URLs with a user name or password are not accepted")
        return parsed

    def _resolve(self, host: str, port: int, deadline: float) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]  # an IP literal needs no lookup
        except ValueError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(504, "url_timeout", f"timed out (after {self.timeout_s:g} s) before resolving {host}")
        future = _resolver_pool.submit(self.resolver, host, port)
        try:
            addresses = future.result(timeout=remaining)
        except concurrent.futures.TimeoutError:
            raise FetchError(504, "url_timeout", f"resolving {host} took longer than {self.timeout_s:g} s") from None
        except (OSError, UnicodeError) as e:
            raise FetchError(502, "url_unresolvable", f"the host {host!r} cannot be resolved ({e})") from None
        if not addresses:
            raise FetchError(502, "url_unresolvable", f"the host {host!r} resolves to no address")
        return addresses

    def _checked_addresses(self, url: httpx.URL, deadline: float) -> list[str]:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = self._resolve(host, port, deadline)
        if not self.allow_private:
            for addr in addresses:
                problem = self.address_check(addr)
                if problem:
                    raise FetchError(
                        403, "url_forbidden",
                        f"refusing to fetch {url.scheme}://{host}: it resolves to {addr}, {problem}; this server only "
                        "fetches from public addresses (start it with --allow-private-urls to allow local ones)",
                    )
        return addresses

    # -- the whole fetch -------------------------------------------------------------------------------------
    def fetch(self, url: str) -> FetchedImage:
        """Download the image at ``url``; raises :class:`FetchError`. Blocking: call it from a worker thread."""
        deadline = time.monotonic() + self.timeout_s
        current = self._parse(url)
        with httpx.Client(trust_env=False, follow_redirects=False, verify=True) as client:
            for _hop in range(self.max_redirects + 1):
                addresses = self._checked_addresses(current, deadline)
                response_or_next = self._request(client, current, addresses, deadline)
                if isinstance(response_or_next, FetchedImage):
                    return response_or_next
                current = response_or_next
        raise FetchError(502, "too_many_redirects", f"the URL redirected more than {self.max_redirects} times")

    def _request(self, client: httpx.Client, url: httpx.URL, addresses: list[str], deadline: float):
        """GET ``url`` from one of ``addresses``; returns a FetchedImage, or the next URL on a redirect."""
        host = url.raw_host.decode("ascii")
        default_port = 443 if url.scheme == "https" else 80
        port = url.port or default_port
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host:  # IPv6 literal keeps its brackets in the Host header
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        last_error: Exception | None = None
        for addr in addresses[:3]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pinned = url.copy_with(host=addr, port=port)  # connect to the address that was checked
            extensions = {"timeout": {"connect": remaining, "read": remaining, "write": remaining, "pool": remaining}}
            if url.scheme == "https":
                extensions["sni_hostname"] = host  # TLS name and certificate check use the real host name
            request = client.build_request(
                "GET", pinned,
                headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "image/*",
                         "Accept-Encoding": "identity"},
                extensions=extensions,
            )
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException:
                raise FetchError(504, "url_timeout", f"{host} did not answer within {self.timeout_s:g} s") from None
            except httpx.HTTPError as e:
                last_error = e
                continue
            try:
                return self._read(response, url, deadline, extensions["timeout"])
            finally:
                response.close()
        if last_error is None:
            raise FetchError(504, "url_timeout", f"timed out (after {self.timeout_s:g} s) fetching {host}")
        raise FetchError(502, "url_unreachable", f"cannot connect to {host} ({last_error})")

    def _read(self, response: httpx.Response, url: httpx.URL, deadline: float, timeouts: dict | None = None):
        shown = str(url)
        if response.status_code in (301, 302, 303, 307, 308):
            location = response.headers.get("location")
            if not location:
                raise FetchError(502, "url_bad_redirect", f"{shown} answered a redirect without a Location")
            return self._parse(urljoin(shown, location))
        if response.status_code != 200:
            raise FetchError(
                502, "url_http_error", f"the URL answered HTTP {response.status_code}, not an image ({shown})"
            )
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type and not (
            (content_type.startswith("image/") and content_type != "image/svg+xml")
            or content_type in _GENERIC_BINARY_TYPES
        ):
            raise FetchError(415, "unsupported_media_type", f"the URL serves {content_type}, not an image ({shown})")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(
                413, "image_too_large",
                f"the image at the URL is {int(declared):,} bytes, over this server's limit of {self.max_bytes:,}",
            )
        chunks: list[bytes] = []
        size = 0
        # Each network read as it arrives (a chunk size would make httpx wait for that many bytes, so a server
        # that trickles bytes would never reach the deadline check), and each read may wait only until the
        # deadline: the transport reads the request's "read" timeout afresh for every read.
        stream = response.iter_raw()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FetchError(504, "url_timeout", f"downloading took longer than {self.timeout_s:g} s")
                if timeouts is not None:
                    timeouts["read"] = remaining
                chunk = next(stream, None)
                if chunk is None:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(
                        413, "image_too_large",
                        f"the image at the URL is over this server's limit of {self.max_bytes:,} bytes",
                    )
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise FetchError(504, "url_timeout", f"downloading took longer than {self.timeout_s:g} s") from None
        except httpx.HTTPError as e:
            raise FetchError(502, "url_unreachable", f"the download from the URL failed ({e})") from None
        return FetchedImage(data=b"".join(chunks), url=shown, content_type=content_type)
