"""Where an editor writes: the layer (`mlp_effects`, `critical_layers`) and the subject token
(`key_tokens`, `chosen_key_tokens`), chosen by causal tracing (evolution/locate.py) on the
agent's base model and world, cached per base and world.
"""
from __future__ import annotations

from evolution.editors.rome.layer_stats import fingerprint, world_fingerprint
from evolution.locate import POSITIONS, causal_trace, subject_position, trace_case

_LAYER_CACHE: dict[tuple, list[float]] = {}


def mlp_effects(agent, world=None, requests=None, n_facts: int = 16, seed: int = 0) -> list[float]:
    """Mean indirect effect of each layer's MLP over the subject's tokens (restored together).
    (At the last subject token alone, ROME's criterion, the default model shows 0.008 at
    layer 0: its layer-0 MLPs carry the fact at the first and middle name tokens, 0.10 and
    0.07; bench/tracing.py. Which token an edit writes at is `key_tokens`' choice.)
    From the world's known facts (cached per base model and world) or, without a world, from
    the requests' own prompts with the agent's current greedy answers."""
    if world is not None:
        key = (fingerprint(agent.base), world_fingerprint(world), n_facts, seed)
        if key not in _LAYER_CACHE:
            df = causal_trace(agent, world, n_facts=n_facts, kinds=("mlp",), seed=seed, whole_subject=True)
            _LAYER_CACHE[key] = df.groupby("layer")["effect"].mean().sort_index().tolist()
        return _LAYER_CACHE[key]
    if not requests:
        raise ValueError("choosing a layer needs world= or the requests to trace")
    answers = agent.generate([r.prompt for r in requests], max_new_tokens=1)
    cases = [trace_case(agent.tokenizer, r.subject, r.relation, r.prompt, a.strip() or r.target)
             for r, a in zip(requests, answers)]
    df = causal_trace(agent, cases=cases, kinds=("mlp",), seed=seed, whole_subject=True)
    return df.groupby("layer")["effect"].mean().sort_index().tolist()


_TOKEN_CACHE: dict[tuple, dict[str, float]] = {}
SUBJECT_POSITIONS = POSITIONS[:3]


def subject_token_effects(agent, world, layers=(0,), n_facts: int = 16, seed: int = 0) -> dict[str, float]:
    """Mean indirect effect of the MLP at `layers` by subject position (first / middle / last
    subject token), each token restored alone, over the world's known facts (cached per base
    model and world)."""
    key = (fingerprint(agent.base), world_fingerprint(world), tuple(layers), n_facts, seed)
    if key not in _TOKEN_CACHE:
        df = causal_trace(agent, world, n_facts=n_facts, kinds=("mlp",), seed=seed)
        df = df[df.layer.isin(list(layers)) & df.position.isin(SUBJECT_POSITIONS)]
        _TOKEN_CACHE[key] = {k: float(v) for k, v in df.groupby("position")["effect"].mean().items()}
    return _TOKEN_CACHE[key]


def key_tokens(tokenizer, subjects, effects: dict[str, float], names=()) -> dict[str, int]:
    """Which of its tokens each subject is edited at (-1: the last, -2: the one before, ...):
    the one whose MLP carries most of the fact by tracing (`effects`), among the tokens whose
    key can tell the subject from the other `names`. In a causal model the key at the
    subject's i-th token has seen its first i+1 tokens only, so these must not begin another
    name (the first token of "Kara Grukron Giopus" is every Kara's); the last token always
    qualifies. Without `names`, only the last does (ROME's choice).

    Measured on the default model (100 single ROME edits, layer 0; docs/benchmarks.md): tracing
    puts the layer-0 MLP effect at the first and middle name tokens (.11, .09; the last .03);
    editing the chosen token (the middle name for 270 of 300 people) against the last gives
    reliability .96 vs .93, generalization .95 vs .81, locality .99 vs .98; editing the first
    name instead changed the answer of 67% of the people sharing it (63% to the edit's target),
    which random-people locality (.99) does not see."""
    ids = {s: tuple(tokenizer(" " + s, add_special_tokens=False).input_ids) for s in set(subjects) | set(names)}
    starts: dict[tuple, int] = {}
    for t in [ids[n] for n in names] + [ids[s] for s in set(subjects) - set(names)]:
        for i in range(1, len(t) + 1):
            starts[t[:i]] = starts.get(t[:i], 0) + 1
    out = {}
    for s in subjects:
        t = ids[s]
        ok = [i for i in range(len(t)) if i == len(t) - 1 or (names and starts[t[:i + 1]] == 1)]
        best = max(ok, key=lambda i: (effects.get(subject_position(i, len(t)), 0.0), i))
        out[s] = best - len(t)
    return out


def chosen_key_tokens(agent, world, requests, layers, token: int | None) -> tuple[dict[str, int], dict[str, int], str]:
    """(token per request subject, token per person of the world (for the key covariance's
    subject part; empty without a world), where it came from): `token` for everyone if given,
    else `key_tokens` from tracing at `layers`; without a world (no other names to tell the
    subject from), the last token."""
    names = [p.name for p in world.people] if world is not None else []
    subjects = [r.subject for r in requests]
    if token is not None:   # other people's keys (the covariance) where they have that token, else their last
        fits = {n: -len(t) <= token < len(t) for n, t in
                zip(names, agent.tokenizer([" " + n for n in names], add_special_tokens=False).input_ids)}
        return {s: token for s in subjects}, {n: token if fits[n] else -1 for n in names}, "hparam"
    if world is None:
        return {s: -1 for s in subjects}, {}, "last (no world)"
    effects = subject_token_effects(agent, world, tuple(layers))
    everyone = key_tokens(agent.tokenizer, subjects + names, effects, names)
    return {s: everyone[s] for s in subjects}, {n: everyone[n] for n in names}, "tracing"


def critical_layers(effects: list[float], share: float = 1.0) -> list[int]:
    """The layer of largest MLP effect and, for share < 1, its contiguous neighbours whose
    effect is at least `share` of the largest (MEMIT's window)."""
    best = max(range(len(effects)), key=lambda l: effects[l])
    lo = hi = best
    while lo > 0 and effects[lo - 1] >= share * effects[best]:
        lo -= 1
    while hi < len(effects) - 1 and effects[hi + 1] >= share * effects[best]:
        hi += 1
    return list(range(lo, hi + 1))
