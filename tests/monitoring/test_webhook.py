"""Webhooks refuse internal targets (SSRF): the metadata service, loopback, private ranges, redirects."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
        if self.path.startswith("/services/"):  # a Slack-style URL whose path is the secret
            self.send_response(500)
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
        "https://[2002:a9fe:a9fe::1]/hook",  # 6to4 around 169.254.169.254 (counted as global)
        "https://[2002:7f00:1::]/hook",  # 6to4 around 127.0.0.1
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",  # Teredo: a tunnel to any IPv4 host
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


def test_a_6to4_address_around_a_public_ipv4_address_is_allowed() -> None:
    url = "https://[2002:808:808::1]/hook"  # 8.8.8.8 inside: only the embedded address decides
    check_url(url, WebhookPolicy.parse(hosts=["2002:808:808::1"]))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example/x", "only https"),
        ("file:///etc/passwd", "only https"),
        ("https://user:pw@hooks.example/x", "a user or password in the URL is refused"),
        ("https://elsewhere.example/x", "not on the allowlist"),
        ("https:///x", "names no host"),
        ("https://hooks.example:99999/x", "invalid port"),
        ("https://[::1/x", "not a valid URL"),  # urlsplit's ValueError, not an unexpected error
        ("https://[hooks.example]/x", "not a valid URL"),
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


def test_a_redirect_to_a_malformed_url_is_refused(hook: str) -> None:
    _Hook.redirects["/alerts"] = "http://[::1/SECRET"
    with pytest.raises(WebhookRefused, match="redirected to an invalid URL") as err:
        send(f"{hook}/alerts", {"alert": "drift"}, LOCAL)
    assert "SECRET" not in err.value.message and _Hook.received == []


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


def test_a_secret_in_the_url_is_never_in_an_error(hook: str) -> None:
    # The message goes to the CLI and into the append-only audit log.
    from modelyard.errors import UsageError

    with pytest.raises(UsageError) as err:
        send(f"{hook}/services/T01/B02/xoxb-SECRET?token=SECRET2", {"n": 1}, LOCAL)
    assert "HTTP 500" in err.value.message and "SECRET" not in err.value.message
    assert f"'{hook}/...'" in err.value.message
    with pytest.raises(WebhookRefused) as refused:
        check_url("https://user:PASSWORD@hooks.example/x", WebhookPolicy.parse(hosts=["hooks.example"]))
    assert "PASSWORD" not in refused.value.message
    with pytest.raises(WebhookRefused, match="no spaces or control characters") as spaced:
        send(f"{hook}/services/T01/xoxb-SECRET?channel=ops team", {"n": 1}, LOCAL)  # http.client quotes it
    assert "SECRET" not in spaced.value.message


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_timeout() -> None:
    import socket
    import time

    from modelyard.errors import UsageError

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))  # every read succeeds well inside a per-read timeout
                except OSError:
                    return

    threading.Thread(target=drip, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow"
    started = time.monotonic()
    try:
        with pytest.raises(UsageError, match="no answer within 1 s"):
            send(url, {"n": 1}, WebhookPolicy.parse(networks=["127.0.0.1/32"], timeout_s=1.0))
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        listener.close()


def test_reading_rules_looks_up_no_host_and_sending_checks_its_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validating a rules file (offline, in CI, in `yard monitor run`'s start) must not need the network: a
    # name is resolved and its addresses checked when a webhook is sent, against what it resolves to then.
    import socket

    import yaml

    from modelyard.monitoring._alerts import load_alerts

    looked_up: list[str] = []

    def offline(host: str, *args: object, **kwargs: object) -> object:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    path = tmp_path / "rules.yaml"
    rules = {
        "model": "m@1",
        "rules": [{"name": "x", "when": "requests > 1", "actions": ["webhook"]}],
        "webhook": {"url": "https://hooks.example/yard", "allow_hosts": ["hooks.example"]},
    }
    path.write_text(yaml.safe_dump(rules))
    policy = load_alerts(path)
    assert policy.webhook is not None and looked_up == []
    # what needs no lookup is still refused when the file is read
    for url, message in [
        ("https://elsewhere.example/x", "not on the allowlist"),
        ("http://169.254.169.254/latest", "loopback, link-local, private or reserved"),
        ("ftp://hooks.example/x", "only https"),
    ]:
        path.write_text(yaml.safe_dump({**rules, "webhook": {"url": url, "allow_hosts": ["hooks.example"]}}))
        with pytest.raises(WebhookRefused, match=message):
            load_alerts(path)
    assert looked_up == []
    hook = policy.webhook
    with pytest.raises(WebhookRefused, match="does not resolve"):
        send(hook.url, {"n": 1}, WebhookPolicy.parse(hook.allow_hosts, hook.allow_networks))
    assert looked_up == ["hooks.example"]
