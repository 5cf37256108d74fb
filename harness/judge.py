"""Judge programs against a task's tests, in parallel sandboxes.

`Judge` owns N sandboxes (one per worker thread; the work happens in the sandboxes' processes, so
threads are enough here). For base-test tasks a program runs with the task's test code appended;
for EvalPlus `+` tasks the sandbox calls the entry point on every base and plus input and compares
with the canonical solution's outputs, computed once per dataset in a sandbox and cached under a
key that hashes the dataset, its quirks and the harness version.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from codediff.harness import __version__ as HARNESS_VERSION
from codediff.harness.sandbox import Limits, Sandbox, check_sandbox
from codediff.harness.tasks import Problem, Task, load_quirks

from codediff.errors import UserError

# Bumped when what the oracle stores changes (2: huge outputs are recomputed, not digested).
ORACLE_FORMAT = "oracle/2"
RECOMPUTE_KEY = "__codediff_recompute__"  # as in _zygote.py (which imports nothing of ours)


@dataclass
class Job:
    key: str  # caller's handle, returned with the verdict
    task_id: str
    program: str


def cache_dir() -> Path:
    root = os.environ.get("CODEDIFF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "codediff")
    return Path(root)


class Judge:
    def __init__(self, task: Task, *, workers: int | None = None, limits: Limits | None = None,
                 unsafe: bool = False, timeout: float | None = None,
                 min_time_limit: float | None = None, time_limit_factor: float | None = None):
        for name, val, what in (("--min-time-limit", min_time_limit, "number of seconds"),
                                ("--time-limit-factor", time_limit_factor, "factor")):
            if val is not None and not (val > 0 and val < float("inf")):
                raise UserError(f"{name} {val}: give a positive {what} (on a slow or busy "
                                "machine, raise it above the task's default)")
        self.task = task
        # Per-input limit of `+` tasks = max(floor, factor x the canonical solution's time); the
        # task's values follow the evalplus release it declares; a slow machine may raise them.
        self.min_time_limit = task.spec.min_time_limit if min_time_limit is None \
            else float(min_time_limit)
        self.time_limit_factor = task.spec.gt_time_limit_factor if time_limit_factor is None \
            else float(time_limit_factor)
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.limits = limits or Limits()
        self.unsafe = unsafe
        self.timeout = timeout or task.spec.timeout
        self.payloads: dict[str, dict] = {}
        self.timeouts: dict[str, float] = {}
        self.costs: dict[str, float] = {}  # seconds the canonical solution takes (`+` tasks)
        self.notes: list[str] = []
        if not unsafe:
            check_sandbox()

    # -- per-problem payloads -------------------------------------------------------------------
    def prepare(self, progress: bool = False) -> None:
        if self.task.spec.differential:
            self._prepare_differential(progress)
        else:
            for p in self.task.problems:
                self.payloads[p.task_id] = {"mode": "asserts", "test": p.test}
                self.timeouts[p.task_id] = self.timeout

    def _oracle_cache_key(self) -> str:
        quirks = load_quirks(self.task.spec)
        h = hashlib.sha256()
        h.update(self.task.dataset.sha256.encode())
        h.update(inspect.getsource(quirks).encode() if quirks else b"")
        h.update(HARNESS_VERSION.encode())
        h.update(ORACLE_FORMAT.encode())
        return h.hexdigest()[:24]

    def _prepare_differential(self, progress: bool) -> None:
        spec = self.task.spec
        quirks = load_quirks(spec)
        oracles = getattr(quirks, "ORACLES", {}) if quirks else {}
        path = cache_dir() / "oracles" / f"{spec.name}-{self._oracle_cache_key()}.pkl"
        truth = None
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    truth = pickle.load(f)
            except Exception:  # noqa: BLE001 - a broken cache entry is recomputed
                truth = None
        # The cache is keyed by dataset, and a task may be cut to some of its problems (a
        # limit, a test): compute only the problems the cached file lacks, then store the union.
        missing = [p for p in self.task.problems if p.task_id not in (truth or {})]
        if missing:
            truth = {**(truth or {}), **self._compute_oracles(oracles, missing, progress)}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                pickle.dump(truth, f)
            os.replace(tmp, path)
        for p in self.task.problems:
            t = truth[p.task_id]
            phases, total = {}, 0.0
            for phase, inputs in (("base", p.base_input), ("plus", p.plus_input)):
                res = t[phase]
                keep = [i for i, err in enumerate(res["errors"]) if not err]
                if len(keep) < len(inputs):
                    self.notes.append(f"{p.task_id}: the canonical solution fails on "
                                      f"{len(inputs) - len(keep)} {phase} input(s); skipped")
                limits = [max(self.min_time_limit, self.time_limit_factor * res["times"][i])
                          for i in keep]
                phases[phase] = {"inputs": [inputs[i] for i in keep],
                                 "expected": [res["outputs"][i] for i in keep],
                                 "limits": limits}
                total += min(self.timeout, sum(limits)) + 1.0
                if phase == "base":
                    # Base must answer within its own budget (as evalplus times each phase): a
                    # sample hanging at top level then costs seconds, not the plus budget too.
                    base_budget = total
            # Outputs too big to ship are recomputed in the sandbox from the canonical solution.
            huge = any(type(e) is dict and RECOMPUTE_KEY in e
                       for ph in phases.values() for e in ph["expected"])
            self.payloads[p.task_id] = {"mode": "differential", "entry_point": p.entry_point,
                                        "atol": p.atol, "oracle": oracles.get(p.entry_point, {}),
                                        "reference": p.reference if huge else "",
                                        "base_budget": base_budget, **phases}
            self.timeouts[p.task_id] = total
            self.costs[p.task_id] = sum(t[ph]["times"][i] for ph in ("base", "plus")
                                        for i, err in enumerate(t[ph]["errors"]) if not err)

    def _compute_oracles(self, oracles: dict, problems: list[Problem], progress: bool) -> dict:
        not_none = {ep for ep, o in oracles.items() if o.get("kind") == "not_none"}
        self._oracle_kinds = oracles
        truth: dict[str, dict] = {}
        bar = _bar(len(problems) * 2, f"{self.task.name}: ground truth", progress)
        with Sandbox(0, limits=self.limits, unsafe=self.unsafe) as sb:
            for p in problems:
                truth[p.task_id] = {}
                for phase, inputs in (("base", p.base_input), ("plus", p.plus_input)):
                    truth[p.task_id][phase] = self._oracle(sb, p, inputs, p.entry_point in not_none)
                    bar.update(1)
        bar.close()
        return truth

    def _oracle(self, sb: Sandbox, p: Problem, inputs: list, not_none: bool) -> dict:
        if not inputs:
            return {"outputs": [], "times": [], "errors": []}
        kind = self._oracle_kinds.get(p.entry_point, {}).get("kind")
        r = sb.request({"op": "oracle", "program": p.reference, "entry_point": p.entry_point,
                        "inputs": inputs, "output_not_none": not_none,
                        "keep_values": kind is not None}, 600.0)
        if "oracle" not in r:
            self.notes.append(f"{p.task_id}: the canonical solution does not run "
                              f"({r.get('status')}: {r.get('detail')}); its inputs are skipped")
            return {"outputs": [None] * len(inputs), "times": [0.0] * len(inputs),
                    "errors": ["reference failed"] * len(inputs)}
        # Only the dataset's own reference code ran in that sandbox, so its output is as
        # trustworthy as the dataset; model samples never return pickles.
        return pickle.loads(bytes.fromhex(r["oracle"]))

    # -- running ----------------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, dict]]:
        """Yield (job, verdict) as they finish. All sandboxes are closed when this returns."""
        if not self.payloads:
            self.prepare()
        # A feeder thread hands jobs over as they are made (sanitising overlaps execution).
        # `+` tasks differ a thousandfold in cost (a passing Mbpp/599 sample runs ~10 s of plus
        # inputs, most samples ~3 ms), so their feeder runs ahead without bound and the workers
        # take the costliest job known first: a heavy job started last would leave the other
        # workers idle at the end. Base-test tasks keep file order and a short queue.
        ahead = 0 if self.task.spec.differential else 4 * self.workers
        todo: queue.PriorityQueue = queue.PriorityQueue(maxsize=ahead)
        done: queue.Queue = queue.Queue()
        n_workers = self.workers
        stop = threading.Event()
        feed_error: list[BaseException] = []

        def feed() -> None:
            seq = 0
            try:
                for j in jobs:
                    if j.task_id not in self.payloads:
                        raise UserError(f"no tests for {j.task_id} in task {self.task.name}")
                    seq += 1
                    item = (-self.costs.get(j.task_id, 0.0), seq, j)
                    while not stop.is_set():
                        try:
                            todo.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                feed_error.append(e)
            finally:
                for i in range(n_workers):  # after every job, whatever its cost
                    todo.put((float("inf"), i, None))

        def work(slot: int) -> None:
            sb = Sandbox(slot, limits=self.limits, unsafe=self.unsafe)
            try:
                while not stop.is_set():
                    job = todo.get()[2]
                    if job is None:
                        return
                    try:
                        verdict = sb.request(
                            {"op": "run", "key": job.task_id, "program": job.program},
                            self.timeouts[job.task_id],
                            task=(job.task_id, self.payloads[job.task_id]))
                    except Exception as e:  # noqa: BLE001 - keep the run going, say what broke
                        verdict = {"status": "crash", "detail": f"harness: {e!r}"[:300],
                                   "seconds": 0.0}
                        sb.close()
                    done.put((job, verdict))
            finally:
                sb.close()
                done.put(None)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_workers)]
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        for t in threads:
            t.start()
        finished = 0
        try:
            while finished < n_workers:
                item = done.get()
                if item is None:
                    finished += 1
                    continue
                yield item
        finally:
            stop.set()
            while True:  # unblock a feeder waiting on a full queue
                try:
                    todo.get_nowait()
                except queue.Empty:
                    break
            feeder.join()
            for t in threads:
                t.join()
        if feed_error:
            raise feed_error[0]


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="run", leave=False)
