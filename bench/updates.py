"""Keeping a method's change: the update it returned vs factoring the change by SVD.

After an edit or a fine-tune, the population placement adds the update the method returned to
the agent's delta (agents/delta.py: `compose`, checked against the weights by `mismatch`)
instead of factoring every changed matrix by SVD, which it still does for a method that returns
none. Both ways on the same changes:
  - real methods on the default model: a ROME edit, 10 MEMIT edits, a LoRA and a full fine-tune;
  - changes shaped as the methods make them on a Qwen2-layout model of GPT-2-small's size (12
    layers, 768 wide, MLP 3,072; random weights, since the cost depends on the shapes only): a
    ROME edit (rank one on one down-projection), a LoRA (rank 8 on every projection) and a full
    fine-tune (every weight dense).

    python -m bench.updates [--quick]
"""
from __future__ import annotations

import argparse
import copy
import time

import pandas as pd
import torch

import agents.agent as agent_mod
from agents.architectures import tiny_model
from agents.delta import dense
from agents.methods import EDITORS, register_editor
from agents.population import PopulationPlacement
from agents.pretrain import PretrainConfig, pretrained_dir
from bench.common import md_table, write_section
from envs.world import World
from evolution.editors.requests import EditReport, counterfactual_requests

KEEP: list[float] = []          # seconds of each keep step, appended by the timing wrapper


def timing_keeps() -> None:
    """Time every keep step of the population placement (appended to KEEP)."""
    real = PopulationPlacement._kept_delta

    def timed_keep(self, name, s, a):
        t = time.perf_counter()
        out = real(self, name, s, a)
        KEEP.append(time.perf_counter() - t)
        return out
    PopulationPlacement._kept_delta = timed_keep


def stored(delta: dict) -> str:
    ranks = sorted({v[0].shape[1] for v in delta.values() if isinstance(v, tuple)})
    n_dense = sum(not isinstance(v, tuple) for v in delta.values())
    return f"{len(delta)} params: " + ", ".join(
        ([f"rank {'/'.join(map(str, ranks))}"] if ranks else []) + ([f"{n_dense} dense"] if n_dense else []))


def both_ways(pop: PopulationPlacement, change) -> dict:
    """`change(handle)` run on two fresh agents, the method's update kept (`returned`) and
    dropped so that the placement factors the change (`svd`)."""
    row, kept = {}, {}
    real = agent_mod.take_update

    def dropped(report):
        real(report)
        return None
    for way in ("returned", "svd"):
        name = f"{way}-{len(pop.slots)}"
        h = pop.spawn(name)
        if way == "svd":
            agent_mod.take_update = dropped
        try:
            KEEP.clear()
            t = time.perf_counter()
            change(h)
            row[f"{way}: call s"] = time.perf_counter() - t
            row[f"{way}: keep s"] = sum(KEEP)
        finally:
            agent_mod.take_update = real
        kept[way] = pop.slots[name].delta
        row[f"{way}: stored"] = stored(kept[way])
        pop.remove(name)
    d_r, d_s = dense(kept["returned"]), dense(kept["svd"])
    row["keep x faster"] = row["svd: keep s"] / row["returned: keep s"]
    row["max |difference| / max |change|"] = max(
        float((d_r[k] - d_s[k]).abs().max() / d_s[k].abs().max()) for k in d_r) if set(d_r) == set(d_s) else float("nan")
    return row


