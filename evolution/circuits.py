"""Knowledge circuits: the part of the model that carries a fact from the subject to the answer.

The model is read as a graph (Yao et al., 2024; Conmy et al., 2023). Senders write into the
residual stream: the token embeddings (`emb`), each attention head (`a{l}.h{h}`: its slice of
the output projection) and each MLP (`m{l}`). Receivers read it: each layer's attention
(`a{l}`, all heads together: they share one normed input), each MLP, and the logits. An edge is
a sender's direct contribution to a receiver's input.

A case is a fact's question, clean, and the same question about another person (the corrupted
subject: same number of tokens, a different answer). The metric is the log-probability of the
clean answer's first token at the answer position; the gap is clean minus corrupted.

- Edge attribution patching scores every edge at once, from one clean forward and backward:
  (corrupted sender output - clean) . d logit difference / d receiver input (the clean answer's
  logit minus the corrupting one's: the log-prob saturates where the model is sure, and its
  gradient there says little).
- Exact path patching checks it edge by edge: the receiver alone gets the sender's corrupted
  output, everything else runs clean; the metric's drop is the edge's effect (a 2-layer
  model has a few dozen edges, so every one is run).
- A circuit is the top edges by attribution, added until the circuit alone recovers
  `target` (0.9) of the gap: every edge outside it carries its corrupted value, every edge in
  it the value its sender computes in that same run.

Llama-style blocks (llama, mistral, qwen2: pre-norm, attention then MLP) are supported; other
families are refused by name.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import pandas as pd
import torch

from agents.architectures import layout_of, module_at
from envs.world import World
from evolution.locate import hooks

FAMILIES = ("llama", "mistral", "qwen2")


class CircuitError(ValueError):
    """Bad input to a circuit search; the message names the field and the fix."""


@dataclass
class Cases:
    """Clean and corrupted prompts of one relation, tokenized to equal lengths."""
    relation: str                # what the cases are of: a relation, or a label ("rome edits")
    subjects: list[str]
    clean: torch.Tensor          # [n, T] right-padded ids
    corrupt: torch.Tensor
    mask: torch.Tensor           # [n, T]
    last: torch.Tensor           # [n] the answer position
    answer: torch.Tensor         # [n] the clean answer's first token
    other: torch.Tensor          # [n] the corrupting person's answer's first token


@dataclass
class Graph:
    senders: list[str]
    receivers: list[str]
    edges: list[tuple[str, str]] = field(default_factory=list)


def check_family(model) -> None:
    kind = getattr(model.config, "model_type", None)
    if kind not in FAMILIES:
        raise CircuitError(f"model family {kind!r}: circuits support {FAMILIES} (pre-norm blocks, attention then "
                           "MLP); another family needs its receivers' norms named in evolution/circuits.py")


def model_graph(model) -> Graph:
    """Every sender -> receiver edge of the model, in order (a sender writes before the
    receivers after it)."""
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    order: list[tuple[str, str]] = [("emb", "s")]
    for l in range(n_layers):
        order += [(f"a{l}", "r")] + [(f"a{l}.h{h}", "s") for h in range(n_heads)] + [(f"m{l}", "r"), (f"m{l}", "s")]
    order.append(("logits", "r"))
    g = Graph([n for n, k in order if k == "s"], [n for n, k in order if k == "r"])
    written: list[str] = []
    for name, kind in order:
        if kind == "r":
            g.edges += [(s, name) for s in written]
        else:
            written.append(name)
    return g


def known_facts(agent, world: World, relation: str) -> list:
    """The queries of `relation` about taught people that the agent answers right."""
    if relation not in world.relations:
        raise CircuitError(f"relation {relation!r}: the world has no such relation; known: {sorted(world.relations)}")
    qs = [world.query(p.name, relation) for p in world.people if p.taught and world.has(p.name, relation)]
    return [q for q, b in zip(qs, agent.beliefs(qs)) if b.correct]


def fact_cases(agent, world: World, facts: list[tuple[str, str, str]], label: str, seed: int = 0) -> Cases:
    """Cases for (subject, relation, answer) facts, `answer` being what the agent says (the
    truth, or an edit's target), each with a corrupting twin: the same question about another
    person of the world the agent knows, whose name has as many tokens and whose answer differs.
    Facts without such a twin are left out; none left is a CircuitError."""
    tok = agent.tokenizer
    length = lambda name: len(tok(" " + name, add_special_tokens=False).input_ids)
    pools = {rel: known_facts(agent, world, rel) for rel in sorted({r for _, r, _ in facts})}
    rng = random.Random(seed)
    rows = []
    for subject, rel, answer in facts:
        q = world.query(subject, rel)
        twins = [o for o in pools[rel] if o.subject != subject and length(o.subject) == length(subject)
                 and o.truth != answer]
        if twins:
            o = rng.choice(twins)
            rows.append((q.prompt, q.prompt.replace(subject, o.subject), subject, answer, o.truth))
    if not rows:
        raise CircuitError(f"{label!r}: no fact has a corrupting twin (another known person with as many name "
                           "tokens and another answer)")
    clean = [tok(p).input_ids for p, *_ in rows]
    corrupt = [tok(c).input_ids for _, c, *_ in rows]
    assert all(len(a) == len(b) for a, b in zip(clean, corrupt))
    width = max(len(c) for c in clean)
    pad = lambda seqs: torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    first = lambda word: tok(" " + word, add_special_tokens=False).input_ids[0]
    return Cases(label, [r[2] for r in rows], pad(clean), pad(corrupt),
                 torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in clean]),
                 torch.tensor([len(c) - 1 for c in clean]), torch.tensor([first(r[3]) for r in rows]),
                 torch.tensor([first(r[4]) for r in rows]))


def relation_cases(agent, world: World, relation: str, n: int = 40, seed: int = 0) -> Cases:
    """Cases for `n` facts of `relation` the agent answers right (drawn with `seed`). A
    relation the world lacks, or one the agent knows fewer than 2 facts of, is a CircuitError."""
    known = known_facts(agent, world, relation)
    if len(known) < 2:
        raise CircuitError(f"relation {relation!r}: the agent knows {len(known)} of its facts; a circuit needs "
                           "facts it answers right")
    picked = random.Random(seed).sample(known, min(n, len(known)))
    return fact_cases(agent, world, [(q.subject, relation, q.truth) for q in picked], relation, seed)


class Tap:
    """Hooks that record each sender's output in a forward pass and let each receiver's input
    be changed: `shift[receiver](outputs) -> tensor to add` (None: leave it)."""

    def __init__(self, model):
        check_family(model)
        self.model, self.lay = model, layout_of(model)
        self.blocks = self.lay.layers(model)
        self.n_heads = model.config.num_attention_heads
        self.head_dim = model.config.hidden_size // self.n_heads
        self.out: dict[str, torch.Tensor] = {}
        self.shift: dict[str, object] = {}

    def _receiver_hook(self, name):
        def pre(_m, args):
            fn = self.shift.get(name)
            if fn is None:
                return None
            return (args[0] + fn(self.out),) + tuple(args[1:])
        return pre

    def _heads(self, l):
        def pre(module, args):
            z = args[0]                                              # [b, T, n_heads * head_dim]
            w = module.weight                                        # [d, n_heads * head_dim]
            for h in range(self.n_heads):
                sl = slice(h * self.head_dim, (h + 1) * self.head_dim)
                self.out[f"a{l}.h{h}"] = z[..., sl] @ w[:, sl].T
            return None
        return pre

    def handles(self) -> list:
        m = self.model
        hs = [module_at(m, self.lay.embed).register_forward_hook(
            lambda _m, _a, o: self.out.__setitem__("emb", o))]
        for l, block in enumerate(self.blocks):
            hs.append(block.input_layernorm.register_forward_pre_hook(self._receiver_hook(f"a{l}")))
            hs.append(module_at(self.lay.attn_of(block), self.lay.attn_out).register_forward_pre_hook(self._heads(l)))
            hs.append(block.post_attention_layernorm.register_forward_pre_hook(self._receiver_hook(f"m{l}")))
            hs.append(self.lay.mlp_of(block).register_forward_hook(
                lambda _m, _a, o, l=l: self.out.__setitem__(f"m{l}", o)))
        hs.append(module_at(m, self.lay.final_norm).register_forward_pre_hook(self._receiver_hook("logits")))
        return hs

    def metric(self, ids, cases: Cases, kind: str = "logprob") -> torch.Tensor:
        """Per case, at the answer position: the log-prob of the clean answer's first token
        ("logprob"), or its logit minus the corrupting answer's ("logit_diff": not saturated
        where the model is sure, so its gradient is what attribution reads)."""
        logits = self.model(input_ids=ids, attention_mask=cases.mask).logits.float()
        rows = torch.arange(len(ids))
        at = logits[rows, cases.last]
        if kind == "logit_diff":
            return at[rows, cases.answer] - at[rows, cases.other]
        return at.log_softmax(-1)[rows, cases.answer]


def _record(tap: Tap, ids, cases: Cases) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    tap.shift, tap.out = {}, {}
    with torch.no_grad(), hooks(tap.handles()):
        m = tap.metric(ids, cases)
    return m, {k: v.detach() for k, v in tap.out.items()}


def attribution_scores(model, cases: Cases) -> tuple[pd.DataFrame, dict]:
    """Edge attribution patching: per edge, the first-order change in the mean logit
    difference when the receiver gets the sender's corrupted output. Also returns the clean and corrupted runs'
    metrics and outputs (reused by path patching and the circuit search)."""
    tap, g = Tap(model), model_graph(model)
    m_corrupt, corrupt = _record(tap, cases.corrupt, cases)
    m_clean, clean = _record(tap, cases.clean, cases)
    with torch.no_grad():
        ld_clean = tap.metric(cases.clean, cases, "logit_diff")
    probes = {r: None for r in g.receivers}
    tap.out = {}

    def probe(name):
        def fn(out):
            t = torch.zeros_like(out["emb"], requires_grad=True)
            probes[name] = t
            return t
        return fn
    tap.shift = {r: probe(r) for r in g.receivers}
    with torch.enable_grad(), hooks(tap.handles()):
        tap.metric(cases.clean, cases, "logit_diff").mean().backward()
    tap.shift = {}
    rows = []
    for s, r in g.edges:
        delta = corrupt[s] - clean[s]
        rows.append({"sender": s, "receiver": r, "attribution": float((delta * probes[r].grad).sum())})
    runs = {"m_clean": m_clean, "m_corrupt": m_corrupt, "ld_clean": ld_clean, "clean": clean, "corrupt": corrupt}
    return pd.DataFrame(rows), runs


@torch.no_grad()
def path_patching(model, cases: Cases, runs: dict, edges: list[tuple[str, str]]) -> pd.DataFrame:
    """Exact effect of each edge: the drop of the mean log-prob (`effect`) and of the mean
    logit difference (`effect_logit_diff`) when only that receiver gets the sender's corrupted
    output (everything else clean)."""
    tap = Tap(model)
    rows = []
    for s, r in edges:
        delta = runs["corrupt"][s] - runs["clean"][s]
        tap.out, tap.shift = {}, {r: lambda _o, d=delta: d}
        with hooks(tap.handles()):
            logits = model(input_ids=cases.clean, attention_mask=cases.mask).logits.float()
        at = logits[torch.arange(len(logits)), cases.last]
        n = torch.arange(len(at))
        rows.append({"effect": float((runs["m_clean"] - at.log_softmax(-1)[n, cases.answer]).mean()),
                     "effect_logit_diff": float((runs["ld_clean"] - (at[n, cases.answer] - at[n, cases.other])).mean())})
    tap.shift = {}
    return pd.DataFrame(rows)


@torch.no_grad()
def circuit_metric(model, cases: Cases, runs: dict, keep: set[tuple[str, str]], graph: Graph) -> torch.Tensor:
    """The metric of a run where every edge outside `keep` carries its sender's corrupted
    output and every edge in it the output its sender computes in this run."""
    tap = Tap(model)
    dropped = {r: [s for s, rr in graph.edges if rr == r and (s, r) not in keep] for r in graph.receivers}
    tap.shift = {r: (lambda out, ss=ss: sum(runs["corrupt"][s] - out[s] for s in ss)) if ss else None
                 for r, ss in dropped.items()}
    tap.out = {}
    with hooks(tap.handles()):
        return tap.metric(cases.clean, cases)


def faithfulness(m_circuit, runs) -> float:
    """Share of the clean-corrupted gap the circuit recovers (summed over cases)."""
    gap = float((runs["m_clean"] - runs["m_corrupt"]).sum())
    return float((m_circuit - runs["m_corrupt"]).sum()) / gap if gap else float("nan")


@dataclass
class Circuit:
    relation: str
    edges: list[tuple[str, str]]
    faithfulness: float
    gap: float                     # mean clean - corrupted log-prob
    cases: int
    scores: pd.DataFrame           # every edge: attribution and exact effects

    @property
    def agreement(self) -> float:
        """Spearman correlation of -attribution (the predicted drop) with the exact drop of
        the logit difference, over every edge: how far attribution patching can be trusted."""
        return float((-self.scores.attribution).rank().corr(self.scores.effect_logit_diff.rank()))

    @property
    def nodes(self) -> list[str]:
        return sorted({n for e in self.edges for n in e})

    def movers(self, n_layers: int) -> list[str]:
        """The last attention layer's heads whose edge to the logits is in the circuit: the
        heads that move the subject's attribute to the answer position."""
        return [s for s, r in self.edges if r == "logits" and s.startswith(f"a{n_layers - 1}.h")]


