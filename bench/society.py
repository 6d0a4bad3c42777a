"""MachineSoM-style societies (Zhang et al., ACL 2024): which mixes of overconfident and
easy-going agents, under which strategies (debate and reflection mixed round by round),
reach the truth on partial knowledge? Their table, per upbringing.

Runs configs/society.yaml (three agents, each fine-tuned on its share of never-taught
people, sweeping societies x strategies) once per upbringing and seed. Per society and
strategy: agent accuracy at round 0 and after the last round (means over seeds); the group's
plurality answer after the last round, pooled over seeds, with a Wilson 95% interval; the
share of queries on which all agents agree after the last round (MachineSoM's consensus);
and what the agent that learned the person says after the last round.

    python -m bench.society [--quick] [--out runs/society] [--seeds 0,1,2] [--upbringings default,confidence-strict]
"""
from __future__ import annotations

import json

import pandas as pd

from analysis.group_metrics import consensus, wilson_interval
from bench.common import MODEL_QUICK, ROOT, UPBRINGINGS, md_table, run_config_experiment, write_section
from bench.debate_partial import group_accuracy
from evolution.run import knowledge_shares, sample_queries

CONFIG = ROOT / "configs" / "society.yaml"
QUICK = ["pretrain.people=80", "pretrain.seed=0", "pretrain.steps=400", "queries.people=6",
         "queries.relations=[company]"]


def society_name(personas: list[str]) -> str:
    over = sum(p == "overconfident" for p in personas)
    return f"{over} overconfident + {len(personas) - over} easy-going"


def point_rows(run) -> list[dict]:
    rows = []
    for label, point in run.points:
        recs = run.records[run.records["trial"] == label]
        last = int(recs["round"].max())
        shares = knowledge_shares(point, sample_queries(point, run.world))
        knower = {s: f"agent {i}" for i, share in enumerate(shares) for s in share}
        right = recs["answer"] == recs["truth"]
        at_last = recs["round"] == last
        cons = consensus(recs, by=[]).set_index("round")
        rows.append({"upbringing": run.upbringing, "society": society_name(json.loads(label.split("=", 1)[1]
                                                                                       .rsplit(",protocol=", 1)[0])),
                     "strategy": point.protocol, "seed": run.seed,
                     "queries": recs.drop_duplicates(["subject", "relation"]).shape[0],
                     "agent acc. round 0": right[recs["round"] == 0].mean(), "agent acc. last round": right[at_last].mean(),
                     "knower last round": right[at_last & (recs["agent"] == recs["subject"].map(knower))].mean(),
                     "right round 0": group_accuracy(recs, 0)[1], "right last round": group_accuracy(recs, last)[1],
                     "unanimous last round": cons.loc[last, "unanimous"]})
    return rows


def summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    out = []
    for key, g in per_seed.groupby(["upbringing", "society", "strategy"], sort=False):
        n = int(g["queries"].sum())
        lo, hi = wilson_interval(int(g["right last round"].sum()), n)
        out.append({**dict(zip(["upbringing", "society", "strategy"], key)), "seeds": len(g), "queries": n,
                    "agent acc. round 0": g["agent acc. round 0"].mean(),
                    "agent acc. last round": g["agent acc. last round"].mean(),
                    "knower last round": g["knower last round"].mean(),
                    "vote round 0": g["right round 0"].sum() / n, "vote last round": g["right last round"].sum() / n,
                    "95% CI": f"{lo:.2f}-{hi:.2f}", "unanimous last round": g["unanimous last round"].mean()})
    return pd.DataFrame(out).set_index(["upbringing", "society", "strategy"])


def main() -> None:
    args, runs = run_config_experiment(
        __doc__.splitlines()[0], CONFIG, "society", QUICK,
        "the tests' small model (80 people, 400 steps), 6 people: proves the script runs",
        seeds="0,1,2", upbringings="default,confidence-strict")
    per_seed = pd.DataFrame([r for run in runs for r in point_rows(run)])
    table = summary(per_seed)
    pd.set_option("display.width", 250)
    print(table.to_string(float_format="{:.3f}".format))
    cfg = runs[0].cfg
    took = "; ".join(f"{r.upbringing} seed {r.seed}: {r.took}" for r in runs)
    body = (f"{MODEL_QUICK if args.quick else 'The default model'}; {cfg.agents} agents on a complete graph, each "
            f"fine-tuned on the bios of its share of {cfg.queries.people} never-taught people; relations "
            f"{cfg.queries.relations}; 3 rounds after round 0, one pattern each (the strategy); seeds {args.seeds}; "
            f"{took}. Personas: overconfident (social weight 0.2), easy-going (2). Upbringings: "
            + ", ".join(f"{u} (`{' '.join(UPBRINGINGS[u]) or 'the default corpus'}`)"
                        for u in args.upbringings.split(",")) +
            ". Accuracies and unanimity are means over seeds; votes (the agents' plurality) pool every seed's "
            "queries.\n\n" + md_table(table))
    write_section("society", "Societies and strategies (MachineSoM)", body)


if __name__ == "__main__":
    main()
