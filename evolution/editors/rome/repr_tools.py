"""Where ROME and MEMIT read and write inside a model (its family's layout,
agents/architectures.py): one token of the subject
(the last, in the papers; which one is `evolution.editors.target.key_tokens`' choice), the MLP
down-projection's input (the key) and output (the value), and hooks that add a vector
there. Kept apart so that every step of a method reads the model the same way.

`tokens` arguments map a subject to the index, among its own tokens, of the token to read
(Python-style: -1 the last, -2 the one before); a subject not in the map uses its last.
"""
from __future__ import annotations

import contextlib

import torch

from agents.architectures import ArchitectureError, Layout, layout_of
from agents.delta import as_dense, plus
from evolution.editors.requests import EditError


def layout(model) -> Layout:
    """The model family's layout; an EditError (the weights untouched) for an unknown family."""
    try:
        return layout_of(model)
    except ArchitectureError as e:
        raise EditError(str(e)) from None


def decoder_layers(model):
    """The list of transformer blocks."""
    return layout(model).layers(model)


def check_layer(model, layer) -> int:
    n = len(decoder_layers(model))
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
        raise EditError(f"layer: {layer!r} is out of range; this model has layers 0..{n - 1}")
    return layer


def down_proj(model, layer: int) -> torch.nn.Module:
    """Layer `layer`'s MLP output projection (Llama's down_proj, GPT-2's c_proj, ...): its input
    is the key, its output the value."""
    return layout(model).mlp_out_of(decoder_layers(model)[check_layer(model, layer)])


def add_update(model, module, update: "torch.Tensor | tuple[torch.Tensor, torch.Tensor]", into: dict) -> None:
    """Add an [out, in] update, dense or factored (B [out, r], A [r, in]), to the projection's
    weight, whatever way the family stores it, and record it in `into`, the method's returned
    update (agents/delta.py), under the weight's name and in its orientation."""
    if layout(model).transposed:            # GPT-2's Conv1D stores [in, out]: (B A)^T = A^T B^T
        change = (update[1].T.contiguous(), update[0].T.contiguous()) if isinstance(update, tuple) \
            else update.T.contiguous()
    else:
        change = update
    with torch.no_grad():
        module.weight += as_dense(change).to(module.weight.dtype)
    name = next(n for n, p in model.named_parameters() if p is module.weight)
    into[name] = plus(into.get(name), change)


@contextlib.contextmanager
def base_weights(agent):
    """The agent's model with its base weights for the duration, its own put back after (the
    parameters it changed are swapped, nothing is copied whole)."""
    state = agent.model.state_dict()
    own = {k: v.detach().clone() for k, v in state.items() if not torch.equal(v, agent.base[k].to(v.device))}
    try:
        with torch.no_grad():
            for k in own:
                state[k].copy_(agent.base[k])
        yield agent.model
    finally:
        with torch.no_grad():
            for k, v in own.items():
                state[k].copy_(v)


def subject_index(tokenizer, prompt: str, subject: str, token: int = -1) -> int:
    """Token index (counting <s>) of the subject's token `token` (-1: its last) at the
    subject's last occurrence in `prompt`: the request's own prompt sits at the end of any
    prefixed text."""
    start = prompt.rfind(subject)
    if start < 0:
        raise EditError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    end = start + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not hits:
        raise EditError(f"subject {subject!r}: no token of the prompt {prompt!r} covers it")
    if not -len(hits) <= token < len(hits):
        raise EditError(f"subject_token {token}: {subject!r} has {len(hits)} tokens in {prompt!r}; "
                        f"give an index in -{len(hits)}..{len(hits) - 1}, or None to let tracing choose")
    return hits[token]


def with_target(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Ids of prompt + " " + target, and where the target starts (as the scorer builds them)."""
    p = tokenizer(prompt).input_ids
    t = tokenizer(" " + target, add_special_tokens=False).input_ids
    return p + t, len(p)


def padded(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


@contextlib.contextmanager
def captured_input(module):
    """Collects the module's input on every forward into `box[0]` (the key, for down_proj)."""
    box: list[torch.Tensor] = []

    def hook(_m, args):
        box.append(args[0])
    h = module.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        h.remove()


@contextlib.contextmanager
def captured_output(module):
    """Collects the module's output on every forward into `box` (a block's: its residual)."""
    box: list[torch.Tensor] = []
    h = module.register_forward_hook(lambda _m, _a, o: box.append(o[0] if isinstance(o, tuple) else o))
    try:
        yield box
    finally:
        h.remove()


@torch.no_grad()
def at_subject(model, tokenizer, capture, prompts: list[str], subjects: list[str],
               tokens: dict[str, int] | None = None, batch_size: int = 256) -> torch.Tensor:
    """[n, width]: what `capture()` (a context collecting one tensor per forward) holds at each
    prompt's subject token (`tokens[subject]`, default the last), in batches."""
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(prompts), batch_size):
        ps, ss = prompts[b:b + batch_size], subjects[b:b + batch_size]
        idx = torch.tensor([subject_index(tokenizer, p, s, (tokens or {}).get(s, -1)) for p, s in zip(ps, ss)],
                           device=device)
        ids, mask = padded(tokenizer(ps).input_ids, tokenizer.pad_token_id, device)
        with capture() as box:
            model(input_ids=ids, attention_mask=mask)
        out.append(box[0][torch.arange(len(ps), device=device), idx].float())
    return torch.cat(out)


def keys_at_subject(model, tokenizer, prompts: list[str], subjects: list[str], layer: int,
                    tokens: dict[str, int] | None = None, batch_size: int = 256) -> torch.Tensor:
    """[n, d_ff]: the down-projection's input (its key) at each prompt's subject token."""
    mod = down_proj(model, layer)
    return at_subject(model, tokenizer, lambda: captured_input(mod), prompts, subjects, tokens, batch_size)


def outputs_at_subject(model, tokenizer, module, prompts: list[str], subjects: list[str],
                       tokens: dict[str, int] | None = None, batch_size: int = 256) -> torch.Tensor:
    """[n, d]: `module`'s output at each prompt's subject token (a block: its residual)."""
    return at_subject(model, tokenizer, lambda: captured_output(module), prompts, subjects, tokens, batch_size)
