"""Where WISE's gate sends prompts as sequential edits accumulate: one memory per edit,
retrieved by the gate (WISE-Retrieve, `merge=none`, the default) against shards merged into
one memory (WISE-Merge, `merge=ties`).

    python -m bench.wise_gate [--n 100] [--checkpoints 10,30,100] [--methods wise,wise:merge=ties]

For each checkpoint, the prompts of the edits made so far (the request's question, and the
held-out paraphrases generalization is scored on) and the locality probe's questions (people
never edited) are run through the edited model; a prompt's route is the memory its last token
reads (`evolution.editors.wise.prompt_routes`): the memory holding its edit (own), another
side memory (other), or main memory. Unrelated prompts should all read main memory. The
threshold columns say why a merged gate opens: a memory's threshold is `act_ratio` times its
lowest edit score.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from analysis.edit_metrics import locality_probe
from bench.common import md_table, write_section
from bench.editing import apply_edit, default_model, sequential_requests
from evolution.editors.wise import side_memory_of
from evolution.editors.wise.editor import prompt_routes, prompt_scores


def route_shares(routes: list[int], own: list[set[int]]) -> dict[str, float]:
    n = max(len(routes), 1)
    return {"own": sum(r in o for r, o in zip(routes, own)) / n,
            "other": sum(r >= 0 and r not in o for r, o in zip(routes, own)) / n,
            "main": sum(r < 0 for r in routes) / n}


def measure(agent, world, reqs, probe) -> dict:
    mem = side_memory_of(agent.model)
    holds: dict[tuple[str, str], set[int]] = {}      # (subject, relation prompt's target) -> memories holding it
    for k, entries in enumerate(mem.shard_prompts):
        for prompt, target, subject, is_request in entries:
            if is_request:
                holds.setdefault((subject, target), set()).add(k)
    asked = [world.query(r.subject, r.relation, "question").prompt for r in reqs]
    own = [holds.get((r.subject, r.target), set()) for r in reqs]
    held, held_own = [], []
    for r, o in zip(reqs, own):
        rel = world.relations[r.relation]
        for i in range(len(rel.heldout)):
            held.append(world.query(r.subject, r.relation, f"heldout:{i}").prompt)
            held_own.append(o)
    unrelated = [q.prompt for q in probe]
    e, h = route_shares(prompt_routes(agent, mem, asked), own), route_shares(prompt_routes(agent, mem, held), held_own)
    # which rule would retrieve the own memory: the gate's (furthest over its threshold) or
    # WISE-Retrieve's (the highest score), on each memory's top score over the prompt's tokens
    s = prompt_scores(agent, mem, asked)
    by_ratio = (s / mem.thresholds[:, None]).argmax(0).tolist()
    by_score = s.argmax(0).tolist()
    u = prompt_routes(agent, mem, unrelated)
    scores = prompt_scores(agent, mem, unrelated)                    # (memories, prompts)
    over = (scores / mem.thresholds[:, None]).max(0).values
    return {"memories": mem.n_shards, "edit: own": e["own"], "edit: other": e["other"], "edit: main": e["main"],
            "edit: own, top ratio": sum(k in o for k, o in zip(by_ratio, own)) / len(own),
            "edit: own, top score": sum(k in o for k, o in zip(by_score, own)) / len(own),
            "held-out: own": h["own"], "held-out: other": h["other"], "held-out: main": h["main"],
            "unrelated: side": sum(r >= 0 for r in u) / len(u),
            "unrelated: max score / threshold (median)": float(over.median()),
            "threshold (median) / ref": float(mem.thresholds.median()) / mem.ref_norm}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--checkpoints", default="10,30,100")
    ap.add_argument("--methods", default="wise,wise:merge=ties")
    args = ap.parse_args()
    base, world = default_model()
    reqs = sequential_requests(base, world, args.n)
    probe = locality_probe(world, reqs, 200, 0)
    checkpoints = {int(c) for c in args.checkpoints.split(",")}
    rows, t0 = [], time.time()
    for method in args.methods.split(","):
        agent, fails, spent = base.spawn(method), 0, 0.0
        for i, r in enumerate(reqs, start=1):
            res = apply_edit(agent, world, [r], method)
            fails, spent = fails + res["failed"], spent + res["seconds"]
            if i in checkpoints:
                rows.append({"method": method, "edits": i, "failed": fails, "s/edit": spent / i,
                             **measure(agent, world, reqs[:i], probe)})
                print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda x: f"{x:.3g}"), flush=True)
    df = pd.DataFrame(rows).set_index(["method", "edits"])
    print(df.to_string(float_format=lambda x: f"{x:.3g}"))
    body = (md_table(df, ".3f") + f"\n\nThe default model; the edits of `bench.editing sequential` (first {args.n}); "
            "200 locality-probe questions of people never edited. Routes are read at each prompt's last token "
            "(where the answer is read). `unrelated: max score / threshold`: the highest of a prompt's scores "
            f"over the memories' thresholds (above 1, the gate opens). Total {time.time() - t0:.0f} s.")
    write_section("wise_gate", "WISE's gate: retrieve vs merge", body)


if __name__ == "__main__":
    main()
