"""Placements: where a population's weights live, and how one round phase is answered for
all of its agents in one call.

An agent is a `Handle` (name, persona) on a placement. Its state is the placement's shared,
read-only base plus its own delta (agents/delta.py: low-rank `B A` where the change is, dense
where a method truly is dense) and its method state (`agent.state`: ROME's edit memory...).
Protocols, the loop and the metrics call the handle, or `beliefs_many` / `generate_many` on
the placement for a whole round; they never touch a model. Editors and learners run inside
the placement on a materialized `Agent` (base + this agent's delta and state) and the
placement keeps the difference they leave, as ROME's `execute_rome` returns deltas that
`apply_rome_to_model` applies.

- `LocalPlacement`: one in-process model per agent (the reference).
- `PopulationPlacement` (agents/population.py): one base model, every agent's delta added
  per row of one batched forward.
- `RayPlacement` (agents/ray_placement.py): the population sharded over Ray actors.
`check_placement(p)` is the contract a user's own placement must pass.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agents.agent import Agent
from agents.delta import (Snapshot, add_delta, compose, dense, factor, fingerprint, fit, load_snapshot, mismatch,
                          save_snapshot)
from agents.records import Belief
from agents.state import put_extensions, take_extensions
from envs.facts import Query


class PlacementError(ValueError):
    """A placement cannot do what was asked; the message names the agent and why."""


@dataclass
class Ask:
    """One agent's queries in one round phase (`context`: one text, or one per query)."""
    agent: str
    queries: list[Query]
    context: str | list[str] | None = None
    fields: dict = field(default_factory=dict)


