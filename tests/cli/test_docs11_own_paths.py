"""The refusal of modelyard's own files names them as what they are, not as "X holds X"."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.testing import Yard


@pytest.mark.parametrize(
    ("args", "given"),
    [
        (("artifacts", "put", "home/keys/master.key"), "home/keys/master.key"),
        (("data", "add", "home", "--name", "h"), "home"),
    ],
)
def test_the_guarded_path_itself_is_called_modelyards_own(
    yard: Yard, home: Path, tmp_path: Path, args: tuple[str, ...], given: str
) -> None:
    assert home.parent == tmp_path and yard("init").code == 0
    r = yard(*args)
    assert r.code == 2
    # It read "home/keys/master.key holds /tmp/.../home/keys/master.key, modelyard's own".
    assert r.error.startswith(f"error: {given} is modelyard's own"), r.error
    assert " holds " not in r.error
    r = yard("data", "add", "home/keys", "--name", "k")  # a folder holding the key says what it holds
    assert r.code == 2 and r.error.startswith("error: home/keys holds ") and "master.key" in r.error
