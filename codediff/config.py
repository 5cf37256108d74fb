"""The model and training settings (torch-free): the single source of their defaults, choices,
bounds and --help text. codediff.model and codediff.train use them; `codediff train --help`
reads them without loading torch.

Precedence when training: preset < TOML (--config) < command line (codediff.train_cli).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from codediff.errors import UserError
from codediff.infill import LENGTH_RULES
from codediff.options import check, option
from codediff.sampling import CACHES, DEFAULT_TAU, DLM_SCHEDULES, FACTOR_RULES, SAMPLERS

SCHEDULES = ("cosine", "wsd", "constant")
ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
T_SAMPLING = ("uniform", "stratified", "antithetic")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune",
                 "max-autotune-no-cudagraphs")
TRAIN_DTYPES = ("auto", "bfloat16", "float32")
OBJECTIVES = ("ar", "mdm")


@dataclass
class ModelConfig:
    """One Llama-style decoder (codediff.model); `causal` is set by the objective."""

    vocab_size: int = option(8192, min=1, help="embedding rows; follows the corpus tokenizer "
                             "(padded to a multiple of 64) unless set",
                             default_text="the corpus vocabulary, padded to a multiple of 64")
    n_layer: int = option(6, min=1, help="transformer blocks")
    n_head: int = option(6, min=1, help="attention heads (must divide --d-model)")
    n_kv_head: int | None = option(None, min=1, help="key/value heads for grouped-query "
                                   "attention (must divide --n-head)", default_text="--n-head")
    d_model: int = option(384, min=2, help="hidden width")
    d_ff: int | None = option(None, min=1, help="SwiGLU hidden width",
                              default_text="8/3 d_model rounded up to a multiple of 64; "
                              "coder-1.7b: 6144")
    max_seq_len: int = option(256, min=2, help="context length in tokens")
    rope_base: float = option(10000.0, above=0, help="RoPE base frequency")
    qk_norm: bool = option(False, help="RMSNorm on queries and keys")
    causal: bool = option(True, help="True for `ar`, False for `mdm`", cli=False)
    norm_eps: float = option(1e-5, above=0, help="RMSNorm epsilon")
    dropout: float = option(0.0, min=0, below=1, help="dropout probability")

    def __post_init__(self) -> None:
        try:
            check(self)
        except UserError as e:
            raise ValueError(str(e)) from None
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.kv_heads}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("head dimension must be even for RoPE")

    # None fields stay None (so overriding d_model or n_head re-derives them); these resolve them
    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 64 * math.ceil(8 * self.d_model / 3 / 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Build from a dict, ignoring keys that are not config fields (forward compatible)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def num_params(self, *, embeddings: bool = True) -> int:
        """Parameter count; `embeddings=False` leaves out the token embedding (a lookup)."""
        hd, d = self.head_dim, self.d_model
        attn = d * hd * (self.n_head + 2 * self.kv_heads) + self.n_head * hd * d
        mlp = 3 * d * self.ffn_dim
        norms = 2 * d + (2 * hd if self.qk_norm else 0)
        body = self.n_layer * (attn + mlp + norms) + d
        head = d * self.vocab_size
        return body + head + (d * self.vocab_size if embeddings else 0)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 x matmul params + attention (12 L d S, halved when causal)."""
        s = self.max_seq_len if seq_len is None else seq_len
        attn = 12 * self.n_layer * self.d_model * s * (0.5 if self.causal else 1.0)
        return 6.0 * self.num_params(embeddings=False) + attn


