"""Single edits on each architecture family: ROME, MEMIT, FT-L, WISE and MEMOIR on a tiny model of
the family (2 layers, d=128, d_ff=256; instantiated from its config, no download) pretrained
on the default 300-person world for `--steps` steps.

    python -m bench.families [--edits 10] [--steps 1500] [--families qwen2,gpt2,...]

Each edit is a counterfactual on a fact the model answers right, applied to a fresh copy of
the model (distinct people), scored with analysis.edit_metrics against one baseline of the
unedited model (reliability on the question, generalization on held-out paraphrases,
locality on 100 other people's facts), by candidate argmax and by greedy generation (`gen`), and timed. The default model's own family (Llama) is
the first row, trained by the same loop.
"""
from __future__ import annotations

import argparse
import time
from functools import partial

import pandas as pd

from agents.agent import Agent
from agents.architectures import tiny_model
from agents.pretrain import PretrainConfig, train
from analysis.edit_metrics import edit_baseline, evaluate_edits
from bench.common import md_table, write_section
from evolution.editors.requests import counterfactual_requests

FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gptj", "gpt_neox", "phi")
EDITORS = ("rome", "memit", "ft_l", "wise", "memoir")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()
    rows = []
    for family in args.families.split(","):
        t0 = time.perf_counter()
        cfg = PretrainConfig.from_dict({"steps": args.steps})
        model, tok, world, _ = train(cfg, progress=False, make_model=partial(tiny_model, family))
        trained = time.perf_counter() - t0
        agent = Agent(model, tok)
        known = world.queries(subjects=[p.name for p in world.people if p.taught][:60])
        recall = sum(b.correct for b in agent.beliefs(known)) / len(known)
        reqs = [r for r in counterfactual_requests(world, 4 * args.edits, seed=0, agent=agent)
                if agent.beliefs([world.query(r.subject, r.relation)])[0].correct][:args.edits]
        base = edit_baseline(agent, world, reqs, n_locality=100, n_bios=0)
        for method in EDITORS:
            scores, seconds, failed = [], 0.0, 0
            for r in reqs:
                a = agent.spawn(method)
                t = time.perf_counter()
                try:
                    a.edit([r], method=method, world=world)
                except Exception as e:          # an editor that refuses the family is a row, not a crash
                    failed += 1
                    why = f"{type(e).__name__}: {str(e)[:60]}"
                    continue
                seconds += time.perf_counter() - t
                scores.append(evaluate_edits(a, world, [r], before=base))
            done = len(scores)
            m = lambda k: sum(s[k] for s in scores) / done if done else float("nan")
            rows.append({"family": family, "recall": recall, "pretrain s": trained, "editor": method,
                         "edits": done, "reliability": m("reliability"), "generalization": m("generalization"),
                         "locality": m("locality"), "reliability gen": m("reliability_gen"),
                         "generalization gen": m("generalization_gen"), "locality gen": m("locality_gen"), "s / edit": seconds / done if done else float("nan"),
                         "failed": failed if not failed else f"{failed} ({why})"})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string())
    body = (f"{args.edits} single counterfactual edits per family and editor (distinct people the model answers "
            f"right; a fresh copy per edit), on a 2-layer d=128 model of each family pretrained {args.steps} steps "
            "on the default 300-person world; recall over 60 taught people's facts. Locality: 100 other people's "
            "facts unchanged. `gen`: the same by greedy generation (the continuation begins with the target; for "
            "locality, with the unedited model's words). Failed: edits an editor refused (the message).\n\n" + md_table(table.set_index("family")))
    write_section("families", "Editors on each architecture family", body)


if __name__ == "__main__":
    main()
