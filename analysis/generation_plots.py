"""PNG figures of a generation run, from the tables of `analysis.generation_metrics`.

Drawn like `analysis.plots` (a `Figure` on the Agg canvas, never pyplot): each function takes
a table, saves one PNG and returns its path.
"""
from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import PATH_COLORS, _errorbars, _need, _save
from analysis.group_metrics import PATHS

BELIEF_COLORS = {"truth": "#2a9d8f", "false fact": "#d62828", "stale": "#f4a261", "other": "#adb5bd"}


def plot_accuracy_over_generations(metrics: pd.DataFrame, path) -> Path:
    """Per generation: accuracy on changed facts and stale answers, alone (round 0) and after
    the talk (last round), and accuracy on untouched facts."""
    _need(metrics, ["generation", "round", "accuracy_changed", "stale_changed", "accuracy_untouched"], "accuracy")
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    last = metrics.loc[metrics.groupby("generation")["round"].idxmax()]
    first = metrics[metrics["round"] == 0]
    for t, how, ls in ((first, "alone", "-"), (last, "after talk", "--")):
        ax.plot(t["generation"], t["accuracy_changed"], ls, marker="o", color="#2a9d8f",
                label=f"changed facts: current truth ({how})")
        ax.plot(t["generation"], t["stale_changed"], ls, marker="s", color="#f4a261",
                label=f"changed facts: stale ({how})")
    ax.plot(first["generation"], first["accuracy_untouched"], "-", marker="^", color="#264653",
            label="untouched facts (alone)")
    ax.set_xlabel("generation")
    ax.set_ylabel("share of answers")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(sorted(metrics["generation"].unique()))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    return _save(fig, path)


def plot_consensus_over_generations(metrics: pd.DataFrame, path) -> Path:
    _need(metrics, ["generation", "round", "consensus", "unanimous"], "consensus")
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot()
    rounds = int(metrics["round"].max()) + 1
    for g, part in metrics.groupby("generation"):
        x = g * (rounds + 1) + part["round"].to_numpy()
        ax.plot(x, part["consensus"], "-o", color="#264653", label="share on the modal answer" if g == 0 else None)
        ax.plot(x, part["unanimous"], "--s", color="#e9c46a", label="queries all agents agree on" if g == 0 else None)
    gens = sorted(metrics["generation"].unique())
    ax.set_xticks([g * (rounds + 1) for g in gens], [f"gen {g}\nround 0" for g in gens], fontsize=7)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("consensus")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_conformity_by_majority(table: pd.DataFrame, path) -> Path:
    _need(table, ["majority_size", "conformity", "conformity_lo", "conformity_hi", "conformity_n"], "conformity")
    t = table[table["conformity_n"] > 0].sort_values("majority_size")
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot()
    if len(t):
        _errorbars(ax, t["majority_size"], t["conformity"], t["conformity_lo"], t["conformity_hi"], "conformity")
        for x, y, n in zip(t["majority_size"], t["conformity"], t["conformity_n"]):
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xticks(sorted(t["majority_size"].unique()) if len(t) else [])
    ax.set_xlabel("peers holding the wrong majority answer")
    ax.set_ylabel("share switching to it")
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)


def plot_false_spread(llm: pd.DataFrame, baselines: pd.DataFrame, path) -> Path:
    """The false facts' holders among the agents not edited to them, by talk step: the LLM
    agents (dots at round 0: their weights alone after consolidation) against the voter and
    DeGroot models on the same graph from the same starting answers."""
    _need(llm, ["step", "holds_false", "alone"], "false spread")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(llm["step"], llm["holds_false"], "-", color="#d62828", alpha=0.6, label="LLM agents (talk)")
    alone = llm[llm["alone"]]
    ax.plot(alone["step"], alone["holds_false"], "o", color="#d62828", label="LLM agents alone (round 0)")
    for (model, part), c in zip(baselines.groupby("model"), ("#457b9d", "#8d99ae", "#6a994e")):
        ax.plot(part["step"], part["holds_false"], "--", color=c, label=model)
    ax.set_xlabel("talk rounds since the misinformation")
    ax.set_ylabel("other agents holding the false fact")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_paths_by_agent(table: pd.DataFrame, path) -> Path:
    _need(table, ["agent", *PATHS], "answer paths")
    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.add_subplot()
    bottom = np.zeros(len(table))
    x = np.arange(len(table))
    for p in PATHS:
        ax.bar(x, table[p], bottom=bottom, color=PATH_COLORS[p], label=p.replace("_", " "))
        bottom += table[p].to_numpy()
    ax.set_xticks(x, table["agent"], rotation=45, fontsize=7)
    ax.set_ylabel("share of answers (all generations)")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _save(fig, path)


def plot_belief_graphs(graph: nx.Graph, beliefs: pd.DataFrame, title: str, path) -> Path:
    """One panel per generation: the graph, each agent coloured by its answer alone (round 0)
    to one fact (`beliefs`: generation, agent, belief in BELIEF_COLORS)."""
    _need(beliefs, ["generation", "agent", "belief"], "belief graph")
    gens = sorted(beliefs["generation"].unique())
    fig = Figure(figsize=(2.2 * len(gens), 2.6))
    pos = nx.spring_layout(graph, seed=0)
    for i, g in enumerate(gens):
        ax = fig.add_subplot(1, len(gens), i + 1)
        got = dict(zip(*beliefs[beliefs["generation"] == g][["agent", "belief"]].T.values))
        colors = [BELIEF_COLORS.get(got.get(n, "other"), "#adb5bd") for n in graph.nodes]
        nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.4)
        nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colors, node_size=160)
        nx.draw_networkx_labels(graph, pos, {n: n.split()[-1] for n in graph.nodes}, ax=ax, font_size=6)
        ax.set_title(f"generation {g}", fontsize=8)
        ax.axis("off")
    handles = [ax.scatter([], [], color=c, label=k) for k, c in BELIEF_COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(bottom=0.2)
    return _save(fig, path)
