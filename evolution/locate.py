"""Where knowledge lives in a model: causal tracing and linear probes.

Causal tracing (ROME, Meng et al. 2022): run the prompt clean, then with noise on the
subject's token embeddings, then corrupted again but with one module's clean output put
back at one (layer, token); the recovered probability of the right answer's first token
says how much that state carries the fact. Modules: the block's output ("hidden"), its MLP
and its attention. Editors take their layer and the subject token they write at from these
traces, not from constants (evolution/editors/target.py).

Q-probing (Physics of Language Models 3.1): a linear classifier reads an attribute from the
hidden state at the last token of the bare name; its held-out accuracy per layer says where
the model has the attribute ready before any question is asked.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import pandas as pd
import torch

from evolution.editors.rome.repr_tools import decoder_layers, layout, padded

KINDS = ("hidden", "mlp", "attn")
POSITIONS = ("first subject token", "middle subject tokens", "last subject token",
             "first subsequent token", "further tokens", "last token")


@dataclass
class TraceCase:
    """One prompt to trace: its token ids, the subject's token span, the answer token."""
    subject: str
    relation: str
    prompt: str
    ids: list[int]
    subj_start: int
    subj_end: int        # exclusive
    answer_id: int


def trace_case(tokenizer, subject: str, relation: str, prompt: str, answer: str) -> TraceCase:
    enc = tokenizer(prompt, return_offsets_mapping=True)
    a = prompt.rfind(subject)
    b = a + len(subject)
    span = [i for i, (x, y) in enumerate(enc["offset_mapping"]) if y > x and x < b and y > a]
    if a < 0 or not span:
        raise ValueError(f"trace: subject {subject!r} is not in the prompt {prompt!r}")
    ans = tokenizer(" " + answer, add_special_tokens=False).input_ids[0]
    return TraceCase(subject, relation, prompt, enc["input_ids"], span[0], span[-1] + 1, ans)


def subject_position(i: int, n: int) -> str:
    """The category of the i-th of a subject's n tokens (a one-token subject's is its last)."""
    return "last subject token" if i == n - 1 else "first subject token" if i == 0 else "middle subject tokens"


def position_category(case: TraceCase, t: int) -> str | None:
    last = len(case.ids) - 1
    if t == last:
        return "last token"
    if t < case.subj_start:
        return None  # upstream of the corruption: restoring it changes nothing
    if t < case.subj_end:
        return subject_position(t - case.subj_start, case.subj_end - case.subj_start)
    return "first subsequent token" if t == case.subj_end else "further tokens"


