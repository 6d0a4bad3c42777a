"""Play a protocol: rounds of agents answering queries with what the protocol shows them.

Round 0 is always everyone answering alone (the agent's prior; a persona mixes it with
later rounds' beliefs, see `protocols.personas`). Each round after asks the protocol what
every agent sees, renders it as context, scores the agents' beliefs over the candidates,
asks the speaker's model for a supporting fact where the protocol wants one, and posts the
answers on the board.

Two halves, so that any driver runs the same rounds. `Stage` is the table: it alone decides
what an agent is shown (`plan`) and how what it said is posted and recorded (`post`, `close`).
`believe` and `supports` are the models' side: each phase of a round (priors, answers,
supports) is one `beliefs_many` call per placement for every agent on it
(agents/placement.py). `play` joins them; the PettingZoo envs (protocols/pettingzoo_env.py)
drive the same `Stage` with policies' actions, and `AgentPolicy` answers with `believe` and
`supports`. An asynchronous round asks agent after agent, as each sees what the earlier ones
said. Records of finished rounds can be handed back in (`done`): the board is rebuilt from them
and play resumes at the next round, with the same result as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
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
    return Claim(r.speaker or r.agent, r.subject, r.relation, r.answer, support, p=r.confidence)


@dataclass
class Plan:
    """What one agent is shown before it answers a round's queries. `agent` answers (a
    handle, an Agent, a scripted stand-in); `speaker` is its name in the conversation (the
    same, except for a policy's agent standing in an env's seat)."""
    agent: object
    speaker: str
    persona: str
    shown: list[list[Claim]]        # per query
    contexts: list[str]             # per query; "" where nothing is shown

    @property
    def asked(self) -> list[int]:
        return [i for i, c in enumerate(self.contexts) if c]


class Stage:
    """One conversation: the protocol bound to the run, its queries, the board and who
    neighbours whom. `fields` (run, generation, form, trial) go into every record."""

    def __init__(self, protocol: Protocol, world: World, queries: list[Query], graph: nx.Graph,
                 seed: int, names: list[str], make_agent=None, **fields):
        protocol.bind(world, seed, names, make_agent)
        self.protocol, self.world, self.queries = protocol, world, list(queries)
        self.nbrs = neighbours(graph, names)
        self.board = Board()
        self.fields = dict(fields, protocol=protocol.name)

    def resume(self, records: list[Record]) -> int:
        """Post the claims of finished rounds; the last round they hold (-1: none)."""
        for r in records:
            self.board.post(r.round, posted_claim(r))
        return max((r.round for r in records), default=-1)

    def over(self, last: int, stop_after: int | None = None) -> bool:
        """Whether the talk ended with round `last` (-1: it has not begun)."""
        return last >= 0 and (self.protocol.done(last, self.board, self.queries) or last == stop_after)

    def view(self, rnd: int) -> Board:
        """What may be seen in round `rnd`: synchronous, the board before the round (Du et
        al.); otherwise the board itself, with this round's earlier answers."""
        return self.board.until(rnd) if self.protocol.synchronous else self.board

    def plan(self, agent, rnd: int, speaker: str | None = None, persona: str | None = None) -> Plan:
        speaker = speaker or agent.name
        view = self.view(rnd)
        turns = [Turn(rnd, speaker, q, self.nbrs[speaker], view) for q in self.queries]
        shown = [list(self.protocol.sees(t)) if rnd > 0 else [] for t in turns]
        contexts = [self.protocol.render(sh, t) if sh else "" for sh, t in zip(shown, turns)]
        return Plan(agent, speaker, persona or getattr(agent, "persona", "neutral"), shown, contexts)

    def support_ask(self, plan: Plan, beliefs: list[Belief], rnd: int) -> tuple[list[int], list[str], Ask | None]:
        """Which answers want a supporting fact, its relation, and the ask for it: the related
        fact the speaker believes, given its own answer as context (a full sentence: "agent 2
        says : X works at Acorn Labs ." then "Q: In which city...")."""
        qs = self.queries
        asks = [(i, rel) for i, q in enumerate(qs) if (rel := self.protocol.support_relation(q.relation, rnd))]
        if not asks:
            return [], [], None
        sq = [self.world.query(qs[i].subject, rel) for i, rel in asks]
        me = speaker_labels([plan.speaker])[plan.speaker]
        ctx = [support(self.world.relations[qs[i].relation], qs[i].subject, beliefs[i].answer, me) for i, _ in asks]
        return [i for i, _ in asks], [rel for _, rel in asks], Ask(plan.agent.name, sq, ctx)

    def post(self, rnd: int, plan: Plan, beliefs: list[Belief], supports: list[Fact | None]) -> list[Record]:
        """Put `plan`'s answers on the board; their records."""
        out = []
        for q, b, sh, ctx, sup in zip(self.queries, beliefs, plan.shown, plan.contexts, supports):
            c = Claim(plan.speaker, q.subject, q.relation, b.answer, sup, p=b.confidence)
            self.board.post(rnd, c)
            out.append(self.record(Said(dataclasses.replace(b, context=ctx), c, sh), rnd, plan.persona))
        return out

    def close(self, rnd: int) -> tuple[list[Record], bool]:
        """After everyone answered: the protocol's extra speakers' records (a judge), and
        whether the talk stops."""
        extra = [self.record(s, rnd, "neutral") for s in self.protocol.after_round(rnd, self.board, self.queries)]
        return extra, self.protocol.done(rnd, self.board, self.queries)

    def record(self, said: Said, rnd: int, persona: str) -> Record:
        key = (said.claim.subject, said.claim.relation)
        shown = [c for c in said.shown if (c.subject, c.relation) == key]
        sup = said.claim.support
        fields = dict(self.fields, round=rnd, pattern=self.protocol.pattern(rnd), persona=persona,
                      speaker=said.claim.speaker, peer_answers=[c.object for c in shown],
                      n_confederates=len({c.speaker for c in shown if c.scripted}),
                      support_relation=sup.relation if sup else "", support_object=sup.object if sup else "")
        return Record(**{**asdict(said.belief), **fields})