PRESETS: dict[str, ModelConfig] = {
    # ~16.9M parameters with an 8K vocab (the paper's small-scale calibration model)
    "tiny": ModelConfig(vocab_size=8192, n_layer=6, n_head=6, d_model=384, max_seq_len=256),
    # ~50.1M parameters with an 8K vocab: the model-size step between tiny and small that the
    # sweep's size axis needs (head dim 64 like small, seq 512)
    "mid": ModelConfig(vocab_size=8192, n_layer=8, n_head=10, d_model=640, max_seq_len=512),
    # ~135M parameters with a 32K vocab (GPT-2-small shape)
    "small": ModelConfig(vocab_size=32768, n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
    # the paper's released coder recipe (GPT-NeoX vocab padded to a multiple of 64)
    "coder-1.7b": ModelConfig(vocab_size=50304, n_layer=28, n_head=16, d_model=2048, d_ff=6144,
                              max_seq_len=2048, qk_norm=True),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)




@dataclass
class TrainConfig:
    """One training run (codediff.train)."""

    objective: str = option("ar", choices=OBJECTIVES, help="ar: next-token prediction; mdm: "
                            "masked diffusion", cli=False)
    total_tokens: int = option(10_000_000, count=True, min=1, help="tokens the optimiser "
                               "consumes, e.g. 300M (epochs = total / unique)", cli=False)
    seq_len: int | None = option(None, min=2, help="training sequence length (at most "
                                 "--max-seq-len)", default_text="--max-seq-len")
    batch_size: int = option(128, min=1, help="global batch, sequences per optimizer step")
    micro_batch: int | None = option(None, min=1, help="sequences per rank per forward pass",
                                     default_text="on a GPU the largest that fits (batch / world, "
                                     "halved until a forward + backward fits; recorded in "
                                     "run.json); on a CPU batch / world")
    lr: float = option(1e-3, above=0, help="peak learning rate")
    min_lr_ratio: float = option(0.1, min=0, max=1, help="final learning rate / peak")
    schedule: str = option("cosine", choices=SCHEDULES, help="learning-rate schedule "
                           "(wsd: warmup-stable-decay)")
    warmup_steps: int | None = option(None, min=0, help="linear warmup steps",
                                      default_text="5% of the steps, at most 2000")
    decay_frac: float = option(0.2, min=0, max=1, help="wsd: the last fraction of the steps "
                               "decays linearly")
    weight_decay: float = option(0.1, min=0, help="AdamW weight decay")
    beta1: float = option(0.9, min=0, below=1, help="AdamW beta1")
    beta2: float = option(0.95, min=0, below=1, help="AdamW beta2")
    grad_clip: float = option(1.0, min=0, help="gradient norm clip (0 = off)")
    seed: int = option(0, min=0, help="seed of the weights and the data order")
    # objective options
    t_sampling: str = option("stratified", choices=T_SAMPLING, help="mdm: how the masking "
                             "ratios t of a batch are drawn (stratified: low-discrepancy)")
    mdm_eps: float = option(1e-3, above=0, below=1, help="mdm: smallest masking ratio")
    cut_prob: float = option(0.01, min=0, max=1, help="mdm: probability of a random-length "
                             "sequence")
    mdm_masked_head: bool = option(True, help="mdm: output head on the masked positions only "
                                   "(same loss)")
    ar_input_mask_prob: float = option(0.0, min=0, max=1, help="ar: probability of masking an "
                                       "input token")
    ar_input_noise_prob: float = option(0.0, min=0, max=1, help="ar: probability of replacing "
                                        "an input token by a random one")
    # fill-in-the-middle (codediff.fim; docs/training.md)
    fim_rate: float = option(0.0, min=0, max=1, help="ar: probability that a document is "
                             "trained in fill-in-the-middle form (Bavarian et al. use 0.5)")
    fim_spm_rate: float = option(0.0, min=0, max=1, help="ar: probability that a FIM document "
                                 "takes the SPM order (suffix first) instead of PSM")
    # validation and checkpoints at log-spaced token counts
    val_tokens: int = option(1_000_000, count=True, min=1, help="validation tokens per "
                             "evaluation, e.g. 1M")
    val_batch: int | None = option(None, min=1, help="sequences per validation forward pass",
                                   default_text="the micro batch")
    mdm_val_samples: int = option(4, min=1, help="mdm: masking draws per validation sequence")
    val_seed: int = option(1234, min=0, help="seed of the validation masks")
    eval_points: int = option(24, min=1, help="validations, log-spaced in tokens")
    checkpoint_points: int = option(8, min=1, help="kept checkpoints, log-spaced in tokens")
    first_eval_tokens: int | None = option(None, count=True, min=1, help="start of the "
                                           "log-spaced grid", default_text="total / 1000")
    # machinery
    dtype: str = option("auto", choices=TRAIN_DTYPES, help="auto: bf16 autocast on CUDA, "
                        "float32 on CPU")
    compile: bool | None = option(None, help="torch.compile the step", default_text="on CUDA")
    # auto: CUDA graphs ("reduce-overhead") for one process on a GPU without gradient
    # accumulation, where a small model's step is bound by kernel launches; "default" otherwise
    # (DDP / FSDP2 communication hooks are not captured by CUDA graphs)
    compile_mode: str = option("auto", choices=COMPILE_MODES, help="torch.compile mode; auto: "
                               "CUDA graphs for one GPU without gradient accumulation, else "
                               "default")
    attention: str = option("auto", choices=ATTENTION_BACKENDS, help="SDPA kernel")
    dist: str = option("ddp", choices=("ddp", "fsdp"), help="several processes: data parallel "
                       "or fully sharded")
    activation_checkpointing: bool = option(False, help="recompute activations in the "
                                            "backward pass (less memory)")
    log_every: int = option(10, min=1, help="log the loss every N steps")
    save_every_s: float = option(600.0, above=0, help="save the resumable state every N "
                                 "seconds")
    save_every_steps: int = option(0, min=0, help="also save state every N steps (0 = only by "
                                   "time / checkpoints)")
    progress: bool = option(True, help="progress bar", false_aliases=("--quiet",))
    stop_after_steps: int = option(0, min=0, help="stop (state saved) after this many steps in "
                                   "this invocation (0 = run to the end)")

    def validate(self) -> None:
        check(self)
        if self.objective != "ar" and (self.fim_rate > 0 or self.fim_spm_rate > 0):
            raise UserError(f"--fim-rate / --fim-spm-rate apply to --objective ar only "
                            f"({self.objective} fills a hole natively); drop them")
        if self.fim_spm_rate > 0 and self.fim_rate == 0:
            raise UserError("--fim-spm-rate has no effect without --fim-rate; add --fim-rate "
                            "(e.g. 0.5) or drop --fim-spm-rate")


# ----------------------------------------------------------------------------- generation

GENERATE_BACKENDS = ("auto", "native", "hf", "vllm")
MODEL_KINDS = ("ar", "dlm")
CONVENTIONS = ("auto", "llada", "dream")
GENERATE_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


@dataclass
class GenerateConfig:
    """`codediff generate` (codediff.generate). kind='ar'/'dlm' marks options that apply to one
    model kind only: setting one for the other kind is refused."""

    model: str = option(help="a codediff run dir or checkpoint folder, or a Hugging Face model "
                        "folder", group="io")
    task: str = option(help="task name (see `codediff tasks`)", group="io")
    out: str = option(help="samples file to write (samples.jsonl)", group="io")
    recipe: str | None = option(None, help="published evaluation settings by name (`codediff "
                                "recipes`) or a recipe .toml file: its values are defaults, "
                                "options typed here win", default_text="none", group="io")
    prompt_format: str | None = option(None, help="prompt format of the task spec",
                                       default_text="the task's default", group="io")
    data: str | None = option(None, help="task data file or folder",
                              default_text="$CODEDIFF_DATA, ../shared/data beside a checkout, packaged files, then the hub", group="io")
    # `-n` too: under torchrun `--n` is an ambiguous abbreviation of torchrun's own options
    n: int = option(1, min=1, short="-n", help="samples per problem", group="io")
    limit: int | None = option(
        None, min=1, default_text="all", group="io",
        help="only the first N problems, in task order after --task-ids (a sweep spec's "
             "task_limit spreads N over the task instead; for a spread, list the ids in "
             "--task-ids)")
    task_ids: list[str] | None = option(None, nargs="+", help="only these task ids",
                                        default_text="all", group="io")
    batch_size: int = option(16, min=1, help="sequences per forward pass", group="io")
    seed: int = option(0, min=0, help="base seed; each sample's seed derives from it, its task "
                       "and its id", group="io")
    overwrite: bool = option(False, negatable=False,
                             help="discard an existing or unfinished output made with "
                             "other settings", group="io")
    progress: bool = option(True, help="progress bar", false_aliases=("--quiet",), group="io")
    # both kinds
    temperature: float = option(0.0, min=0, help="0 = greedy (AR) / argmax (DLM Gumbel-max)",
                                group="both")
    token_healing: bool = option(True, help="take the prompt's last token back so the answer's "
                                 "first token extends its text", group="both")
    # AR
    max_new_tokens: int = option(512, min=1, kind="ar", help="answer length limit in tokens",
                                 group="ar")
    top_p: float = option(1.0, above=0, max=1, kind="ar", help="nucleus sampling mass (1 = off)",
                          group="ar")
    top_k: int = option(0, min=0, kind="ar", help="sample among the k likeliest (0 = off)",
                        group="ar")
    kv_cache: bool = option(True, kind="ar", help="reuse keys/values (--no-kv-cache recomputes "
                            "the whole sequence each step, for checking the cache)", group="ar")
    # DLM
    sampler: str = option("low_confidence", choices=tuple(SAMPLERS), kind="dlm",
                          help="which masked positions to commit at each step", group="dlm")
    tau: float = option(DEFAULT_TAU, min=0, max=1, kind="dlm", help="threshold sampler: confidence bar",
                        group="dlm")
    factor: float = option(1.0, min=0, kind="dlm", help="factor sampler: f", group="dlm")
    gamma: float = option(0.01, min=0, kind="dlm", help="entropy_bounded sampler: entropy "
                          "budget in nats", group="dlm")
    factor_rule: str = option("stated", choices=FACTOR_RULES, kind="dlm", help="factor "
                              "sampler: the published rule, or Fast-dLLM's code (fastdllm: also "
                              "commits the last candidate when it is the first below its bar)",
                              group="dlm")
    step_schedule: str = option("even", choices=DLM_SCHEDULES, kind="dlm", help="fixed-schedule "
                                "samplers: commits per step, even (LLaDA) or dream (Dream's "
                                "n_mask*(1-s/t) over linspace(1, eps))", group="dlm")
    reference_rng: bool = option(False, kind="dlm", help="--sampler random / origin at "
                                 "--temperature 0 with -n 1: seed each sample's generator "
                                 "with --seed itself and draw its random numbers as the "
                                 "reference code does (LLaDA generate: torch.rand over the "
                                 "whole sequence each step; Dream diffusion_generate: over its "
                                 "masked positions), so a sample equals the reference run on "
                                 "that prompt alone after torch.manual_seed(seed)",
                                 group="dlm")
    gen_length: int = option(256, min=1, kind="dlm", help="answer length in tokens", group="dlm")
    block_length: int = option(32, min=1, kind="dlm", help="semi-autoregressive block length "
                               "(= gen-length: one block)", group="dlm")
    steps: int | None = option(None, min=1, kind="dlm", help="denoising steps for the "
                               "fixed-schedule samplers", default_text="gen-length, one token "
                               "per step", group="dlm")
    cache: str = option("none", choices=CACHES, kind="dlm", help="KV cache: prefix (Fast-dLLM) "
                        "or dual (prefix + suffix)", group="dlm")
    logits_eos_inf: bool = option(False, kind="dlm", help="never propose end-of-text (LLaDA's "
                                  "evaluation option)", group="dlm")
    confidence_eos_inf: bool = option(False, kind="dlm", help="commit end-of-text proposals "
                                      "last (LLaDA's evaluation option)", group="dlm")
    early_stop: bool = option(True, kind="dlm", help="stop decoding blocks once the answer has "
                              "ended", group="dlm")
    infill_length: str = option("budget", choices=LENGTH_RULES, kind="dlm", help="infilling "
                                "tasks: masks per hole; budget: a fixed number per hole kind "
                                "(or --gen-length), the answer ends by the hole's end rule; "
                                "oracle: the reference fill's length (an ablation, labelled "
                                "as such)", group="dlm")
    # replay the repeated step as a CUDA graph (native, GPU)
    cuda_graphs: bool = option(True, kind="dlm", help="native models on a GPU: capture the "
                               "repeated diffusion step in a CUDA graph once per batch and "
                               "replay it (same samples, faster; docs/benchmarks.md)",
                               group="dlm")
    # model loading
    backend: str = option("auto", choices=GENERATE_BACKENDS, help="how to load and run the "
                          "model", group="load")
    kind: str | None = option(None, choices=MODEL_KINDS, help="treat a Hugging Face model as "
                              "AR or DLM", default_text="detected", group="load")
    convention: str = option("auto", choices=CONVENTIONS, kind="dlm", help="DLM logits "
                             "convention: llada (aligned) or dream (shifted by one)", group="load")
    mask_id: int | None = option(None, min=0, kind="dlm", help="mask token id when the model's "
                                 "config does not name one", default_text="the model's",
                                 group="load")
    device: str | None = option(None, help="cpu, cuda, cuda:1", default_text="cuda if a GPU is "
                                "visible, else cpu", group="load")
    dtype: str | None = option(None, choices=GENERATE_DTYPES, help="weights dtype",
                               default_text="bfloat16 on GPU, float32 on CPU", group="load")
    trust_remote_code: bool = option(False, negatable=False,
                                     help="allow a Hugging Face model's own code (LLaDA, "
                                     "Dream)", group="load")
    extra: dict[str, Any] = option(help="backend-specific extras", factory=dict, cli=False)
    # the options the user typed (options only for the other model kind are refused)
    explicit: set[str] = option(help="options set on the command line", factory=set, cli=False)
