"""Sandboxed execution: one bubblewrap sandbox per worker, each running a forking zygote.

What a sample can and cannot do inside (see docs/sandbox.md for the full story):
- sees a read-only /usr, /lib*, /bin and the Python install; no home, no repo, no /etc secrets;
- writes only to its own scratch dir on a size-capped tmpfs, wiped after every sample;
- has no network (own net namespace: loopback only), its own PID, IPC and UTS namespaces;
- runs under rlimits (address space, processes, file size, open files, CPU seconds) and a wall-clock
  deadline enforced twice: by the zygote, and by the host, which kills the whole sandbox if the
  zygote stops answering;
- when the host runs as root (CI, containers), every sandbox drops to its own unprivileged uid,
  so RLIMIT_NPROC caps a fork bomb per sample and neighbours keep running;
- dies with its parent (`--die-with-parent`); closing the sandbox kills its whole PID namespace.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from codediff.errors import UserError

ZYGOTE_SOURCE = (Path(__file__).with_name("_zygote.py")).read_text()


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 4 << 30  # RLIMIT_AS per process (EvalPlus's default)
    processes: int = 64  # RLIMIT_NPROC for the sandbox's uid
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE
    open_files: int = 256  # RLIMIT_NOFILE
    scratch_bytes: int = 256 << 20  # size of the sandbox's tmpfs


class SandboxUnavailable(RuntimeError):
    pass


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _python_exe() -> str:
    return os.path.realpath(sys.executable)


def _ro_system_args() -> list[str]:
    args: list[str] = []
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/alternatives"):
        args += ["--ro-bind-try", f, f]
    exe = _python_exe()
    prefix = os.path.realpath(sys.base_prefix)
    made: set[str] = set()
    for path in sorted({prefix, os.path.dirname(os.path.dirname(exe))}):
        if path.startswith("/usr/"):
            continue
        # bwrap would create the mount point's parents as 0700 root dirs, which the sandbox's
        # unprivileged uid could not traverse: create them world-traversable first.
        parts = Path(path).parts[1:-1]
        for i in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", path, path]
    return args


def _sandbox_uid(slot: int) -> int:
    # Distinct per process and slot, far above real users; no passwd entry is needed.
    return 200_000 + (os.getpid() % 10_000) * 64 + slot


class Sandbox:
    """One long-lived sandbox + zygote. Not thread-safe: one thread drives one sandbox."""

    def __init__(self, slot: int = 0, *, limits: Limits | None = None, unsafe: bool = False):
        self.slot = slot
        self.limits = limits or Limits()
        self.unsafe = unsafe
        self.proc: subprocess.Popen | None = None
        self.known_tasks: set[str] = set()
        self.restarts = 0
        self._ids = 0

    # -- life cycle ---------------------------------------------------------------------------
    def command(self) -> list[str]:
        root = os.geteuid() == 0
        config = {"sandbox": not self.unsafe, "limits": asdict(self.limits),
                  "uid": _sandbox_uid(self.slot) if (root and not self.unsafe) else None,
                  "scratch": "/tmp/codediff" if not self.unsafe else None}
        py = [_python_exe(), "-s", "-c", ZYGOTE_SOURCE]
        if self.unsafe:
            import tempfile
            self._unsafe_scratch = tempfile.mkdtemp(prefix="codediff-unsafe-")
            config["scratch"] = self._unsafe_scratch
            return py + [json.dumps(config)]
        bw = bwrap_path()
        if bw is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
        args = [bw, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
                "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox",
                "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONHASHSEED", "0",
                "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
                "--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--size", str(self.limits.scratch_bytes), "--tmpfs", "/tmp"]
        args += _ro_system_args()
        if root:
            # Privileged bwrap (no user namespace): keep only what the zygote needs to drop to
            # its own uid; it loses every capability with that setuid.
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user"]
        return args + ["--"] + py + [json.dumps(config)]

    def start(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     start_new_session=True)
        self.known_tasks = set()
        hello = self._read(deadline=time.monotonic() + 30)
        if hello is None or not hello.get("ready"):
            err = b""
            try:
                self.proc.kill()
                err = self.proc.stderr.read() if self.proc.stderr else b""
            except OSError:
                pass
            self.close()
            raise SandboxUnavailable(err.decode(errors="replace").strip().splitlines()[-1:]
                                     and err.decode(errors="replace").strip().splitlines()[-1]
                                     or "the sandbox did not start")

    def close(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
            p.wait()
        for f in (p.stdout, p.stderr):
            if f:
                f.close()
        if getattr(self, "_unsafe_scratch", None):  # unconfined runs scratch in the host's /tmp
            shutil.rmtree(self._unsafe_scratch, ignore_errors=True)
            self._unsafe_scratch = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- protocol -----------------------------------------------------------------------------
    def _write(self, obj: dict) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()

    def _read(self, deadline: float) -> dict | None:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        head = self._read_exact(fd, 4, deadline)
        if head is None:
            return None
        body = self._read_exact(fd, struct.unpack(">I", head)[0], deadline)
        if body is None:
            return None
        try:
            out = json.loads(body)
        except ValueError:
            return None
        return out if isinstance(out, dict) else None

    @staticmethod
    def _read_exact(fd: int, n: int, deadline: float) -> bytes | None:
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def request(self, msg: dict, timeout: float, task: tuple[str, dict] | None = None) -> dict:
        """Send one request; restart the sandbox if it dies or stops answering."""
        if self.proc is None:
            self.start()
        self._ids += 1
        msg = dict(msg, id=self._ids, timeout=timeout)
        try:
            if task is not None and task[0] not in self.known_tasks:
                self._write({"op": "task", "key": task[0], "task": task[1]})
                self.known_tasks.add(task[0])
            self._write(msg)
            deadline = time.monotonic() + timeout + 10
            reply = self._read(deadline=deadline)
        except (BrokenPipeError, OSError):
            deadline, reply = 0.0, None
        if reply is None or reply.get("id") != self._ids:
            # The zygote died (a sample killed it) or hung: the sample is to blame. An answer
            # that ended before the deadline means the pipe closed: the sandbox is dying even
            # if its process has not been reaped yet.
            hung = time.monotonic() >= deadline > 0
            self.close()
            self.restarts += 1
            if hung:
                return {"status": "timeout", "detail": "sandbox stopped answering",
                        "seconds": timeout}
            return {"status": "crash", "detail": "the sample killed its sandbox", "seconds": 0.0}
        return reply


def check_sandbox() -> None:
    """Raise UserError with the fix if sandboxed execution cannot work on this machine."""
    if bwrap_path() is None:
        raise UserError("bubblewrap is not installed, so samples cannot be sandboxed: run "
                        "`make install` (or `apt-get install bubblewrap`), or pass "
                        "--unsafe-no-sandbox to run model code unconfined")
    try:
        with Sandbox(0) as sb:
            r = sb.request({"op": "run", "key": "probe", "program": "x = 1"}, 10.0,
                           task=("probe", {"mode": "asserts", "test": "assert x == 1"}))
    except SandboxUnavailable as e:
        raise UserError(f"bubblewrap cannot create a sandbox here ({e}); allow unprivileged "
                        "user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run as "
                        "root, or pass --unsafe-no-sandbox") from e
    if r.get("status") != "passed":
        raise UserError(f"the sandbox self-test failed ({r.get('detail')}); pass "
                        "--unsafe-no-sandbox to run unconfined")
