"""The process that lives inside one sandbox and runs samples, one forked child per sample.

This file is executed as a script (`python -s -c <this source> <config-json>`) inside bubblewrap;
it imports nothing from codediff. Starting a sandbox costs tens of milliseconds, forking a warm
interpreter about one, so one zygote per worker judges thousands of samples.

Protocol on stdin/stdout, 4-byte big-endian length + payload:
  host -> zygote: pickle  {"op": "task", "key", "task"} | {"op": "run", "id", "key", "program",
                          "timeout"} | {"op": "oracle", "id", "program", "entry_point", "inputs",
                          "timeout"}
  zygote -> host: JSON    {"id", "status", "detail", "seconds", ...}
The host never unpickles what comes out of a sandbox.

Per sample: fork; the child starts a new session, drops to /dev/null for stdio, closes every other
descriptor, enters a fresh scratch dir and sets rlimits, then runs the program and the tests and
writes its verdict (tagged with a per-sample nonce) to a pipe. A verdict line is written only after
the tests finish, so `sys.exit(0)` or `os._exit(0)` before the tests is never a pass. Afterwards the
zygote kills every process left in the sandbox's PID namespace (`kill(-1)`) and wipes the scratch.
"""

import builtins
import copy
import gc
import json
import math
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import sys
import time

CONFIG = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
IN_SANDBOX = bool(CONFIG.get("sandbox"))
LIMITS = CONFIG.get("limits", {})

# Warm the modules that samples import most, so the forked children find them loaded.
for _m in ("re", "collections", "itertools", "functools", "heapq", "bisect", "string", "typing",
           "json", "random", "statistics", "operator", "datetime", "fractions", "decimal",
           "hashlib", "cmath", "array", "numbers", "copy", "math", "sys", "os"):
    try:
        __import__(_m)
    except ImportError:
        pass

SCRATCH_ROOT = CONFIG.get("scratch") or "/tmp/codediff"
if CONFIG.get("uid") is not None:
    # Running as root outside: drop to this worker's own unprivileged uid, so RLIMIT_NPROC counts
    # only this sandbox's processes and a fork bomb cannot starve its neighbours.
    os.setgroups([])
    os.setgid(CONFIG["uid"])
    os.setuid(CONFIG["uid"])
os.makedirs(SCRATCH_ROOT, mode=0o700, exist_ok=True)

# Move everything alive now out of the collector's reach: a forked child's first collection would
# otherwise walk (and so copy-on-write) every page of the zygote's heap, ~1.5 ms per sample.
gc.freeze()

IN = sys.stdin.buffer
OUT = sys.stdout.buffer
TASKS = {}


BIG_OUTPUT = 1 << 20
# An expected output too big to ship (Mbpp/255's total 360 MB) is stored as this marker, and the
# child recomputes it with the canonical solution just before the sample's call on that input:
# one output at a time in memory (holding them all is what makes evalplus 0.3.1 fail Mbpp/255
# and Mbpp/392 with a MemoryError), and 10-20x cheaper than hashing the `repr` of both.
RECOMPUTE_KEY = "__codediff_recompute__"


class TimeLimit(Exception):
    pass


def _read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = IN.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _send(obj):
    data = json.dumps(obj).encode()
    OUT.write(struct.pack(">I", len(data)) + data)
    OUT.flush()


# ----------------------------------------------------------------------------- in the child

def _limit_resources(timeout):
    def setl(kind, value):
        if value is None:
            return
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass

    setl(resource.RLIMIT_CORE, 0)
    setl(resource.RLIMIT_AS, LIMITS.get("memory_bytes"))
    setl(resource.RLIMIT_FSIZE, LIMITS.get("file_bytes"))
    setl(resource.RLIMIT_NOFILE, LIMITS.get("open_files"))
    setl(resource.RLIMIT_CPU, int(math.ceil(timeout)) + 1)
    if IN_SANDBOX:  # outside a sandbox RLIMIT_NPROC would count the user's own processes
        setl(resource.RLIMIT_NPROC, LIMITS.get("processes"))


