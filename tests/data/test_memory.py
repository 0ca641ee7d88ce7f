"""A large-ish tree is versioned with flat memory: peak RSS does not grow with the number of files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from modelyard.testing import make_platform, vm_hwm_kib
    from modelyard.data import add_version, checkout, _manifest

    _manifest.RACY_NS = 0

    def tree(root, n):
        for i in range(n):
            d = root / f"d{i // 500:03d}"
            if i % 500 == 0:
                d.mkdir(parents=True)
            (d / f"f{i:06d}.txt").write_bytes(b"%d" % i)
        return root

    base = Path(sys.argv[1])
    small, large = int(sys.argv[2]), int(sys.argv[3])
    platform = make_platform(base / "home")
    ctx = platform.context()
    # Warm-up: imports, stores, connection pool and the first objects directories.
    add_version(platform, ctx, tree(base / "warm", 300), "warm")
    baseline = vm_hwm_kib()
    add_version(platform, ctx, tree(base / "small", small), "small")
    after_small = vm_hwm_kib()
    info = add_version(platform, ctx, tree(base / "large", large), "large")
    after_large = vm_hwm_kib()
    checkout(platform, ctx, "large@1", base / "out")
    after_checkout = vm_hwm_kib()
    print(json.dumps({"baseline": baseline, "small": after_small, "large": after_large,
                      "checkout": after_checkout, "files": info.files}))
    """
)


def test_twenty_thousand_files_keep_peak_rss_flat(tmp_path: Path) -> None:
    small, large = 2_000, 20_000
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(small), str(large)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["files"] == large
    # Ten times the files may not cost more than a few MiB more peak memory than the small tree did
    # (a design holding per-file records would add tens of MiB here).
    growth = r["large"] - r["small"]
    assert growth < 16 * 1024, r
    assert r["checkout"] - r["small"] < 24 * 1024, r