def find_circuit(agent, world: World, relation: str, n: int = 40, target: float = 0.9, seed: int = 0,
                 rank_by: str = "attribution") -> Circuit:
    """The circuit of `relation`, over `n` facts the agent knows (`circuit_of`)."""
    return circuit_of(agent, relation_cases(agent, world, relation, n, seed), target, rank_by)


def circuit_of(agent, cases: Cases, target: float = 0.9, rank_by: str = "attribution") -> Circuit:
    """The smallest prefix of the edges, ranked by |attribution| (or by exact `effect` on the
    logit difference: `rank_by="effect"`), whose circuit recovers `target` of the log-prob gap
    (all edges when none does; its faithfulness says so). `scores` holds every edge's
    attribution and exact effects, and `agreement` the rank correlation between the two."""
    if rank_by not in ("attribution", "effect"):
        raise CircuitError(f"rank_by: {rank_by!r}; give 'attribution' or 'effect'")
    model = agent.model
    scores, runs = attribution_scores(model, cases)
    scores = pd.concat([scores, path_patching(model, cases, runs, list(zip(scores.sender, scores.receiver)))], axis=1)
    graph = model_graph(model)
    key = scores.attribution.abs() if rank_by == "attribution" else scores.effect_logit_diff.abs()
    ranked = scores.reindex(key.sort_values(ascending=False).index)
    keep: list[tuple[str, str]] = []
    f = float("nan")
    for s, r in zip(ranked.sender, ranked.receiver):
        keep.append((s, r))
        f = faithfulness(circuit_metric(model, cases, runs, set(keep), graph), runs)
        if f >= target:
            break
    return Circuit(cases.relation, keep, f, float((runs["m_clean"] - runs["m_corrupt"]).mean()), len(cases.subjects),
                   scores)


