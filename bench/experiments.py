"""The four experiments of docs/results.md: run (or resume) each config, then its headline table.

    python -m bench.experiments [--only misinformation,outdated,individual,asch] [--runs runs]

(a) misinformation (configs/misinformation.yaml): does a false fact spread into the others'
    weights, by topology and consolidation threshold;
(b) outdated (configs/outdated.yaml): half the agents learn the news: does the group follow;
(c) individual (configs/individual_vs_group.yaml): news to every agent vs to one + talk;
(d) asch (configs/asch.yaml, three seeds): conformity against the number of confederates.
Every number is a mean over the seeds with a 95% t-interval over seeds (n = 3: wide by
design; the per-seed values are in the run dirs' metrics.csv).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from analysis.generation_metrics import annotate, by_round, load_run
from analysis.group_metrics import conformity
from evolution.report import _configs, _graph_name
from bench.common import ROOT, write_section
from evolution.generations import updates_table
from evolution.run import run_experiment

DOC = ROOT / "docs" / "results.md"
HEADER = ("# Results\n\nWhat the simulator shows on the default model (300 people, 2 layers). Each section is "
          "written by `python -m bench.experiments --only NAME`, which runs (or resumes) the config it names; "
          "rerun it to refresh the section.\n")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(x) -> str:
    """'mean [lo, hi]': a 95% t-interval over seeds."""
    x = pd.Series(x, dtype=float).dropna()
    if len(x) == 0:
        return "n/a"
    m = x.mean()
    if len(x) == 1:
        return f"{m:.2f}"
    h = T975.get(len(x) - 1, 1.96) * x.std(ddof=1) / math.sqrt(len(x))
    return f"{m:.2f} [{max(0.0, m - h):.2f}, {min(1.0, m + h) if m <= 1 else m + h:.2f}]"


def _points(run: Path) -> pd.DataFrame:
    """run name -> its point's config, index and seed."""
    return pd.DataFrame([dict(run=name, point=i, cfg=c, seed=c.seed) for i, (name, c) in enumerate(_configs(run).items())])


def misinformation(runs: Path) -> str:
    out = runs / "misinformation"
    run_experiment(ROOT / "configs" / "misinformation.yaml", out)
    d = annotate(*load_run(out))
    m = by_round(d)
    pts = _points(out)
    rows = []
    for p in pts.itertuples():
        mm = m[m["run"] == p.run]
        G = mm["generation"].max()
        alone = mm[mm["round"] == 0].set_index("generation")
        talk1 = mm[(mm["generation"] == 1)]
        rows.append(dict(graph=_graph_name(p.cfg.graph), min_confidence=p.cfg.consolidation.min_confidence,
                         seed=p.seed, talk1=talk1["holds_false_others"].iloc[-1],
                         peak=alone.loc[1:, "holds_false_others"].max(),
                         final=alone.loc[G, "holds_false_others"],
                         told_final=alone.loc[G, "holds_false_misinformed"],
                         untouched=alone.loc[G, "accuracy_untouched"]))
    t = pd.DataFrame(rows)
    table = t.groupby(["graph", "min_confidence"]).agg(**{
        "others holding it after generation 1's talk": ("talk1", mean_ci),
        "others holding it alone, peak over generations": ("peak", mean_ci),
        f"others holding it alone, generation {int(m['generation'].max())}": ("final", mean_ci),
        "misinformed agent still holding it": ("told_final", mean_ci),
        "untouched facts right": ("untouched", mean_ci)}).reset_index()
    return (f"{table.to_markdown(index=False)}\n\nOne agent of 8 edited by ROME to a false fact about a person "
            "everyone knew (before generation 1's talk); 4 generations of discussion (2 rounds) and LoRA "
            "consolidation with replay; `holding it` = the false object is the agent's argmax. 'alone' = round 0 "
            "(the weights alone, after the previous consolidation). Per seed and generation: "
            f"`{out}/metrics.csv`.\n")


def outdated(runs: Path) -> str:
    out = runs / "outdated"
    run_experiment(ROOT / "configs" / "outdated.yaml", out)
    d = annotate(*load_run(out))
    facts = pd.concat([pd.read_csv(f, keep_default_na=False, dtype={"trial": str})
                       for f in sorted((out / "facts").glob("*.csv"))])
    news = facts[facts["kind"] == "changed"][["trial", "generation", "subject", "relation", "changed_in",
                                              "news_agents"]]
    c = d[d["kind"] == "changed"].merge(news, on=["trial", "generation", "subject", "relation"])
    c["learner"] = [a in n.split(";") for a, n in zip(c["agent"], c["news_agents"])]
    last = c.groupby(["run", "generation"])["round"].transform("max")
    rows = []
    for (run, learner), part in c.groupby(["run", "learner"]):
        fresh = part[part["generation"] == part["changed_in"]]
        later = part[part["generation"] == part["changed_in"] + 1]
        rows.append(dict(run=run, who="learners" if learner else "the others",
                         after_news=fresh[fresh["round"] == 0]["correct"].mean(),
                         after_talk=fresh[fresh["round"] == last[fresh.index]]["correct"].mean(),
                         stale_after_talk=fresh[fresh["round"] == last[fresh.index]]["stale"].mean(),
                         next_generation=later[later["round"] == 0]["correct"].mean()))
    t = pd.DataFrame(rows)
    table = t.groupby("who").agg(**{
        "right alone, after the news": ("after_news", mean_ci),
        "right after the talk": ("after_talk", mean_ci),
        "stale after the talk": ("stale_after_talk", mean_ci),
        "right alone, next generation": ("next_generation", mean_ci)}).reset_index()
    return (f"{table.to_markdown(index=False)}\n\n4 of 8 agents learn each generation's changed facts (LoRA with "
            "replay); the group discusses them (2 rounds, small world) and every agent consolidates what the talk "
            "changed. Accuracy on the facts that changed in that generation, against their new value; 'next "
            "generation' = the same facts at the next generation's round 0 (after consolidation). Per seed: "
            f"`{out}/metrics.csv`.\n")


