"""The value: a vector delta added to a module's output at the subject's edited token, found by
gradient descent so that the prompt (alone and behind random prefixes) continues with the
target, while a KL term keeps the subject's neutral prompt (and, with a world, its other
questions) as the unedited model had them, and a weight decay plus a norm clamp keep delta
small. ROME adds delta at one MLP's output, MEMIT at the top edited layer's residual; one
function serves both, for many requests at once: one delta row per group of requests
(MEMIT puts all requests about one subject in one group, since they share one key).

Adding delta at a module's output at the subject is adding it to the residual stream after
that block, and nothing upstream depends on delta; so the residual after the block is
computed once, and each step runs only the blocks above it and the LM head at the
positions the loss reads (4-8x less work than a full forward per step on CPU).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agents.architectures import module_at
from evolution.editors.requests import EditRequest, check_finite
from evolution.editors.rome.repr_tools import (captured_output, decoder_layers, layout, padded, subject_index,
                                              with_target)


@dataclass
class Rows:
    """Token rows of one optimization: ids, the subject position and the owning request of
    each row; `target_start` is -1 for KL rows (scored at their last position)."""
    seqs: list[list[int]]
    subj: list[int]
    owner: list[int]
    target_start: list[int]


def rewrite_rows(tokenizer, requests: list[EditRequest], texts: list[list[str]], groups: list[int],
                 tokens: dict[str, int]) -> Rows:
    rows = Rows([], [], [], [])
    for i, r, tx in zip(groups, requests, texts):
        for text in tx:
            ids, start = with_target(tokenizer, text, r.target)
            rows.seqs.append(ids)
            rows.subj.append(subject_index(tokenizer, text, r.subject, tokens.get(r.subject, -1)))
            rows.owner.append(i)
            rows.target_start.append(start)
    return rows


def kl_rows(tokenizer, kl_prompts: list[list[str]], subjects: list[str], tokens: dict[str, int]) -> Rows:
    rows = Rows([], [], [], [])
    for i, (prompts, s) in enumerate(zip(kl_prompts, subjects)):
        for text in prompts:
            rows.seqs.append(tokenizer(text).input_ids)
            rows.subj.append(subject_index(tokenizer, text, s, tokens.get(s, -1)))
            rows.owner.append(i)
            rows.target_start.append(-1)
    return rows


def neutral_prompts(subject: str, edited_relations, world=None, keep_other_relations: bool = True) -> list[str]:
    """Prompts whose answers the edit must not move: the bare subject (what a bio says first)
    and, with a world, the subject's questions on relations this edit leaves alone (derived
    relations excluded: company_city should follow a company edit)."""
    out = [subject]
    if world is not None and keep_other_relations and subject in {p.name for p in world.people}:
        moved = set(edited_relations) | {d for d, (src, _) in world.derived.items() if src in edited_relations}
        out += [world.query(subject, r, "question").prompt for r in world.relations_of(subject) if r not in moved]
    return out


@dataclass
class Batch:
    """The tensors of one optimization (rewrite rows first, then KL rows)."""
    ids: torch.Tensor          # [rows, width]
    mask: torch.Tensor
    subj: torch.Tensor         # [rows] subject position
    owner: torch.Tensor        # [rows] delta row (group)
    n_rw: int                  # rewrite rows
    t_row: torch.Tensor        # [target tokens] row of each target token
    t_pos: torch.Tensor        # position whose logits predict it
    t_tok: torch.Tensor        # the token
    kl_last: torch.Tensor      # [KL rows] last position


def batch_of(rw: Rows, kl: Rows, pad_id: int, device) -> Batch:
    seqs = rw.seqs + kl.seqs
    ids, mask = padded(seqs, pad_id, device)
    t_row, t_pos, t_tok = [], [], []
    for j, (seq, start) in enumerate(zip(rw.seqs, rw.target_start)):
        for t in range(start, len(seq)):
            t_row.append(j)
            t_pos.append(t - 1)
            t_tok.append(seq[t])
    T = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    return Batch(ids, mask, T(rw.subj + kl.subj), T(rw.owner + kl.owner), len(rw.seqs), T(t_row), T(t_pos),
                 T(t_tok), T([len(s) - 1 for s in kl.seqs]))


@contextlib.contextmanager
def blocks_from(model, start: int):
    """The model's inner stack with only blocks start.. (the rest of its forward unchanged:
    masks, rotary positions, final norm), so `inputs_embeds` may be a mid-stack residual
    (learned position embeddings, which the stack adds to its input, are silenced)."""
    lay = layout(model)
    inner, name = lay.stack(model)
    full = getattr(inner, name)
    setattr(inner, name, torch.nn.ModuleList(list(full)[start:]))
    pos = lay.positions and module_at(model, lay.positions).register_forward_hook(lambda _m, _a, o: torch.zeros_like(o))
    try:
        yield inner
    finally:
        setattr(inner, name, full)
        if pos:
            pos.remove()


@torch.no_grad()
def residual_after(model, layer: int, b: Batch) -> torch.Tensor:
    box: list[torch.Tensor] = []
    h = decoder_layers(model)[layer].register_forward_hook(
        lambda _m, _a, out: box.append(out[0] if isinstance(out, tuple) else out))
    try:
        model(input_ids=b.ids, attention_mask=b.mask, use_cache=False)
    finally:
        h.remove()
    return box[0].detach()


def head_logits(model, layer: int, resid: torch.Tensor, b: Batch, rows: torch.Tensor, pos: torch.Tensor):
    """Logits at (rows, pos) of a forward resumed from the residual after `layer`."""
    with blocks_from(model, layer + 1) as inner:
        hidden = inner(inputs_embeds=resid, attention_mask=b.mask, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden[rows, pos]).float()


def losses(model, layer: int, resid: torch.Tensor, b: Batch, delta: torch.Tensor, n: int):
    """(per-group target NLL (mean over its rows of the mean token NLL), KL rows' log-probs)."""
    r = resid.index_put((torch.arange(len(b.subj), device=resid.device), b.subj),
                        resid[torch.arange(len(b.subj), device=resid.device), b.subj] + delta[b.owner].to(resid.dtype))
    kl_rows_t = torch.arange(b.n_rw, len(b.subj), device=resid.device)
    logits = head_logits(model, layer, r, b, torch.cat([b.t_row, kl_rows_t]), torch.cat([b.t_pos, b.kl_last]))
    nt = len(b.t_row)
    return target_nll(logits[:nt], b, n), logits[nt:].log_softmax(-1)


def target_nll(logits: torch.Tensor, b: Batch, n: int) -> torch.Tensor:
    """[n]: each group's target NLL (the mean over its rewrite rows of the row's mean token
    NLL) from the logits at the target positions (`b.t_pos`, in order)."""
    lp = logits.log_softmax(-1).gather(1, b.t_tok[:, None])[:, 0]
    dev = lp.device
    tok_per_row = torch.zeros(b.n_rw, device=dev).index_add_(0, b.t_row, torch.ones_like(lp))
    row_nll = -torch.zeros(b.n_rw, device=dev).index_add_(0, b.t_row, lp) / tok_per_row
    own = b.owner[:b.n_rw]
    rows_per_group = torch.zeros(n, device=dev).index_add_(0, own, torch.ones_like(row_nll))
    return torch.zeros(n, device=dev).index_add_(0, own, row_nll) / rows_per_group


def norm_anchored(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`values` [g, d] rescaled to the norms of `reference` [g, d] (the unedited model's values
    there): Norm-Anchor Scaling (Liu et al. 2026). Each sequential edit otherwise writes a value
    larger than the last (the clamp is relative to the current, already grown value), and the
    layer's norm feeds on itself: 100 ROME edits took the edited matrix from norm 11 to 43."""
    return values * (reference.norm(dim=1, keepdim=True) / values.norm(dim=1, keepdim=True).clamp_min(1e-12))


def optimize_deltas(model, tokenizer, module, layer: int, requests: list[EditRequest], texts: list[list[str]],
                    kl_prompts: list[list[str]], steps: int, lr: float, weight_decay: float,
                    clamp_norm_factor: float, kl_factor: float,
                    groups: list[int] | None = None,
                    tokens: dict[str, int] | None = None,
                    anchor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(delta [g, d], `module`'s unedited output at the subject averaged over each group's
    rewrite rows [g, d], info). delta is added to the residual after block `layer` (where
    `module`, that block's MLP or the block itself, writes). `texts[i]`: request i's rewrite
    texts (each continued by the target); `groups[i]`: request i's delta row (default: its
    own); `kl_prompts[g]`: group g's neutral prompts; `tokens`: the subject token each subject
    is edited at (repr_tools; default its last); `anchor` [g, d]: values whose norms each
    group's value keeps throughout the search (Norm-Anchor Scaling: the direction is searched
    at that norm, rather than the found value rescaled after, which undid birth dates). The
    model is left untouched."""
    device = next(model.parameters()).device
    groups = list(range(len(requests))) if groups is None else list(groups)
    n = max(groups) + 1
    subjects = {g: r.subject for g, r in zip(groups, requests)}
    tokens = tokens or {}
    b = batch_of(rewrite_rows(tokenizer, requests, texts, groups, tokens),
                 kl_rows(tokenizer, kl_prompts, [subjects[g] for g in range(n)], tokens), tokenizer.pad_token_id, device)
    rows_all = torch.arange(len(b.subj), device=device)

    # the module's value at the subject (for the clamp) and the residual to resume from
    with captured_output(module) as box:
        resid = residual_after(model, layer, b)
    at_subj = box[0][rows_all[:b.n_rw], b.subj[:b.n_rw]].float()
    own = b.owner[:b.n_rw]
    value0 = torch.zeros(n, at_subj.shape[1], device=device).index_add_(0, own, at_subj)
    value0 = value0 / torch.bincount(own, minlength=n)[:, None]
    max_norm = clamp_norm_factor * value0.norm(dim=1)
    scale0 = value0.norm(dim=1).clamp_min(1e-6)

    start = torch.zeros_like(value0) if anchor is None else norm_anchored(value0, anchor.to(value0)) - value0
    delta = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    kl_own = b.owner[b.n_rw:]
    kl_per_group = torch.bincount(kl_own, minlength=n).clamp_min(1)
    nll0 = nll = None
    with frozen(model):
        with torch.no_grad():
            _, kl_ref = losses(model, layer, resid, b, torch.zeros_like(value0), n)
        for step in range(steps):
            nll_g, kl_lp = losses(model, layer, resid, b, delta, n)
            nll = nll_g.detach()
            nll0 = nll if nll0 is None else nll0
            if float(nll.max()) < 0.02:
                break
            loss = nll_g.sum() + weight_decay * ((delta.norm(dim=1) / scale0) ** 2).sum()
            if len(kl_own):
                kl_row = F.kl_div(kl_lp, kl_ref, log_target=True, reduction="none").sum(-1)
                loss = loss + kl_factor * (torch.zeros(n, device=device).index_add_(0, kl_own, kl_row)
                                           / kl_per_group).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                norms = delta.norm(dim=1)
                delta.mul_(torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12),
                                       torch.ones_like(norms))[:, None])
                if anchor is not None:
                    delta.copy_(norm_anchored(value0 + delta, anchor.to(value0)) - value0)
    delta = delta.detach()
    check_finite("value delta", delta, "lower v_lr")
    return delta, value0, {"nll_before": nll0.tolist(), "nll_after": nll.tolist(), "steps": step + 1,
                           "delta_norm": delta.norm(dim=1).tolist()}


@contextlib.contextmanager
def frozen(model):
    """No weight gradients while only delta trains (they would cost most of the backward)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
