"""Where knowledge lives in the default model: causal tracing (ROME Figure 1) and linear probes.

    python -m bench.tracing [--facts 40] [--noise 3] [--quick]

Causal tracing (evolution.locate.causal_trace): for `--facts` question-form facts the model
answers right, noise on the subject's token embeddings, then one module's clean output
restored at one (layer, token); the heat map is the mean indirect effect (p restored - p
corrupted of the right answer's first token) by token position x layer, one panel per
module kind (block output, MLP, attention). It is saved to docs/img/tracing.png.

The layer the editors use comes from the same module: `mlp_effects` (every subject token's
MLP restored at once, 16 facts, what ROME and MEMIT call) and `critical_layers` on it; the
subject token they edit from `subject_token_effects` and `key_tokens`.

Q-probing (evolution.locate.probe_accuracy): a ridge classifier reads each relation's
answer from the hidden state at the last token of the bare name, 5-fold held-out accuracy
per layer (layer 0 = embeddings) against the majority-class floor; the people never taught
to the model are the control (their names carry no fact, so their probes sit near the floor).

--quick: the 80-person test model, to prove the script runs (writes docs/img/tracing_quick.png).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from bench.common import DOC, md_table, write_section
from envs.world import World
from evolution.editors.ft_l import FTLHyperParams
from evolution.editors.memit.hparams import MEMITHyperParams
from evolution.editors.target import critical_layers, key_tokens, mlp_effects, subject_token_effects
from evolution.editors.wise.editor import WISEHyperParams
from evolution.locate import KINDS, causal_trace, probe_accuracy, trace_table

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
TITLES = {"hidden": "block output (hidden)", "mlp": "MLP output", "attn": "attention output"}


def plot_trace(table: pd.DataFrame, path: Path, title: str) -> None:
    """One heat map per module kind: rows = token position category, columns = layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = [k for k in KINDS if k in table.index.get_level_values(0)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.8 * len(kinds), 3.4), sharey=True)
    for ax, kind in zip(list(axes) if len(kinds) > 1 else [axes], kinds):
        t = table.loc[kind]
        top = max(float(t.max().max()), 1e-3)
        im = ax.imshow(t.to_numpy(), cmap=CMAPS[kind], vmin=0, vmax=top, aspect="auto")
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                v = t.iat[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.6 * top else "black")
        ax.set_xticks(range(t.shape[1]), [str(c) for c in t.columns])
        ax.set_yticks(range(t.shape[0]), list(t.index))
        ax.set_xlabel("layer")
        ax.set_title(TITLES[kind], fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="indirect effect" if kind == kinds[-1] else None)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shown_trace(table: pd.DataFrame) -> pd.DataFrame:
    """The trace table with flat row names ('mlp / last subject token') and 'layer i' columns."""
    out = table.copy()
    out.index = [f"{k} / {p}" for k, p in table.index]
    out.columns = [f"layer {c}" for c in table.columns]
    return out