def individual(runs: Path) -> str:
    """The LoRA run of the config, and the same with FT-L (an editor) as the individual update."""
    parts = []
    for method, sets in (("lora", []), ("ft_l", ["individual={method: ft_l, hparams: {}, replay: 0}"])):
        out = runs / ("individual_vs_group" + ("" if method == "lora" else f"_{method}"))
        run_experiment(ROOT / "configs" / "individual_vs_group.yaml", out, sets)
        parts.append(_individual_table(out, method))
    return ("\n\n".join(parts) + "\n\nThe same changed facts each generation (3 generations, 2% of people move "
            "company), taught by LoRA (with replay) or by FT-L edits (one request per fact) to 1 or to all 8 "
            "agents; then discussion and consolidation (LoRA with replay) as in the default run. Cost = facts written "
            "into weights (news x agents told; consolidation = facts the talk changed in some agent's answers). Per "
            "seed: `metrics.csv` of `runs/individual_vs_group*`.\n")


def _individual_table(out: Path, method: str) -> str:
    m = by_round(annotate(*load_run(out)))
    pts = _points(out)
    up = updates_table(out)
    rows = []
    for p in pts.itertuples():
        mm = m[m["run"] == p.run]
        G = mm["generation"].max()
        end = mm[(mm["generation"] == G)]
        u = up[up["point"] == p.point]
        rows.append(dict(news=p.cfg.news.agents, seed=p.seed,
                         alone=end[end["round"] == 0]["accuracy_changed"].iloc[0],
                         talk=end[end["round"] == end["round"].max()]["accuracy_changed"].iloc[0],
                         untouched=end[end["round"] == 0]["accuracy_untouched"].iloc[0],
                         news_facts=u[u["update"] == "news"]["facts"].sum(),
                         consolidated=u[u["update"] == "consolidation"]["facts"].sum()))
    t = pd.DataFrame(rows)
    table = t.groupby("news").agg(**{
        f"changed facts right alone, generation {int(m['generation'].max())}": ("alone", mean_ci),
        "after its talk": ("talk", mean_ci),
        "untouched facts right": ("untouched", mean_ci),
        "facts taught (news)": ("news_facts", lambda x: f"{x.mean():.0f}"),
        "facts consolidated": ("consolidated", lambda x: f"{x.mean():.0f}")}).reset_index().rename(
        columns={"news": "agents told"})
    table.insert(0, "taught by", method)
    return table.to_markdown(index=False)


def asch(runs: Path) -> str:
    out = runs / "asch"
    df = run_experiment(ROOT / "configs" / "asch.yaml", out, ["sweep.seed=[0, 1, 2]"])
    rows = []
    for persona in [None, *sorted(df["persona"].unique())]:
        part = df if persona is None else df[df["persona"] == persona]
        conf = conformity(part, by=["run", "n_confederates"])
        conf = conf[conf["conformity_n"] > 0]
        rows.append(conf.groupby("n_confederates").agg(conformity=("conformity", mean_ci))["conformity"]
                    .rename(persona or "all agents"))
    events = conformity(df, by=["run", "n_confederates"]).groupby("n_confederates")["conformity_n"].sum()
    t = pd.concat(rows, axis=1).assign(events=events).reset_index()
    return (f"{t.to_markdown(index=False)}\n\n3 agents (neutral, overconfident, easy-going) answer 60 people x 6 "
            "relations alone, then after k scripted confederates all give the same wrong answer; conformity = share "
            "of answers right alone that switch to the confederates' answer (mean over 3 seeds, 95% interval "
            "over seeds), for all agents and per persona. `events` = answers right alone that faced the confederates, "
            "over the 3 seeds.\n")


EXPERIMENTS = {"misinformation": ("(a) Misinformation: does a false fact spread into the others' weights?", misinformation),
               "outdated": ("(b) Outdated knowledge: does the group update, or drag the learners back?", outdated),
               "individual": ("(c) Individual vs group: teach every agent, or one and let talk spread it?", individual),
               "asch": ("(d) The Asch sweep: conformity against the number of confederates", asch)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated: " + ", ".join(EXPERIMENTS))
    p.add_argument("--runs", default="runs", help="where the run dirs go (resumed if there)")
    args = p.parse_args(argv)
    for name in args.only.split(","):
        if name not in EXPERIMENTS:
            p.error(f"--only: unknown experiment {name!r}; known: {list(EXPERIMENTS)}")
    for name in args.only.split(","):
        title, fn = EXPERIMENTS[name]
        t0 = time.time()
        body = fn(Path(args.runs))
        print(body)
        write_section(name, title, body + f"\n({time.time() - t0:.0f} s including any resumed work.)\n", DOC, HEADER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
