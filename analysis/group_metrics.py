"""Group metrics from belief records: what a population of agents did to each other's answers.

Every function takes the records DataFrame (`agents.records.to_frame`, or a run's
`records.parquet`) and returns a small table. Definitions are the project's
(docs/design.md, "Metrics"):

- an *answer unit* is one agent's answer to one query (subject, relation, form) under one
  condition, followed over rounds;
- a *condition* is (run, generation) plus whichever of protocol and n_confederates are
  needed to tell conditions apart: the smallest such set that makes (unit, round) unique
  (`condition_keys`). So a strategy run whose protocol changes by round stays one
  condition, and a frame that stacks an LLM run beside its baselines splits by protocol;
- a visible *majority* is an answer held by more than half of `peer_answers` (what the
  agent was shown in that round); ties and empty lists give no majority.

Rates come with their counts (`*_n` eligible, `*_k` events) and Wilson intervals, so a
table of a few dozen events does not pass for a measurement it is not.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

REQUIRED = ("round", "agent", "subject", "relation", "answer", "truth")
QUERY_KEYS = ("subject", "relation", "form")
BASE_KEYS = ("run", "generation")
CONDITION_OPTIONS = ((), ("protocol",), ("n_confederates",), ("protocol", "n_confederates"))


# ---------------------------------------------------------------- helpers
def wilson_interval(k, n, z: float = 1.96):
    """Wilson score interval for k successes in n trials (arrays or scalars).

    Chosen over the normal interval because conformity counts are often 0 or n of a few
    dozen, where the normal interval collapses to a point or leaves [0, 1]. n = 0 gives NaN.
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        lo, hi = centre - half, centre + half
    # exact ends where rounding would leave 1e-17 above 0 (or below 1)
    lo = np.where(n > 0, np.where(k <= 0, 0.0, np.clip(lo, 0, 1)), np.nan)
    hi = np.where(n > 0, np.where(k >= n, 1.0, np.clip(hi, 0, 1)), np.nan)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def _rate(k, n) -> float:
    return float(k) / n if n else float("nan")


