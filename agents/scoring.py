"""Score closed-set answers: log P(candidate | prompt), summed over the candidate's tokens.

Two layouts of the same numbers:
- packed (the default): one row per prompt, the prompt once and then every candidate's
  tokens but its last, each candidate a segment that sees the prompt and itself only (a
  block attention mask) at the positions it would have after the prompt. A prompt is thus
  computed once instead of once per candidate (~30 candidates per query on the default
  world); the first token of every candidate is scored from the prompt's last position.
- pairs: one sequence per (prompt, candidate), what vLLM is given (`pair_sequences`).
Log-probs of the two agree to ~1e-6 (tests/test_agent.py). Identical (prompt, candidates)
asks in one call are scored once. Rows are sorted by length and run in padded batches;
only the log-probs at candidate positions are gathered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class ScoringError(ValueError):
    """A query this model's tokenizer cannot read; the message names the words and the fix."""


_READ: dict[int, tuple[object, set, set]] = {}     # id(tokenizer) -> (it, candidate sets read, subjects read)


def _all_unknown(tokenizer, ids: list[int]) -> bool:
    return tokenizer.unk_token_id is not None and bool(ids) and all(i == tokenizer.unk_token_id for i in ids)


def check_readable(tokenizer, queries) -> None:
    """Raise ScoringError where the model cannot tell a query's answers apart, instead of
    scoring them as equals (a uniform belief that looks like a measurement): a candidate that
    tokenizes to nothing or to unknown tokens only, two candidates that read as the same
    tokens, a subject most of whose words are unknown. Each candidate set and subject is
    checked once per tokenizer."""
    entry = _READ.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = _READ[id(tokenizer)] = (tokenizer, set(), set())
    _, read_cands, read_subjects = entry
    for q in queries:
        cands = tuple(q.candidates)
        if cands not in read_cands:
            ids = candidate_token_ids(tokenizer, [cands])
            where = f"relation {q.relation!r}"
            if empty := [c for c in cands if not ids[c]]:
                raise ScoringError(f"candidate {empty[0]!r} ({where}) tokenizes to no tokens with this model's "
                                   "tokenizer; give candidates it can read")
            if unknown := [c for c in cands if _all_unknown(tokenizer, ids[c])]:
                raise ScoringError(f"candidates {unknown[:5]} ({where}) are unknown words to this model's tokenizer "
                                   f"(every token is {tokenizer.unk_token!r}), so it cannot tell them apart; use a "
                                   "model whose vocabulary has them (e.g. one pretrained on this world)")
            same: dict[tuple, list[str]] = {}
            for c in cands:
                same.setdefault(tuple(ids[c]), []).append(c)
            if dup := next((cs for cs in same.values() if len(cs) > 1), None):
                raise ScoringError(f"candidates {dup[:5]} ({where}) read as the same tokens to this model's tokenizer "
                                   "(unknown words?), so it cannot tell them apart; use a model whose vocabulary has them")
            read_cands.add(cands)
        if q.subject not in read_subjects:
            words = q.subject.split()
            unknown = [w for w in words if _all_unknown(tokenizer, tokenizer(" " + w, add_special_tokens=False).input_ids)]
            if 2 * len(unknown) > len(words):
                raise ScoringError(f"subject {q.subject!r}: the words {unknown} are unknown to this model's tokenizer, "
                                   "so its answers cannot be about this person; use a model whose vocabulary has them")
            read_subjects.add(q.subject)


def token_ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    """`tokenizer(texts, add_special_tokens=special).input_ids`, through a fast tokenizer's
    backend when there is one: the wrapper's per-text conversion cost as much as the
    encoding (0.3 s of 0.6 s for 16,000 prompts). Padding and truncation are off, as in the
    wrapper's own unpadded call (which sets them per call)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return tokenizer(texts, add_special_tokens=special).input_ids
    backend.no_padding()
    backend.no_truncation()
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=special)]


def candidate_token_ids(tokenizer, candidates: list[tuple[str, ...]]) -> dict[str, list[int]]:
    """Each distinct candidate's tokens as it follows a prompt (with its leading space)."""
    uniq = sorted({c for cs in candidates for c in cs})
    return dict(zip(uniq, token_ids(tokenizer, [" " + c for c in uniq], False)))


def pair_sequences(tokenizer, prompts: list[str], candidates: list[tuple[str, ...]]):
    """Token ids of every prompt+candidate pair and where each candidate starts."""
    p_ids = token_ids(tokenizer, prompts, True)
    c_ids = candidate_token_ids(tokenizer, candidates)
    seqs, starts, owner = [], [], []
    for i, (p, cs) in enumerate(zip(p_ids, candidates)):
        for c in cs:
            seqs.append(p + c_ids[c])
            starts.append(len(p))
            owner.append(i)
    return seqs, starts, owner


@dataclass
class PackedRow:
    """One prompt and its candidates in one sequence (1-D long tensors). Target k is token
    `toks[k]`, predicted by the logits at column `cols[k]`, and belongs to candidate `owner[k]`."""
    tokens: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor       # -1: the prompt; j: candidate j's tokens
    cols: torch.Tensor
    toks: torch.Tensor
    owner: torch.Tensor
    n_cands: int


