"""A generation run's report: `metrics.csv`, PNG plots and one self-contained `report.html`.

Everything is rebuilt from the run dir (records, facts tables, config): `knowevo report RUN_DIR`
redraws it; the run writes metrics.csv after every generation and the report at its end.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from analysis import generation_plots as gp
from analysis.baselines import run_baseline
from analysis.generation_metrics import annotate, by_round, conformity_by_majority, false_spread, load_run
from analysis.group_metrics import answer_paths
from evolution.outputs import write_whole

VOTER_SEEDS = 20


def write_metrics(run_dir, d: pd.DataFrame | None = None) -> pd.DataFrame:
    """metrics.csv: one row per (sweep point, generation, round), from the run's `annotate`d
    records (read from the run dir when not given)."""
    t = by_round(annotate(*load_run(run_dir)) if d is None else d)
    write_whole(Path(run_dir) / "metrics.csv", t.to_csv(index=False, float_format="%.4f"))
    return t


def _configs(run: Path) -> dict:
    """run label -> that sweep point's config."""
    from evolution.run_config import load
    _, cfg, points, _ = load(run / "config.yaml")
    return {cfg.name + (f"/{label}" if label else ""): p for label, p in points}


def baseline_spread(d: pd.DataFrame, graph, rounds: int, first: int, steps: int, seed: int) -> pd.DataFrame:
    """Voter (mean of VOTER_SEEDS runs) and DeGroot from the agents' answers at round 0 of
    generation `first` on the false facts: share of the non-misinformed agents holding them."""
    start = d[(d["generation"] == first) & (d["round"] == 0) & (d["kind"] == "misinformation")]
    if start.empty:
        return pd.DataFrame(columns=["model", "step", "holds_false"])
    told = start[["subject", "relation", "false_object", "misinformed_agent"]].drop_duplicates()
    out = []
    for model, seeds in (("voter", range(VOTER_SEEDS)), ("degroot", [0])):
        shares = []
        for s in seeds:
            b = run_baseline(model, start.drop(columns=["correct"]), graph, steps, seed + s).merge(
                told, on=["subject", "relation"])
            b = b[b["agent"] != b["misinformed_agent"]]
            b = b.assign(_f=b["answer"] == b["false_object"])
            shares.append(b.groupby("round")["_f"].mean())
        m = pd.concat(shares, axis=1).mean(axis=1)
        out.append(pd.DataFrame({"model": model, "step": m.index - m.index.min(), "holds_false": m.to_numpy()}))
    return pd.concat(out, ignore_index=True)


def chosen_fact(d: pd.DataFrame) -> tuple[str, str] | None:
    """The fact the belief graphs follow: the first false fact, else the first changed one."""
    for kind in ("misinformation", "changed"):
        rows = d[d["kind"] == kind].sort_values(["generation", "subject", "relation"])
        if len(rows):
            return rows.iloc[0]["subject"], rows.iloc[0]["relation"]
    return None


def belief_of(row) -> str:
    if row["answer"] == row["truth"]:
        return "truth"
    if row["false_object"] and row["answer"] == row["false_object"]:
        return "false fact"
    if row["previous"] and row["answer"] == row["previous"]:
        return "stale"
    return "other"


def trial_tables(d: pd.DataFrame, metrics: pd.DataFrame, cfg) -> dict:
    """Everything a report section shows for one sweep point (its records and `by_round` rows)."""
    from protocols.topology import build_graph
    rounds = int(d["round"].max())
    graph = build_graph(cfg.graph, cfg.agent_names, cfg.seed)
    out = {"metrics": metrics, "conformity": conformity_by_majority(d), "graph": graph, "rounds": rounds,
           "paths": answer_paths(d[d["generation"] > 0], by=["agent"])}
    m = cfg.misinformation
    if m.agents:
        steps = rounds * (cfg.generations - m.generation + 1)
        out["spread"] = false_spread(d, rounds, m.generation)
        out["baselines"] = baseline_spread(d, graph, rounds, m.generation, steps, cfg.seed)
    fact = chosen_fact(d)
    if fact is not None:
        rows = d[(d["subject"] == fact[0]) & (d["relation"] == fact[1]) & (d["round"] == 0)]
        out["fact"] = fact
        out["beliefs"] = rows.assign(belief=rows.apply(belief_of, axis=1))[["generation", "agent", "belief"]]
    return out


