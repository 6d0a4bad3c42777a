"""How far peers' claims move an agent: the probe behind the social-knob checks and the
Asch-style tables. Unanimous wrong claims by k peers, for people the model knows and
people it was never taught."""
from __future__ import annotations

import random

import pandas as pd

from agents.records import to_frame
from envs.world import World, claim


def unanimous_wrong_probe(agent, world: World, ks=(0, 1, 2, 3, 5), per_group: int = 60,
                          relation: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Belief records under k unanimous wrong claims. Each fact gets one wrong object
    (seeded), shared by all k peers and across k, so rows differ only in k."""
    rng = random.Random(seed)
    known = [p.name for p in world.people if p.taught]
    unknown = [p.name for p in world.people if not p.taught]
    rows = []
    for group, people in (("known", known), ("never taught", unknown)):
        for name in rng.sample(people, min(per_group, len(people))):
            rel = world.known_relation(name, relation or rng.choice(sorted(world.relations)), rng)
            q = world.query(name, rel)
            wrong = rng.choice([c for c in q.candidates if c != q.truth])
            speakers = rng.sample(range(50), max(ks))
            for k in ks:
                ctx = " ".join(claim(world.relations[rel], name, wrong, f"agent {s}") for s in speakers[:k])
                b = agent.beliefs([q], context=ctx, n_confederates=k, protocol="probe")[0]
                b.peer_answers = [wrong] * k
                rows.append((group, k, wrong, b))
    df = to_frame([r[3] for r in rows])
    df["group"] = [r[0] for r in rows]
    df["k"] = [r[1] for r in rows]
    df["claim"] = [r[2] for r in rows]
    df["p_claim"] = [b.prob(r[2]) for r, b in zip(rows, (r[3] for r in rows))]
    df["follows"] = df["answer"] == df["claim"]
    return df