def _enter_child(wfd, scratch, timeout):
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, wfd)
    os.closerange(wfd + 1, 65536)
    os.chdir(scratch)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch,
                       "LANG": "C.UTF-8"})
    _limit_resources(timeout)


def _classify(exc):
    if isinstance(exc, AssertionError):
        return "failed", "AssertionError"
    if isinstance(exc, MemoryError):
        return "oom", "MemoryError"
    if isinstance(exc, TimeLimit):
        return "timeout", "time limit of a test input exceeded"
    msg = str(exc)
    detail = type(exc).__name__ + (": " + msg[:200] if msg else "")
    return "error", detail


def _compile(program):
    try:
        return compile(program, "<sample>", "exec"), None
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes in source
        return None, ("syntax_error", f"{type(e).__name__}: {e}"[:300])


def _fresh_globals():
    return {"__name__": "__codediff_sample__", "__builtins__": builtins}


def _on_alarm(signum, frame):
    raise TimeLimit()


def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _close(a, b, atol, rtol=1e-7):
    if isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, atol, rtol) for x, y in zip(a, b, strict=False))
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return False
    return abs(a - b) <= atol + rtol * abs(b)


def _is_recompute(exp):
    return type(exp) is dict and RECOMPUTE_KEY in exp


def _matches(out, exp, inp, atol, oracle, helpers):
    """EvalPlus's comparison: equality, special oracles, then float tolerance."""
    kind = oracle.get("kind")
    if kind == "poly_root":
        xs = inp[0]
        return abs(sum(c * math.pow(out, i) for i, c in enumerate(xs))) <= atol
    exact = out == exp
    if kind == "any":
        return True
    if kind == "equal_or":
        exact = exact or out == oracle["value"]
    elif kind == "reference":
        ref = helpers["oracle"](*inp)
        exact = exact or out == ref or (atol and abs(out - ref) <= atol)
    elif kind == "set_eq":
        exact = set(out) == set(exp)
    elif kind == "not_none":
        exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        if type(out) is not type(exp):
            return False
        return _close(out, exp, atol)
    return bool(exact)


def _run_inputs(fn, inputs, expected, limits, atol, oracle, helpers):
    signal.signal(signal.SIGALRM, _on_alarm)
    for i, inp in enumerate(inputs):
        exp = expected[i]
        if _is_recompute(exp):  # before the sample's call, on a copy, outside its time limit
            exp = helpers["reference"](*copy.deepcopy(inp))
        # The inputs are this child's own copy-on-write pages and each is used once, so the
        # sample gets them as they are (as evalplus passes them): no deep copy per input.
        signal.setitimer(signal.ITIMER_REAL, limits[i])
        try:
            out = fn(*inp)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        same = _matches(out, exp, inp, atol, oracle, helpers)
        del out, exp
        if not same:
            return "failed", f"wrong output on input {i}"
    return "passed", ""


