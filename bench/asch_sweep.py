"""Asch sweep: conformity to a wrong majority against the number of confederates (0..6),
with Wilson 95% intervals, and against the agent's own confidence before the pressure.

Runs configs/asch.yaml (the default model; three agents: neutral, overconfident, easy-going)
and measures with analysis.group_metrics.conformity: among answers correct when the agent
was alone (round 0), the share that switch to the confederates' unanimous wrong answer
(round 1). With 0 confederates no majority is shown, so conformity is undefined; the row
reports the switch rate instead (0 by construction: round 1 then asks the same question).

    python -m bench.asch_sweep [--quick] [--out runs/asch] [--upbringings default,evidence] [--seeds ...]
                               [--variants wrong_guidance,correct_guidance]

With several seeds or variants, a table pools the neutral agent's rates over seeds: conformity
under wrong guidance beside correction under correct guidance (BenchForm), per upbringing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.group_metrics import conformity, wilson_interval  # noqa: E402
from bench.common import MODEL_QUICK, ROOT, UPBRINGINGS, md_table, run_config_experiment, write_section  # noqa: E402

CONFIG = ROOT / "configs" / "asch.yaml"
QUICK = ["pretrain.people=80", "pretrain.seed=0", "pretrain.steps=400", "queries.people=6",
         "queries.relations=[company, university]"]
BINS = [0.0, 0.5, 0.8, 0.95, 1.0]
COLS = ["conformity", "conformity_lo", "conformity_hi", "conformity_k", "conformity_n"]


def table(df: pd.DataFrame) -> str:
    """Markdown with counts printed as integers (tabulate sees one float array otherwise)."""
    cols = [df.index.name or ""] + list(df.columns)
    counts = ("n_confederates", "events", "n", "seeds")
    return md_table(df, tuple(".0f" if str(c).endswith(("_k", "_n")) or c in counts else ".3f" for c in cols))


def by_confederates(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Conformity per number of confederates (rows k >= 1), plus k = 0's switch rate."""
    t = conformity(df, by=by + ["n_confederates"])[by + ["n_confederates"] + COLS]
    zero = df[df["trial"] == "confederates=0"]
    if not zero.empty:
        key = ["agent", "subject", "relation"]
        r0 = zero[zero["round"] == 0].set_index(key)
        r1 = zero[zero["round"] == 1].set_index(key)
        ok = r0["answer"] == r0["truth"]
        moved = (r1.loc[ok[ok].index, "answer"] != r0.loc[ok[ok].index, "answer"])
        rows = []
        for g, part in (moved.groupby(r0.loc[ok[ok].index, by].apply(tuple, axis=1)) if by else [((), moved)]):
            lo, hi = wilson_interval(int(part.sum()), len(part))
            rows.append({**dict(zip(by, g)), "n_confederates": 0, "conformity": part.mean(), "conformity_lo": lo,
                         "conformity_hi": hi, "conformity_k": int(part.sum()), "conformity_n": len(part)})
        t = pd.concat([pd.DataFrame(rows), t], ignore_index=True)
    t = t.astype({"conformity_k": int, "conformity_n": int})
    return t.sort_values(by + ["n_confederates"]).reset_index(drop=True)


def flatness(t: pd.DataFrame) -> str:
    pressured = t[(t["n_confederates"] > 0) & (t["conformity_n"] > 0)]["conformity"]
    if pressured.empty:
        return "no answer faced a wrong majority"
    if (pressured == 0).all():
        return "FLAT ZERO: no answer followed the confederates at any k (report to the lead)"
    if (pressured == 1).all():
        return "FLAT ONE: every answer followed the confederates at every k (report to the lead)"
    return f"not flat: conformity ranges {pressured.min():.3f}..{pressured.max():.3f} over k = 1..6"