def probe_tables(agent: Agent, world: World) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(relation x layer accuracy with the majority floor, taught vs untaught control or None)."""
    taught = probe_accuracy(agent, world)
    wide = taught.pivot_table(index="relation", columns="layer", values="accuracy")
    wide.columns = [f"layer {c}" + (" (emb)" if c == 0 else "") for c in wide.columns]
    wide["majority"] = taught.groupby("relation").majority.first()
    try:
        untaught = probe_accuracy(agent, world, taught=False)
    except ValueError as e:             # too few untaught people for the folds
        print(f"no untaught control: {e}")
        return wide, None
    rows = {}
    for name, df in (("taught", taught), ("untaught (control)", untaught)):
        row = df.groupby("layer").accuracy.mean()
        rows[f"{name}, {int(df.people.iloc[0])} people"] = {
            **{f"layer {c}": v for c, v in row.items()}, "majority": df.groupby("relation").majority.first().mean()}
    return wide, pd.DataFrame(rows).T


def layer_choice(agent: Agent, world: World) -> tuple[pd.DataFrame, str]:
    """The editors' layer from tracing (as they compute it) and a sentence saying so."""
    effects = mlp_effects(agent, world)
    rome = critical_layers(effects)[0]
    share = MEMITHyperParams().layer_share
    memit = critical_layers(effects, share)
    df = pd.DataFrame({"MLP effect (whole subject restored)": effects}).rename_axis("layer")
    text = (f"Editors' layer: `evolution.editors.target.mlp_effects` (16 known facts, every subject token's MLP output "
            f"restored at once) gives {', '.join(f'layer {l}: {e:.3f}' for l, e in enumerate(effects))}; "
            f"`critical_layers` picks **layer {rome}** for ROME (the argmax) and layers {memit} for MEMIT "
            f"(neighbours with >= {share} of the largest effect). FT-L and WISE take `layer` as an hparam "
            f"(defaults {FTLHyperParams().layer} and {WISEHyperParams().layer}).")
    tok_effects = subject_token_effects(agent, world, (rome,))
    names = [p.name for p in world.people]
    chosen = pd.Series(key_tokens(agent.tokenizer, names, tok_effects, names)).value_counts()
    text += (f"\n\nEditors' subject token (ROME, MEMIT): `subject_token_effects` at layer {rome}, each subject "
             "token's MLP restored alone, gives " + ", ".join(f"{k}: {v:.3f}" for k, v in tok_effects.items()) +
             "; `key_tokens` picks the most traced token whose key tells the person apart (the subject's "
             "tokens up to it begin no other name), so for this world's people: " +
             ", ".join(f"{n} at token {t}" for t, n in chosen.sort_index().items()) + " (-1 = last).")
    return df, text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=40, help="known facts to trace")
    ap.add_argument("--noise", type=int, default=3, help="noise samples per fact")
    ap.add_argument("--quick", action="store_true", help="the 80-person test model: proves the script runs")
    args = ap.parse_args()
    if args.facts < 1 or args.noise < 1:
        raise SystemExit("--facts and --noise must be positive")
    cfg = PretrainConfig(people=80, seed=0, steps=400) if args.quick else PretrainConfig()
    plot = DOC.parent / "img" / ("tracing_quick.png" if args.quick else "tracing.png")
    t0 = time.time()
    path = pretrained_dir(cfg, progress=False)
    agent = Agent.from_dir(path)
    world = World.load(path / "world.json")

    df = causal_trace(agent, world, n_facts=args.facts, n_noise=args.noise)
    per_case = df.groupby("case")[["p_clean", "p_corrupted"]].first()
    n = len(per_case)
    table = trace_table(df)
    t_trace = time.time() - t0
    print(table.round(3).to_string(), flush=True)
    plot_trace(table, plot, f"Causal tracing, {cfg.people}-person model: mean indirect effect over {n} known facts")

    choice, choice_text = layer_choice(agent, world)
    print(choice_text, flush=True)
    t1 = time.time()
    probes, control = probe_tables(agent, world)
    t_probe = time.time() - t1
    print(probes.round(3).to_string(), flush=True)

    body = "\n\n".join([
        f"![causal tracing]({plot.relative_to(DOC.parent)})",
        "### Causal tracing: mean indirect effect by module, token position and layer\n\n"
        f"{md_table(shown_trace(table))}\n\n"
        f"{cfg.people}-person model ({'quick: ' if args.quick else ''}seed {cfg.seed}), {n} question-form facts it "
        f"answers right (first answer token), {args.noise} noise samples each (3 x the std of the subject "
        f"embeddings). p(answer) clean {per_case.p_clean.mean():.3f}, with the subject corrupted "
        f"{per_case.p_corrupted.mean():.3f}; the effect is p restored - p corrupted, so a cell near "
        f"{per_case.p_clean.mean() - per_case.p_corrupted.mean():.2f} restores the fact fully. Positions before the "
        f"subject are not corrupted and are left out. Tracing took {t_trace:.0f} s.",
        f"### Which layer the editors edit\n\n{md_table(choice)}\n\n{choice_text}",
        "### Q-probes: held-out accuracy of a linear probe on the bare name's last token\n\n"
        f"{md_table(probes)}\n\n5-fold accuracy per relation and layer (layer 0 = token embeddings) over the "
        f"{sum(p.taught for p in world.people)} taught people, against the majority-class floor (the most common "
        "answer's share)."
        + (f"\n\nMean over relations, taught people vs people the model never saw a fact of (control):\n\n"
           f"{md_table(control)}" if control is not None else "")
        + f"\n\nProbes took {t_probe:.0f} s; total {time.time() - t0:.0f} s.",
    ])
    write_section("tracing", "Where knowledge lives: causal tracing and probes", body)


if __name__ == "__main__":
    main()