def believe(plans: list[Plan], queries: list[Query], priors: dict) -> list[list[Belief]]:
    """Each planned agent's beliefs: its prior (round 0's belief, cached in `priors` per agent,
    version and queries), and where it is shown something its belief given that, blended with
    the prior by its persona. Two `beliefs_many` calls per placement at the most."""
    prompts = tuple(q.prompt for q in queries)
    key = lambda a: (id(a), getattr(a, "version", None), prompts)
    need = list({id(p.agent): p.agent for p in plans if key(p.agent) not in priors}.values())
    for a, got in zip(need, beliefs_of([(a, Ask(a.name, queries)) for a in need])):
        priors[key(a)] = (a, got)    # the agent is kept in the value so its id is not reused
    social = iter(beliefs_of([(p.agent, Ask(p.agent.name, [queries[i] for i in p.asked],
                                            [p.contexts[i] for i in p.asked])) for p in plans if p.asked]))
    out = []
    for p in plans:
        prior = priors[key(p.agent)][1]
        beliefs = list(prior)
        if p.asked:
            weight = social_weight(p.persona)
            for i, b in zip(p.asked, next(social)):
                beliefs[i] = blend(prior[i], b, weight)
        out.append(beliefs)
    return out


def supports(stage: Stage, plans: list[Plan], beliefs: list[list[Belief]], rnd: int) -> list[list[Fact | None]]:
    """The fact each answer is backed by where the protocol wants one (else None), asked of
    the speakers' models, one `beliefs_many` call per placement."""
    asks = [stage.support_ask(p, b, rnd) for p, b in zip(plans, beliefs)]
    found = iter(beliefs_of([(p.agent, ask) for p, (_, _, ask) in zip(plans, asks) if ask is not None]))
    out = []
    for where, rels, ask in asks:
        facts: list[Fact | None] = [None] * len(stage.queries)
        if ask is not None:
            for i, rel, b in zip(where, rels, next(found)):
                facts[i] = Fact(stage.queries[i].subject, rel, b.answer)
        out.append(facts)
    return out


def finished(protocol: Protocol, world: World, queries: list[Query], graph: nx.Graph, seed: int,
             names: list[str], done: list[Record], stop_after: int | None = None) -> bool:
    """Whether the records `done` already finish this talk, as `play` would find on resuming,
    asked without agents (a run skips making the agents of a finished point)."""
    stage = Stage(protocol, world, queries, graph, seed, names, make_agent=lambda name: None)
    return stage.over(stage.resume(done), stop_after)


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
    stage = Stage(protocol, world, queries, graph, seed, names, make_agent,
                  run=run, generation=generation, form=form, trial=trial)
    priors = {} if priors is None else priors
    records = list(done or [])
    last = stage.resume(records)
    if stage.over(last, stop_after):
        return records
    for rnd in range(last + 1, max_rounds + 1):
        new: list[Record] = []
        # synchronous: everyone sees the board as it was before the round, so the whole round
        # is one batch; otherwise each agent sees what earlier agents said this round
        for group in ([agents] if protocol.synchronous or rnd == 0 else [[a] for a in agents]):
            plans = [stage.plan(a, rnd) for a in group]
            beliefs = believe(plans, queries, priors)
            for p, b, s in zip(plans, beliefs, supports(stage, plans, beliefs, rnd)):
                new += stage.post(rnd, p, b, s)
        extra, end = stage.close(rnd)
        records += new + extra
        if on_round is not None:
            on_round(rnd, new + extra)
        if end or rnd == stop_after:
            return records
    raise ProtocolError(f"protocol {protocol.name!r} did not stop within {max_rounds} rounds; "
                        "its done() must return True eventually (set `rounds`)")
