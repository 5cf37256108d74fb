"""Shared test set-up: the data folder and a small synthetic task for sandbox tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The shared data folder sits beside the checkout (see DEVELOPERS.md); the Makefile exports
# CODEDIFF_DATA too, this only covers running pytest by hand.
if not os.environ.get("CODEDIFF_DATA"):
    os.environ["CODEDIFF_DATA"] = str((REPO.parent / "shared" / "data").resolve())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["CODEDIFF_DATA"])
    if not (path / "mbpp" / "mbpp.jsonl").is_file():
        pytest.fail(f"test data not found in {path}: set CODEDIFF_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Oracle caches go to a per-session folder, so tests never depend on earlier runs."""
    if not os.environ.get("CODEDIFF_CACHE"):
        os.environ["CODEDIFF_CACHE"] = str(tmp_path_factory.mktemp("codediff-cache"))


def make_task(test: str = "assert f(2) == 4", timeout: float = 2.0, n: int = 1):
    """A base-test task with `n` problems T/0..T/n-1, all asking for f(x) = 2x."""
    from dataclasses import replace

    from codediff.harness.tasks import DatasetId, Problem, Task, get_spec

    spec = replace(get_spec("humaneval"), name="toy", timeout=timeout)
    problems = [Problem(task_id=f"T/{i}", prompt="def f(x):\n", entry_point="f",
                        reference="def f(x):\n    return 2 * x\n", test=test)
                for i in range(n)]
    return Task(spec, problems, DatasetId("toy", "1", "0" * 64, "toy"))


def run_triton_interpreted(script: str) -> None:
    """Run `script` in a fresh Python under Triton's CPU interpreter (TRITON_INTERPRET is read at
    import time, hence the subprocess); it must print "ok"."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
