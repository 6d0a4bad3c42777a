"""The stated-confidence knobs (envs/corpus.py: `confidence_share`, `confidence_reliability`,
`confidence_weight`) measured: how often a model takes k peers' unanimous wrong claim when every peer says it is
sure vs when every peer says it only thinks so, for people it knows and people it was never
taught, beside the default model (no confidence texts; "sure" and "thinks" are unknown words
to it).

    python -m bench.confidence [--reliabilities 0.5,1] [--weighing 0.5:0,1:3000] [--share 0.5] [--per-group 60]

Each model is pretrained on first use (cached like every pretraining setting) with the
default settings otherwise. At reliability .5 confidence says nothing and the two statings
should be followed alike; at 1 a sure claim is always right in the texts, so a model that
learned the cue follows sure wrong claims more than unsure ones, for strangers too (it needs
no knowledge of the person to read a speaker's confidence).

A second table is debate's case: one peer's right claim among k unsure wrong ones, the right
one stated sure or unsure. Counted by claims (confidence_weight 0), two unsure claims outweigh
one sure one; raised with `confidence_weight` 1 (at reliability 1, `--weighing`), a model that
learned to set the unsure aside takes the lone sure claim whatever k.
"""
from __future__ import annotations

import argparse

import pandas as pd

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from analysis.social import contrast_table, follow_table, lone_sure_probe, stated_wrong_probe
from bench.common import md_table, write_section
from envs.world import World


def probe(settings: dict, per_group: int, ks) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(unanimous wrong claims, sure vs unsure; one right claim among k unsure wrong ones, sure vs unsure)."""
    path = pretrained_dir(PretrainConfig.from_dict(dict(settings)), progress=False)
    agent, world = Agent.from_dir(path), World.load(path / "world.json")
    by = ("group", "k", "stated")
    return (follow_table(stated_wrong_probe(agent, world, ks=ks, per_group=per_group), by=by),
            follow_table(lone_sure_probe(agent, world, ks=(1, 2, 3), per_group=per_group), by=by))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reliabilities", default="0.5,1", help="confidence_reliability values")
    ap.add_argument("--weighing", default="0.5:0,1:3000",
                    help="models at reliability 1 and confidence_weight 1, as confidence_share:steps pairs "
                         "(steps 0: the default number)")
    ap.add_argument("--share", type=float, default=0.5, help="confidence_share of the confidence models")
    ap.add_argument("--per-group", type=int, default=60)
    args = ap.parse_args()
    ks = (1, 2, 3, 5)
    models = {"default (no confidence texts)": {}}
    for r in (float(x) for x in args.reliabilities.split(",")):
        models[f"confidence_reliability={r:g}"] = {"confidence_share": args.share, "confidence_reliability": r}
    for pair in (x for x in args.weighing.split(",") if x):
        share, steps = pair.split(":")
        models[f"confidence_weight=1, share {float(share):g}" + (f", {steps} steps" if int(steps) else "")] = {
            "confidence_share": float(share), "confidence_reliability": 1.0, "confidence_weight": 1.0,
            "steps": int(steps)}
    tables, lone = [], []
    for name, settings in models.items():
        t, t_lone = (x.assign(model=name) for x in probe(settings, args.per_group, ks))
        print(t.to_string(), "\n", t_lone.to_string(), flush=True)
        tables.append(t)
        lone.append(t_lone)
    full = pd.concat(tables)
    wide = contrast_table(full, "stated", "sure", "unsure")
    n = int(full.n.iloc[0])
    write_section("confidence", "Stated confidence: following a wrong majority that is sure or unsure",
                  md_table(wide) +
                  f"\n\nShare of answers that take k peers' unanimous wrong claim, every claim stated sure "
                  f"(\"agent 3 is sure : X .\") or unsure (\"agent 3 thinks : X .\"); {n} people per group, one "
                  f"relation each; Wilson 95% intervals; drop = sure - unsure. Models: the default (small), and the "
                  f"same pretrained with stated confidence in {args.share:g} of the social texts "
                  f"(`--set confidence_share={args.share:g} confidence_reliability=R`), and at reliability 1 "
                  f"with `confidence_weight=1` (where any claim is sure, the texts' answer sets the unsure aside) "
                  f"in the share of social texts and for the steps named."
                  "\n\nOne right claim among k unsure wrong ones (debate's lone knower), the right one stated sure "
                  "or unsure: share of answers that take it (the truth); drop = sure - unsure.\n\n"
                  + md_table(contrast_table(pd.concat(lone), "stated", "sure", "unsure")))


if __name__ == "__main__":
    main()
