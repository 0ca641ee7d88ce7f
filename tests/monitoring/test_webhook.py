"""Webhooks refuse internal targets (SSRF): the metadata service, loopback, private ranges, redirects."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelyard.monitoring._webhook import WebhookPolicy, WebhookRefused, check_url, send


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[str, object]] = []
    redirects: dict[str, str] = {}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        target = self.redirects.get(self.path)
        if target is not None:
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        self.received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.received, _Hook.redirects = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


LOCAL = WebhookPolicy.parse(networks=["127.0.0.1/32"])


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.0.0.5/hook",
        "https://172.16.3.4/hook",
        "https://192.168.1.1/hook",
        "https://100.64.0.1/hook",
        "https://[::1]/hook",
        "https://[fe80::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fd00::1]/hook",
        "https://0.0.0.0/hook",
    ],
)
def test_internal_addresses_are_refused_even_when_the_host_is_allowlisted(url: str) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    policy = WebhookPolicy.parse(hosts=[host, "localhost"])
    with pytest.raises(WebhookRefused, match="loopback, link-local, private or reserved"):
        check_url(url, policy)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example/x", "only https"),
        ("file:///etc/passwd", "only https"),
        ("https://user:pw@hooks.example/x", "credentials"),
        ("https://elsewhere.example/x", "not on the allowlist"),
        ("https:///x", "names no host"),
        ("https://hooks.example:99999/x", "invalid port"),
    ],
)
def test_malformed_or_unlisted_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(WebhookRefused, match=message):
        check_url(url, WebhookPolicy.parse(hosts=["hooks.example"]))


def test_an_allowlisted_network_receives_the_payload(hook: str) -> None:
    result = send(f"{hook}/alerts", {"alert": "drift", "score": 0.4}, LOCAL)
    assert result.status == 204 and result.redirects == 0
    assert _Hook.received == [("/alerts", {"alert": "drift", "score": 0.4})]
    with pytest.raises(WebhookRefused):  # without the network on the list, loopback is refused
        send(f"{hook}/alerts", {}, WebhookPolicy.parse())


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam",
        "http://10.0.0.7/internal",
        "http://[::1]:9/x",
        "https://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_a_redirect_to_an_internal_address_is_refused(hook: str, target: str) -> None:
    _Hook.redirects["/alerts"] = target
    with pytest.raises(WebhookRefused):
        send(f"{hook}/alerts", {"alert": "drift"}, LOCAL)
    assert _Hook.received == []


def test_redirects_within_the_allowlist_are_followed_and_bounded(hook: str) -> None:
    _Hook.redirects["/old"] = "/new"
    assert send(f"{hook}/old", {"n": 1}, LOCAL).redirects == 1
    assert _Hook.received == [("/new", {"n": 1})]
    _Hook.redirects.update({"/a": "/b", "/b": "/c", "/c": "/d", "/d": "/e"})
    with pytest.raises(WebhookRefused, match="more than 3"):
        send(f"{hook}/a", {}, LOCAL)


def test_bad_policies() -> None:
    from modelyard.errors import UsageError

    with pytest.raises(UsageError, match="not a network"):
        WebhookPolicy.parse(networks=["10.0.0.0/99"])