def module_of(model, block, kind: str):
    """The block itself ("hidden"), its MLP or its attention, where the model's family keeps them."""
    lay = layout(model)
    return {"hidden": block, "mlp": lay.mlp_of(block), "attn": lay.attn_of(block)}[kind]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def hooks(handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def noise_scale(model, tokenizer, cases: list[TraceCase], factor: float = 3.0) -> float:
    """ROME's choice: `factor` times the std of the subjects' token embeddings."""
    emb = model.get_input_embeddings().weight
    ids = sorted({i for c in cases for i in c.ids[c.subj_start:c.subj_end]})
    return factor * float(emb[ids].detach().std())


@torch.no_grad()
def trace_one(model, case: TraceCase, grid: list[tuple[str, int, int]], sigma: float, n_noise: int,
              gen: torch.Generator) -> tuple[float, float, torch.Tensor]:
    """(p clean, p corrupted, p restored for each (kind, layer, token) of `grid`), each
    averaged over `n_noise` noise samples; a tuple of tokens restores them together."""
    device = next(model.parameters()).device
    layers = decoder_layers(model)
    ids = torch.tensor([case.ids], device=device)
    clean: dict[tuple[str, int], torch.Tensor] = {}
    hs = [module_of(model, layers[l], k).register_forward_hook(
        lambda _m, _a, out, key=(k, l): clean.__setitem__(key, _first(out)[0].clone()))
        for k in KINDS for l in range(len(layers))]
    with hooks(hs):
        p_clean = float(model(input_ids=ids).logits[0, -1].softmax(-1)[case.answer_id])
    n_rows = 1 + len(grid)   # row 0: corrupted baseline; then one row per grid cell
    batch = ids.repeat(n_rows * n_noise, 1)
    d = model.get_input_embeddings().weight.shape[1]
    noise = torch.randn(n_noise, case.subj_end - case.subj_start, d, generator=gen).to(device) * sigma
    noise = noise.repeat_interleave(n_rows, 0)

    def corrupt(_m, _a, out):
        out = out.clone()
        out[:, case.subj_start:case.subj_end] += noise.to(out.dtype)
        return out

    by_module: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for j, (k, l, t) in enumerate(grid):
        for s in range(n_noise):
            for pos in (t if isinstance(t, tuple) else (t,)):
                by_module.setdefault((k, l), []).append((s * n_rows + 1 + j, pos))

    def restore(_m, _a, out, key):
        t = _first(out)
        rows = torch.tensor([r for r, _ in by_module[key]], device=device)
        pos = torch.tensor([p for _, p in by_module[key]], device=device)
        t = t.index_put((rows, pos), clean[key][pos])
        return (t,) + tuple(out[1:]) if isinstance(out, tuple) else t

    hs = [model.get_input_embeddings().register_forward_hook(corrupt)]
    hs += [module_of(model, layers[l], k).register_forward_hook(lambda m, a, o, key=(k, l): restore(m, a, o, key))
           for (k, l) in by_module]
    with hooks(hs):
        p = model(input_ids=batch).logits[:, -1].softmax(-1)[:, case.answer_id].view(n_noise, n_rows).mean(0)
    return p_clean, float(p[0]), p[1:].cpu()


def known_cases(agent, world, n_facts: int, seed: int = 0, relations=None) -> list[TraceCase]:
    """Up to `n_facts` random question-form facts of taught people that the agent answers right."""
    rng = random.Random(seed)
    people = [p.name for p in world.people if p.taught]
    rels = sorted(relations or world.relations)
    pool = [(s, r) for s in people for r in rels if world.has(s, r)]
    rng.shuffle(pool)
    queries = [world.query(s, r, "question") for s, r in pool[:max(4 * n_facts, n_facts)]]
    beliefs = agent.beliefs(queries)
    out = [trace_case(agent.tokenizer, q.subject, q.relation, q.prompt, q.truth)
           for q, b in zip(queries, beliefs) if b.correct]
    return out[:n_facts]


def causal_trace(agent, world=None, cases: list[TraceCase] | None = None, n_facts: int = 40,
                 kinds=KINDS, n_noise: int = 3, seed: int = 0, whole_subject: bool = False) -> pd.DataFrame:
    """One row per (fact, kind, layer, token): p restored, p corrupted, p clean. With
    `whole_subject`, one row per (fact, kind, layer) restoring every subject token at once
    (token -1, position "whole subject"): what layer choice needs."""
    model = agent.model
    cases = cases if cases is not None else known_cases(agent, world, n_facts, seed)
    if not cases:
        raise ValueError("trace: no facts to trace (the agent answers none of the sampled ones)")
    n_layers = len(decoder_layers(model))
    sigma = noise_scale(model, agent.tokenizer, cases)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, c in enumerate(cases):
        toks = [tuple(range(c.subj_start, c.subj_end))] if whole_subject else range(c.subj_start, len(c.ids))
        grid = [(k, l, t) for k in kinds for l in range(n_layers) for t in toks]
        p_clean, p_corr, p = trace_one(model, c, grid, sigma, n_noise, gen)
        for (k, l, t), pr in zip(grid, p.tolist()):
            whole = isinstance(t, tuple)
            rows.append({"case": i, "subject": c.subject, "relation": c.relation, "kind": k, "layer": l,
                         "token": -1 if whole else t,
                         "position": "whole subject" if whole else position_category(c, t), "p_restored": pr,
                         "p_corrupted": p_corr, "p_clean": p_clean})
    df = pd.DataFrame(rows)
    df["effect"] = df.p_restored - df.p_corrupted
    return df


def trace_table(df: pd.DataFrame, value: str = "effect") -> pd.DataFrame:
    """Mean `value` by (kind, position category) x layer: the numbers of the heat map."""
    t = df.dropna(subset=["position"]).pivot_table(index=["kind", "position"], columns="layer", values=value,
                                                   aggfunc="mean")
    order = [(k, p) for k in KINDS for p in POSITIONS if (k, p) in t.index]
    return t.loc[order]


# -- probes --------------------------------------------------------------------------------
@torch.no_grad()
def name_states(agent, names: list[str], batch_size: int = 256) -> torch.Tensor:
    """[layers + 1, n, d]: hidden states at the last token of '<s> name' (embeddings first)."""
    device = agent.device
    outs = []
    for b in range(0, len(names), batch_size):
        enc = agent.tokenizer(names[b:b + batch_size]).input_ids
        ids, mask = padded(enc, agent.tokenizer.pad_token_id, device)
        hs = agent.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        last = torch.tensor([len(e) - 1 for e in enc], device=device)
        outs.append(torch.stack([h[torch.arange(len(enc), device=device), last] for h in hs]).float().cpu())
    return torch.cat(outs, 1)


def linear_probe_accuracy(x_tr, y_tr, x_te, y_te, n_classes: int, ridge: float = 1.0) -> float:
    """Held-out accuracy of a ridge-regression classifier (standardized features, one-hot
    targets, closed form: fast enough to fit one per relation, layer and fold)."""
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    x_tr = torch.cat([x_tr, torch.ones(len(x_tr), 1)], 1).double()
    x_te = torch.cat([x_te, torch.ones(len(x_te), 1)], 1).double()
    y = torch.nn.functional.one_hot(y_tr, n_classes).double()
    w = torch.linalg.solve(x_tr.T @ x_tr + ridge * torch.eye(x_tr.shape[1], dtype=torch.float64), x_tr.T @ y)
    return float(((x_te @ w).argmax(1) == y_te).float().mean())


def probe_accuracy(agent, world, relations=None, folds: int = 5, taught: bool = True, seed: int = 0,
                   ridge: float = 1.0) -> pd.DataFrame:
    """Q-probing: k-fold held-out accuracy of a linear probe per (relation, layer), with the
    majority-class rate as the floor to compare against. Layer 0 is the embedding."""
    people = [p.name for p in world.people if p.taught == taught]
    if len(people) < 2 * folds:
        raise ValueError(f"probe: {len(people)} people is too few for {folds} folds")
    rng = random.Random(seed)
    rng.shuffle(people)
    states = name_states(agent, people)
    rows = []
    for rel in sorted(relations or world.relations):
        cands = world.relations[rel].candidates
        y = torch.tensor([cands.index(world.truth(s, rel)) for s in people])
        majority = float(torch.bincount(y).max()) / len(y)
        for layer in range(states.shape[0]):
            accs = []
            for f in range(folds):
                te = torch.zeros(len(people), dtype=torch.bool)
                te[f::folds] = True
                accs.append(linear_probe_accuracy(states[layer][~te], y[~te], states[layer][te], y[te],
                                                  len(cands), ridge))
            rows.append({"relation": rel, "layer": layer, "accuracy": sum(accs) / folds,
                         "majority": majority, "people": len(people)})
    return pd.DataFrame(rows)