def default_model_rows(quick: bool) -> dict:
    d = pretrained_dir(PretrainConfig.from_dict({"people": 80, "steps": 400}) if quick else PretrainConfig(),
                       progress=False)
    world = World.load(d / "world.json")
    pop = PopulationPlacement.from_dir(d, "cpu")
    reqs = counterfactual_requests(world, 12, seed=0)
    facts = world.facts()[:20]
    pop.spawn("warm-up")             # the corpus key statistics and the like, computed once per model
    pop.edit("warm-up", reqs[11:], "rome", world=world)
    pop.edit("warm-up", reqs[:1], "memit", world=world)
    pop.remove("warm-up")
    return {
        "ROME, 1 edit": both_ways(pop, lambda h: h.edit(reqs[:1], "rome", world=world)),
        "MEMIT, 10 edits": both_ways(pop, lambda h: h.edit(reqs[1:11], "memit", world=world)),
        "LoRA (rank 8), 20 facts": both_ways(pop, lambda h: h.learn(facts, "lora", world=world, epochs=2)),
        "full fine-tune, 20 facts": both_ways(pop, lambda h: h.learn(facts, "finetune", world=world, epochs=2)),
    }


def apply_change(agent, requests, world=None, make=None, **_):
    """A bench editor: adds the change `make(model)` builds and returns it as its update."""
    change = make(agent.model)
    sd = agent.model.state_dict()
    with torch.no_grad():
        for k, v in change.items():
            sd[k].add_(dense({k: v})[k])
    return EditReport("apply_change", 0, 0.0, [], True, {}, change)


def gpt2_sized_rows(quick: bool) -> dict:
    tok = PopulationPlacement.from_dir(pretrained_dir(PretrainConfig.from_dict({"people": 80, "steps": 400}),
                                                      progress=False), "cpu").tokenizer
    width, ff, layers = (256, 1024, 2) if quick else (768, 3072, 12)
    torch.manual_seed(0)
    model = tiny_model("qwen2", len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, d=width, d_ff=ff,
                       layers=layers, heads=12 if not quick else 4)
    pop = PopulationPlacement(model, tok, "cpu")
    proj = [k for k, v in model.state_dict().items() if v.ndim == 2 and "layers." in k]
    gen = lambda: torch.Generator().manual_seed(0)      # both ways get the same change

    def rome(m):
        k, g = "model.layers.0.mlp.down_proj.weight", gen()
        w = m.state_dict()[k]
        return {k: (torch.randn(w.shape[0], 1, generator=g) * 1e-2, torch.randn(1, w.shape[1], generator=g))}

    def lora(m):
        sd, g = m.state_dict(), gen()
        return {k: (torch.randn(sd[k].shape[0], 8, generator=g) * 1e-3, torch.randn(8, sd[k].shape[1], generator=g))
                for k in proj}

    def full(m):
        g = gen()
        return {k: torch.randn(v.shape, generator=g) * 1e-4 for k, v in m.state_dict().items()}

    register_editor("apply_change")(apply_change)
    try:
        pop.spawn("warm-up")            # the placement's scratch model, built once per placement
        pop.edit("warm-up", [], "apply_change", make=lambda m: {})
        pop.remove("warm-up")
        return {f"{name} ({sum(v.numel() for v in model.parameters()) / 1e6:.0f}M params)":
                both_ways(pop, lambda h, make=make: h.edit([], "apply_change", make=make))
                for name, make in (("ROME-shaped, rank 1", rome), ("LoRA-shaped, rank 8 x every projection", lora),
                                   ("full fine-tune-shaped, every weight", full))}
    finally:
        EDITORS.pop("apply_change")


