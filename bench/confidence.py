"""The stated-confidence knob (envs/corpus.py: `confidence_share`, `confidence_reliability`)
measured: how often a model takes k peers' unanimous wrong claim when every peer says it is
sure vs when every peer says it only thinks so, for people it knows and people it was never
taught, beside the default model (no confidence texts; "sure" and "thinks" are unknown words
to it).

    python -m bench.confidence [--reliabilities 0.5,1] [--share 0.5] [--per-group 60]

Each model is pretrained on first use (cached like every pretraining setting) with the
default settings otherwise. At reliability .5 confidence says nothing and the two statings
should be followed alike; at 1 a sure claim is always right in the texts, so a model that
learned the cue follows sure wrong claims more than unsure ones, for strangers too (it needs
no knowledge of the person to read a speaker's confidence).
"""
from __future__ import annotations

import argparse

import pandas as pd

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from analysis.social import contrast_table, follow_table, stated_wrong_probe
from bench.common import md_table, write_section
from envs.world import World


def probe(settings: dict, per_group: int, ks) -> pd.DataFrame:
    path = pretrained_dir(PretrainConfig.from_dict(dict(settings)), progress=False)
    agent, world = Agent.from_dir(path), World.load(path / "world.json")
    return follow_table(stated_wrong_probe(agent, world, ks=ks, per_group=per_group), by=("group", "k", "stated"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reliabilities", default="0.5,1", help="confidence_reliability values")
    ap.add_argument("--share", type=float, default=0.5, help="confidence_share of the confidence models")
    ap.add_argument("--per-group", type=int, default=60)
    args = ap.parse_args()
    ks = (1, 2, 3, 5)
    models = {"default (no confidence texts)": {}}
    for r in (float(x) for x in args.reliabilities.split(",")):
        models[f"confidence_reliability={r:g}"] = {"confidence_share": args.share, "confidence_reliability": r}
    tables = []
    for name, settings in models.items():
        t = probe(settings, args.per_group, ks).assign(model=name)
        print(t.to_string(), flush=True)
        tables.append(t)
    full = pd.concat(tables)
    wide = contrast_table(full, "stated", "sure", "unsure")
    n = int(full.n.iloc[0])
    write_section("confidence", "Stated confidence: following a wrong majority that is sure or unsure",
                  md_table(wide) +
                  f"\n\nShare of answers that take k peers' unanimous wrong claim, every claim stated sure "
                  f"(\"agent 3 is sure : X .\") or unsure (\"agent 3 thinks : X .\"); {n} people per group, one "
                  f"relation each; Wilson 95% intervals; drop = sure - unsure. Models: the default (small), and the "
                  f"same pretrained with stated confidence in {args.share:g} of the social texts "
                  f"(`--set confidence_share={args.share:g} confidence_reliability=R`).")


if __name__ == "__main__":
    main()
