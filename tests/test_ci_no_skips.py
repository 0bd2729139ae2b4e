"""Under CI=true a skipped test is a failed test (tests/conftest.py): a missing Redis,
PostgreSQL, browser or extra must never pass as green."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(HERE / "backends.py", tmp_path / "backends.py")
    (tmp_path / "test_down.py").write_text(
        "import pytest\n\n"
        "def test_needs_a_server():\n    pytest.skip('the server is down')\n\n"
        "@pytest.mark.skipif(True, reason='an extra is missing')\n"
        "def test_needs_an_extra():\n    pass\n"
    )
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_skips_fail_under_ci(tmp_path: Path) -> None:
    done = run(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    # the skip in the test body fails it; the skipif marker fails its setup (an error)
    assert "1 failed, 1 error" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]


def test_skips_stay_skips_locally(tmp_path: Path) -> None:
    done = run(tmp_path, "")
    assert done.returncode == 0, done.stdout
    assert "2 skipped" in done.stdout
