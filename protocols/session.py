"""Play a protocol: rounds of agents answering queries with what the protocol shows them.

Round 0 is always everyone answering alone (the agent's prior; a persona mixes it with
later rounds' beliefs, see `protocols.personas`). Each round after asks the protocol what
every agent sees, renders it as context, scores the agents' beliefs over the candidates,
asks the speaker's model for a supporting fact where the protocol wants one, and posts the
answers on the board. Each phase of a synchronous round (priors, answers, supports) is one
`beliefs_many` call per placement for every agent on it (agents/placement.py); an
asynchronous round asks agent after agent, as each sees what the earlier ones said. Records
of finished rounds can be handed back in (`done`): the board is rebuilt from them and play
resumes at the next round, with the same result as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Callable

import networkx as nx

from agents.placement import Ask, beliefs_of
from agents.records import Belief, Record
from envs.facts import Fact, Query
from envs.world import World, support
from protocols.base import Board, Claim, Protocol, ProtocolError, Said, Turn, speaker_labels
from protocols.personas import blend, social_weight
from protocols.topology import neighbours


def posted_claim(r: Record) -> Claim:
    support = Fact(r.subject, r.support_relation, r.support_object) if r.support_relation else None
    return Claim(r.speaker or r.agent, r.subject, r.relation, r.answer, support)


def _support_asks(protocol: Protocol, agent, world: World, queries: list[Query], beliefs: list[Belief],
                  round: int) -> tuple[list[int], list[str], Ask | None]:
    """Which answers want a supporting fact, its relation, and the ask for it: the related
    fact the speaker believes, given its own answer as context (a full sentence: "agent 2
    says : X works at Acorn Labs ." then "Q: In which city...")."""
    asks = [(i, rel) for i, q in enumerate(queries) if (rel := protocol.support_relation(q.relation, round))]
    if not asks:
        return [], [], None
    sq = [world.query(queries[i].subject, rel) for i, rel in asks]
    me = speaker_labels([agent.name])[agent.name]
    ctx = [support(world.relations[queries[i].relation], queries[i].subject, beliefs[i].answer, me)
           for i, _ in asks]
    return [i for i, _ in asks], [rel for _, rel in asks], Ask(agent.name, sq, ctx)


def play(protocol: Protocol, agents: list, world: World, queries: list[Query], graph: nx.Graph, seed: int,
         *, run: str = "", generation: int = 0, form: str = "question", trial: str = "",
         done: list[Record] | None = None, on_round: Callable[[int, list[Record]], None] | None = None,
         priors: dict | None = None, make_agent=None, max_rounds: int = 1000,
         stop_after: int | None = None) -> list[Record]:
    """All records of the protocol on these agents and queries (the finished ones in `done`
    included). `priors` caches agents' round-0 beliefs across calls (keyed by agent).
    `stop_after`: the last round to play whatever the protocol says (0: answers alone only)."""
    names = [a.name for a in agents]
    if not agents:
        raise ProtocolError("agents: none given; a protocol needs at least 1 agent")
    if len(set(names)) != len(names):
        raise ProtocolError(f"agents: names must be unique, got {names}")
    if not queries:
        raise ProtocolError("queries: none given; ask at least 1 query")
    missing = sorted(set(graph.nodes) ^ set(names))
    if missing:
        raise ProtocolError(f"graph: node(s) {missing[:3]} are not exactly the agents {names}; "
                            "build it with protocols.topology.build_graph(spec, agent names, seed)")
    weights = {a.name: social_weight(a.persona) for a in agents}
    protocol.bind(world, seed, names, make_agent)
    nbrs = neighbours(graph, names)
    priors = {} if priors is None else priors
    base = dict(run=run, generation=generation, protocol=protocol.name, form=form)
    extra = dict(trial=trial)

    board = Board()
    records = list(done or [])
    for r in records:
        board.post(r.round, posted_claim(r))
    last = max((r.round for r in records), default=-1)
    if last >= 0 and (protocol.done(last, board, queries) or last == stop_after):
        return records

    def record(said: Said, round: int, persona: str) -> Record:
        key = (said.claim.subject, said.claim.relation)
        shown = [c for c in said.shown if (c.subject, c.relation) == key]
        fields = dict(base, round=round, pattern=protocol.pattern(round), persona=persona, **extra,
                      speaker=said.claim.speaker,
                      peer_answers=[c.object for c in shown],
                      n_confederates=len({c.speaker for c in shown if c.scripted}),
                      support_relation=said.claim.support.relation if said.claim.support else "",
                      support_object=said.claim.support.object if said.claim.support else "")
        return Record(**{**asdict(said.belief), **fields})

    prompts = tuple(q.prompt for q in queries)

    def answer(group: list, rnd: int, view) -> list[Record]:
        """One round for `group`: priors, social beliefs, supporting facts, each phase one
        `beliefs_many` call per placement (agents without one are asked one by one)."""
        key = lambda a: (id(a), getattr(a, "version", None), prompts)
        need = [a for a in group if key(a) not in priors]
        for a, got in zip(need, beliefs_of([(a, Ask(a.name, queries)) for a in need])):
            priors[key(a)] = (a, got)    # the agent is kept in the value so its id is not reused
        plans = []
        for a in group:
            turns = [Turn(rnd, a.name, q, nbrs[a.name], view) for q in queries]
            shown = [list(protocol.sees(t)) if rnd > 0 else [] for t in turns]
            contexts = [protocol.render(sh, t) if sh else "" for sh, t in zip(shown, turns)]
            plans.append((a, shown, contexts, [i for i, c in enumerate(contexts) if c]))
        social = beliefs_of([(a, Ask(a.name, [queries[i] for i in asked], [contexts[i] for i in asked]))
                             for a, _, contexts, asked in plans if asked])
        answered, k = [], 0
        for a, shown, contexts, asked in plans:
            prior = priors[key(a)][1]
            beliefs = list(prior)
            if asked:
                for i, b in zip(asked, social[k]):
                    beliefs[i] = blend(prior[i], b, weights[a.name])
                k += 1
            beliefs = [dataclasses.replace(b, context=c) for b, c in zip(beliefs, contexts)]
            answered.append((a, shown, beliefs, _support_asks(protocol, a, world, queries, beliefs, rnd)))
        found = iter(beliefs_of([(a, ask) for a, _, _, (_, _, ask) in answered if ask is not None]))
        out = []
        for a, shown, beliefs, (where, rels, ask) in answered:
            supports: list[Fact | None] = [None] * len(queries)
            if ask is not None:
                for i, rel, b in zip(where, rels, next(found)):
                    supports[i] = Fact(queries[i].subject, rel, b.answer)
            for q, b, sh, sup in zip(queries, beliefs, shown, supports):
                c = Claim(a.name, q.subject, q.relation, b.answer, sup)
                board.post(rnd, c)
                out.append(record(Said(b, c, sh), rnd, a.persona))
        return out

    for rnd in range(last + 1, max_rounds + 1):
        view = board.until(rnd) if protocol.synchronous else board
        new: list[Record] = []
        # synchronous: everyone sees the board as it was before the round, so the whole round
        # is one batch; otherwise each agent sees what earlier agents said this round
        for group in ([agents] if protocol.synchronous or rnd == 0 else [[a] for a in agents]):
            new += answer(group, rnd, view)
        for said in protocol.after_round(rnd, board, queries):
            new.append(record(said, rnd, "neutral"))
        records += new
        if on_round is not None:
            on_round(rnd, new)
        if protocol.done(rnd, board, queries) or rnd == stop_after:
            return records
    raise ProtocolError(f"protocol {protocol.name!r} did not stop within {max_rounds} rounds; "
                        "its done() must return True eventually (set `rounds`)")