def _child_run(msg, task, emit):
    code, bad = _compile(msg["program"])
    if bad:
        emit({"status": bad[0], "detail": bad[1], "final": True})
        return
    helpers = {}
    if task.get("reference"):
        # Defined before the sample runs, in globals of its own, so the sample's definitions
        # cannot shadow the names the canonical solution uses.
        rg = _fresh_globals()
        exec(task["reference_code"], rg)
        helpers["reference"] = rg[task["entry_point"]]
    g = _fresh_globals()
    if task["mode"] == "asserts":
        try:
            exec(code, g)
            exec(task["test_code"], g)  # compiled once per task, before the fork
        except BaseException as e:  # noqa: BLE001 - every failure of the sample is a verdict
            status, detail = _classify(e)
            emit({"status": status, "detail": detail, "final": True})
            return
        emit({"status": "passed", "detail": "", "final": True})
        return
    # differential: define the program, then call the entry point on every input
    try:
        exec(code, g)
        fn = g.get(task["entry_point"])
        if not callable(fn):
            raise NameError(f"entry point {task['entry_point']!r} is not defined")
    except BaseException as e:  # noqa: BLE001
        status, detail = _classify(e)
        emit({"status": status, "detail": detail, "final": True})
        return
    if task["oracle"].get("kind") == "reference":
        hg = {}
        exec(task["oracle"]["code"], hg)
        helpers["oracle"] = hg["oracle"]
    for phase in ("base", "plus"):
        data = task[phase]
        try:
            status, detail = _run_inputs(fn, data["inputs"], data["expected"], data["limits"],
                                         task["atol"], task["oracle"], helpers)
        except BaseException as e:  # noqa: BLE001
            status, detail = _classify(e)
        emit({"phase": phase, "status": status, "detail": detail, "final": phase == "plus"})
        if status != "passed":
            return  # plus is only meaningful after base passes (EvalPlus counts base AND plus)


def _child_oracle(msg, emit):
    g = _fresh_globals()
    exec(compile(msg["program"], "<reference>", "exec"), g)
    fn = g[msg["entry_point"]]
    outputs, times, errors = [], [], []
    not_none = msg.get("output_not_none", False)
    for inp in msg["inputs"]:
        args = copy.deepcopy(inp)
        t0 = time.perf_counter()
        try:
            out = fn(*args)
        except Exception as e:  # noqa: BLE001 - reported: the dataset's reference is broken here
            out = None
            errors.append(f"{type(e).__name__}: {e}"[:200])
        else:
            errors.append("")
        times.append(time.perf_counter() - t0)
        out = out is not None if not_none else out
        if not msg.get("keep_values") and len(pickle.dumps(out)) > BIG_OUTPUT:
            out = {RECOMPUTE_KEY: True}  # recomputed in the child that judges a sample
        outputs.append(out)
    blob = pickle.dumps({"outputs": outputs, "times": times, "errors": errors}).hex()
    emit({"status": "passed", "oracle": blob, "final": True})


def _child(msg, wfd, nonce, scratch):
    def emit(obj):
        obj["nonce"] = nonce
        os.write(wfd, (json.dumps(obj) + "\n").encode())

    _enter_child(wfd, scratch, msg["timeout"])
    if msg["op"] == "oracle":
        _child_oracle(msg, emit)
    else:
        _child_run(msg, TASKS[msg["key"]], emit)


# ----------------------------------------------------------------------------- in the zygote

def _cleanup(pid, scratch):
    if IN_SANDBOX:
        try:
            os.kill(-1, signal.SIGKILL)  # everything in this PID namespace but us and its init
        except ProcessLookupError:
            pass
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    while True:  # reap whatever was ours
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if got == 0:
            break
    shutil.rmtree(scratch, ignore_errors=True)
    if os.path.exists(scratch):  # a sample made something unreadable: make it ours again
        for root, dirs, _files in os.walk(scratch):
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o700)
                except OSError:
                    pass
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_status(pid, deadline):
    """The child's wait status, or None if it has not exited by `deadline`."""
    got, status = os.waitpid(pid, os.WNOHANG)
    if got:
        return status
    try:
        pidfd = os.pidfd_open(pid)  # readable once the process exits: no polling
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(0.0005)
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                return status
    finally:
        if pidfd is not None:
            os.close(pidfd)


