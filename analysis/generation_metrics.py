"""Metrics of a generation run (evolution/generations.py), from its records and facts table.

The run dir's `facts/<point>.csv` says, per generation, which facts were asked and what each
is: `changed` (the world changed it in this or an earlier generation), `misinformation` (a
false fact some agent was edited to) or `untouched` (the probe nobody changes). Joined to the
records (`annotate`), every metric is a share over rows:

- accuracy: answer == the current epoch's truth;
- stale: a changed fact answered with its value before its latest change;
- holds_false: a misinformation fact answered with the false object (`_others`: agents that
  were not edited to it: the spread);
- locality: an untouched fact answered as the same agent answered it in generation 0 (before
  anything happened); forgetting: of the untouched facts an agent knew in generation 0, the
  share it no longer answers right;
- consensus: per query, the share of agents on its modal answer (mean over queries).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.group_metrics import conformity, query_rounds

KEYS = ["run", "generation", "round"]    # run = config name / sweep point (one per trial)


def load_run(run_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records, facts) of a generation run dir."""
    run = Path(run_dir)
    if not (run / "records.parquet").exists():
        raise FileNotFoundError(f"{str(run)!r} has no records.parquet; give a run dir written by "
                                "`python -m evolution.run CONFIG --out DIR`")
    files = sorted((run / "facts").glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"{str(run)!r} has no facts/*.csv: it is not a generation run (a config with "
                                "`generations:`)")
    facts = pd.concat([pd.read_csv(f, keep_default_na=False, dtype={"trial": str}) for f in files],
                      ignore_index=True)
    records = pd.read_parquet(run / "records.parquet")
    records["trial"] = records["trial"].fillna("").astype(str)
    return records, facts


def annotate(records: pd.DataFrame, facts: pd.DataFrame) -> pd.DataFrame:
    """Records with their fact's kind, previous value and false object, and the flags the
    metrics average: correct, stale, holds_false, misinformed (the agent was told it)."""
    cols = ["trial", "generation", "subject", "relation", "kind", "previous", "false_object", "misinformed_agent"]
    d = records.merge(facts[cols], on=["trial", "generation", "subject", "relation"], how="left", validate="m:1")
    if d["kind"].isna().any():
        miss = d[d["kind"].isna()].iloc[0]
        raise ValueError(f"records: ({miss['subject']!r}, {miss['relation']!r}) in generation {miss['generation']} "
                         "is not in the run's facts table; the run dir is damaged or mixed")
    d["correct"] = d["answer"] == d["truth"]
    d["stale"] = (d["kind"] == "changed") & (d["previous"] != "") & (d["answer"] == d["previous"])
    d["holds_false"] = (d["kind"] == "misinformation") & (d["answer"] == d["false_object"])
    d["misinformed"] = d["agent"] == d["misinformed_agent"]
    base = d[(d["generation"] == 0) & (d["round"] == 0) & (d["kind"] == "untouched")]
    base = base[["trial", "agent", "subject", "relation", "answer", "correct"]].rename(
        columns={"answer": "answer_g0", "correct": "correct_g0"})
    d = d.merge(base, on=["trial", "agent", "subject", "relation"], how="left")
    return d


def _share(d: pd.DataFrame, mask, col: str) -> pd.Series:
    sub = d[mask]
    return sub.groupby(KEYS)[col].mean() if len(sub) else pd.Series(dtype=float)


def by_round(d: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, generation, round) of an `annotate`d frame."""
    ch, un, mi = d["kind"] == "changed", d["kind"] == "untouched", d["kind"] == "misinformation"
    t = d.groupby(KEYS).size().to_frame("records")
    t["accuracy"] = d.groupby(KEYS)["correct"].mean()
    for name, mask, col in (("accuracy_changed", ch, "correct"), ("stale_changed", ch, "stale"),
                            ("accuracy_untouched", un, "correct"), ("holds_false", mi, "holds_false"),
                            ("holds_false_others", mi & ~d["misinformed"], "holds_false"),
                            ("holds_false_misinformed", mi & d["misinformed"], "holds_false")):
        t[name] = _share(d, mask, col)
    u = d[un].assign(_same=lambda x: x["answer"] == x["answer_g0"],
                     _lost=lambda x: x["correct_g0"].astype(bool) & ~x["correct"])
    t["locality"] = u.groupby(KEYS)["_same"].mean()
    known = u[u["correct_g0"].astype(bool)]
    t["forgetting"] = known.groupby(KEYS)["_lost"].mean()
    qr = query_rounds(d).assign(_u=lambda x: (x["n_distinct"] == 1).astype(float))
    t["consensus"] = qr.groupby(KEYS)["modal_share"].mean()
    t["unanimous"] = qr.groupby(KEYS)["_u"].mean()
    ev = conformity(d, by=KEYS) if (d["round"] > 0).any() else pd.DataFrame(columns=KEYS)
    if len(ev):
        ev = ev.set_index(KEYS)
        for c in ("conformity", "conformity_k", "conformity_n"):
            t[c] = ev[c]
    t = t.reset_index()
    t.insert(1, "trial", t["run"].map(dict(zip(d["run"], d["trial"]))))
    return t


def conformity_by_majority(d: pd.DataFrame) -> pd.DataFrame:
    """Conformity to a wrong visible majority against how many peers held it."""
    return conformity(d, by=["run", "majority_size"])


def false_spread(d: pd.DataFrame, rounds: int, first: int) -> pd.DataFrame:
    """Share of the agents not edited to a false fact that hold it, by talk step since the
    misinformation (made before generation `first`'s talk): `step` = (generation - first) *
    rounds + round; `alone` marks round 0 (the weights alone, after the last consolidation)."""
    mi = d[(d["kind"] == "misinformation") & ~d["misinformed"] & (d["generation"] >= first)]
    t = mi.groupby(["run", "generation", "round"])["holds_false"].agg(["mean", "size"]).reset_index()
    t["step"] = (t["generation"] - first) * rounds + t["round"]
    t["alone"] = t["round"] == 0
    return t.rename(columns={"mean": "holds_false", "size": "n"})
