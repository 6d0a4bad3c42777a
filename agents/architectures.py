"""Where the parts of a model live, per architecture family: data, not branches (EasyEdit keeps
one hparams file per model for the same reason). Editors, tracing and the learners' LoRA
targets read this table; nothing else names a module path.

A `Layout` says, from the loaded `...ForCausalLM`: the list of transformer blocks, each block's
MLP and attention, the MLP's output projection (the editors' key -> value map: its input is
the key) and its other projections, the attention output, the token embeddings and the final
norm, and whether the MLP's weights are stored transposed (GPT-2's `Conv1D`: [in, out]).
A family not in the table is refused with the known ones; add a row with
`register_layout(model_type, Layout(...))`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class ArchitectureError(ValueError):
    """A model whose family has no layout; the message names the known ones and the fix."""


def module_at(obj, path: str):
    """The submodule at a dotted path (`transformer.h`)."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def out_in(weight: torch.Tensor, transposed: bool) -> tuple[int, int]:
    """(out, in) widths of a projection's weight, stored [out, in] or, transposed, [in, out]."""
    w = weight.shape
    return (int(w[1]), int(w[0])) if transposed else (int(w[0]), int(w[1]))


def plain_projection(weight: torch.nn.Parameter, bias: torch.nn.Parameter | None, transposed: bool) -> torch.nn.Module:
    """The family's own projection module (GPT-2's `Conv1D` when transposed, else `nn.Linear`)
    around existing parameters: what a memory that wrapped it puts back when uninstalled."""
    d_out, d_in = out_in(weight, transposed)
    if transposed:
        from transformers.pytorch_utils import Conv1D
        plain = Conv1D(d_out, d_in).to(weight.device, weight.dtype)
    else:
        plain = torch.nn.Linear(d_in, d_out, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    plain.weight = weight
    if bias is not None:
        plain.bias = bias
    return plain


@dataclass(frozen=True)
class Layout:
    blocks: str                     # from the model: the list of transformer blocks
    mlp: str                        # in a block
    mlp_out: str                    # in the MLP: the output projection (input = the key, d_ff wide)
    mlp_in: tuple[str, ...]         # in the MLP: the projections before it
    attn: str                       # in a block
    attn_out: str                   # in the attention: its output projection
    embed: str                      # from the model
    final_norm: str                 # from the model
    lora: tuple[str, ...]           # LoRA's default target modules (attention and MLP projections)
    transposed: bool = False        # weights stored [in, out] (GPT-2's Conv1D), not [out, in]
    positions: str | None = None    # from the model: learned position embeddings added to the input (GPT-2)

    def layers(self, model) -> list:
        return module_at(model, self.blocks)

    def stack(self, model):
        """(the module that runs the blocks, the name of its block list)."""
        parent, _, name = self.blocks.rpartition(".")
        return (module_at(model, parent) if parent else model), name

    def mlp_of(self, block):
        return module_at(block, self.mlp)

    def attn_of(self, block):
        return module_at(block, self.attn)

    def mlp_out_of(self, block):
        return module_at(self.mlp_of(block), self.mlp_out)

    def key_width(self, module) -> int:
        """The output projection's input width (d_ff)."""
        return out_in(module.weight, self.transposed)[1]


_LLAMA = Layout("model.layers", "mlp", "down_proj", ("gate_proj", "up_proj"), "self_attn", "o_proj",
                "model.embed_tokens", "model.norm",
                ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": Layout("transformer.h", "mlp", "c_proj", ("c_fc",), "attn", "c_proj", "transformer.wte",
                   "transformer.ln_f", ("c_attn", "c_proj", "c_fc"), transposed=True, positions="transformer.wpe"),
    "gptj": Layout("transformer.h", "mlp", "fc_out", ("fc_in",), "attn", "out_proj", "transformer.wte",
                   "transformer.ln_f", ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out")),
    "gpt_neox": Layout("gpt_neox.layers", "mlp", "dense_4h_to_h", ("dense_h_to_4h",), "attention", "dense",
                       "gpt_neox.embed_in", "gpt_neox.final_layer_norm",
                       ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    "phi": Layout("model.layers", "mlp", "fc2", ("fc1",), "self_attn", "dense", "model.embed_tokens",
                  "model.final_layernorm", ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")),
}


def register_layout(model_type: str, layout: Layout) -> None:
    """Teach knowevo a family (its `config.model_type`)."""
    LAYOUTS[model_type] = layout


def layout_of(model) -> Layout:
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in LAYOUTS:
        raise ArchitectureError(f"model {type(model).__name__} (model_type {kind!r}): no layout for this family; "
                                f"known: {sorted(LAYOUTS)}; add one with agents.architectures.register_layout("
                                f"{kind!r}, Layout(blocks=..., mlp=..., mlp_out=..., ...))")
    return LAYOUTS[kind]


def tiny_model(family: str, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, d: int = 128,
               d_ff: int = 256, layers: int = 2, heads: int = 4):
    """A small randomly initialised model of `family` from its config (no download): for
    checking a family end to end (tests/test_families.py, bench/families.py)."""
    import transformers as T
    kw = dict(vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
    llama_like = dict(hidden_size=d, intermediate_size=d_ff, num_hidden_layers=layers, num_attention_heads=heads,
                      max_position_embeddings=256, **kw)
    gpt = dict(n_embd=d, n_layer=layers, n_head=heads, n_positions=256, **kw)
    configs = {"llama": lambda: T.LlamaConfig(**llama_like),
               "mistral": lambda: T.MistralConfig(num_key_value_heads=max(1, heads // 2), **llama_like),
               "qwen2": lambda: T.Qwen2Config(num_key_value_heads=max(1, heads // 2), **llama_like),
               "gpt_neox": lambda: T.GPTNeoXConfig(**llama_like),
               "phi": lambda: T.PhiConfig(**llama_like),
               "gpt2": lambda: T.GPT2Config(n_inner=d_ff, **gpt),
               "gptj": lambda: T.GPTJConfig(n_inner=d_ff, rotary_dim=d // heads // 2, **gpt)}
    if family not in configs:
        raise ArchitectureError(f"family {family!r}: no tiny config; known: {sorted(configs)}")
    return T.AutoModelForCausalLM.from_config(configs[family]())
