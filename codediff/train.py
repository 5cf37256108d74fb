"""The trainer: one loop for `ar` and `mdm`, from a laptop CPU to several GPUs under torchrun.

World-size agnostic: the optimizer step `s` consumes global micro-batches
s * accum * world ... (s + 1) * accum * world - 1, rank r taking those with index = r (mod world).
A micro-batch's sequences and its random numbers depend on its global index only, so any world
size with the same global batch computes the same update (up to float summation order).

Resumable: `state/` holds the model, optimizer, step and RNG, written atomically (a temporary
folder renamed into place), every `save_every_s` seconds and at each kept checkpoint. A run
killed at any moment and started again with the same command continues from the last state and
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from codediff import __version__
from codediff.checkpoints import save_checkpoint
from codediff.config import ATTENTION_BACKENDS, SCHEDULES, ModelConfig, TrainConfig  # noqa: F401
from codediff.data import Corpus, TrainStream, open_corpus, val_windows
from codediff.errors import UserError, is_out_of_memory
from codediff.fim import FIM_TOKENS, FimTransform, corpus_fim_ids, missing_sentinels_fix
from codediff.formats import RUN_SCHEMA, JsonlStore, identity_diff
from codediff.model import Transformer, attention_without_cudnn
from codediff.objectives import (
    ObjectiveConfig,
    ar_nll,
    draw_noise,
    loss_fn,
    mdm_neg_elbo,
    micro_batch_generator,
)
from codediff.options import parse_count

# devices where an unset --micro-batch is found by trying (tests add "cpu" with a fake limit)
AUTO_MICRO_BATCH_DEVICES = ("cuda",)
# options that may change between a run and its resumption (they do not change the weights)
RESUMABLE_CHANGES = {"compile", "compile_mode", "attention", "log_every", "save_every_s",
                     "save_every_steps", "progress", "micro_batch", "dist",
                     "activation_checkpointing", "dtype", "stop_after_steps",
                     "mdm_masked_head"}  # the same loss either way
# identity fields added to TrainConfig after run dirs existed, with the default that means "as
# before": a run.json without one resumes when the new value is that default
ADDED_TRAIN_FIELDS = {"fim_rate": 0.0, "fim_spm_rate": 0.0}


def resolve_compile_mode(mode: str, world: int, device_type: str, accum: int) -> str:
    """`auto` -> CUDA graphs ("reduce-overhead") where they were measured to help: one process on
    a GPU, no gradient accumulation; "default" otherwise. Other modes pass through."""
    if mode != "auto":
        return mode
    graphs = world == 1 and device_type == "cuda" and accum == 1
    return "reduce-overhead" if graphs else "default"


# ----------------------------------------------------------------------------- helpers

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_dist() -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain launch is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def schedule_lr(step: int, steps: int, cfg: TrainConfig, warmup: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    lo = cfg.lr * cfg.min_lr_ratio
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        p = (step - warmup) / max(1, steps - warmup - 1)
        return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(p, 1.0)))
    decay_start = max(warmup, int(steps * (1 - cfg.decay_frac)))
    if step < decay_start:
        return cfg.lr
    p = (step - decay_start + 1) / max(1, steps - decay_start)
    return cfg.lr + (lo - cfg.lr) * min(p, 1.0)


def log_spaced_steps(first: int, last: int, n: int) -> list[int]:
    """About n steps from first to last, evenly spaced in log scale, always including last."""
    first = max(1, min(first, last))
    if n <= 1 or first == last:
        return [last]
    grid = np.geomspace(first, last, n)
    return sorted({int(round(s)) for s in grid} | {last})


def measure_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's measured dense matmul rate (FLOP/s): the denominator of MFU."""
    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The denominator of MFU, where one is known: the measured matmul rate of a GPU. A CPU has
    no meaningful peak here (a small matmul measured there read as 751% MFU), so None: `mfu` is
    then written as null and nothing claims a utilisation."""
    if device.type != "cuda":
        return None
    return measure_matmul_flops(device, dtype)


# ----------------------------------------------------------------------------- micro-batch

def micro_batch_candidates(start: int) -> list[int]:
    """`start` (the whole per-process batch), then the powers of two below it that divide it,
    largest first: each keeps the global batch through gradient accumulation."""
    out = [start]
    p = 1 << max(0, start.bit_length() - 1)
    while p >= 1:
        if p < start and start % p == 0:
            out.append(p)
        p //= 2
    return out


def choose_micro_batch(start: int, fits: Callable[[int], None],
                       on_oom: Callable[[], None] = lambda: None) -> int:
    """The largest candidate (`micro_batch_candidates(start)`) for which `fits(mb)` returns;
    `fits` raises the device's out-of-memory error when mb does not fit (halving on each).
    `on_oom` frees what the failed try left behind. None fits -> UserError."""
    for mb in micro_batch_candidates(start):
        oom = False
        try:
            fits(mb)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
            oom = True  # (freed after the except block, which holds the failed try's frames)
        if not oom:
            return mb
        on_oom()
    raise UserError("out of memory even with micro-batch 1; use a smaller model (--preset, "
                    "--n-layer, --d-model) or --seq-len, or --activation-checkpointing, or more "
                    "GPUs with --dist fsdp")


def parse_tokens(text: str | int) -> int:
    """'300M' -> 300_000_000; also K, G/B, T and plain integers ('1.5e9'); the one count parser
    (codediff.options.parse_count): a fraction of a token is an error."""
    return parse_count(text)


# ----------------------------------------------------------------------------- run dir

def _config_diff(old: dict, new: dict) -> list[str]:
    """The run-identity differences between two run.json records (see run_store)."""
    return identity_diff(old, new, sorted(set(old) | set(new)),
                         ignore=[f"train.{k}" for k in RESUMABLE_CHANGES]
                         + _added_at_default(old, new))


def _added_at_default(old: dict | Path, new: dict) -> list[str]:
    """The `train.*` fields added since an old run.json (a record, or its path) was written
    (ADDED_TRAIN_FIELDS) that the new record leaves at their default: not a difference, so such
    runs still resume."""
    if isinstance(old, Path):
        try:
            old = json.loads(old.read_text())
        except (OSError, ValueError):
            return []
    old_train, new_train = old.get("train") or {}, new.get("train") or {}
    return [f"train.{k}" for k, default in ADDED_TRAIN_FIELDS.items()
            if k not in old_train and new_train.get(k) == default]


def read_state_meta(out: Path) -> dict | None:
    p = out / "state" / "trainer.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())


class Trainer:
    def __init__(self, corpus_dir: str | os.PathLike, out: str | os.PathLike,
                 model_cfg: ModelConfig, cfg: TrainConfig, dist_info: Dist | None = None):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(out)
        self.d = dist_info or setup_dist()
        self.corpus: Corpus = open_corpus(corpus_dir)
        c = self.corpus
        if cfg.objective == "mdm" and c.mask_id is None:
            raise UserError(f"--corpus {c.path}: its tokenizer has no mask token, which the mdm "
                            "objective needs; rebuild the corpus with a mask token")
        if model_cfg.vocab_size < c.vocab_size:
            raise UserError(f"model vocab_size {model_cfg.vocab_size} is smaller than the "
                            f"corpus tokenizer's {c.vocab_size}; drop --vocab-size or raise it")
        model_cfg.causal = cfg.objective == "ar"
        self.seq_len = cfg.seq_len or model_cfg.max_seq_len
        if self.seq_len > model_cfg.max_seq_len:
            model_cfg.max_seq_len = self.seq_len
        self.model_cfg = model_cfg
        W = self.d.world
        mb = cfg.micro_batch or max(1, cfg.batch_size // W)
        if cfg.batch_size % (mb * W):
            raise UserError(f"--batch-size {cfg.batch_size} is not a multiple of micro-batch "
                            f"{mb} x {W} processes; choose a micro-batch that divides it")
        self.micro_batch = mb
        self.accum = cfg.batch_size // (mb * W)
        # No --micro-batch on a GPU: the largest that fits is found by trying (probe_micro_batch)
        # unless a run being resumed recorded one. On a CPU the whole per-process batch is used,
        # and under FSDP too (the probe runs the unsharded model, which is not what trains).
        self.micro_batch_auto = cfg.micro_batch is None and \
            self.d.device.type in AUTO_MICRO_BATCH_DEVICES and not (W > 1 and cfg.dist == "fsdp")
        self._micro_batch_settled = not self.micro_batch_auto
        self.tokens_per_step = cfg.batch_size * self.seq_len
        self.steps = max(1, math.ceil(cfg.total_tokens / self.tokens_per_step))
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else \
            max(1, min(2000, self.steps // 20))
        self.fim = self._fim_transform()
        self.stream = TrainStream(c.train, self.seq_len, cfg.seed, transform=self.fim)
        # one pass over the packed windows: about the corpus's U (`unique_tokens`), not equal
        self.epoch_tokens = self.stream.sequences_per_epoch * self.seq_len
        first = cfg.first_eval_tokens or cfg.total_tokens // 1000
        first_step = max(1, first // self.tokens_per_step)
        self.eval_steps = set(log_spaced_steps(first_step, self.steps, cfg.eval_points))
        self.ckpt_steps = set(log_spaced_steps(first_step, self.steps, cfg.checkpoint_points))
        try:
            self.obj = ObjectiveConfig(name=cfg.objective, mask_id=c.mask_id, pad_id=c.pad_id,
                                       eps=cfg.mdm_eps, t_sampling=cfg.t_sampling,
                                       cut_prob=cfg.cut_prob,
                                       masked_head=cfg.mdm_masked_head,
                                       ar_input_mask_prob=cfg.ar_input_mask_prob,
                                       ar_input_noise_prob=cfg.ar_input_noise_prob,
                                       vocab_size=model_cfg.vocab_size)
        except ValueError as e:
            raise UserError(f"{e}; check --t-sampling / --ar-input-* and the corpus tokenizer") \
                from None
        dev = self.d.device
        if cfg.dtype == "auto":
            self.amp_dtype = torch.bfloat16 if dev.type == "cuda" else None
        else:
            self.amp_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
        self.compile = cfg.compile if cfg.compile is not None else dev.type == "cuda"
        self._pinned: list[tuple[torch.Tensor, torch.cuda.Event]] = []  # see _to_device
        self._pin_slot = 0

    def _fim_transform(self) -> FimTransform | None:
        """`--fim-rate`: the FIM transform of the training windows (codediff.fim), or a refusal
        naming the fix when the corpus tokenizer has no sentinels."""
        cfg, c = self.cfg, self.corpus
        if cfg.fim_rate <= 0:
            return None
        ids = corpus_fim_ids(c.manifest, c.tokenizer_path)
        if ids is None:
            raise UserError(f"--corpus {c.path}: its tokenizer has no {', '.join(FIM_TOKENS)} "
                            "tokens, which --fim-rate needs; " + missing_sentinels_fix(c.manifest))
        return FimTransform(rate=cfg.fim_rate, spm_rate=cfg.fim_spm_rate, ids=ids,
                            eot_id=c.eot_id, seed=cfg.seed)

    # --------------------------------------------------------------- setup

    def run_record(self) -> dict:
        c = self.corpus
        return {
            "schema": RUN_SCHEMA, "objective": self.cfg.objective,
            "model": self.model_cfg.to_dict(), "train": asdict(self.cfg),
            "corpus": {"path": str(c.path.resolve()), "manifest_sha256": c.manifest_sha256,
                       "vocab_size": c.vocab_size, "eot_id": c.eot_id, "mask_id": c.mask_id,
                       "pad_id": c.pad_id, "unique_tokens": c.unique_tokens},
            "seq_len": self.seq_len, "steps": self.steps, "tokens_per_step": self.tokens_per_step,
            "epoch_tokens": self.epoch_tokens,
            "total_tokens": self.steps * self.tokens_per_step,
            "epochs": self.steps * self.tokens_per_step / self.epoch_tokens,
            "params": self.model_cfg.num_params(),
            "world_size": self.d.world, "micro_batch": self.micro_batch, "accum": self.accum,
            "micro_batch_auto": self.micro_batch_auto,
            "created_by": f"codediff {__version__}",
        }

    def run_store(self, record: dict) -> JsonlStore:
        """The run dir as a resumable store: metrics.jsonl rows under run.json, whose identity
        fields (formats.IDENTITIES["run dir"]) a resumed run must repeat, except the options
        that do not change the weights (RESUMABLE_CHANGES)."""
        return JsonlStore(self.out / "metrics.jsonl", kind="run dir",
                          header_path=self.out / "run.json", header=record,
                          ignore=[f"train.{k}" for k in RESUMABLE_CHANGES]
                          + _added_at_default(self.out / "run.json", record), own_dir=True,
                          noun="a run with other settings", fix="resume with the same options")

    def _check_out_dir(self, record: dict) -> None:
        self.run_store(record).check(f"--out {self.out}")

    def build(self) -> None:
        cfg, d = self.cfg, self.d
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = Transformer(self.model_cfg).to(d.device)
        model.activation_checkpointing = cfg.activation_checkpointing
        self.model = model  # the plain module (FSDP2 shards it in place)
        if not self._micro_batch_settled:
            # before DDP wraps it: a try that runs out of memory on one rank must not leave the
            # others waiting in a collective
            self.probe_micro_batch(model)
        if d.world > 1 and cfg.dist == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=self.amp_dtype, reduce_dtype=torch.float32) \
                if self.amp_dtype is not None else MixedPrecisionPolicy()
            for block in model.layers:
                fully_shard(block, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            self.wrapped = model
        elif d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda"
                               else None)
        else:
            self.wrapped = model
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                           fused=True if d.device.type == "cuda" else None)
        self.loss_eager = loss_fn(self.obj)
        self.compile_mode = resolve_compile_mode(cfg.compile_mode, d.world, d.device.type,
                                                 self.accum)
        self.loss_compiled = torch.compile(self.loss_eager, mode=self.compile_mode) \
            if self.compile else self.loss_eager

    # --------------------------------------------------------------- automatic micro-batch

    def _set_micro_batch(self, mb: int) -> None:
        self.micro_batch = mb
        self.accum = self.cfg.batch_size // (mb * self.d.world)

    def adopt_recorded_micro_batch(self) -> None:
        """A resumed run keeps the micro-batch it started with (a micro-batch's noise is drawn
        from its global index, so another size would change the weights): no second probe."""
        run_json = self.out / "run.json"
        if self._micro_batch_settled or not run_json.exists():
            return
        mb = json.loads(run_json.read_text()).get("micro_batch")
        if isinstance(mb, int) and mb > 0 and self.cfg.batch_size % (mb * self.d.world) == 0:
            self._set_micro_batch(mb)
            self._micro_batch_settled = True

    def probe_micro_batch(self, model: Transformer) -> int:
        """Try a forward + backward at the real length with the whole per-process batch, halving
        on out of memory (choose_micro_batch); every rank takes the smallest rank's choice."""
        dev = self.d.device

        def free() -> None:
            model.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the run's random numbers stay untouched
            mb = choose_micro_batch(self.cfg.batch_size // self.d.world,
                                    lambda n: self._fits(model, n), free)
        free()
        if self.d.world > 1:
            t = torch.tensor([mb], device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            mb = int(t.item())
        self._set_micro_batch(mb)
        self._micro_batch_settled = True
        return mb

    def _fits(self, model: Transformer, mb: int) -> None:
        """One forward + backward of `mb` real sequences at full length (mdm: an uncut draw);
        raises the device's out-of-memory error if it does not fit, or if it leaves less than
        10% of the GPU for AdamW's two float32 moments and the allocator's slack."""
        dev = self.d.device
        x = torch.from_numpy(self.stream.batch(0, mb)).to(dev)
        for index in range(1000):
            noise = draw_noise(self.obj, mb, self.seq_len,
                               micro_batch_generator(self.cfg.seed, index, dev), dev)
            if noise["length"] == self.seq_len:
                break
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        try:
            with self.autocast():
                loss = loss_fn(self.obj)(model, x, noise, self.obj)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            moments = 2 * 4 * sum(p.numel() for p in model.parameters())
            need = torch.cuda.max_memory_allocated(dev) + moments
            total = torch.cuda.mem_get_info(dev)[1]
            if need > 0.9 * total:
                raise torch.OutOfMemoryError(f"micro-batch {mb} would use {need / 2**30:.1f} of "
                                             f"{total / 2**30:.1f} GiB with the optimizer state")

    def loss_for(self, noise: dict):
        """The compiled loss for a full-length micro-batch; eager for the 1% that mdm cuts to a
        random length (a graph with a symbolic length was tried on an H100: no measurable gain,
        and a 30 s compile stall at the first cut)."""
        return self.loss_compiled if noise["length"] == self.seq_len else self.loss_eager

    # --------------------------------------------------------------- state

    def save_state(self, step: int) -> None:
        """Atomic: write state.tmp, then swap it for state/ (rank 0 renames after a barrier)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        d = self.d
        tmp = self.out / "state.tmp"
        if d.main and tmp.exists():
            shutil.rmtree(tmp)
        d.barrier()
        msd, osd = get_state_dict(self.model, self.optimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(d.device) if d.device.type == "cuda" else None}
        torch.save(rng, tmp / f"rng-{d.rank}.pt")
        d.barrier()
        if d.main:
            meta = {"step": step, "tokens": step * self.tokens_per_step,
                    "world": d.world, "time": time.time()}
            (tmp / "trainer.json").write_text(json.dumps(meta) + "\n")
            from codediff.checkpoints import replace_dir

            replace_dir(tmp, self.out / "state")
        d.barrier()

    def load_state(self) -> int:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        meta = read_state_meta(self.out)
        if meta is None:
            return 0
        msd, osd = get_state_dict(self.model, self.optimizer)
        sd = {"model": msd, "optim": osd}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(sd, checkpoint_id=str(self.out / "state" / "dcp"))
        set_state_dict(self.model, self.optimizer, model_state_dict=sd["model"],
                       optim_state_dict=sd["optim"])
        rng_file = self.out / "state" / f"rng-{self.d.rank}.pt"
        if meta.get("world") == self.d.world and rng_file.exists():
            rng = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(rng["cpu"])
            if rng.get("cuda") is not None and self.d.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.d.device)
        return int(meta["step"])

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the state we resume from (they will be redone), and a
        line torn by a kill."""
        if not self.metrics.path.exists():
            return
        self.metrics.rewrite(r for r in self.metrics.rows() if r.get("step", 0) <= step)

    def log(self, record: dict) -> None:
        if not self.d.main:
            return
        self.metrics.append([record])  # flushed and fsynced

    # --------------------------------------------------------------- pieces

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.amp_dtype)

    def micro_batches(self, step: int):
        """(global index, tokens [mb, L+1] on device) for this rank's micro-batches of `step`."""
        W, A, mb = self.d.world, self.accum, self.micro_batch
        for a in range(A):
            g = (step * A + a) * W + self.d.rank
            yield a, g, self._to_device(self.stream.batch(g * mb, mb))

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        """Host batch -> device through two reused pinned buffers; a buffer is refilled only once
        its previous copy has finished. The copy is queued behind the compute before it, so that
        wait also keeps the host at most about two micro-batches ahead of the GPU (enough to
        hide the host's work). A fresh `pin_memory()` per micro-batch cost the host 1.3 ms of
        `aten::copy_` in a 13.5 ms `tiny` step on an H100 machine; the data phase went from
        1.9 ms to 0.5-1.0 ms this way."""
        if self.d.device.type != "cuda":
            return torch.from_numpy(batch)
        if not self._pinned or self._pinned[0][0].shape != batch.shape:
            self._pinned = [(torch.empty(batch.shape, dtype=torch.int64, pin_memory=True),
                             torch.cuda.Event()) for _ in range(2)]
        self._pin_slot = (self._pin_slot + 1) % len(self._pinned)
        buf, done = self._pinned[self._pin_slot]
        done.synchronize()  # this buffer's last copy (and the compute queued before it) is done
        buf.numpy()[...] = batch
        x = buf.to(self.d.device, non_blocking=True)
        done.record()
        return x

    def _sync_context(self, last: bool):
        if self.d.world == 1 or last:
            if self.d.world > 1 and self.cfg.dist == "fsdp":
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.cfg.dist == "fsdp":
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def attention_kernels(self, new_shape: bool = False):
        """Pin the SDPA kernel (the first choice, falling back to flash, then math). A cut mdm
        micro-batch (`new_shape`) has a length seen once: "auto" then skips cuDNN attention,
        which builds an execution plan per new shape."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if self.cfg.attention == "auto":
            if new_shape and self.d.device.type == "cuda":
                return attention_without_cudnn()
            return contextlib.nullcontext()

        names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        order = [names[self.cfg.attention], SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
        return sdpa_kernel(list(dict.fromkeys(order)), set_priority=True)

    def train_step(self, step: int) -> torch.Tensor:
        total = torch.zeros((), device=self.d.device)
        for a, g, x in self.micro_batches(step):
            gen = micro_batch_generator(self.cfg.seed, g, self.d.device)
            noise = draw_noise(self.obj, x.shape[0], self.seq_len, gen, self.d.device)
            fn = self.loss_for(noise)
            with self._sync_context(a == self.accum - 1), self.autocast(), \
                    self.attention_kernels(noise["length"] != self.seq_len):
                loss = fn(self.wrapped, x, noise, self.obj) / self.accum
            loss.backward()
            total += loss.detach()
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.d.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG if self.d.device.type == "cuda"
                            else dist.ReduceOp.SUM)
            if self.d.device.type != "cuda":
                total /= self.d.world
        return total

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        try:
            x = torch.from_numpy(self.val).to(self.d.device)
            bs = self.cfg.val_batch or self.micro_batch
            with self.autocast():
                if self.cfg.objective == "ar":
                    return ar_nll(self.model, x, bs)
                return mdm_neg_elbo(self.model, x, bs, self.corpus.mask_id,
                                    self.cfg.mdm_val_samples, seed=self.cfg.val_seed,
                                    eps=self.cfg.mdm_eps)
        finally:
            self.model.train()

    def save_kept_checkpoint(self, step: int) -> Path | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        tokens = step * self.tokens_per_step
        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                        cpu_offload=True))
        if not self.d.main:
            return None
        c = self.corpus
        meta = {"objective": self.cfg.objective, "mask_id": c.mask_id, "eot_id": c.eot_id,
                "pad_id": c.pad_id, "tokens": tokens, "epochs": tokens / self.epoch_tokens,
                "epoch_tokens": self.epoch_tokens, "unique_tokens": c.unique_tokens,
                "step": step,
                "corpus_manifest_sha256": c.manifest_sha256,
                # fill-in-the-middle: the generator reads fim_rate to allow `ar` infill prompts
                "fim_rate": self.cfg.fim_rate, "fim_spm_rate": self.cfg.fim_spm_rate,
                "fim": self.fim.ids.as_dict() if self.fim is not None else None}
        return save_checkpoint(self.model, c.tokenizer_path,
                               self.out / "checkpoints" / f"tokens-{tokens}", meta,
                               state_dict={k: v.float().contiguous() for k, v in sd.items()})

    def _time_to_save(self, last_save: float) -> bool:
        """Rank 0's clock decides, so every rank enters the collective save together."""
        due = torch.tensor([time.time() - last_save > self.cfg.save_every_s], dtype=torch.int32,
                           device=self.d.device)
        if self.d.world > 1:
            dist.broadcast(due, src=0)
        return bool(due.item())

    # --------------------------------------------------------------- loop

    def fit(self) -> dict:
        cfg, d = self.cfg, self.d
        record = self.run_record()
        self.metrics = self.run_store(record)
        if d.main:
            self._check_out_dir(record)
        d.barrier()
        self.adopt_recorded_micro_batch()
        try:
            self.build()
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            raise UserError(f"out of memory while setting up the model on {d.device}; use a "
                            "smaller model (--preset, --n-layer, --d-model) or more GPUs with "
                            "--dist fsdp") from None
        # the micro-batch may have been chosen just now: run.json records the one used
        self.metrics = self.run_store(self.run_record())
        old, state = self.out / ".state.old", self.out / "state"
        if d.main and old.exists() and not state.exists():
            os.replace(old, state)  # killed between the two renames of a state swap
        d.barrier()
        start = self.load_state() if read_state_meta(self.out) else 0
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics.claim(f"--out {self.out}")  # writes run.json on the first run
            self._truncate_metrics(start)
            # a kept checkpoint killed while being written leaves its temporary sibling
            # (.tokens-N.XXXX.tmp); the run dir is claimed, so nothing else is writing there
            for tmp in (self.out / "checkpoints").glob(".tokens-*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)
        if start >= self.steps:
            if d.main:
                print(f"{self.out}: already trained to {self.steps} steps; nothing to do")
            return {"steps": self.steps, "resumed_from": start, "done": True}
        self.val = val_windows(self.corpus.val, self.seq_len, cfg.val_tokens)
        flops_tok = self.model_cfg.flops_per_token(self.seq_len)
        peak = peak_flops(d.device, self.amp_dtype or torch.float32)
        if peak is not None:
            peak *= d.world
        bar = None
        if cfg.progress and d.main:
            from tqdm import tqdm

            bar = tqdm(total=self.steps, initial=start, unit="step", dynamic_ncols=True,
                       desc=f"train {cfg.objective}")
        last_save = time.time()
        t_mark, step_mark = time.perf_counter(), start
        step = start
        ran = 0
        try:
            for step in range(start, self.steps):
                lr = schedule_lr(step, self.steps, cfg, self.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                try:
                    loss_t = self.train_step(step)
                except RuntimeError as e:  # torch.OutOfMemoryError is one
                    if not is_out_of_memory(e):
                        raise
                    raise UserError(
                        f"out of memory with micro-batch {self.micro_batch} x {self.seq_len} "
                        f"tokens; pass a smaller --micro-batch (e.g. {max(1, self.micro_batch // 2)})"
                        "; gradient accumulation keeps the global batch") from None
                done = step + 1
                ran += 1
                is_eval = done in self.eval_steps
                is_ckpt = done in self.ckpt_steps
                is_log = done % cfg.log_every == 0 or done == self.steps or is_eval
                due_save = bool((cfg.save_every_steps and done % cfg.save_every_steps == 0)
                                or is_ckpt or (cfg.stop_after_steps and ran >= cfg.stop_after_steps)
                                or (is_log and self._time_to_save(last_save)))
                if not (is_log or due_save):
                    if bar is not None:
                        bar.update(1)
                    continue
                loss = loss_t.item()  # a sync: only at log / save points
                if not math.isfinite(loss):
                    state = read_state_meta(self.out)
                    where = f"step {state['step']}" if state else "no saved state"
                    raise UserError(f"training loss became {loss} at step {done}; stopped "
                                    f"without saving. The last good state is {where} in "
                                    f"{self.out}/state; lower --lr or raise --warmup-steps "
                                    "and start a new --out")
                now = time.perf_counter()
                tok_s = (done - step_mark) * self.tokens_per_step / max(now - t_mark, 1e-9)
                rec = {"tokens": done * self.tokens_per_step,
                       "epochs": round(done * self.tokens_per_step / self.epoch_tokens, 6),
                       "step": done, "train_loss": loss, "lr": lr,
                       "tokens_per_s": round(tok_s, 1),
                       "mfu": round(tok_s * flops_tok / peak, 4) if peak else None}
                if is_eval:
                    try:
                        rec["val_loss"] = self.validate()
                    except RuntimeError as e:
                        if not is_out_of_memory(e):
                            raise
                        bs = cfg.val_batch or self.micro_batch
                        raise UserError(
                            f"out of memory in validation with batch {bs} x {self.seq_len} "
                            f"tokens; pass a smaller --val-batch (e.g. {max(1, bs // 2)})"
                        ) from None
                if is_log:
                    self.log(rec)
                if is_ckpt:
                    self.save_kept_checkpoint(done)
                if due_save:
                    self.save_state(done)
                    last_save = time.time()
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{loss:.3f}", "tok/s": f"{tok_s:,.0f}"}
                    if "val_loss" in rec:
                        post["val"] = f"{rec['val_loss']:.3f}"
                    bar.set_postfix(post)
                t_mark, step_mark = time.perf_counter(), done
                if cfg.stop_after_steps and ran >= cfg.stop_after_steps and done < self.steps:
                    return {"steps": done, "resumed_from": start, "done": False}
        finally:
            self.metrics.close()
            if bar is not None:
                bar.close()
        return {"steps": self.steps, "resumed_from": start, "done": True,
                "final_state_step": step + 1}


def train(corpus: str | os.PathLike, out: str | os.PathLike, model_cfg: ModelConfig,
          cfg: TrainConfig) -> dict:
    """Train (or resume) a run; returns a small summary."""
    d = setup_dist()
    try:
        return Trainer(corpus, out, model_cfg, cfg, d).fit()
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
