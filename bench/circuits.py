"""Knowledge circuits on the default model: one per relation, and an edited fact's circuit
before and after each editor.

    python -m bench.circuits [--n 40] [--edits 20] [--methods rome,memit,ft_l,wise,memoir,finetune] [--quick]

Part 1: for each of the six relations, the circuit of `n` facts the model knows (edge
attribution patching, every edge checked by exact path patching, edges added by attribution
until the circuit recovers 90% of the log-prob gap), drawn to docs/circuits/RELATION.png.
Part 2: `edits` counterfactual edits per method, each on a fresh copy: the circuit of the
facts before (answering the truth, on the unedited model) and after (answering the target,
on the edited one). Writes docs/benchmarks.md ("circuits").
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from bench.common import ROOT, md_table, write_section
from envs.facts import Fact
from envs.world import World
from evolution.circuits import (CircuitError, circuit_of, circuit_table, draw_circuit, fact_cases, find_circuit,
                                model_graph, shared_components)
from evolution.editors.requests import counterfactual_requests

FIGURES = ROOT / "docs" / "circuits"


def edge_mass(circuit, sender_prefix: str) -> float:
    """Share of the circuit's summed exact effect (logit difference) on edges out of senders
    starting with `sender_prefix` ("m0": the layer-0 MLP, where the default model stores facts)."""
    s = circuit.scores.set_index(["sender", "receiver"]).effect_logit_diff.abs()
    kept = s.loc[[e for e in circuit.edges]]
    return float(kept[[a.startswith(sender_prefix) for a, _ in kept.index]].sum() / kept.sum())


def change(base: Agent, world: World, reqs, method: str) -> Agent:
    agent = base.spawn(f"edited by {method}")
    if method == "finetune":
        agent.learn([Fact(r.subject, r.relation, r.target) for r in reqs], "finetune", world=world, epochs=10)
    else:
        agent.edit(reqs, method=method, world=world)
    return agent


CONSOLIDATION = """\
name: consolidation-circuits
seed: {seed}
model: {model}
agents: 2
personas: neutral
protocol: discussion
rounds: 2
graph: complete
generations: 1
world_change: {{share: 0.01, relations: [company]}}
news: {{agents: 1}}
individual: {{method: lora, hparams: {{epochs: 8, lr: 0.003, rank: 8}}, replay: 0.5}}
misinformation: {{agents: 1, facts: {facts}, generation: 1, method: rome}}
consolidation: {{method: finetune, hparams: {{epochs: 8, lr: 0.001}}, replay: 0.5, min_confidence: 0.3}}
queries: {{people: 10, relations: all, who: taught}}
"""


def consolidated_falsehoods(base: Agent, world: World, model_dir, facts: int, seed: int, work: Path) -> list[dict]:
    """Run one generation in which one agent is edited (ROME) to `facts` false facts and the
    group talks and consolidates (full fine-tuning on what the talk changed); then the circuit
    of each false fact an agent now answers alone, in the edited agent (written by the editor)
    and in the others (written by consolidation), against the same facts' truth circuit."""
    import subprocess
    import sys
    cfg = work / "consolidation.yaml"
    cfg.write_text(CONSOLIDATION.format(seed=seed, model=model_dir, facts=facts))
    run = work / "run"
    subprocess.run([sys.executable, "-m", "evolution.run", str(cfg), "--out", str(run)], check=True)
    return falsehood_circuits(base, world, model_dir, run, seed)