def gpt2_population_rows(quick: bool) -> pd.DataFrame:
    """A population on GPT-2's layout (Conv1D projections, stored [in, out]) whose agents each
    carry a rank-one change of layer 0's MLP output projection (a ROME edit): held low-rank now,
    dense before (as a change to a module that is not nn.Linear). Random weights: the cost
    depends on the shapes only."""
    from agents.delta import Snapshot
    from bench.common import timed_together
    from bench.placements import asks_for, held_bytes
    d = pretrained_dir(PretrainConfig.from_dict({"people": 80, "steps": 400}), progress=False)
    tok, world = PopulationPlacement.from_dir(d, "cpu").tokenizer, World.load(d / "world.json")
    sizes = [("tiny GPT-2 (128 wide, 2 layers)", 128, 512, 2, 4, 64, 4)]
    if not quick:
        sizes.append(("GPT-2-small-sized (768 wide, 12 layers)", 768, 3072, 12, 12, 8, 2))
    rows = {}
    for label, width, ff, layers, heads, n, q in sizes:
        torch.manual_seed(0)
        model = tiny_model("gpt2", len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, d=width, d_ff=ff,
                           layers=layers, heads=heads)
        k = "transformer.h.0.mlp.c_proj.weight"
        g = torch.Generator().manual_seed(1)
        snaps = [Snapshot(f"agent {i}", "neutral", {k: (torch.randn(ff, 1, generator=g) * 1e-2,
                                                        torch.randn(1, width, generator=g))}) for i in range(n)]
        placements = {}
        for way in ("low-rank (now)", "dense (before)"):
            p = placements[way] = PopulationPlacement(copy.deepcopy(model), tok, "cpu")
            for sn in snaps:            # before, a change of a Conv1D was held dense: restored so here
                p.restore(sn if way.startswith("low") else Snapshot(sn.name, sn.persona, dense(sn.delta)))
        bare = held_bytes(PopulationPlacement(copy.deepcopy(model), tok, "cpu"))
        asks = asks_for(world, n, q)
        answers = {w: [b.answer for bs in p.beliefs_many(asks) for b in bs] for w, p in placements.items()}
        t = timed_together({w: (lambda p=p: p.beliefs_many(asks)) for w, p in placements.items()}, 3)
        for w, p in placements.items():
            rows[(label, f"{n} agents x {q} queries", w)] = {
                "s per round": t[w], "x low-rank time": t[w] / t["low-rank (now)"],
                "MiB held per agent": (held_bytes(p) - bare) / n / 2 ** 20,
                "answers = low-rank": sum(a == b for a, b in zip(answers[w], answers["low-rank (now)"])) / len(asks) / q}
        print(pd.DataFrame(rows).T.tail(2).to_string(), flush=True)
    return pd.DataFrame(rows).T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the tests' small model and a 256-wide stand-in")
    args = ap.parse_args()
    torch.set_num_threads(2)
    timing_keeps()
    t0 = time.time()
    rows = {("default model" if not args.quick else "small model", k): v for k, v in default_model_rows(args.quick).items()}
    rows.update({("GPT-2-small-sized Qwen2 layout" if not args.quick else "256-wide stand-in", k): v
                 for k, v in gpt2_sized_rows(args.quick).items()})
    df = pd.DataFrame(rows).T
    cols = ["returned: keep s", "svd: keep s", "keep x faster", "returned: call s", "svd: call s",
            "returned: stored", "svd: stored", "max |difference| / max |change|"]
    df = df[cols]
    print(df.to_string())
    gpt2 = gpt2_population_rows(args.quick)
    write_section("updates", "Keeping a method's change: returned update vs SVD",
                  md_table(df, ".4g") + "\n\nOn GPT-2's layout (Conv1D projections): every agent a rank-one change of layer "
                  "0's MLP output projection, held and added low-rank now, dense before (a change of a module that is "
                  "not nn.Linear went to the per-agent dense fallback); one round, every agent asked its own "
                  "queries; `MiB held per agent`: the deltas and stacked factors the placement holds beyond the base "
                  "model, over the agents:\n\n" + md_table(gpt2, ".4g") + f"\n\n`keep s`: the placement's step after the method ran (the returned update added "
                  "to the agent's delta and checked against the weights the method left, or every changed matrix "
                  "factored by SVD); `call s`: the whole `edit`/`learn` call, method included. `stored`: what the "
                  "placement keeps. `max |difference| / max |change|`: between the two ways' kept changes, per weight, "
                  "the largest. The two ways run on two fresh agents given the same change (the real methods are "
                  "deterministic); a warm-up edit before them computes what is computed once per model (the "
                  "corpus statistics, the scratch model). "
                  f"Total {time.time() - t0:.0f} s.")


if __name__ == "__main__":
    main()