def _with_rate(t: pd.DataFrame, name: str) -> pd.DataFrame:
    """Add `name` (= k/n) and its Wilson bounds from `name_k`, `name_n`."""
    k, n = t[f"{name}_k"].to_numpy(float), t[f"{name}_n"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t[name] = np.where(n > 0, k / np.where(n > 0, n, 1), np.nan)
    t[f"{name}_lo"], t[f"{name}_hi"] = wilson_interval(k, n) if len(t) else ([], [])
    return t


def check_records(df: pd.DataFrame, need: Iterable[str] = REQUIRED) -> None:
    """Fail before any work when the frame is not belief records."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"records: expected a pandas DataFrame of belief records, got {type(df).__name__}; "
                        "build one with agents.records.to_frame or pandas.read_parquet(run_dir/'records.parquet')")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"records: missing column(s) {missing}; belief records (agents.records.to_frame) "
                         f"have {list(REQUIRED)} and more")


def _present(df: pd.DataFrame, cols: Iterable[str]) -> list[str]:
    return [c for c in cols if c in df.columns]


def condition_keys(df: pd.DataFrame) -> list[str]:
    """The columns that tell conditions apart: (run, generation) plus the fewest of
    (protocol, n_confederates) that make each (condition, agent, query, round) one row."""
    check_records(df)
    base = _present(df, BASE_KEYS)
    unit = ["agent"] + _present(df, QUERY_KEYS) + ["round"]
    tried = []
    for extra in CONDITION_OPTIONS:
        keys = base + _present(df, extra)
        if keys in tried:
            continue
        tried.append(keys)
        if not df.duplicated(keys + unit).any():
            return keys
    dup = df[df.duplicated(keys + unit, keep=False)].head(2)
    raise ValueError("records: several rows for one (agent, query, round) even within "
                     f"{keys}; give each condition its own `run` value (e.g. one per sweep point). "
                     f"First duplicates:\n{dup[keys + unit].to_string()}")


def unit_keys(df: pd.DataFrame) -> list[str]:
    """Columns identifying one agent's answer to one query under one condition."""
    return condition_keys(df) + ["agent"] + _present(df, QUERY_KEYS)


def query_keys(df: pd.DataFrame) -> list[str]:
    """Columns identifying one query under one condition (all agents together)."""
    return condition_keys(df) + _present(df, QUERY_KEYS)


def _default_by(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """`cols` present in the frame, after `run` when the frame holds several runs (sweep points
    are never pooled unless asked)."""
    runs = ["run"] if "run" in df.columns and df["run"].nunique() > 1 else []
    return runs + _present(df, cols)


def _groups(df: pd.DataFrame, by) -> list[str]:
    by = list(by) if by is not None else _default_by(df, ("protocol", "generation"))
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"by: column(s) {missing} not in the records; available: {list(df.columns)}")
    return by


def _as_list(x) -> list:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return []
    return list(x)


def visible_majority(peer_answers) -> str | None:
    """The answer held by more than half of what the agent was shown, or None."""
    answers = _as_list(peer_answers)
    if not answers:
        return None
    answer, count = Counter(answers).most_common(1)[0]
    return answer if count * 2 > len(answers) else None


# ---------------------------------------------------------------- accuracy and consensus
def accuracy_by_round(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy (answer == truth) per round, by protocol (and generation), with counts,
    Wilson bounds and mean probability of the truth."""
    check_records(df)
    by = _groups(df, by)
    d = df.assign(_correct=(df["answer"] == df["truth"]).astype(int))
    agg = dict(accuracy_k=("_correct", "sum"), accuracy_n=("_correct", "size"))
    if "p_truth" in d.columns:
        agg["p_truth"] = ("p_truth", "mean")
    t = d.groupby(by + ["round"], dropna=False).agg(**agg).reset_index()
    t = _with_rate(t, "accuracy")
    cols = by + ["round", "accuracy", "accuracy_lo", "accuracy_hi", "accuracy_k", "accuracy_n"]
    return t[cols + (["p_truth"] if "p_truth" in t.columns else [])]


def query_rounds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, query, round): the modal answer, the share of agents
    holding it, the number of distinct answers, and whether the mode is the truth."""
    check_records(df)
    qk = query_keys(df) + ["round"]
    extra = [c for c in ("protocol", "n_confederates") if c in df.columns and c not in qk]
    d = df.assign(_correct=(df["answer"] == df["truth"]).astype(float))
    g = d.groupby(qk, dropna=False, sort=True)
    t = g.agg(n_agents=("answer", "size"), n_distinct=("answer", "nunique"), truth=("truth", "first"),
              accuracy=("_correct", "mean"), **{c: (c, "first") for c in extra})
    counts = d.groupby(qk + ["answer"], dropna=False).size().rename("_n").reset_index()
    # the mode; tied modes: the alphabetically first, so the output does not depend on row order
    counts = counts.sort_values(qk + ["_n", "answer"], ascending=[True] * len(qk) + [False, True])
    mode = counts.drop_duplicates(qk).set_index(qk)
    t["modal_answer"] = mode["answer"]
    t["modal_share"] = mode["_n"] / t["n_agents"]
    t["modal_is_truth"] = t["modal_answer"] == t["truth"]
    cols = ["n_agents", "modal_answer", "modal_share", "n_distinct", "truth", "modal_is_truth", "accuracy"]
    return t[cols + extra].reset_index()


def consensus(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Per round: mean over queries of the share of agents on the modal answer, mean number
    of distinct answers, and the share of queries where all agents agree."""
    qr = query_rounds(df)
    by = _groups(qr, by)
    qr = qr.assign(_unanimous=(qr["n_distinct"] == 1).astype(float))
    t = qr.groupby(by + ["round"], dropna=False).agg(
        modal_share=("modal_share", "mean"), n_distinct=("n_distinct", "mean"),
        unanimous=("_unanimous", "mean"), queries=("modal_share", "size")).reset_index()
    return t


# ---------------------------------------------------------------- conformity
def conformity_events(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (unit, round > first) with a visible majority: the answer before, the
    majority, the answer after, and which event it is.

    `majority_size`: how many of the shown peers held the majority's answer.
    `conformed`: correct before, majority wrong, now holds the majority's answer.
    `corrected`: wrong before, majority right, now holds the truth.
    """
    check_records(df, REQUIRED + ("peer_answers",))
    uk = unit_keys(df)
    d = df.sort_values(uk + ["round"]).reset_index(drop=True)
    g = d.groupby(uk, dropna=False, sort=False)
    d["prev_answer"] = g["answer"].shift(1)
    d["prev_confidence"] = g["confidence"].shift(1) if "confidence" in d.columns else np.nan
    d["majority"] = d["peer_answers"].map(visible_majority)
    d["majority_size"] = [sum(a == m for a in _as_list(p)) for p, m in zip(d["peer_answers"], d["majority"])]
    d = d[d["prev_answer"].notna() & d["majority"].notna()].copy()
    d["prev_correct"] = d["prev_answer"] == d["truth"]
    d["majority_correct"] = d["majority"] == d["truth"]
    d["conformed"] = d["prev_correct"] & ~d["majority_correct"] & (d["answer"] == d["majority"])
    d["corrected"] = ~d["prev_correct"] & d["majority_correct"] & (d["answer"] == d["truth"])
    return d


def conformity(df: pd.DataFrame, by: Sequence[str] | None = None,
               confidence_bins: Sequence[float] | None = None) -> pd.DataFrame:
    """Conformity to a wrong majority, correction by a right one, and BenchForm independence.

    - conformity = conformity_k / conformity_n: among answers correct before a round whose
      visible majority in that round was wrong, the share that switch to that wrong answer.
    - correction = correction_k / correction_n: among answers wrong before a round whose
      visible majority was right, the share that switch to the truth.
    - independence = independence_k / independence_n: BenchForm's independence rate
      (Weng, Chen & Wang, "Do as We Do, Not as You Think: the Conformity of Large Language
      Models", ICLR 2025, arXiv:2501.13381; `calculate_independence_rate` in
      github.com/Zhiyuan-Weng/BenchForm analysis.py): the share of questions answered
      correctly under the raw protocol *and* under every pressure protocol, over all
      questions. Here a question is an answer unit that faced a wrong visible majority in
      at least one round (independence_n), "raw" is its first round (no peers shown) and
      the pressure protocols are the rounds with a wrong majority; independence_k counts
      units correct in the first round and in every such round.

    `by` defaults to protocol and n_confederates (as shown in the pressure round), after run
    when the records hold several runs (sweep points are kept apart).
    `confidence_bins` (e.g. [0, .5, .8, 1]) adds a `confidence_before` interval column to
    the grouping: conformity against the agent's own confidence in the round before
    (independence is a property of a unit, not of a round: it stays per `by` group and is
    repeated on each bin's row).
    """
    ev = conformity_events(df)
    by = list(by) if by is not None else _default_by(df, ("protocol", "n_confederates"))
    missing = [c for c in by if c not in ev.columns]
    if missing:
        raise ValueError(f"by: column(s) {missing} not in the records; available: {list(df.columns)}")
    drop_all = not by
    if drop_all:  # one overall row
        ev["_all"], by = "all", ["_all"]
    if confidence_bins is not None:
        if "confidence" not in df.columns:
            raise ValueError("confidence_bins: the records have no `confidence` column")
        ev["confidence_before"] = pd.cut(ev["prev_confidence"], list(confidence_bins), include_lowest=True)
        by = by + ["confidence_before"]

    wrong_maj = ev[ev["prev_correct"] & ~ev["majority_correct"]]
    right_maj = ev[~ev["prev_correct"] & ev["majority_correct"]]
    conf = wrong_maj.groupby(by, dropna=False, observed=True)["conformed"].agg(
        conformity_k="sum", conformity_n="size")
    corr = right_maj.groupby(by, dropna=False, observed=True)["corrected"].agg(
        correction_k="sum", correction_n="size")
    units = _independence_units(df, ev)
    if drop_all:
        units["_all"] = "all"
    indep = units.groupby(by if confidence_bins is None else by[:-1],
                          dropna=False, observed=True)["independent"].agg(
        independence_k="sum", independence_n="size")
    t = conf.join(corr, how="outer")
    t = t.join(indep, how="left") if confidence_bins is not None else t.join(indep, how="outer")
    t = t.reset_index()
    for name in ("conformity", "correction", "independence"):
        for s in ("_k", "_n"):
            t[name + s] = t[name + s].fillna(0).astype(int)
        t = _with_rate(t, name)
    head = ["conformity", "conformity_lo", "conformity_hi", "conformity_k", "conformity_n",
            "correction", "correction_lo", "correction_hi", "correction_k", "correction_n",
            "independence", "independence_lo", "independence_hi", "independence_k", "independence_n"]
    return t[head] if drop_all else t[by + head]


def _independence_units(df: pd.DataFrame, ev: pd.DataFrame) -> pd.DataFrame:
    """Per unit that faced a wrong majority: correct at its first round and at every
    round where its visible majority was wrong. Group columns come from its first such round."""
    uk = unit_keys(df)
    first = df.sort_values("round").groupby(uk, dropna=False, sort=False).head(1)
    raw_correct = first.set_index(uk)["answer"].eq(first.set_index(uk)["truth"]).rename("raw_correct")
    pressure = ev[~ev["majority_correct"]].copy()
    if pressure.empty:
        return pressure.assign(independent=pd.Series(dtype=bool))
    pressure["_ok"] = pressure["answer"] == pressure["truth"]
    g = pressure.sort_values("round").groupby(uk, dropna=False, sort=False)
    units = g.head(1).set_index(uk)
    units["all_ok"] = g["_ok"].all()
    units = units.join(raw_correct, how="left")
    units["independent"] = units["all_ok"] & units["raw_correct"].fillna(False).astype(bool)
    return units.reset_index()


# ---------------------------------------------------------------- paths and resolution
PATHS = ("corrects", "abandons", "wavers", "stays_right", "stays_wrong")


def unit_paths(df: pd.DataFrame) -> pd.DataFrame:
    """One row per answer unit: its first and last answer's correctness, how many times
    its answer changed, and its path (one of PATHS, mutually exclusive)."""
    check_records(df)
    uk = unit_keys(df)
    d = df.sort_values(uk + ["round"])
    d = d.assign(_correct=d["answer"] == d["truth"])
    g = d.groupby(uk, dropna=False, sort=False)
    changes = g["answer"].agg(lambda s: int((s.to_numpy()[1:] != s.to_numpy()[:-1]).sum()))
    first, last = g["_correct"].first(), g["_correct"].last()
    t = pd.DataFrame({"first_correct": first, "last_correct": last, "changes": changes,
                      "rounds": g.size()})
    extra = [c for c in ("protocol", "n_confederates") if c in d.columns and c not in uk]
    for c in extra:
        t[c] = g[c].last()
    t["path"] = np.select(
        [t["changes"] > 1, ~t["first_correct"] & t["last_correct"], t["first_correct"] & ~t["last_correct"],
         t["first_correct"]],
        ["wavers", "corrects", "abandons", "stays_right"], default="stays_wrong")
    return t.reset_index()


def answer_paths(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """MachineSoM-style answer paths per agent and query over rounds, as shares of units:
    corrects (wrong -> right), abandons (right -> wrong), wavers (answer changed more than
    once, whatever the ends), stays right, stays wrong (possibly moving between wrong
    answers once). The five shares sum to 1; `units` is the denominator."""
    up = unit_paths(df)
    by = _groups(up, by)
    overall = not by
    if overall:
        up["_all"], by = "all", ["_all"]
    counts = up.groupby(by + ["path"], dropna=False).size().unstack("path")
    counts = counts.reindex(columns=list(PATHS)).fillna(0).astype(int)
    t = counts.div(counts.sum(axis=1), axis=0)
    t["units"] = counts.sum(axis=1)
    t = t.reset_index()
    t.columns.name = None
    return t.drop(columns="_all") if overall else t


OUTCOMES = ("truth", "falsehood", "unresolved")


def query_outcomes(df: pd.DataFrame, quorum: float = 1.0) -> pd.DataFrame:
    """Per (condition, query): disagreement at the first round, and how the last round ends:
    consensus (share on the modal answer >= quorum) on the truth, on a falsehood, or not."""
    if not 0 < quorum <= 1:
        raise ValueError(f"quorum: {quorum} must be in (0, 1] (1.0 = all agents agree)")
    qr = query_rounds(df)
    qk = query_keys(df)
    g = qr.sort_values("round").groupby(qk, dropna=False, sort=False)
    first, last = g.head(1).set_index(qk), g.tail(1).set_index(qk)
    t = pd.DataFrame({"disagreed": first["n_distinct"] > 1, "last_round": last["round"]})
    for c in ("protocol", "n_confederates"):
        if c in last.columns and c not in qk:
            t[c] = last[c]
    agreed = last["modal_share"] >= quorum - 1e-12
    t["outcome"] = np.where(agreed & last["modal_is_truth"], "truth",
                            np.where(agreed, "falsehood", "unresolved"))
    unanimous = qr[qr["modal_share"] >= quorum - 1e-12]
    t["time_to_consensus"] = unanimous.groupby(qk, dropna=False)["round"].min().reindex(t.index)
    return t.reset_index()


def conflict_resolution(df: pd.DataFrame, by: Sequence[str] | None = None,
                        quorum: float = 1.0) -> pd.DataFrame:
    """Of queries where agents disagreed at round 0, the share ending (last round) in
    consensus on the truth, on a falsehood, or unresolved; `conflicts` is the denominator."""
    qo = query_outcomes(df, quorum)
    by = _groups(qo, by)
    overall = not by
    if overall:
        qo["_all"], by = "all", ["_all"]
    c = qo[qo["disagreed"]]
    counts = c.groupby(by + ["outcome"], dropna=False).size().unstack("outcome")
    # groups with no conflict at all still get a row (NaN shares, conflicts 0)
    counts = counts.reindex(index=qo.groupby(by, dropna=False).size().index, columns=list(OUTCOMES))
    counts = counts.fillna(0).astype(int)
    n = counts.sum(axis=1)
    t = counts.div(n.where(n > 0), axis=0)
    t["conflicts"] = n
    t = t.reset_index()
    t.columns.name = None
    return t.drop(columns="_all") if overall else t


# ---------------------------------------------------------------- one row per run
def summary(df: pd.DataFrame, by: Sequence[str] | None = None, quorum: float = 1.0) -> pd.DataFrame:
    """One row per (run, protocol): first- and last-round accuracy, last-round consensus,
    time to consensus (first round where all agents agree, mean over the queries that got
    there; `reached_consensus` is the share that did), conformity / correction /
    independence with counts, answer paths, and conflict outcomes."""
    check_records(df)
    by = list(by) if by is not None else _present(df, ("run", "protocol"))
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"by: column(s) {missing} not in the records; available: {list(df.columns)}")
    rows = []
    parts = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        acc = accuracy_by_round(part, by=[])
        first_r, last_r = acc["round"].min(), acc["round"].max()
        row.update(rounds=int(last_r - first_r), agents=part["agent"].nunique(),
                   queries=len(part.drop_duplicates(_present(part, QUERY_KEYS))),
                   accuracy_first=acc["accuracy"].iloc[0], accuracy_final=acc["accuracy"].iloc[-1])
        cons = consensus(part, by=[])
        row.update(modal_share_final=cons["modal_share"].iloc[-1], n_distinct_final=cons["n_distinct"].iloc[-1])
        qo = query_outcomes(part, quorum)
        ttc = qo["time_to_consensus"] - first_r
        row.update(time_to_consensus=float(ttc.mean()) if ttc.notna().any() else float("nan"),
                   reached_consensus=float(ttc.notna().mean()))
        if "peer_answers" in part.columns:
            conf = conformity(part, by=[])
            for name in ("conformity", "correction", "independence"):
                k = int(conf[f"{name}_k"].sum()) if len(conf) else 0
                n = int(conf[f"{name}_n"].sum()) if len(conf) else 0
                row.update({name: _rate(k, n), f"{name}_n": n})
        paths = answer_paths(part, by=[])
        row.update({p: float(paths[p].iloc[0]) for p in ("corrects", "abandons", "wavers")})
        cr = conflict_resolution(part, by=[], quorum=quorum)
        row.update(conflicts=int(cr["conflicts"].iloc[0]),
                   **{f"resolved_{o}" if o != "unresolved" else o: float(cr[o].iloc[0]) for o in OUTCOMES})
        rows.append(row)
    return pd.DataFrame(rows)