class Handle:
    """An agent as protocols see it: a name and a persona on a placement."""

    def __init__(self, placement: "Placement", name: str):
        self.placement, self.name = placement, name

    @property
    def persona(self) -> str:
        return self.placement.persona(self.name)

    @property
    def version(self) -> int:
        """Changes whenever this agent's weights or state change (a key for caches)."""
        return self.placement.version(self.name)

    def beliefs(self, queries: list[Query], context=None, **fields) -> list[Belief]:
        return self.placement.beliefs_many([Ask(self.name, list(queries), context, fields)])[0]

    def generate(self, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
        return self.placement.generate_many([(self.name, list(prompts))], max_new_tokens)[0]

    def nll(self, texts: list[str], batch_size: int = 32) -> tuple[float, int]:
        return self.placement.nll_many([(self.name, list(texts))], batch_size)[0]

    def edit(self, requests, method: str, **hparams):
        return self.placement.edit(self.name, requests, method, **hparams)

    def learn(self, data, method: str = "finetune", **hparams):
        return self.placement.learn(self.name, data, method, **hparams)

    def delta(self) -> dict[str, torch.Tensor]:
        return self.placement.delta(self.name)

    def save(self, path: str | Path) -> Path:
        return self.placement.save(self.name, path)

    def spawn(self, name: str, persona: str = "neutral") -> "Handle":
        return self.placement.spawn(name, persona, parent=self.name)

    def __repr__(self) -> str:
        return f"Handle({self.name!r} on {type(self.placement).__name__})"


class Placement:
    """The interface. Subclasses implement the methods that raise here."""
    kind = ""

    def names(self) -> list[str]:
        raise NotImplementedError

    def persona(self, name: str) -> str:
        raise NotImplementedError

    def version(self, name: str) -> int:
        raise NotImplementedError

    def beliefs_many(self, asks: list[Ask]) -> list[list[Belief]]:
        raise NotImplementedError

    def generate_many(self, asks: list[tuple[str, list[str]]], max_new_tokens: int = 12) -> list[list[str]]:
        raise NotImplementedError

    def nll_many(self, asks: list[tuple[str, list[str]]], batch_size: int = 32) -> list[tuple[float, int]]:
        """Per (agent, texts): (summed next-token NLL, tokens), for perplexity."""
        raise NotImplementedError

    def spawn(self, name: str, persona: str = "neutral", parent: str | None = None) -> Handle:
        """A new agent on the base weights (`parent`: a copy of that agent's delta and state)."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def edit(self, name: str, requests, method: str, **hparams):
        raise NotImplementedError

    def learn(self, name: str, data, method: str = "finetune", **hparams):
        raise NotImplementedError

    def snapshot(self, name: str) -> Snapshot:
        raise NotImplementedError

    def restore(self, snap: Snapshot) -> Handle:
        """Add (or replace) the agent `snap.name` with this delta and state."""
        raise NotImplementedError

    def base_fingerprint(self) -> str:
        raise NotImplementedError

    # -- shared by every placement ------------------------------------------------------------
    def handle(self, name: str) -> Handle:
        if name not in self.names():
            raise PlacementError(f"agent {name!r} is not on this placement; it holds {self.names()[:5]}...")
        return Handle(self, name)

    def delta(self, name: str) -> dict[str, torch.Tensor]:
        """The agent's change to the base, dense, per parameter that changed."""
        return dense(self.snapshot(name).delta)

    def save(self, name: str, path: str | Path) -> Path:
        return save_snapshot(self.snapshot(name), path, self.base_fingerprint())

    def load(self, path: str | Path, name: str | None = None) -> Handle:
        return self.restore(load_snapshot(path, self.base_fingerprint(), name))

    def close(self) -> None:
        """Release what the placement holds (actors); a no-op in process."""


def lookup(table: dict, name: str):
    """`table[name]` for an agent a placement holds, or an error naming the agent."""
    if name not in table:
        raise PlacementError(f"agent {name!r} is not on this placement")
    return table[name]


def _check_new(placement: Placement, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise PlacementError(f"agent name {name!r}: give a non-empty string")
    if name in placement.names():
        raise PlacementError(f"agent {name!r} already exists on this placement; names are unique")


def extensions_of(model, name: str, base_model) -> dict:
    """The registered extensions (agents/state.register_extension) `model` carries; an error
    naming the agent when its modules changed in a way no extension accounts for."""
    ext = take_extensions(model)
    if not ext and structure(model) != structure(base_model):
        raise PlacementError(f"agent {name!r}: its model's modules changed and no registered extension "
                             "(agents.state.register_extension) says how to save them, so it is not the base plus "
                             "a weight delta and method state")
    return ext


def structure(model) -> list[tuple[str, str]]:
    """The module tree (names and classes): a method that changes it (WISE's side memory)
    makes a model that is no longer the base plus a weight delta."""
    return [(n, type(m).__name__) for n, m in model.named_modules()]


# -- the reference: one model per agent ---------------------------------------------------------
def factored_only(delta: dict) -> dict | None:
    """`delta` when every change in it is factored, else None (the local placement keeps only
    factored deltas beside its models: a dense one would copy the weights it changed)."""
    return delta if all(isinstance(v, tuple) for v in delta.values()) else None


class LocalPlacement(Placement):
    kind = "local"

    def __init__(self, root: Agent, max_rank: int = 32):
        """`root`: an Agent on the base weights; it is never changed (agents are spawned from it)."""
        self.root, self.max_rank = root, max_rank
        self.agents: dict[str, Agent] = {}
        self._versions: dict[str, int] = {}
        # per agent: its delta as the methods returned their updates (factored), None once a
        # change came without one or dense (a dense change is kept by the model itself)
        self._known: dict[str, dict | None] = {}
        self._fp = None

    @classmethod
    def from_dir(cls, path: str | Path, device: str | None = None, batch_size: int = 32, **kw) -> "LocalPlacement":
        return cls(Agent.from_dir(path, "base", device=device, batch_size=batch_size), **kw)

    def names(self) -> list[str]:
        return list(self.agents)

    def persona(self, name: str) -> str:
        return self._agent(name).persona

    def version(self, name: str) -> int:
        return lookup(self._versions, name)

    def _agent(self, name: str) -> Agent:
        return lookup(self.agents, name)

    def agent(self, name: str) -> Agent:
        """The in-process Agent itself (local placements only: for code that needs a model)."""
        return self._agent(name)

    def beliefs_many(self, asks: list[Ask]) -> list[list[Belief]]:
        return [self._agent(a.agent).beliefs(a.queries, a.context, **a.fields) for a in asks]

    def generate_many(self, asks, max_new_tokens: int = 12):
        return [self._agent(n).generate(p, max_new_tokens) for n, p in asks]

    def nll_many(self, asks, batch_size: int = 32):
        return [self._agent(n).nll(t, batch_size) for n, t in asks]

    def spawn(self, name: str, persona: str = "neutral", parent: str | None = None) -> Handle:
        _check_new(self, name)
        src = self.root if parent is None else self._agent(parent)
        a = src.spawn(name, persona)
        if parent is not None:
            a.state = copy.deepcopy(src.state)
        self.agents[name], self._versions[name] = a, 0
        self._known[name] = {} if parent is None else self._known.get(parent)
        return Handle(self, name)

    def remove(self, name: str) -> None:
        self._agent(name)
        del self.agents[name], self._versions[name]
        self._known.pop(name, None)

    def edit(self, name: str, requests, method: str, **hparams):
        a = self._agent(name)
        report = a.edit(requests, method, **hparams)      # a method that fails leaves the weights as they were
        self._note(name, a)
        return report

    def learn(self, name: str, data, method: str = "finetune", **hparams):
        a = self._agent(name)
        report = a.learn(data, method, **hparams)
        self._note(name, a)
        return report

    def _note(self, name: str, a: Agent) -> None:
        self._versions[name] = self.version(name) + 1
        known, upd = self._known.get(name), a.last_update
        self._known[name] = factored_only(compose(known, upd)) if known is not None and upd is not None else None

    def snapshot(self, name: str) -> Snapshot:
        a = self._agent(name)
        state, known = a.model.state_dict(), self._known.get(name)
        delta = fit(known, self.root.base, self.max_rank) \
            if known is not None and mismatch(state, self.root.base, known) is None \
            else factor(state, self.root.base, self.max_rank)
        return Snapshot(name, a.persona, delta, {**a.state, **extensions_of(a.model, name, self.root.model)})

    def restore(self, snap: Snapshot) -> Handle:
        for k in snap.delta:
            if k not in self.root.base:
                raise PlacementError(f"agent {snap.name!r}: its delta changes {k!r}, which this base model "
                                     "does not have")
        a = self.root.spawn(snap.name, snap.persona)
        add_delta(a.model, snap.delta)
        a.state = put_extensions(a.model, copy.deepcopy(snap.state))
        self.agents[snap.name] = a
        self._versions[snap.name] = self._versions.get(snap.name, -1) + 1
        self._known[snap.name] = factored_only(dict(snap.delta))
        return Handle(self, snap.name)

    def base_fingerprint(self) -> str:
        if self._fp is None:
            self._fp = fingerprint(self.root.base)
        return self._fp


# -- asking many agents that may live on different placements -----------------------------------
def beliefs_of(pairs: list[tuple[object, Ask]]) -> list[list[Belief]]:
    """Answers to (agent, ask) pairs, one `beliefs_many` call per placement; agents without a
    placement (scripted stand-ins, a plain Agent) are asked one by one."""
    out: list = [None] * len(pairs)
    groups: dict[int, list[int]] = {}
    for i, (agent, ask) in enumerate(pairs):
        p = getattr(agent, "placement", None)
        if p is None:
            out[i] = agent.beliefs(ask.queries, context=ask.context, **ask.fields)
        else:
            groups.setdefault(id(p), []).append(i)
    for idx in groups.values():
        p = pairs[idx[0]][0].placement
        for i, bs in zip(idx, p.beliefs_many([pairs[i][1] for i in idx])):
            out[i] = bs
    return out


def check_placement(make, world, n_agents: int = 3) -> None:
    """The contract, on a fresh placement from `make()`: spawned agents answer like a local
    reference would (same argmax), an agent's learning changes only its own answers, and a
    saved agent loads back with the same beliefs. Raises AssertionError naming what failed."""
    p = make()
    hs = [p.spawn(f"check {i}") for i in range(n_agents)]
    qs = world.queries()[:6]
    many = p.beliefs_many([Ask(h.name, qs) for h in hs])
    assert len(many) == n_agents and all(len(b) == len(qs) for b in many), "beliefs_many: one list per ask"
    assert all(b.agent == h.name for h, bs in zip(hs, many) for b in bs), "beliefs carry the agent's name"
    one = hs[0].beliefs(qs)
    assert [b.answer for b in one] == [b.answer for b in many[0]], "beliefs_many and beliefs disagree"
    v = hs[0].version
    texts = [f"{q.prompt} {q.candidates[-1] if q.candidates[-1] != q.truth else q.candidates[0]}" for q in qs[:2]]
    hs[0].learn(texts, "finetune", epochs=3, lr=5e-3)
    assert hs[0].version != v, "learn must change the agent's version"
    assert hs[0].delta(), "learn left no delta"
    assert not hs[1].delta(), "one agent's learning changed another's delta"
    after = p.beliefs_many([Ask(h.name, qs) for h in hs])
    assert [b.probs for b in after[1]] == [b.probs for b in many[1]], "an untouched agent's beliefs changed"