def run_one(msg, counter):
    nonce = os.urandom(12).hex()
    scratch = os.path.join(SCRATCH_ROOT, str(counter))
    os.mkdir(scratch, 0o700)
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(msg, wfd, nonce, scratch)
        finally:
            os._exit(0)
    os.close(wfd)
    deadline = t0 + msg["timeout"]
    # A differential task's base phase has a budget of its own: until its verdict is in, the
    # child must answer by then (a sample hanging at top level is cut off there).
    budget = TASKS.get(msg.get("key"), {}).get("base_budget") if msg["op"] == "run" else None
    early = min(deadline, t0 + budget) if budget else None
    buf, timed_out = b"", False
    cap = (4 << 30) if msg["op"] == "oracle" else (64 << 20)
    while True:
        left = (early or deadline) - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if not ready:
            continue
        chunk = os.read(rfd, 1 << 20)
        if not chunk:
            break
        buf += chunk
        if early is not None and b'"phase": "base"' in buf and nonce.encode() in buf:
            early = None  # base answered: the rest of the sample's budget is plus's
        # The verdict is in once the final event arrives, even if a stray grandchild still
        # holds the pipe open; a sample that floods the pipe is cut off.
        tail = buf[-(len(chunk) + 64):]
        if (b'"final": true' in tail and nonce.encode() in buf) or len(buf) > cap:
            break
    os.close(rfd)
    status_word = None if timed_out else _wait_status(pid, time.monotonic() + 1.0)
    seconds = time.monotonic() - t0
    if status_word is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            _, status_word = os.waitpid(pid, 0)
        except ChildProcessError:
            status_word = None
    _cleanup(pid, scratch)
    events = []
    for line in buf.decode("utf-8", "replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("nonce") == nonce:
            events.append(ev)
    return _verdict(msg, events, timed_out, status_word, seconds)


def _verdict(msg, events, timed_out, status_word, seconds):
    out = {"id": msg["id"], "seconds": round(seconds, 4)}
    final = next((e for e in events if e.get("final")), None)
    phases = {e["phase"]: e for e in events if "phase" in e}
    if timed_out:
        stop = ("timeout", f"no verdict within {seconds:.1f} s")
    elif status_word is not None and os.WIFSIGNALED(status_word):
        sig = os.WTERMSIG(status_word)
        stop = ("timeout", "CPU time limit") if sig == signal.SIGXCPU else \
            ("crash", f"killed by signal {signal.Signals(sig).name}")
    elif status_word is not None and os.WIFEXITED(status_word):
        stop = ("crash", f"exited with code {os.WEXITSTATUS(status_word)} before the tests "
                "finished")
    else:
        stop = ("crash", "no verdict")
    if "oracle" in (final or {}):
        out.update(status="passed", oracle=final["oracle"])
        return out
    if phases:  # differential task: base verdict first, plus after it
        base = phases.get("base", {"status": stop[0], "detail": stop[1]})
        if "plus" in phases:
            plus = phases["plus"]
        elif base["status"] == "passed":
            plus = {"status": stop[0], "detail": stop[1]}
        else:
            plus = {"status": "failed", "detail": "base tests failed"}
        out.update(base_status=base["status"], plus_status=plus["status"])
        worst = base if base["status"] != "passed" else plus
        out.update(status=worst["status"], detail=worst.get("detail", ""))
        return out
    if final is not None and not timed_out:
        out.update(status=final["status"], detail=final.get("detail", ""))
        if final["status"] == "passed" and status_word is not None and \
                os.WIFSIGNALED(status_word) and os.WTERMSIG(status_word) != signal.SIGKILL:
            out.update(status="crash", detail=stop[1])
        return out
    out.update(status=stop[0], detail=stop[1])
    return out


def main():
    counter = 0
    _send({"ready": True, "pid": os.getpid(), "uid": os.getuid()})
    while True:
        head = _read_exact(4)
        if head is None:
            return
        msg = pickle.loads(_read_exact(struct.unpack(">I", head)[0]))
        if msg["op"] == "task":
            task = msg["task"]
            if task["mode"] == "asserts":
                task["test_code"] = compile("\n" + task["test"], "<tests>", "exec")
            if task.get("reference"):
                task["reference_code"] = compile(task["reference"], "<reference>", "exec")
            TASKS[msg["key"]] = task
            gc.freeze()
            continue
        counter += 1
        _send(run_one(msg, counter))


main()
