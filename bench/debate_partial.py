"""Debate on partial knowledge: group accuracy after the debate vs at round 0 vs a majority
vote of independent answers at an equal number of model calls; complete, ring and star.

Runs configs/debate.yaml: each agent fine-tunes on the bios of its own share of people the
default model was never taught, then all debate about all of them (answers backed by a
related fact). Per graph:
- agent accuracy at round 0 and after the last round (analysis.group_metrics.accuracy_by_round);
- group accuracy: the plurality answer of the agents (ties broken by summed probability),
  at round 0 (a vote of independent answers, one call per agent) and after the last round;
- a vote of independent answers at equal calls: every model call the debate spent on a query
  (answers and supporting facts, counted from the records) becomes one answer sampled from
  an agent's round-0 belief (seeded), and the plurality of those samples is the group's;
- the knower's round-0 accuracy: what the one agent that learned the person says alone (the
  ceiling if the group deferred to it), and what the knower and the others say after the
  last round (does the knower convince the others, or is it talked out of what it knows?).

    python -m bench.debate_partial [--quick] [--out runs/debate] [--seeds 0,1,2] [--upbringings default,evidence,confidence,confidence-strict,confidence-bare]
"""
from __future__ import annotations

import random
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.group_metrics import accuracy_by_round, wilson_interval  # noqa: E402
from analysis.social import heard_claims, knower_turns  # noqa: E402
from bench.common import MODEL_QUICK, ROOT, UPBRINGINGS, md_table, run_config_experiment, write_section  # noqa: E402
from evolution.run import knowledge_shares, sample_queries  # noqa: E402

CONFIG = ROOT / "configs" / "debate.yaml"
QUICK = ["pretrain.people=80", "pretrain.seed=0", "pretrain.steps=400", "agents=3", "queries.people=6",
         "queries.relations=[company]"]


def plurality(answers: list[str], probs: list[float]) -> str:
    score: dict[str, float] = defaultdict(float)
    for a, p in zip(answers, probs):
        score[a] += 1 + 1e-3 * p
    return max(sorted(score), key=score.__getitem__)


def group_accuracy(recs: pd.DataFrame, rnd: int) -> tuple[float, int]:
    r = recs[recs["round"] == rnd]
    ok = [plurality(list(g["answer"]), list(g["confidence"])) == g["truth"].iloc[0]
          for _, g in r.groupby(["subject", "relation"])]
    return sum(ok) / len(ok), sum(ok)


def calls_per_query(recs: pd.DataFrame) -> pd.Series:
    """Model calls the debate spent per query: one per answer record, one per supporting fact."""
    return recs.groupby(["subject", "relation"]).apply(
        lambda g: len(g) + int((g["support_relation"] != "").sum()), include_groups=False)


def sampled_vote_accuracy(recs: pd.DataFrame, calls: pd.Series, seed: int) -> float:
    r0 = recs[recs["round"] == 0]
    ok = []
    for (s, rel), g in r0.groupby(["subject", "relation"]):
        rng = random.Random(f"{seed}/{s}/{rel}")
        n = int(calls[(s, rel)])
        rows = list(g.itertuples())
        samples = [rng.choices(list(row.candidates), weights=list(row.probs))[0]
                   for row in (rows[i % len(rows)] for i in range(n))]
        ok.append(plurality(samples, [0.0] * len(samples)) == g["truth"].iloc[0])
    return sum(ok) / len(ok)


def knower_of(point, world) -> dict[str, str]:
    """person -> the agent that learned it (its share of the never-taught people)."""
    shares = knowledge_shares(point, sample_queries(point, world))
    return {s: f"agent {i}" for i, share in enumerate(shares) for s in share}


def heard_by_upbringing(runs) -> dict[str, pd.DataFrame]:
    """Per upbringing whose claims state confidence: every seed's and graph's `heard_claims`."""
    out: dict[str, list] = defaultdict(list)
    for run in runs:
        if not run.cfg.params.get("confidence"):
            continue
        for label, point in run.points:
            recs = run.records[run.records["trial"] == label]
            out[run.upbringing].append(heard_claims(recs, knower_of(point, run.world)).assign(graph=label))
    return {up: pd.concat(frames, ignore_index=True) for up, frames in out.items()}


