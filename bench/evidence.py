"""The evidence knob (envs/corpus.py: `evidence_share`, `evidence_weight`) measured: how often
a model raised on evidence texts takes k peers' unanimous wrong claim when each claim's
supporting fact agrees with the world vs when it does not, for people it knows and people it
was never taught, beside the default model (no evidence texts).

    python -m bench.evidence [--weights 0,0.5,1] [--share 0.5] [--per-group 60]

Each model is pretrained on first use (cached like every pretraining setting) with the
default settings otherwise. A model that weighs evidence follows an inconsistent wrong
majority less than a consistent one, for known people only.
"""
from __future__ import annotations

import argparse

import pandas as pd

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from analysis.social import contrast_table, follow_table, supported_wrong_probe
from bench.common import md_table, write_section
from envs.world import World


def probe(settings: dict, per_group: int, ks) -> pd.DataFrame:
    path = pretrained_dir(PretrainConfig.from_dict(dict(settings)), progress=False)
    agent, world = Agent.from_dir(path), World.load(path / "world.json")
    return follow_table(supported_wrong_probe(agent, world, ks=ks, per_group=per_group))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="0,0.5,1", help="evidence_weight values")
    ap.add_argument("--share", type=float, default=0.5, help="evidence_share of the evidence models")
    ap.add_argument("--per-group", type=int, default=60)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another pretraining setting of the evidence models, e.g. peer_reliability=0.5")
    args = ap.parse_args()
    ks = (1, 2, 3, 5)
    models = {"default (no evidence texts)": {}}
    for w in (float(x) for x in args.weights.split(",")):
        extra = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        label = ", ".join([f"evidence_weight={w:g}"] + args.set)
        models[label] = {"evidence_share": args.share, "evidence_weight": w, **extra}
    tables = []
    for name, settings in models.items():
        t = probe({**settings, "preset": args.preset}, args.per_group, ks).assign(model=name)
        print(t.to_string(), flush=True)
        tables.append(t)
    full = pd.concat(tables)
    wide = contrast_table(full, "support", "consistent", "inconsistent")
    n = int(full.n.iloc[0])
    write_section("evidence" + ("" if args.preset == "small" else f"-{args.preset}"),
                  "Evidence weighing: following a wrong majority whose support checks out or not"
                  + ("" if args.preset == "small" else f" ({args.preset} preset)"),
                  md_table(wide) +
                  f"\n\nShare of answers that take k peers' unanimous wrong claim, each claim followed by its "
                  f"speaker's supporting fact (the same person's related fact, as debate shows it) that is the "
                  f"world's truth (consistent) or a wrong value (inconsistent); {n} people per group, one "
                  f"relation each; Wilson 95% intervals; drop = consistent - inconsistent. Models: the default "
                  f"({args.preset}), and the same pretrained with evidence texts in {args.share:g} of the social "
                  f"texts (`--set evidence_share={args.share:g} evidence_weight=W{''.join(' ' + kv for kv in args.set)}`).")


if __name__ == "__main__":
    main()
