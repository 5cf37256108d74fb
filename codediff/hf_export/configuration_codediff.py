"""Configuration of a codediff masked diffusion model (exported by codediff)."""
from transformers import PretrainedConfig


class CodediffConfig(PretrainedConfig):
    model_type = "codediff_mdm"

    def __init__(self, vocab_size=8192, n_layer=6, n_head=6, n_kv_head=None, d_model=384,
                 d_ff=None, max_seq_len=256, rope_base=10000.0, qk_norm=False, causal=False,
                 norm_eps=1e-5, mask_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        self.d_model = d_model
        self.d_ff = d_ff
        self.max_seq_len = max_seq_len
        self.rope_base = rope_base
        self.qk_norm = qk_norm
        self.causal = causal
        self.norm_eps = norm_eps
        self.mask_token_id = mask_token_id
        # the names generic tools look for
        self.hidden_size = d_model
        self.num_hidden_layers = n_layer
        self.num_attention_heads = n_head
        self.max_position_embeddings = max_seq_len
        super().__init__(**kwargs)
