"""Asch sweep: conformity to a wrong majority against the number of confederates (0..6),
with Wilson 95% intervals, and against the agent's own confidence before the pressure.

Runs configs/asch.yaml (the default model; three agents: neutral, overconfident, easy-going)
and measures with analysis.group_metrics.conformity: among answers correct when the agent
was alone (round 0), the share that switch to the confederates' unanimous wrong answer
(round 1). With 0 confederates no majority is shown, so conformity is undefined; the row
reports the switch rate instead (0 by construction: round 1 then asks the same question).

    python -m bench.asch_sweep [--quick] [--out runs/asch] [--upbringings default,evidence] [--seeds ...]
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
    return md_table(df, tuple(".0f" if str(c).endswith(("_k", "_n")) or c == "n_confederates" else ".3f"
                              for c in cols))


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


def main() -> None:
    args, runs = run_config_experiment(
        __doc__.splitlines()[0], CONFIG, "asch", QUICK,
        "the tests' small model (80 people, 400 steps), 6 people x 2 relations: proves the script runs")
    body = "\n\n".join(run_body(run, args.quick) for run in runs)
    write_section("asch-sweep", "Asch sweep: conformity vs confederates" + (" (--quick)" if args.quick else ""), body)


if __name__ == "__main__":
    main()