def circuit_table(circuits: list[Circuit], n_layers: int) -> pd.DataFrame:
    """One row per relation: faithfulness, size, the mover heads, the edges."""
    return pd.DataFrame([{"relation": c.relation, "faithfulness": c.faithfulness, "edges": len(c.edges),
                          "nodes": len(c.nodes), "gap": c.gap, "cases": c.cases, "agreement": c.agreement,
                          "movers": " ".join(c.movers(n_layers)),
                          "circuit": " ".join(f"{s}>{r}" for s, r in c.edges)} for c in circuits]).set_index("relation")


def shared_components(circuits: list[Circuit]) -> pd.DataFrame:
    """Per node, the relations whose circuit holds it."""
    nodes = sorted({n for c in circuits for n in c.nodes})
    return pd.DataFrame({c.relation: [n in c.nodes for n in nodes] for c in circuits}, index=nodes)


def draw_circuit(circuit: Circuit, model, path) -> None:
    """The circuit as a layered graph (PNG): a layer's attention input (a{l}), its heads, its
    MLP, up to the logits; edge width by exact effect on the logit difference; dashed: a
    layer's input to its heads (inside the attention, not an edge of the graph)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    g = model_graph(model)
    effect = {(s, r): e for s, r, e in zip(circuit.scores.sender, circuit.scores.receiver,
                                           circuit.scores.effect_logit_diff)}

    def level(node: str) -> float:
        if node == "emb":
            return 0
        if node == "logits":
            return 3 * model.config.num_hidden_layers + 1
        l = int(node[1:].split(".")[0])
        return 3 * l + (3 if node.startswith("m") else 2 if "." in node else 1)
    G = nx.DiGraph()
    for s, r in circuit.edges:
        G.add_edge(s, r, weight=abs(effect.get((s, r), 0.0)))
    heads = [n for n in list(G.nodes) if ".h" in n]
    for h in heads:                    # a layer's attention input feeds its heads (drawn dashed)
        G.add_edge(h.split(".")[0], h, weight=0.0, inner=True)
    by_level: dict[float, list[str]] = {}
    for node in G.nodes:
        by_level.setdefault(level(node), []).append(node)
    pos = {n: (i - (len(ns) - 1) / 2, lv) for lv, ns in by_level.items() for i, n in enumerate(sorted(ns))}
    for n in pos:                      # a layer's attention input sits to the left of its heads
        if n.startswith("a") and "." not in n:
            pos[n] = (-(model.config.num_attention_heads + 1) / 2, pos[n][1])
    top = max(max((d["weight"] for *_, d in G.edges(data=True)), default=0.0), 1e-9)
    outer = [(s, r) for s, r, d in G.edges(data=True) if not d.get("inner")]
    inner = [(s, r) for s, r, d in G.edges(data=True) if d.get("inner")]
    fig, ax = plt.subplots(figsize=(6, 5))
    nx.draw_networkx_nodes(G, pos, ax=ax, node_color="#cfe2f3", node_size=900)
    nx.draw_networkx_labels(G, pos, ax=ax, font_size=8)
    nx.draw_networkx_edges(G, pos, ax=ax, edgelist=outer, width=[0.5 + 4 * G[s][r]["weight"] / top for s, r in outer],
                           arrowsize=10, edge_color="#555", node_size=900, connectionstyle="arc3,rad=0.15")
    nx.draw_networkx_edges(G, pos, ax=ax, edgelist=inner, style="dashed", edge_color="#aaa", arrows=False,
                           node_size=900)
    ax.set_title(f"{circuit.relation}: {len(circuit.edges)} of {len(g.edges)} edges, "
                 f"faithfulness {circuit.faithfulness:.2f}")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