@dataclass
class _Segments:
    """The candidates' part of a packed row, relative to the prompt's length n: the same for
    every prompt with these candidates (so it is built once per candidate set)."""
    tokens: torch.Tensor         # each candidate's tokens but its last, one segment after another
    offsets: torch.Tensor        # position of each token within its candidate (added to n)
    segments: torch.Tensor
    cols: torch.Tensor           # target columns: -1 for "the prompt's last token", else offset into the segments
    toks: torch.Tensor
    owner: torch.Tensor
    n_cands: int


def _segments(cands: list[list[int]]) -> _Segments:
    tokens, offsets, segments, cols, toks, owner = [], [], [], [], [], []
    for j, c in enumerate(cands):
        if not c:
            raise ValueError(f"candidate {j} has no tokens; every candidate needs at least one")
        cols.append(-1)                      # the first token is predicted by the prompt's end
        for i, tok in enumerate(c[:-1]):     # each later token by the one before it, in segment j
            cols.append(len(tokens))
            tokens.append(tok)
            offsets.append(i)
            segments.append(j)
        toks += c
        owner += [j] * len(c)
    t = lambda x: torch.tensor(x, dtype=torch.long)
    return _Segments(t(tokens), t(offsets), t(segments), t(cols), t(toks), t(owner), len(cands))


def row_layout(n: int, seg: _Segments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positions, segments, cols) of a row whose prompt has n tokens: the same for every
    prompt of that length with these candidates, so built once per (candidates, n)."""
    return (torch.cat([torch.arange(n), seg.offsets + n]),
            torch.cat([torch.full((n,), -1, dtype=torch.long), seg.segments]),
            torch.where(seg.cols < 0, n - 1, seg.cols + n))


def packed_rows(tokenizer, prompts: list[str], candidates: list[tuple[str, ...]]) -> list[PackedRow]:
    p_ids = token_ids(tokenizer, prompts, True)
    c_ids = candidate_token_ids(tokenizer, candidates)
    templates: dict[tuple, tuple[_Segments, list[int]]] = {}      # candidates -> (segments, their tokens)
    layouts: dict[tuple, tuple] = {}
    flat: list[int] = []             # every row's tokens, made one tensor at the end (a tensor per row cost more)
    lengths, parts = [], []
    for p, cs in zip(p_ids, candidates):
        key = tuple(cs)
        if key not in templates:
            seg = _segments([c_ids[c] for c in cs])
            templates[key] = (seg, seg.tokens.tolist())
        seg, seg_tokens = templates[key]
        if (key, len(p)) not in layouts:
            layouts[key, len(p)] = row_layout(len(p), seg)
        flat += p
        flat += seg_tokens
        lengths.append(len(p) + len(seg_tokens))
        parts.append((seg, layouts[key, len(p)]))
    tokens = torch.tensor(flat, dtype=torch.long).split(lengths)
    return [PackedRow(t, *layout, seg.toks, seg.owner, seg.n_cands) for t, (seg, layout) in zip(tokens, parts)]


def block_mask(rows: list[PackedRow], width: int, float_mask: torch.dtype | None = None) -> torch.Tensor:
    """[b, 1, width, width] attention mask: causal, and a candidate's token sees the prompt and
    its own segment only. Boolean (True = attend), or additive in `float_mask`'s dtype (for
    eager attention). A padded query attends to column 0 so no row of the softmax is empty."""
    b = len(rows)
    seg = torch.full((b, width), -2, dtype=torch.long)
    for r, row in enumerate(rows):
        seg[r, :len(row.segments)] = row.segments
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = causal & (k != -2) & (q != -2) & ((k == -1) | (k == q))
    allowed[:, :, 0] |= (seg == -2)
    allowed = allowed[:, None]
    if float_mask is None:
        return allowed
    out = torch.zeros(allowed.shape, dtype=float_mask)
    return out.masked_fill_(~allowed, torch.finfo(float_mask).min)


def mask_dtype(model) -> torch.dtype | None:
    """None (boolean mask) for SDPA/flex attention; the model's dtype for eager attention."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    return None if impl in ("sdpa", "flash_attention_2", "flex_attention") else next(model.parameters()).dtype


