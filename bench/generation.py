"""Greedy generation: prompts batched (left-padded, `batch_size` per `generate` call) against
one prompt at a time (how `Agent.generate` ran before), on the default model, plain and with a
WISE side memory (its gate must skip the padding); and what that does to the editing metrics,
whose generation scores (`*_gen`, fluency) generate for every probe query. Both ways in one
run, alternated (bench.common.timed_together).

    python -m bench.generation [--prompts 200] [--people 300]
"""
from __future__ import annotations

import argparse
import contextlib
from unittest import mock

import pandas as pd
import torch

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from analysis.edit_metrics import edit_baseline, evaluate_edits, locality_probe, window
from bench.common import md_table, timed_together, write_section
from envs.world import World
from evolution.editors.requests import counterfactual_requests


@torch.inference_mode()
def one_at_a_time(self, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
    """`Agent.generate` as it was: one `generate` call per prompt, no padding."""
    tok, outs = self.tokenizer, []
    for p in prompts:
        enc = tok(p, return_tensors="pt").to(self.device)
        ids = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        outs.append(tok.decode(ids[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
    return outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200, help="probe prompts generated from")
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    path = pretrained_dir(PretrainConfig(people=args.people))
    world = World.load(path / "world.json")
    plain = Agent.from_dir(path)
    reqs = counterfactual_requests(world, 3, seed=11, agent=plain)
    wise = plain.spawn("wise")
    for r in reqs:
        wise.edit([r], method="wise", world=world)
    queries = locality_probe(world, reqs, args.prompts, seed=0)
    prompts = [r.prompt for r in reqs] + [q.prompt for q in queries]
    n_new = window(queries)
    rows = []
    for label, agent in [("plain", plain), ("WISE side memory (3 edits)", wise)]:
        old = one_at_a_time(agent, prompts, n_new)
        new = agent.generate(prompts, n_new)
        t = timed_together({"old": lambda: one_at_a_time(agent, prompts, n_new),
                            "new": lambda: agent.generate(prompts, n_new)}, args.repeat)
        rows.append({"agent": label, "prompts": len(prompts), "new tokens": n_new,
                     "one at a time, prompts/s": len(prompts) / t["old"],
                     "batched, prompts/s": len(prompts) / t["new"], "speed-up": t["old"] / t["new"],
                     "same continuations": f"{sum(a == b for a, b in zip(old, new))}/{len(prompts)}"})
    gen = pd.DataFrame(rows).set_index("agent")

    # the editing metrics of the WISE agent, baseline included (what `knowevo edit` computes)
    def metrics():
        base = edit_baseline(plain, world, reqs, n_locality=args.prompts)
        return evaluate_edits(wise, world, reqs, before=base, n_locality=args.prompts)
    got = {}

    def run(way: str) -> None:
        slow = mock.patch.object(Agent, "generate", one_at_a_time) if way == "one at a time" else contextlib.nullcontext()
        with slow:
            got[way] = metrics()
    t = timed_together({w: (lambda w=w: run(w)) for w in ("one at a time", "batched")}, 1)
    new_m = got["batched"]
    keys = [k for k in new_m if k.endswith("_gen") or k == "fluency"]
    met = pd.DataFrame([{"generation": w, "s": t[w], **{k: got[w][k] for k in keys}} for w in got]).set_index("generation")
    body = (md_table(gen, ".3g") + "\n\n"
            f"{len(prompts)} prompts: the 3 edit prompts and a locality probe of the default world "
            f"({args.people} people), {n_new} new tokens each (the metrics' window), batches of "
            f"{plain.batch_size}; best of {args.repeat}, the two ways alternated. `same continuations`: "
            "batched text equal to the prompt's text alone.\n\n"
            "The editing metrics of the WISE agent with their baseline (`edit_baseline` + `evaluate_edits`, "
            f"n_locality={args.prompts}; what `knowevo edit` computes), generation scores only:\n\n"
            + md_table(met, ".3g"))
    print(body)
    write_section("generation", "Greedy generation: batched vs one prompt at a time", body)


if __name__ == "__main__":
    main()
