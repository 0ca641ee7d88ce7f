"""A real local S3-compatible server process (moto) for tests; DESIGN.md section 5 wants no mocks of S3."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

# What a test's boto3 client needs to talk to moto. Applied by fixtures (e.g. with
# monkeypatch.setenv), never at import, so importing this module changes nothing. The config file
# paths point nowhere so a developer's ~/.aws profile cannot leak into tests.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/modelyard-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/modelyard-test-aws-credentials",
}


def _free_port() -> int:
    # The port is free when we look; another process could take it before moto binds, which the
    # caller sees as a startup failure with moto's log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    # No proxies: an HTTP(S)_PROXY in the environment must not intercept 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


@contextlib.contextmanager
def moto_s3_server(*, startup_timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m moto.server`` on a free 127.0.0.1 port; yield its endpoint URL; stop it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        # The log goes to a file, not a pipe: a pipe nobody reads would fill up and stall the server.
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while not _answers(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-2000:].decode("utf-8", "replace")
                    raise RuntimeError(
                        f"moto S3 server did not start on {url} (is moto[server] installed?):\n{tail}"
                    )
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