def score_packed(forward: Callable, rows: list[PackedRow], pad_id: int, batch_size: int,
                 float_mask: torch.dtype | None, device) -> list[torch.Tensor]:
    """Per row, a tensor of summed candidate log-probs. `forward(idx, input_ids, position_ids,
    attention_mask)` returns logits; `idx` are the rows of the batch (a population placement
    uses it to give each row its agent's delta)."""
    out: list[torch.Tensor | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].tokens))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = [rows[i] for i in idx]
        width = len(batch[-1].tokens)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        pos = torch.zeros((len(idx), width), dtype=torch.long)
        for r, row in enumerate(batch):
            ids[r, :len(row.tokens)] = row.tokens
            pos[r, :len(row.positions)] = row.positions
        mask = block_mask(batch, width, float_mask)
        logits = forward(idx, ids.to(device), pos.to(device), mask.to(device))
        n_t = torch.tensor([len(row.toks) for row in batch])
        first = torch.tensor([0] + [row.n_cands for row in batch]).cumsum(0)      # each row's first candidate
        r_ = torch.repeat_interleave(torch.arange(len(batch)), n_t).to(device)
        c_ = torch.cat([row.cols for row in batch]).to(device)
        t_ = torch.cat([row.toks for row in batch]).to(device)
        owner = (torch.cat([row.owner for row in batch]) + torch.repeat_interleave(first[:-1], n_t)).to(device)
        picked = logits[r_, c_].float()
        lp = picked.gather(1, t_[:, None])[:, 0] - picked.logsumexp(-1)
        sums = torch.zeros(int(first[-1]), device=device).index_add_(0, owner, lp).cpu()
        for k, i in enumerate(idx):
            out[i] = sums[first[k]:first[k + 1]]
    return out


def text_nll(forward: Callable, tokenizer, texts: list[str], batch_size: int, device) -> tuple[float, int]:
    """(summed next-token NLL, tokens scored) over every token of `texts` after the first.
    `forward(idx, input_ids, attention_mask)` returns logits (`idx`: the texts of the batch)."""
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        idx = list(range(i, min(i + batch_size, len(texts))))
        enc = tokenizer([texts[j] for j in idx], return_tensors="pt", padding=True).to(device)
        logits = forward(idx, enc.input_ids, enc.attention_mask)[:, :-1].float()
        labels, mask = enc.input_ids[:, 1:], enc.attention_mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total, count


def greedy_continuations(generate: Callable, tokenizer, prompts: list[str], max_new_tokens: int,
                         batch_size: int, device) -> list[str]:
    """Greedy continuations (the text after each prompt), `batch_size` prompts per
    `generate(idx, **encoding)` call, left-padded (`generate` turns the mask into positions).
    Prompts are batched by length, so a batch pads little."""
    out = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].split()))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            ids = generate(idx, input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                           max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for i, seq in zip(idx, ids[:, enc.input_ids.shape[1]:]):
                out[i] = tokenizer.decode(seq, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def unique_asks(prompts: list[str], candidates: list[tuple[str, ...]]):
    """(distinct (prompt, candidates) pairs, index of each ask's pair)."""
    seen: dict[tuple, int] = {}
    where = [seen.setdefault((p, tuple(cs)), len(seen)) for p, cs in zip(prompts, candidates)]
    return list(seen), where


@torch.inference_mode()
def candidate_logprobs(model, tokenizer, prompts: list[str], candidates: list[tuple[str, ...]],
                       batch_size: int = 32) -> list[torch.Tensor]:
    """For each prompt, a tensor of summed log-probs, one per candidate, in order."""
    uniq, where = unique_asks(prompts, candidates)
    rows = packed_rows(tokenizer, [p for p, _ in uniq], [cs for _, cs in uniq])
    device = next(model.parameters()).device
    fwd = lambda idx, ids, pos, mask: model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    scores = score_packed(fwd, rows, tokenizer.pad_token_id, batch_size, mask_dtype(model), device)
    return [scores[w] for w in where]


# -- the pair layout (vLLM's input, and the reference the packed layout is tested against) --------
def padded_batches(seqs: list[list[int]], batch_size: int, pad_id: int):
    """Yields (indices, input_ids, attention_mask) with sequences grouped by length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = len(seqs[idx[-1]])
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        yield idx, ids, mask


@torch.inference_mode()
def pair_logprobs(model, tokenizer, prompts: list[str], candidates: list[tuple[str, ...]],
                  batch_size: int = 128) -> list[torch.Tensor]:
    """`candidate_logprobs` with one sequence per (prompt, candidate): every prompt recomputed
    per candidate."""
    seqs, starts, _ = pair_sequences(tokenizer, prompts, candidates)
    device = next(model.parameters()).device
    flat = torch.empty(len(seqs), dtype=torch.float32)
    for idx, ids, mask in padded_batches(seqs, batch_size, tokenizer.pad_token_id):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        rows, cols, toks = [], [], []
        for r, i in enumerate(idx):
            for t in range(starts[i], len(seqs[i])):
                rows.append(r)
                cols.append(t - 1)
                toks.append(seqs[i][t])
        rows_t = torch.tensor(rows, device=device)
        picked = logits[rows_t, torch.tensor(cols, device=device)].float()
        lp = picked.gather(1, torch.tensor(toks, device=device)[:, None])[:, 0] - picked.logsumexp(-1)
        sums = torch.zeros(len(idx), device=device).index_add_(0, rows_t, lp)
        flat[torch.tensor(idx)] = sums.cpu()
    out, k = [], 0
    for cs in candidates:
        out.append(flat[k:k + len(cs)])
        k += len(cs)
    return out
