"""Erasing facts for real or only from the answer: ga, npo and erase on the default model.

    python -m bench.erasure [--n 100] [--methods ga,npo,erase] [--seed 0] [--quick]

Each method erases the same `n` facts the default model knows (one per person, drawn with
`--seed`) in one call, on a fresh copy. Per method: the erased facts' accuracy (argmax,
held-out questions, greedy generation) beside the model's accuracy on never-taught people;
locality on 200 other people's facts and on the erased people's other relations; whether
the fact is still inside (a linear probe on the question's hidden states, at the subject and
at the answer position; and steps of fine-tuning to answer the erased facts again vs as many facts of
never-taught people). Writes the table under docs/benchmarks.md ("erasure").
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from analysis.erasure import erasure_baseline, evaluate_erasure
from bench.common import md_table, write_section
from envs.world import World
from evolution.editors.erase import known_fact_requests
from evolution.residue import matched_strangers, probe_residue, relearn_curve, steps_to


def residue(agent: Agent, world: World, reqs, strangers, layers: dict, relearn_steps: int, lr: float) -> dict:
    probes = probe_residue(agent, world, reqs).set_index(["position", "layer"])
    out = {}
    for pos, layer in layers.items():
        p = probes.loc[(pos, layer)]
        out.update({f"{pos}_probe_erased": p.probe_erased, f"{pos}_probe_known": p.probe_known,
                    f"{pos}_probe_never_taught": p.probe_never_taught})
    facts = [(r.subject, r.relation) for r in reqs]
    erased_curve = relearn_curve(agent, world, facts, relearn_steps, lr)
    strangers_curve = relearn_curve(agent, world, strangers, relearn_steps, lr)
    marks = [k for k in (5, 10, 20) if k < relearn_steps]
    return {**out, "relearn_steps_erased": steps_to(erased_curve),
            "relearn_steps_never_taught": steps_to(strangers_curve),
            **{f"relearn_acc_erased@{k}": erased_curve[k] for k in marks},
            **{f"relearn_acc_never_taught@{k}": strangers_curve[k] for k in marks}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--methods", default="ga,npo,erase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relearn-steps", type=int, default=40)
    ap.add_argument("--relearn-lr", type=float, default=2e-4)
    ap.add_argument("--quick", action="store_true", help="10 facts, 10 relearning steps (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.relearn_steps = 10, 12
    path = pretrained_dir(PretrainConfig(), progress=False)
    base, world = Agent.from_dir(path), World.load(path / "world.json")
    reqs = known_fact_requests(base, world, args.n, args.seed)
    strangers = matched_strangers(world, [(r.subject, r.relation) for r in reqs], args.seed)
    before = erasure_baseline(base, world, reqs)
    probes = probe_residue(base, world, reqs)
    layers = {pos: int(g.loc[g.probe_known.idxmax(), "layer"])       # chosen on held-out known people only
              for pos, g in probes.groupby("position")}
    print(probes)
    rows = [{"method": "none (unedited)", **evaluate_erasure(base, world, reqs, before),
             **residue(base, world, reqs, strangers, layers, args.relearn_steps, args.relearn_lr),
             "seconds": 0.0, "steps": 0}]
    print(pd.DataFrame(rows).T)
    for method in args.methods.split(","):
        agent = base.spawn(f"erased by {method}")
        t = time.time()
        report = agent.edit(reqs, method=method, world=world)
        seconds = time.time() - t
        rows.append({"method": method, **evaluate_erasure(agent, world, reqs, before),
                     **residue(agent, world, reqs, strangers, layers, args.relearn_steps, args.relearn_lr),
                     "seconds": round(seconds, 1), "steps": report.details["steps"]})
        print(pd.DataFrame(rows[-1:]).T)
    df = pd.DataFrame(rows).set_index("method")
    answers = df[["erased_accuracy", "erased_accuracy_heldout", "erased_gen", "never_taught_accuracy",
                  "erased_p_truth", "never_taught_p_truth", "locality", "locality_same_person", "locality_gen",
                  "bio_ppl_ratio", "steps", "seconds"]]
    inside = df[[c for c in df.columns if "probe_" in c or c.startswith("relearn_")]]
    print(md_table(answers), "\n", md_table(inside))
    body = (f"{args.n} facts the default model knows (one per person, seed {args.seed}) erased in one call per "
            f"method, each on a fresh copy; never-taught = the same model on the {int(df.n_never_taught.iloc[0])} "
            "facts of people it was never taught, on the erased relations (the level to sink to).\n\n"
            "What it answers:\n\n" + md_table(answers) +
            "\n\nWhat is left inside: a linear probe on the question's hidden states at the subject's last "
            f"token (layer {layers['subject']}) and at the answer position (layer {layers['answer']}), each the "
            "layer where it reads held-out known people best on the unedited model, trained on taught people "
            "the requests do not name (known = held-out taught people, the ceiling; never_taught = the floor); "
            "relearning = full fine-tuning (Adam, lr "
            f"{args.relearn_lr}) on the facts' question and truth, steps until 90% are answered again (of "
            f"{args.relearn_steps}; nan: not within them), for the erased facts vs {len(strangers)} facts of never-taught "
            "people on the same relations.\n\n" + md_table(inside) +
            "\n\nlocality: share of 200 other taught people's answers unchanged; locality_same_person: the erased "
            "people's other relations unchanged; *_gen: by greedy generation. bio_ppl_ratio: perplexity on 20 "
            "held-out bios before/after (1 = unchanged).")
    write_section("erasure", "Erasure: gone or hidden (ga, npo, erase)", body)


if __name__ == "__main__":
    main()