def summary_lines(run: str, cfg, t: dict) -> list[str]:
    """Five lines a person reads first."""
    m = t["metrics"]
    G = int(m["generation"].max())
    last = m[m["generation"] == G]
    alone, talk = last[last["round"] == 0].iloc[0], last[last["round"] == last["round"].max()].iloc[0]
    g0 = m[(m["generation"] == 0) & (m["round"] == 0)].iloc[0]
    conf = t["conformity"]
    k, n = int(conf["conformity_k"].sum()), int(conf["conformity_n"].sum())
    lines = [f"{run}: {cfg.agents} agents, {G} generations of {cfg.protocol} on {_graph_name(cfg.graph)}; "
             f"news to {_news(cfg)} per generation, consolidation by {cfg.consolidation.method}",
             f"changed facts, generation {G}: accuracy {alone['accuracy_changed']:.2f} alone, "
             f"{talk['accuracy_changed']:.2f} after talk; stale answers {alone['stale_changed']:.2f} alone, "
             f"{talk['stale_changed']:.2f} after talk"]
    if "spread" in t and len(t["spread"]):
        sp, b = t["spread"], t["baselines"]
        end = sp[sp["alone"]].iloc[-1]
        at = lambda model: b[(b["model"] == model) & (b["step"] == end["step"])]["holds_false"]
        v, dg = at("voter"), at("degroot")
        lines.append(f"false fact: held alone in generation {G} by {alone['holds_false_misinformed']:.2f} of the "
                     f"misinformed and {end['holds_false']:.2f} of the others (after the same talk: voter "
                     f"{v.iloc[0] if len(v) else float('nan'):.2f}, DeGroot {dg.iloc[0] if len(dg) else float('nan'):.2f})")
    else:
        lines.append("false fact: none (misinformation.agents is 0)")
    lines.append(f"group: consensus {talk['consensus']:.2f} after the last talk ({g0['consensus']:.2f} in "
                 f"generation 0); conformity to a wrong majority {k / n if n else float('nan'):.2f} ({k}/{n})")
    lines.append(f"untouched facts, generation {G} alone: accuracy {alone['accuracy_untouched']:.2f} "
                 f"(generation 0: {g0['accuracy_untouched']:.2f}), locality {alone['locality']:.2f}, "
                 f"forgetting {alone['forgetting']:.2f}")
    return lines


def _graph_name(spec) -> str:
    return spec if isinstance(spec, str) else spec.get("kind", "own edges") if isinstance(spec, dict) else "own edges"


def _news(cfg) -> str:
    n = cfg.news
    return f"{n.source} and {n.hops} hop(s)" if n.source else f"{n.agents} agent(s)"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    wide = ' class="wide"' if path.stem.endswith("graph") else ""
    return f'<div{wide}><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"></div>'


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{width:100%;margin:.3em 0}.figs{display:grid;grid-template-columns:1fr 1fr;gap:.6em}
.wide{grid-column:1 / span 2}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap}h2{border-bottom:1px solid #ddd}"""


def build_report(run_dir) -> Path:
    """Write plots/, metrics.csv and report.html for a generation run dir; the report's path."""
    run = Path(run_dir)
    records, facts = load_run(run)
    d = annotate(records, facts)
    configs = _configs(run)
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    metrics = write_metrics(run, d)
    body, summary = [], []
    for i, (name, part) in enumerate(d.groupby("run", sort=False)):
        cfg = configs.get(name)
        if cfg is None:
            raise ValueError(f"records: run {name!r} is not a point of {str(run / 'config.yaml')!r}; the run dir "
                             "mixes runs of other configs")
        t = trial_tables(part, metrics[metrics["run"] == name].reset_index(drop=True), cfg)
        lines = summary_lines(name, cfg, t)
        summary += lines
        p = lambda stem: plots / f"{i:03d}-{stem}.png"
        figs = [gp.plot_accuracy_over_generations(t["metrics"], p("accuracy")),
                gp.plot_consensus_over_generations(t["metrics"], p("consensus")),
                gp.plot_conformity_by_majority(t["conformity"], p("conformity"))]
        if "spread" in t and len(t["spread"]):
            figs.append(gp.plot_false_spread(t["spread"], t["baselines"], p("spread")))
        figs.append(gp.plot_paths_by_agent(t["paths"], p("paths")))
        if "beliefs" in t:
            s, r = t["fact"]
            figs.append(gp.plot_belief_graphs(t["graph"], t["beliefs"], f"{s}: {r} (answer alone, round 0)",
                                              p("graph")))
        told = facts[(facts["trial"] == part["trial"].iloc[0]) & (facts["kind"] == "misinformation")]
        told = told[["subject", "relation", "truth", "false_object", "misinformed_agent"]].drop_duplicates()
        table = t["metrics"].drop(columns=["run", "trial"]).to_html(index=False, float_format="%.3f", na_rep="")
        body.append(f"<h2>{html.escape(name)}</h2><pre>{html.escape(chr(10).join(lines))}</pre>"
                    + '<div class="figs">' + "".join(_img(f) for f in figs) + "</div>"
                    + (f"<h3>False facts</h3>{told.to_html(index=False)}" if len(told) else "")
                    + f"<h3>Per generation and round</h3><div style='overflow-x:auto'>{table}</div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>knowevo run {html.escape(run.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>knowevo run: {html.escape(str(run))}</h1>"
            "<p>Generation 0: every agent alone before anything happened. Each later generation: the world "
            "changes, some agents hear the news and learn it, the group talks, each agent consolidates what the "
            "talk changed into its weights. Round 0 is each agent answering alone; later rounds follow the "
            "talk. Metrics are defined in docs/design.md (Generation runs).</p>"
            + "".join(body) + "</body></html>")
    write_whole(run / "summary.txt", "\n".join(summary) + "\n")
    return write_whole(run / "report.html", page)


def summary_of(run_dir) -> list[str]:
    path = Path(run_dir) / "summary.txt"
    return path.read_text().splitlines() if path.exists() else []
