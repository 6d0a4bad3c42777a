"""How far peers' claims move an agent: the probe behind the social-knob checks and the
Asch-style tables. Unanimous wrong claims by k peers, for people the model knows and
people it was never taught; the same claims each backed by a supporting fact that agrees or
disagrees with the world (the evidence knob's check, envs/corpus.py); the same claims stated
sure or unsure (the confidence knob's check), and one right claim stated sure or unsure among
k unsure wrong ones (the confidence weight's check)."""
from __future__ import annotations

import random

import pandas as pd

from agents.records import to_frame
from analysis.group_metrics import wilson_interval
from envs.world import RELATED, World, claim, read_stated, stated, support


def sampled_people(world: World, rng: random.Random, per_group: int):
    """(group, name): up to `per_group` people the model was taught, then as many never taught,
    drawn lazily from `rng` (each group's draw comes after the draws made for the one before)."""
    for group, taught in (("known", True), ("never taught", False)):
        people = [p.name for p in world.people if p.taught == taught]
        for name in rng.sample(people, min(per_group, len(people))):
            yield group, name


def unanimous_wrong_probe(agent, world: World, ks=(0, 1, 2, 3, 5), per_group: int = 60,
                          relation: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Belief records under k unanimous wrong claims. Each fact gets one wrong object
    (seeded), shared by all k peers and across k, so rows differ only in k."""
    rng, rows = random.Random(seed), []
    for group, name in sampled_people(world, rng, per_group):
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


def supported_wrong_probe(agent, world: World, ks=(1, 2, 3, 5), per_group: int = 60, seed: int = 0) -> pd.DataFrame:
    """Belief records under k unanimous wrong claims, each followed by its speaker's support
    (the same person's related fact, as debate shows it) that is the world's truth
    ("consistent") or not ("inconsistent"). Each fact gets one wrong object and one wrong
    support (seeded; every speaker gives the same backing, as in the corpus, so the backings'
    agreement with each other gives nothing away), shared across k and across the two kinds,
    so rows differ only in k and in whether the support checks out. A model can tell the kinds apart only for
    people it knows: for the never taught it has nothing to check the support against."""
    rng, rows = random.Random(seed), []
    for group, name in sampled_people(world, rng, per_group):
        rels = [r for r in sorted(world.relations) if r in RELATED and RELATED[r] in world.relations
                and world.has(name, r) and world.has(name, RELATED[r])]
        if not rels:
            continue
        rel = rng.choice(rels)
        sup = world.relations[RELATED[rel]]
        q, true_sup = world.query(name, rel), world.truth(name, sup.name)
        wrong = rng.choice([c for c in q.candidates if c != q.truth])
        speakers = rng.sample(range(50), max(ks))
        wrong_sup = rng.choice([c for c in sup.candidates if c != true_sup])
        for kind in ("consistent", "inconsistent"):
            for k in ks:
                ctx = " ".join(f"{claim(world.relations[rel], name, wrong, f'agent {s}')} "
                               f"{support(sup, name, true_sup if kind == 'consistent' else wrong_sup, f'agent {s}')}"
                               for s in speakers[:k])
                b = agent.beliefs([q], context=ctx, n_confederates=k, protocol="probe")[0]
                b.peer_answers = [wrong] * k
                rows.append((group, k, kind, wrong, b))
    return _contrast_frame(rows, "support")


def stated_wrong_probe(agent, world: World, ks=(1, 2, 3, 5), per_group: int = 60, seed: int = 0) -> pd.DataFrame:
    """Belief records under k unanimous wrong claims, all stated sure ("agent 3 is sure : X .")
    or all unsure ("agent 3 thinks : X ."). Each fact gets one wrong object (seeded), shared
    across k and across the two statings, so rows differ only in k and in the stated
    confidence. A model raised on reliable confidence can tell them apart for people it never
    met too: the confidence, not its knowledge, is the cue."""
    rng, rows = random.Random(seed), []
    for group, name in sampled_people(world, rng, per_group):
        rel = world.known_relation(name, rng.choice(sorted(world.relations)), rng)
        q = world.query(name, rel)
        wrong = rng.choice([c for c in q.candidates if c != q.truth])
        speakers = rng.sample(range(50), max(ks))
        for kind in ("sure", "unsure"):
            for k in ks:
                ctx = " ".join(stated(wrong, f"agent {s}", kind == "sure") for s in speakers[:k])
                b = agent.beliefs([q], context=ctx, n_confederates=k, protocol="probe")[0]
                b.peer_answers = [wrong] * k
                rows.append((group, k, kind, wrong, b))
    return _contrast_frame(rows, "stated")


def lone_sure_probe(agent, world: World, ks=(1, 2, 3), per_group: int = 60, seed: int = 0) -> pd.DataFrame:
    """Belief records under one peer's right claim among k peers' unanimous wrong one, all
    unsure ("agent 3 thinks : X .") but the right claim, stated sure or unsure: debate's case
    of one knower among guessers. `follows` is taking the lone right claim (the truth). Each
    fact gets one wrong object and one place for the right claim among the k + 1 (seeded),
    shared across k and the two statings, so rows differ only in k and in the stated confidence."""
    rng, rows = random.Random(seed), []
    for group, name in sampled_people(world, rng, per_group):
        rel = world.known_relation(name, rng.choice(sorted(world.relations)), rng)
        q = world.query(name, rel)
        wrong = rng.choice([c for c in q.candidates if c != q.truth])
        speakers = rng.sample(range(50), max(ks) + 1)
        at = rng.random()
        for kind in ("sure", "unsure"):
            for k in ks:
                lone = int(at * (k + 1))
                said = [(q.truth, kind == "sure") if i == lone else (wrong, False) for i in range(k + 1)]
                ctx = " ".join(stated(c, f"agent {s}", sure) for s, (c, sure) in zip(speakers, said))
                b = agent.beliefs([q], context=ctx, n_confederates=k + 1, protocol="probe")[0]
                b.peer_answers = [c for c, _ in said]
                rows.append((group, k, kind, q.truth, b))
    return _contrast_frame(rows, "stated")


def _contrast_frame(rows: list[tuple], kind: str) -> pd.DataFrame:
    """Belief records of a contrast probe, rows (group, k, kind, wrong claim, belief), with
    the claim followed or not."""
    df = to_frame([r[4] for r in rows])
    df["group"], df["k"], df[kind] = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    df["claim"] = [r[3] for r in rows]
    df["p_claim"] = [r[4].prob(r[3]) for r in rows]
    df["follows"] = df["answer"] == df["claim"]
    return df


def follow_table(df: pd.DataFrame, by=("group", "k", "support")) -> pd.DataFrame:
    """Share of answers that take the wrong claim, with Wilson 95% intervals, per `by`."""
    g = df.groupby(list(by)).follows.agg(["sum", "count"]).reset_index()
    lo, hi = wilson_interval(g["sum"], g["count"])
    return g.assign(follows=g["sum"] / g["count"], follows_lo=lo, follows_hi=hi).rename(
        columns={"sum": "followed", "count": "n"})


def contrast_table(tables: pd.DataFrame, kind: str, first: str, second: str) -> pd.DataFrame:
    """`follow_table`s of several models (a `model` column) side by side: per model, group and
    k, the share following under `first` and `second` of `kind`, with intervals, and
    drop = first - second."""
    wide = tables.pivot_table(index=["model", "group", "k"], columns=kind, values=["follows", "follows_lo", "follows_hi"])
    suffix = {"follows": "", "follows_lo": " lo", "follows_hi": " hi"}
    wide.columns = [s + suffix[v] for v, s in wide.columns]
    wide = wide[[c for s in (first, second) for c in (s, f"{s} lo", f"{s} hi")]]
    wide["drop"] = wide[first] - wide[second]
    return wide


def heard_claims(records: pd.DataFrame, knower: dict[str, str]) -> pd.DataFrame:
    """Per record after round 0 of a protocol whose claims state confidence: how many of the
    claims in its context were stated sure or unsure, right or wrong; whether its agent is the
    one that learned the person (`knower`: person -> agent); and whether its answer of the
    round before was right. What a debate's knower heard when it was talked out of its answer.
    `records`: one run's and trial's (an agent answers a query once per round)."""
    right = records.assign(right=records["answer"] == records["truth"])
    before = right.set_index(["subject", "relation", "agent", "round"])["right"]
    if before.index.has_duplicates:
        raise ValueError("heard_claims: an agent answers a query more than once in a round here; pass the "
                         "records of one run and one trial (e.g. records[records['trial'] == label])")
    rows = []
    for r in right[right["round"] > 0].itertuples():
        claims = read_stated(r.context)
        count = lambda sure, ok: sum(s == sure and (o == r.truth) == ok for _, s, o in claims)
        rows.append({"round": r.round, "knower": knower.get(r.subject) == r.agent,
                     "right before": bool(before[(r.subject, r.relation, r.agent, r.round - 1)]), "right": r.right,
                     "sure wrong": count(True, False), "sure right": count(True, True),
                     "unsure wrong": count(False, False), "unsure right": count(False, True)})
    return pd.DataFrame(rows, columns=["round", "knower", "right before", "right", "sure wrong", "sure right",
                                       "unsure wrong", "unsure right"])


def knower_turns(heard: pd.DataFrame) -> pd.DataFrame:
    """Of the knower's answers that were right the round before: how many stay right, by
    whether it then heard a claim stated sure and wrong, and one stated sure and right (Wilson
    95% intervals)."""
    k = heard[heard["knower"] & heard["right before"]]
    k = k.assign(**{"hears a sure wrong claim": k["sure wrong"] > 0, "hears a sure right claim": k["sure right"] > 0})
    out = []
    for key, g in k.groupby(["hears a sure wrong claim", "hears a sure right claim"]):
        lo, hi = wilson_interval(int(g["right"].sum()), len(g))
        out.append({"hears a sure wrong claim": key[0], "hears a sure right claim": key[1], "answers": len(g),
                    "stays right": g["right"].mean(), "95% low": lo, "95% high": hi})
    return pd.DataFrame(out).set_index(["hears a sure wrong claim", "hears a sure right claim"])
