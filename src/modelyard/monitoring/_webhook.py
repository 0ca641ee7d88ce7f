"""Webhooks that cannot be turned against the network they run in (server-side request forgery).

A webhook URL must be ``https`` (``http`` only for an allowlisted private address), its host must be on the
allowlist, and every address the host resolves to must be public: loopback, link-local (the cloud metadata
service at 169.254.169.254), private, shared, multicast, reserved and unspecified ranges are refused, in
IPv4, IPv6, IPv4-mapped and 6to4 forms (Teredo always), unless that exact network is allowlisted
(``allow_networks``). The connection goes to the address that was checked (DNS is resolved once and
pinned, so a second lookup cannot rebind the name to an internal address) while TLS still verifies the
certificate for the host name.
Redirects are followed at most three times and each target is checked the same way, so a redirect to an
internal address is refused before any connection is made to it.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from modelyard.errors import UsageError

MAX_REDIRECTS = 3
MAX_BODY = 1 << 20


class WebhookRefused(UsageError):
    """The URL, its host or one of its addresses is not allowed (nothing was sent to it)."""


@dataclass(frozen=True)
class WebhookPolicy:
    hosts: tuple[str, ...] = ()  # host names (exact, case-insensitive) webhooks may go to
    networks: tuple[str, ...] = ()  # CIDRs allowed even though private or loopback, e.g. "10.1.2.0/24"
    timeout_s: float = 10.0

    @classmethod
    def parse(
        cls, hosts: Sequence[str] = (), networks: Sequence[str] = (), timeout_s: float = 10.0
    ) -> WebhookPolicy:
        for n in networks:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise UsageError(f"allow_networks: {n!r} is not a network such as 10.1.2.0/24") from None
        return cls(tuple(h.lower().rstrip(".") for h in hosts), tuple(networks), timeout_s)


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:  # a tunnel to whatever IPv4 host it embeds; no webhook receiver needs one
            return True
        # 6to4 (2002::/16) counts as global, but a host with a 6to4 route sends it to the IPv4 address
        # inside: 2002:a9fe:a9fe:: is the metadata service.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            ip = embedded
    return bool(
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def shown(url: str) -> str:
    """``url`` as errors, logs and the audit log may show it: scheme, host and port only. Receivers such
    as Slack's carry their secret in the path or query, and a user part may hold a password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "'<unparsable URL>'"
    rest = "/..." if parts.path not in ("", "/") or parts.query else ""
    return repr(f"{parts.scheme}://{host}{port}{rest}")


def check_url(url: str, policy: WebhookPolicy, *, resolve: bool = True) -> tuple[str, str, int, str]:
    """(scheme, host, port, address to connect to) for an allowed URL, else WebhookRefused saying why.

    ``resolve=False`` checks all that needs no network (reading a rules file must work offline): the URL,
    the allowlist and an address literal; a host name is then not looked up (the address returned is
    ``""``) and its addresses are checked by :func:`send`, against what it resolves to when it sends."""
    if not isinstance(url, str) or len(url) > 2048:
        raise WebhookRefused("a webhook URL must be a string of at most 2048 characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookRefused(f"webhook {shown(url)}: a URL has no spaces or control characters; encode them")
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL" and the like: a bracket without its pair, a bad literal
        raise WebhookRefused(f"webhook {shown(url)} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise WebhookRefused(
            f"webhook {shown(url)}: only https URLs (http for an allowlisted private address)"
        )
    if parts.username or parts.password:
        raise WebhookRefused(
            f"webhook {shown(url)}: a user or password in the URL is refused; a receiver that needs a "
            "secret takes it in the path, which is never printed or audited"
        )
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise WebhookRefused(f"webhook {shown(url)} names no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise WebhookRefused(f"webhook {shown(url)} has an invalid port") from None
    networks = [ipaddress.ip_network(n, strict=False) for n in policy.networks]
    literal = _literal(host)
    if literal is None and host not in policy.hosts:
        raise WebhookRefused(
            f"webhook host {host!r} is not on the allowlist ({', '.join(policy.hosts) or 'empty'})"
        )
    if literal is not None:
        addresses = [str(literal)]  # an address is its own only address: nothing to look up
    elif not resolve:
        return scheme, host, port, ""
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise WebhookRefused(f"webhook host {host!r} does not resolve ({exc.strerror})") from None
        addresses = sorted({str(info[4][0]) for info in infos})
    allowed_private = False
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%")[0])
        if any(ip in n for n in networks):
            allowed_private = True
            continue
        if _blocked(ip):
            raise WebhookRefused(
                f"webhook host {host!r} resolves to {a}, a loopback, link-local, private or reserved "
                "address; allowlist that network explicitly (allow_networks) if it is meant"
            )
        if literal is not None and host not in policy.hosts:
            raise WebhookRefused(f"webhook address {host} is not on the allowlist")
    if scheme == "http" and not allowed_private:
        raise WebhookRefused(
            f"webhook {shown(url)}: plain http only to an allowlisted private network; use https"
        )
    return scheme, host, port, addresses[0]


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class _Pinned(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _failure(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "Connection refused": no URL in it
    return type(exc).__name__


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    cut.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class WebhookResult:
    url: str
    status: int
    redirects: int


def send(url: str, payload: Any, policy: WebhookPolicy) -> WebhookResult:
    """POST ``payload`` as JSON; WebhookRefused for a forbidden URL or redirect, UsageError if it fails."""
    body = json.dumps(payload, default=str).encode()
    if len(body) > MAX_BODY:
        raise UsageError(f"webhook payload of {len(body)} bytes is over the {MAX_BODY}-byte limit")
    current = url
    deadline = time.monotonic() + policy.timeout_s  # for the whole call, redirects included
    for hop in range(MAX_REDIRECTS + 1):
        scheme, host, port, address = check_url(current, policy)
        conn_type = _PinnedTLS if scheme == "https" else _Pinned
        left = deadline - time.monotonic()
        if left <= 0:
            raise UsageError(f"webhook {shown(current)} failed: no answer within {policy.timeout_s:g} s")
        conn = conn_type(host, port, address, left)
        # A receiver that drips a byte at a time never trips a per-read timeout: at the deadline the
        # socket is shut down under the blocked read.
        cut = threading.Event()
        watchdog = threading.Timer(left, _cut, (conn, cut))
        watchdog.daemon = True
        watchdog.start()
        parts = urlsplit(current)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(
                "POST",
                path,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "modelyard-monitor/1",
                    "Host": parts.netloc,
                },
            )
            response = conn.getresponse()
            response.read(64 << 10)
            status, location = response.status, response.getheader("Location")
        except (OSError, http.client.HTTPException) as exc:
            # http.client's own messages may quote the request path (the secret): only the kind of failure
            why = f"no answer within {policy.timeout_s:g} s" if cut.is_set() else _failure(exc)
            raise UsageError(f"webhook {shown(current)} failed: {why}") from None
        finally:
            watchdog.cancel()
            conn.close()
        if cut.is_set():  # cut off while reading the body: not an answer to rely on
            raise UsageError(f"webhook {shown(current)} failed: no answer within {policy.timeout_s:g} s")
        if status in (301, 302, 303, 307, 308) and location:
            try:
                current = urljoin(current, location)
            except ValueError:
                raise WebhookRefused(f"webhook {shown(current)} redirected to an invalid URL") from None
            continue
        if status >= 400:
            raise UsageError(f"webhook {shown(current)} answered HTTP {status}")
        return WebhookResult(current, status, hop)
    raise WebhookRefused(f"webhook {shown(url)} redirected more than {MAX_REDIRECTS} times")
