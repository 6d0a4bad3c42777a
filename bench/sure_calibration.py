"""Could a speaker's "sure" single out debate's knowers? Each agent of a finished
`bench.debate_partial` run (its saved agents, before debate) is asked every queried person
alone, in each of the relation's question forms, and "sure" is read three ways: p >= sure_at in
the question form (debate's rule); the same, with the same answer in every form; p >= sure_at
in every form. Per rule, the share of the guessers' answers that are sure and wrong and of the
knowers' that are sure and right.

    python -m bench.sure_calibration [--upbringings confidence-weighing] [--seeds 0,1,2] [--sure-at 0.9]

Run `bench.debate_partial --upbringings ...` first: it writes the runs this reads.
"""
from __future__ import annotations

import argparse

import pandas as pd

from agents.delta import load_snapshot
from agents.placement import Ask
from agents.population import PopulationPlacement
from agents.pretrain import PretrainConfig, pretrained_dir
from bench.common import ROOT, UPBRINGINGS, md_table, write_section
from bench.debate_partial import CONFIG, knower_of
from evolution.run_config import load


def answers_by_form(run_dir, cfg, point, world) -> pd.DataFrame:
    """Every saved agent's round-0 answer to every queried person, in every question form."""
    pop = PopulationPlacement.from_dir(pretrained_dir(PretrainConfig.from_dict(cfg.pretrain), progress=False), "cpu")
    saved = [d for d in run_dir.glob("agents/*/*") if d.is_dir()]
    if not saved:
        raise SystemExit(f"{run_dir}: no saved agents; run bench.debate_partial for this upbringing first")
    names = [pop.restore(load_snapshot(d)).name for d in sorted(saved)]
    recs = pd.read_parquet(run_dir / "records.parquet")
    qs = recs[recs["round"] == 0].drop_duplicates(["subject", "relation"])
    knower, rows = knower_of(point, world), []
    for s, rel in zip(qs["subject"], qs["relation"]):
        for form in range(len(world.relations[rel].questions)):
            q = world.query(s, rel, f"question:{form}")
            for name, (b,) in zip(names, pop.beliefs_many([Ask(n, [q]) for n in names])):
                rows.append({"agent": name, "subject": s, "relation": rel, "form": form,
                             "knower": knower.get(s) == name, "answer": b.answer, "p": b.confidence,
                             "right": b.answer == b.truth})
    return pd.DataFrame(rows)


def sure_table(df: pd.DataFrame, sure_at: float) -> pd.DataFrame:
    per = df.sort_values("form").groupby(["agent", "subject", "relation", "knower"]).agg(
        p0=("p", "first"), right0=("right", "first"), same=("answer", lambda a: a.nunique() == 1),
        pmin=("p", "min")).reset_index()
    rules = {f"p >= {sure_at:g} in the question form (debate's rule)": per["p0"] >= sure_at,
             "... and the same answer in every form": (per["p0"] >= sure_at) & per["same"],
             f"p >= {sure_at:g} in every form": (per["pmin"] >= sure_at) & per["same"]}
    guess, know = ~per["knower"], per["knower"]
    return pd.DataFrame([{"sure when": rule, "guessers: sure and wrong": (sure & ~per["right0"])[guess].mean(),
                          "knowers: sure and right": (sure & per["right0"])[know].mean()}
                         for rule, sure in rules.items()]).set_index("sure when")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upbringings", default="confidence-weighing")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sure-at", type=float, default=0.9)
    args = ap.parse_args()
    tables = {}
    for up in args.upbringings.split(","):
        frames = []
        for seed in args.seeds.split(","):
            _, cfg, points, world = load(CONFIG, UPBRINGINGS[up] + [f"seed={seed}"])
            frames.append(answers_by_form(ROOT / "runs" / "debate" / f"{up}-seed{seed}", cfg, points[0][1], world)
                          .assign(seed=seed))
        tables[up] = sure_table(pd.concat(frames, ignore_index=True), args.sure_at)
    df = pd.concat(tables, names=["upbringing"])
    print(df.to_string(float_format="{:.3f}".format))
    write_section("sure-calibration", "Could \"sure\" single out debate's knowers?",
                  md_table(df) + f"\n\nThe saved agents of `bench.debate_partial` (seeds {args.seeds}), asked each "
                  "queried person alone in each question form. Shares of all the guessers' (or all the knowers') "
                  "answers in the question form.")


if __name__ == "__main__":
    main()
