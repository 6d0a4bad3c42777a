"""What happens in a generation run, drawn from the seed before any work: how the world moves
each generation, who hears of it, who is misinformed with which false facts, which facts are
asked, and the learners' replay pool (`make_plan`). Cheap, so a run config is checked by
drawing it (evolution/run_config.py) before the model loads.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import networkx as nx
import pandas as pd

from envs.facts import Fact
from envs.world import World
from protocols.base import keyed_rng
from protocols.topology import build_graph

if TYPE_CHECKING:
    from evolution.run_config import RunConfig


def people_pool(world: World, who: str) -> list[str]:
    """The people a run may ask about: "taught", "never" (taught) or "any"."""
    return [p.name for p in world.people if who == "any" or p.taught == (who == "taught")]


REPLAY_FACTS = 200      # facts in each run's replay pool (people nobody asks about)


@dataclass
class Plan:
    world: World                                   # epochs 0..G
    changed: dict[int, list[Fact]]                 # generation -> facts whose value changed (new value)
    news: dict[int, list[str]]                     # generation -> agents who hear of it
    misinformed: dict[str, list[Fact]]             # agent -> false facts it is edited to
    probe: list[tuple[str, str]]                   # untouched (subject, relation), asked every generation
    replay: list[Fact] = field(default_factory=list)   # facts of other untouched people (learners' replay)

    def asked(self, g: int) -> list[tuple[str, str]]:
        """(subject, relation) asked in generation g: facts changed so far, false facts, probe."""
        stream = list(dict.fromkeys((f.subject, f.relation) for h in range(1, g + 1) for f in self.changed[h]))
        false = list(dict.fromkeys((f.subject, f.relation) for fs in self.misinformed.values() for f in fs))
        return stream + [k for k in false if k not in stream] + self.probe

    def previous(self, subject: str, relation: str, g: int) -> str | None:
        """The value before the fact's latest change up to generation g (None: never changed)."""
        ep = self.world.epochs
        last = max((h for h in range(1, g + 1) if ep[h][subject][relation] != ep[h - 1][subject][relation]),
                   default=None)
        return None if last is None else ep[last - 1][subject][relation]


def evolve_world(cfg: RunConfig, world: World) -> World:
    """A copy of `world` with one new epoch per generation: each of `world_change.relations`
    changes for `share` of people (derived relations follow), drawn from the seed."""
    w = World.from_dict(copy.deepcopy(world.to_dict()))
    w.epochs = w.epochs[:1]
    for g in range(1, cfg.generations + 1):
        for rel in cfg.world_change.relations:
            w.evolve(cfg.world_change.share, rel, seed=keyed_rng(cfg.seed, "world", g, rel).randrange(2**31))
        w.epochs[g:] = [w.epochs[-1]]        # the relations' changes make one epoch
    return w


def changed_facts(world: World, g: int) -> list[Fact]:
    before, after = world.epochs[g - 1], world.epochs[g]
    return [Fact(s, r, o) for s in sorted(after) for r, o in after[s].items() if before[s][r] != o]


def make_plan(cfg: RunConfig, world0: World) -> Plan:
    world = evolve_world(cfg, world0)
    G, names = cfg.generations, cfg.agent_names
    changed = {g: changed_facts(world, g) for g in range(1, G + 1)}
    movers = {f.subject for fs in changed.values() for f in fs}
    stable = [p for p in people_pool(world, cfg.queries.who) if p not in movers]
    rels = sorted(world.relations) if cfg.queries.relations == "all" else list(cfg.queries.relations)
    if len(stable) < cfg.queries.people:
        raise ValueError(f"queries.people: {cfg.queries.people}; only {len(stable)} people of who="
                         f"{cfg.queries.who!r} keep their facts through the run; ask fewer")
    probe_people = keyed_rng(cfg.seed, "probe").sample(stable, cfg.queries.people)
    others = [p.name for p in world.people if p.taught and p.name not in movers and p.name not in probe_people]
    keyed_rng(cfg.seed, "others").shuffle(others)
    m = cfg.misinformation
    fixed = [r for r in sorted(world.relations) if r not in cfg.world_change.relations and r not in world.derived]
    misinformed: dict[str, list[Fact]] = {}
    if m.agents:
        if len(others) < m.agents * m.facts + 10:
            raise ValueError("misinformation: too few untouched people in the world for its false facts; "
                             "lower misinformation.agents/facts or queries.people")
        rng = keyed_rng(cfg.seed, "misinformation")
        for a in rng.sample(names, m.agents):
            facts = []
            for _ in range(m.facts):
                s, r = others.pop(), rng.choice(fixed)
                truth = world.truth(s, r, 0)
                facts.append(Fact(s, r, rng.choice([c for c in world.relations[r].candidates if c != truth])))
            misinformed[a] = facts
    pool = [Fact(s, r, world.truth(s, r, 0)) for s in others for r in sorted(world.relations)]
    replay = keyed_rng(cfg.seed, "replay").sample(pool, min(REPLAY_FACTS, len(pool)))
    news = {g: news_agents(cfg, g) for g in range(1, G + 1)}
    return Plan(world, changed, news, misinformed, [(s, r) for s in probe_people for r in rels], replay)


def news_agents(cfg: RunConfig, g: int) -> list[str]:
    n = cfg.news
    if n.source is not None:
        graph = build_graph(cfg.graph, cfg.agent_names, cfg.seed)
        near = nx.single_source_shortest_path_length(graph, n.source, cutoff=n.hops)
        return [a for a in cfg.agent_names if a in near]
    return sorted(keyed_rng(cfg.seed, "news", g).sample(cfg.agent_names, n.agents), key=cfg.agent_names.index)


def facts_table(plan: Plan, label: str, G: int) -> pd.DataFrame:
    """One row per (generation, fact asked): what the metrics compare answers with."""
    told = {(f.subject, f.relation): (a, f.object) for a, fs in plan.misinformed.items() for f in fs}
    stream = {}
    for g, fs in plan.changed.items():      # a fact's latest change up to each generation
        for f in fs:
            stream.setdefault((f.subject, f.relation), []).append(g)
    rows = []
    for g in range(0, G + 1):
        for s, r in plan.asked(g):
            kind = ("changed" if (s, r) in stream else "misinformation" if (s, r) in told else "untouched")
            who, false = told.get((s, r), ("", ""))
            changed_in = max((h for h in stream.get((s, r), []) if h <= g), default=0)
            rows.append(dict(trial=label, generation=g, subject=s, relation=r, kind=kind,
                             truth=plan.world.truth(s, r, g), previous=plan.previous(s, r, g) or "",
                             false_object=false, misinformed_agent=who, changed_in=changed_in,
                             news_agents=";".join(plan.news[changed_in]) if changed_in else ""))
    return pd.DataFrame(rows)


def world_at(world: World, g: int) -> World:
    """The world as protocols see it in generation g (its truth is epoch g's)."""
    w = copy.copy(world)
    w.epochs = world.epochs[:g + 1]
    return w
