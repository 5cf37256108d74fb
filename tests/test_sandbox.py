"""Hostile samples are contained and classified, and the judge carries on.

Each case runs in a real bubblewrap sandbox through the same Judge that `codediff evaluate` uses.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time

import pytest
from codediff.harness.judge import Job, Judge
from codediff.harness.sandbox import Limits

from tests.conftest import make_task

GOOD = "def f(x):\n    return 2 * x\n"
MARK = "424242.5"  # a sleep length no other process on the machine uses


def judge_programs(programs: list[str], workers: int = 1, timeout: float = 2.0,
                   limits: Limits | None = None) -> list[dict]:
    task = make_task(timeout=timeout, n=len(programs))
    judge = Judge(task, workers=workers, limits=limits)
    judge.prepare()
    jobs = [Job(str(i), f"T/{i}", p) for i, p in enumerate(programs)]
    verdicts = {job.key: v for job, v in judge.run(jobs)}
    return [verdicts[str(i)] for i in range(len(programs))]


def leftover_processes(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def one(program: str, **kw) -> dict:
    return judge_programs([textwrap.dedent(program), GOOD], **kw)[0]


def test_good_and_wrong_and_syntax():
    v = judge_programs([GOOD, "def f(x):\n    return x + 3\n", "def f(x) return x\n",
                        "def f(x):\n    return undefined_name\n"])
    assert [r["status"] for r in v] == ["passed", "failed", "syntax_error", "error"]
    assert v[3]["detail"].startswith("NameError")


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)",
                                       "raise SystemExit(0)", "import posix\nposix._exit(0)"])
def test_exit_before_tests_is_never_a_pass(exit_call):
    v = one(GOOD + exit_call + "\n")
    assert v["status"] in ("error", "crash"), v


def test_fork_bomb_is_capped_and_the_sandbox_recovers():
    bombs = ["import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
             "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n"
             "        pass\n"]
    for bomb in bombs:
        v = judge_programs([bomb, GOOD, GOOD])
        assert v[0]["status"] == "timeout"
        assert [r["status"] for r in v[1:]] == ["passed", "passed"]


def test_bomb_and_hog_do_not_fail_neighbours():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    hog = "x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n"
    programs = [bomb, hog] + [GOOD] * 30
    v = judge_programs(programs, workers=2, timeout=5.0, limits=Limits(memory_bytes=1 << 30))
    assert v[0]["status"] == "timeout"
    assert v[1]["status"] == "oom"
    assert all(r["status"] == "passed" for r in v[2:]), [r for r in v[2:] if r["status"] != "passed"]


def test_memory_hog_is_oom():
    assert one("x = bytearray(64 << 30)\n")["status"] == "oom"


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    v = one("def f(x):\n    while True:\n        pass\n", timeout=1.0)
    assert v["status"] == "timeout" and time.monotonic() - t0 < 10


def test_sleeping_and_double_forked_children_are_killed():
    prog = f"""
    import os
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "{MARK}"])
        os._exit(0)
    def f(x):
        return 2 * x
    """
    v = one(prog)
    assert v["status"] == "passed"
    assert leftover_processes(f"sleep\0{MARK}") == []


def test_forked_child_holding_the_pipe_does_not_stall_the_verdict():
    prog = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n" + GOOD
    t0 = time.monotonic()
    v = one(prog, timeout=5.0)
    assert v["status"] == "passed" and time.monotonic() - t0 < 4


def test_killing_the_parent_is_a_crash_and_the_next_sample_runs():
    v = judge_programs(["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", GOOD,
                        "import os, signal\nos.kill(1, signal.SIGKILL)\n", GOOD])
    assert v[0]["status"] in ("crash", "error") and v[0]["status"] != "passed"
    assert v[1]["status"] == "passed" and v[3]["status"] == "passed"
    assert v[2]["status"] != "passed"


def test_megabytes_of_output_are_swallowed():
    prog = GOOD + "import sys\nfor _ in range(50):\n    print('x' * (1 << 20))\n" \
        "    sys.stderr.write('y' * (1 << 20))\n"
    assert one(prog)["status"] == "passed"


def test_segfault_is_a_crash():
    v = one("import ctypes\nctypes.string_at(0)\n")
    assert v["status"] == "crash" and "SIGSEGV" in v["detail"]


def test_files_outside_scratch_are_out_of_reach(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    evil = tmp_path / "evil.txt"
    prog = f"""
    import os
    for path in ({str(victim)!r}, "/usr/lib/os-release", "/etc/hostname"):
        try:
            os.remove(path)
        except OSError:
            pass
    for path in ({str(evil)!r}, "/usr/evil.txt", os.path.expanduser("~/../evil.txt")):
        try:
            open(path, "w").write("pwned")
        except OSError:
            pass
    open("scratch.txt", "w").write("fine")   # its own scratch dir is writable
    def f(x):
        return 2 * x
    """
    assert one(prog)["status"] == "passed"
    assert victim.read_text() == "keep me"
    assert not evil.exists() and not os.path.exists("/usr/evil.txt")


def test_no_network_not_even_host_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        prog = f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
        def f(x):
            return 2 * x
        """
        v = one(prog)
        assert v["status"] == "error" and ("ConnectionRefused" in v["detail"]
                                           or "OSError" in v["detail"]), v
    finally:
        server.close()


def test_runs_unprivileged_in_a_fresh_namespace():
    prog = """
    import os
    assert os.getpid() < 100          # its own PID namespace
    assert os.getuid() != 0           # never root, even when the judge runs as root
    assert not os.path.exists("/home") or os.listdir("/home") == []
    def f(x):
        return 2 * x
    """
    assert one(prog)["status"] == "passed"


def test_same_input_same_verdicts():
    programs = [GOOD, "def f(x):\n    return x\n", "def f(x) return\n",
                "def f(x):\n    return {1, 2, 3}.pop() * 0 + 2 * x\n"]
    first = [r["status"] for r in judge_programs(programs, workers=2)]
    second = [r["status"] for r in judge_programs(programs, workers=2)]
    assert first == second == ["passed", "failed", "syntax_error", "passed"]


def test_unsafe_mode_judges_the_same_and_cleans_up(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    task = make_task(n=3)
    judge = Judge(task, workers=1, unsafe=True)
    jobs = [Job("0", "T/0", GOOD), Job("1", "T/1", "def f(x):\n    return x\n"),
            Job("2", "T/2", "import os\nos._exit(0)\n")]
    got = {j.key: v["status"] for j, v in judge.run(jobs)}
    assert got == {"0": "passed", "1": "failed", "2": "crash"}
    assert list(tmp_path.iterdir()) == []
