"""A 2 GiB artifact streams through put and get with flat memory (peak RSS measured in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    from modelyard.testing import make_platform, vm_hwm_kib

    SIZE = int(sys.argv[2])
    BLOCK = 1 << 20

    class Generated:
        '''A read()-able stream of SIZE pseudo-random bytes that never holds more than one block.'''
        def __init__(self):
            self.left, self.counter, self.sha = SIZE, 0, hashlib.sha256()
        def read(self, n=-1):
            n = self.left if n is None or n < 0 else min(n, self.left)
            out = bytearray()
            while len(out) < n:
                self.counter += 1
                out += hashlib.shake_256(self.counter.to_bytes(8, "big")).digest(min(BLOCK, n - len(out)))
            self.left -= n
            self.sha.update(out)
            return bytes(out)

    platform = make_platform(Path(sys.argv[1]))
    baseline = vm_hwm_kib()
    src = Generated()
    digest = platform.artifacts.put(src)
    assert digest == src.sha.hexdigest(), "digest differs from the generated stream's"
    back, size = hashlib.sha256(), 0
    for chunk in platform.artifacts.iter_bytes(digest):
        back.update(chunk)
        size += len(chunk)
    peak = vm_hwm_kib()
    print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "size": size,
                      "same": back.hexdigest() == digest}))
    """
)


@pytest.mark.slow
def test_two_gib_put_get_keeps_peak_rss_under_200_mib(tmp_path: Path) -> None:
    size = 2 << 30
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "home"), str(size)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["size"] == size and result["same"]
    assert result["peak_kib"] < 200 * 1024, result
