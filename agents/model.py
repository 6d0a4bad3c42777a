"""The embedded default model: a tiny Llama sized for recall *and* for editing.

docs/design.md ("The default model"): 2 layers, d=128 learns 300 people fast on 2 cores, and
in such a model only layer 0's MLP is editable by ROME; at d=256 editing got much harder.
Measured here (batch 16 x 128 packed tokens, 1,500 steps, 115 s): d_ff=256 (0.53 M
parameters) reached 0.99 / 0.975 / 0.945 QA-trained / QA-never-trained / held-out recall.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig, LlamaForCausalLM


@dataclass
class ModelShape:
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 256
    max_len: int = 256


# Named shapes (`--set preset=wide`). `small` is the default model; `wide` gives the editors
# room (a 4x wider MLP, twice the layers: bench/editing.py --preset wide).
PRESETS: dict[str, dict] = {"small": {}, "wide": {"n_layer": 4, "d_ff": 1024}}


def tiny_llama(shape: ModelShape, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=shape.d_model, intermediate_size=shape.d_ff,
                      num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head,
                      num_key_value_heads=shape.n_head, max_position_embeddings=shape.max_len,
                      pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    return LlamaForCausalLM(cfg)