def falsehood_circuits(base: Agent, world: World, model_dir, run: Path, seed: int) -> list[dict]:
    """Part 3's circuits, read from the finished run `run`."""
    from agents.placement import LocalPlacement
    told = pd.read_csv(next((run / "facts").glob("*.csv")))
    told = told[told.kind == "misinformation"].drop_duplicates(["subject", "relation"])
    placement = LocalPlacement.from_dir(model_dir)
    rows = []
    for ckpt in sorted((run / "checkpoints").glob("*/g01-consolidate/*/")):
        agent = placement.agent(placement.load(ckpt).name)
        qs = [world.query(r.subject, r.relation) for r in told.itertuples()]
        false = [(r.subject, r.relation, r.false_object) for r, b in zip(told.itertuples(), agent.beliefs(qs))
                 if b.answer == r.false_object]
        who = "edited (rome)" if agent.name in set(told.misinformed_agent) else "consolidated"
        row = {"agent": agent.name, "written by": who, "false facts held": len(false)}
        if len(false) >= 2:
            try:
                after = circuit_of(agent, fact_cases(agent, world, false, f"{agent.name}: false", seed))
                before = circuit_of(base, fact_cases(base, world, [(s, r, world.truth(s, r)) for s, r, _ in false],
                                                     f"{agent.name}: truth", seed))
            except CircuitError as e:
                print(e)
            else:
                b, a = set(before.edges), set(after.edges)
                row.update({"faithfulness": after.faithfulness, "edges truth": len(b), "edges false": len(a),
                            "jaccard": len(a & b) / len(a | b), "m0 share truth": edge_mass(before, "m0"),
                            "m0 share false": edge_mass(after, "m0"),
                            "new edges": " ".join(f"{x}>{y}" for x, y in after.edges if (x, y) not in b)})
        rows.append(row)
        print(row)
    placement.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--methods", default="rome,memit,ft_l,wise,memoir,finetune")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--false-facts", type=int, default=10, help="false facts written into one agent (part 3)")
    ap.add_argument("--quick", action="store_true", help="10 facts, 5 edits, rome only")
    args = ap.parse_args()
    if args.quick:
        args.n, args.edits, args.methods = 10, 5, "rome"
    path = pretrained_dir(PretrainConfig(), progress=False)
    base, world = Agent.from_dir(path), World.load(path / "world.json")
    n_layers = base.model.config.num_hidden_layers
    total = len(model_graph(base.model).edges)

    circuits = [find_circuit(base, world, rel, args.n, seed=args.seed) for rel in sorted(world.relations)]
    by_effect = {c.relation: find_circuit(base, world, c.relation, args.n, seed=args.seed, rank_by="effect")
                 for c in circuits}
    FIGURES.mkdir(parents=True, exist_ok=True)
    for c in circuits:
        draw_circuit(c, base.model, FIGURES / f"{c.relation}.png")
    table = circuit_table(circuits, n_layers)
    table.insert(2, "edges (by exact effect)", [len(by_effect[r].edges) for r in table.index])
    table.insert(3, "faithfulness (by exact effect)", [by_effect[r].faithfulness for r in table.index])
    table["m0 share"] = [edge_mass(c, "m0") for c in circuits]
    print(table.to_string())
    shared = shared_components(circuits).astype(int)

    reqs_all = counterfactual_requests(world, args.edits, seed=args.seed, agent=base)
    rows = []
    for method in args.methods.split(","):
        agent = change(base, world, reqs_all, method)
        took = [r for r, b in zip(reqs_all, agent.beliefs([world.query(r.subject, r.relation) for r in reqs_all]))
                if b.answer == r.target]
        row = {"method": method, "edits": len(reqs_all), "took": len(took)}
        try:
            before = circuit_of(base, fact_cases(base, world, [(r.subject, r.relation, world.truth(r.subject, r.relation))
                                                               for r in took], f"{method}: before", args.seed))
            after = circuit_of(agent, fact_cases(agent, world, [(r.subject, r.relation, r.target) for r in took],
                                                 f"{method}: after", args.seed))
        except CircuitError as e:
            print(f"{method}: {e}")
            rows.append(row)
            continue
        b, a = set(before.edges), set(after.edges)
        row.update({"faithfulness before": before.faithfulness, "faithfulness after": after.faithfulness,
                    "edges before": len(b), "edges after": len(a), "jaccard": len(a & b) / len(a | b),
                    "m0 share before": edge_mass(before, "m0"), "m0 share after": edge_mass(after, "m0"),
                    "gap before": before.gap, "gap after": after.gap,
                    "new edges": " ".join(f"{s}>{r}" for s, r in after.edges if (s, r) not in b)})
        rows.append(row)
        print(row)
    edits = pd.DataFrame(rows).set_index("method")

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        falsehoods = pd.DataFrame(consolidated_falsehoods(base, world, path, args.false_facts, args.seed, Path(tmp)))

    rel = lambda p: p.relative_to(ROOT / "docs").as_posix()
    body = (f"Part 1: per relation, {args.n} facts the model knows, each against a corrupted twin (the same "
            "question about another known person with as many name tokens and another answer). "
            f"The model as a graph of {total} edges: senders emb, each head a{{l}}.h{{h}}, each MLP m{{l}}; "
            "receivers each layer's attention a{l} (its heads share one input), each MLP, the logits. Edges are "
            "ranked by edge attribution patching (on the logit difference) and added until the circuit alone "
            "recovers 90% of the log-prob gap (faithfulness); `agreement` is the Spearman correlation of the "
            "attribution with every edge's exact path-patching effect; the same search ranked by exact effect "
            "beside it. movers: last-layer heads whose edge to the logits is in the circuit. m0 share: share of the "
            "circuit's exact effect on edges out of layer 0's MLP.\n\n" + md_table(table) +
            "\n\nNodes in each relation's circuit (1 = in it):\n\n" + md_table(shared, floatfmt=".0f") +
            "\n\nDrawn: " + ", ".join(f"[{c.relation}]({rel(FIGURES / (c.relation + '.png'))})" for c in circuits) +
            f"\n\nPart 2: {args.edits} counterfactual edits per method (one call, a fresh copy each; finetune: "
            "10 epochs of full fine-tuning on the edits' statements and questions). took = edits the edited model "
            "answers; the circuit of those facts before (their truth, unedited model) and after (their target, "
            "edited model); jaccard = shared edges / all edges of the two; new edges = in the circuit after, not "
            "before.\n\n" + md_table(edits) +
            f"\n\nPart 3: a falsehood written by an editor vs one that entered by talk. One generation of 8 agents "
            f"(discussion, complete graph): one agent is edited (ROME) to {args.false_facts} false facts, the group "
            "talks about them, and each agent consolidates what the talk changed in its answers (full fine-tuning, "
            "min_confidence .3). Per agent after consolidation: the false facts it answers alone, and for two or more "
            "of them, the circuit of those false answers against the circuit of the same facts' truth on the "
            "unedited model.\n\n" + (md_table(falsehoods.set_index("agent")) if len(falsehoods) else "(no agent)"))
    write_section("circuits", "Knowledge circuits: per relation, and before/after each editor", body)


if __name__ == "__main__":
    main()