def graph_rows(run) -> list[dict]:
    """One row per graph of one run (one upbringing, one seed): accuracies and vote counts."""
    rows = []
    for label, point in run.points:
        recs = run.records[run.records["trial"] == label]
        last = int(recs["round"].max())
        acc = accuracy_by_round(recs, by=[]).set_index("round")
        knower = knower_of(point, run.world)
        is_knower = recs["agent"] == recs["subject"].map(knower)
        right = recs["answer"] == recs["truth"]
        at = lambda rnd, who: right[(recs["round"] == rnd) & who].mean()
        calls = calls_per_query(recs)
        n_q = recs.drop_duplicates(["subject", "relation"]).shape[0]
        rows.append({"upbringing": run.upbringing, "graph": label.split("=", 1)[1], "seed": run.seed,
                     "last": last, "agents": recs["agent"].nunique(), "queries": n_q,
                     "knower alone, round 0": at(0, is_knower), "knower last round": at(last, is_knower),
                     "others round 0": at(0, ~is_knower), "others last round": at(last, ~is_knower),
                     "agent acc. round 0": acc.loc[0, "accuracy"], "agent acc. last round": acc.loc[last, "accuracy"],
                     "right round 0": group_accuracy(recs, 0)[1], "right last round": group_accuracy(recs, last)[1],
                     "right equal calls": round(sampled_vote_accuracy(recs, calls, point.seed) * n_q),
                     "calls per query": calls.mean()})
    return rows


def summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per upbringing and graph: accuracies averaged over seeds; the three votes pooled over
    seeds, the vote after debate with a Wilson 95% interval."""
    out = []
    for (up, graph), g in per_seed.groupby(["upbringing", "graph"], sort=False):
        n = int(g["queries"].sum())
        lo, hi = wilson_interval(int(g["right last round"].sum()), n)
        out.append({"upbringing": up, "graph": graph, "seeds": len(g), "queries": n,
                    **{c: g[c].mean() for c in ("knower alone, round 0", "knower last round", "others round 0",
                                                 "others last round", "agent acc. round 0", "agent acc. last round")},
                    "vote round 0 (1 call/agent)": g["right round 0"].sum() / n,
                    "group vote last round": g["right last round"].sum() / n, "95% CI": f"{lo:.2f}-{hi:.2f}",
                    "vote of samples at equal calls": g["right equal calls"].sum() / n,
                    "calls per query": g["calls per query"].mean()})
    return pd.DataFrame(out).set_index(["upbringing", "graph"])


def main() -> None:
    args, runs = run_config_experiment(
        __doc__.splitlines()[0], CONFIG, "debate", QUICK,
        "the tests' small model (80 people, 400 steps), 3 agents, 6 people: proves the script runs",
        seeds="0,1,2", upbringings="default,evidence,confidence,confidence-strict,confidence-bare")
    per_seed = pd.DataFrame([r for run in runs for r in graph_rows(run)])
    table = summary(per_seed)
    pd.set_option("display.width", 250)
    print(per_seed.to_string(float_format="{:.3f}".format))
    print(table.to_string(float_format="{:.3f}".format))
    cfg, last = runs[0].cfg, int(per_seed["last"].iloc[0])
    took = "; ".join(f"{r.upbringing} seed {r.seed}: {r.took}" for r in runs)
    body = (f"{MODEL_QUICK if args.quick else 'The default model'}; "
            f"{cfg.agents} agents, each fine-tuned on the bios of its share of {cfg.queries.people} never-taught "
            f"people ({cfg.knowledge.texts_per_person} bios each, {cfg.knowledge.epochs} epochs, lr "
            f"{cfg.knowledge.lr}, replay {cfg.knowledge.replay} pretraining-mix texts per bio); "
            f"relations {cfg.queries.relations}; debate with supporting facts, {last} rounds after round 0 "
            f"(\"last round\"); seeds {args.seeds} (each picks other people and shares); {took}. Upbringings: "
            + ", ".join(f"{u} (`{' '.join(UPBRINGINGS[u]) or 'the default corpus'}`)"
                        for u in args.upbringings.split(",")) +
            ". Accuracies are means over seeds; the votes pool every seed's queries. Group vote: plurality of "
            "the agents' answers. Vote of samples at equal calls: as many answers sampled from the agents' round-0 "
            "beliefs as the debate made model calls on the query (answers + supporting facts).\n\n"
            + md_table(table))
    heard = heard_by_upbringing(runs)
    if heard:
        turns = pd.concat({up: knower_turns(h) for up, h in heard.items()}, names=["upbringing"])
        mix = pd.concat({up: h[h["knower"]].groupby("round")[["sure wrong", "sure right", "unsure wrong",
                                                              "unsure right"]].sum()
                         for up, h in heard.items()}, names=["upbringing"])
        mix = mix.div(mix.sum(axis=1), axis=0)
        print(turns.to_string(float_format="{:.3f}".format))
        print(mix.to_string(float_format="{:.3f}".format))
        body += ("\n\nWhat the knower hears, where claims state confidence (every seed and graph pooled): of "
                 "its answers that were right the round before, the share that stays right, by whether it then "
                 "heard a claim stated sure and wrong, or sure and right (`analysis.social.knower_turns`):\n\n"
                 + md_table(turns) + "\n\nThe claims the knowers heard, per round (shares of all claims heard "
                 "that round; round r hears the answers of round r - 1):\n\n" + md_table(mix))
    write_section("debate-partial", "Debate on partial knowledge", body)


if __name__ == "__main__":
    main()