def run_body(run, quick: bool) -> str:
    """Print one run's tables (one upbringing, one seed) and return them as markdown."""
    cfg, world, df, took = run.cfg, run.world, run.records, run.took
    taught = {p.name: p.taught for p in world.people}
    df["knows the person"] = df["subject"].map(taught).map({True: "taught", False: "never taught"})

    neutral = df[df["persona"] == "neutral"]
    t_k = by_confederates(neutral, [])
    t_persona = by_confederates(df, ["persona"]).pivot(index="n_confederates", columns="persona",
                                                       values="conformity")
    t_known = by_confederates(neutral, ["knows the person"]).pivot(index="n_confederates",
                                                                  columns="knows the person", values="conformity")
    # k = 1..6 pooled (k = 0 shows no majority); by persona (one group) keeps the bin column
    t_conf = conformity(neutral, by=["persona"], confidence_bins=BINS).drop(columns="persona")
    t_conf = t_conf[["confidence_before"] + COLS] if "confidence_before" in t_conf else t_conf[COLS]
    verdict = flatness(t_k)

    pd.set_option("display.width", 200)
    print("\nConformity vs confederates (neutral agent):\n" + t_k.to_string(index=False, float_format="{:.3f}".format))
    print("\nBy persona:\n" + t_persona.to_string(float_format="{:.3f}".format))
    print("\nBy whether the model was taught the person (neutral):\n" + t_known.to_string(float_format="{:.3f}".format))
    print("\nVs the agent's confidence when alone (neutral, k = 1..6 pooled):\n"
          + t_conf.to_string(index=False, float_format="{:.3f}".format))
    print(f"\n{verdict}")
    up = UPBRINGINGS[run.upbringing]

    queries = df.drop_duplicates(["subject", "relation"]).shape[0]
    return (f"### Upbringing: {run.upbringing} (`{' '.join(up) or 'the default corpus'}`)\n\n"
            f"{MODEL_QUICK if quick else 'The default model'}, "
            f"{queries} queries ({df['subject'].nunique()} people x {df['relation'].nunique()} relations, known and "
            f"never-taught), variant {cfg.params.get('variant', 'wrong_guidance')}, seed {cfg.seed}; {took}. "
            "Conformity: among answers correct when alone (round 0), the share that take the confederates' "
            "unanimous wrong answer (round 1); Wilson 95% intervals; k = 0 shows no majority, so its row is "
            f"the share of correct answers that changed at all. **{verdict}.**\n\n"
            "Neutral agent (the plain model):\n\n" + table(t_k.set_index("n_confederates")) +
            "\n\nBy persona (log-linear social weight: overconfident 0.2, neutral 1, easy-going 2):\n\n"
            + table(t_persona) + "\n\nBy whether the model was taught the person (neutral; for never-taught "
            "people only the answers right by chance when alone count, so few events; nan: none):\n\n"
            + table(t_known) + "\n\nAgainst the agent's own confidence when alone (neutral, k = 1..6 pooled):\n\n"
            + table(t_conf.set_index(t_conf.columns[0])))


def guidance_table(runs) -> pd.DataFrame:
    """The neutral agent per upbringing, guidance and k = 1..6, pooled over seeds: under a wrong
    majority the share of right answers that take it (conformity), under a right one the share
    of wrong answers that take it (correction, BenchForm's correct guidance), with Wilson
    intervals on the pooled counts and the range of the seeds' own rates."""
    rows = []
    for r in runs:
        variant = r.variant or r.cfg.params.get("variant", "wrong_guidance")
        metric = "correction" if variant in ("correct_guidance", "doubt") else "conformity"
        t = conformity(r.records[r.records["persona"] == "neutral"], by=["n_confederates"])
        for _, x in t[t["n_confederates"] > 0].iterrows():
            rows.append({"upbringing": r.upbringing, "guidance": f"{variant} ({metric})",
                         "k": int(x["n_confederates"]), "events": int(x[f"{metric}_k"]), "n": int(x[f"{metric}_n"])})
    d = pd.DataFrame(rows)
    d["seed_rate"] = d["events"] / d["n"].where(d["n"] > 0)
    g = d.groupby(["upbringing", "guidance", "k"], sort=False)
    t = g.agg(events=("events", "sum"), n=("n", "sum"), seeds=("n", "size"),
              seed_min=("seed_rate", "min"), seed_max=("seed_rate", "max")).reset_index()
    t["rate"] = t["events"] / t["n"].where(t["n"] > 0)
    t[["lo", "hi"]] = [wilson_interval(int(e), int(n)) for e, n in zip(t["events"], t["n"])]
    return t[["upbringing", "guidance", "k", "rate", "lo", "hi", "seed_min", "seed_max", "events", "n", "seeds"]]


def main() -> None:
    args, runs = run_config_experiment(
        __doc__.splitlines()[0], CONFIG, "asch", QUICK,
        "the tests' small model (80 people, 400 steps), 6 people x 2 relations: proves the script runs",
        variants="")     # the config's own variant unless --variants names them
    # each upbringing's first seed and variant in full; every run in the guidance table
    first = {}
    for run in runs:
        first.setdefault(run.upbringing, run)
    body = "\n\n".join(run_body(run, args.quick) for run in first.values())
    if len(runs) > len(first):
        g = guidance_table(runs)
        print("\nGuidance, pooled over seeds (neutral):\n" + g.to_string(index=False, float_format="{:.3f}".format))
        seeds = sorted({r.seed for r in runs})
        body = ("### Wrong vs correct guidance, pooled over seeds\n\n"
                f"The neutral agent; seeds {', '.join(map(str, seeds))} (each seed draws its own queries and wrong "
                "answers on the same model). conformity: among answers right alone, the share that take the "
                "unanimous wrong answer; correction: among answers wrong alone, the share that take the unanimous "
                "truth. rate, lo, hi: pooled counts (events of n) with Wilson 95% intervals; seed_min, seed_max: "
                "the seeds' own rates.\n\n" + table(g.set_index(["upbringing", "guidance", "k"])) + "\n\n" + body)
    write_section("asch-sweep", "Asch sweep: conformity vs confederates", body)


if __name__ == "__main__":
    main()
