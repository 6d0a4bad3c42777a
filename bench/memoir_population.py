"""MEMOIR agents on the population placement: their routed memories added to their rows of
the shared base model ("rows"), against each agent on a model of its own ("solo": what the
population did with every side memory before, and still does with WISE's) and against the
local placement (a model per agent), in one run. Seconds per round and the bytes held per
agent, with the bare batched forward of the same rows as the ceiling.

    python -m bench.memoir_population [--agents 8,32,128] [--queries 16] [--edited 8]
    python -m bench.memoir_population --job [--generations 2] [--repeat 2]   # the main job, updates by MEMOIR
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from unittest import mock

import pandas as pd

from agents import state
from agents.delta import Snapshot
from agents.placement import Ask, LocalPlacement
from agents.population import PopulationPlacement
from agents.pretrain import PretrainConfig, pretrained_dir
from bench.common import md_table, timed_together, write_section
from bench.placements import ceiling, tensor_bytes
from envs.world import World
from evolution.editors.memoir.editor import KEY
from evolution.editors.requests import counterfactual_requests


def edited_snapshots(path, world, n: int, seed: int = 0) -> list[Snapshot]:
    """`n` agents, each with one MEMOIR edit of its own (a person it knew, a new answer)."""
    pop = PopulationPlacement.from_dir(path, "cpu")
    reqs = counterfactual_requests(world, 3 * n, seed=seed)
    known = pop.spawn("probe").beliefs([world.query(r.subject, r.relation) for r in reqs])
    reqs = [r for r, b in zip(reqs, known) if b.correct][:n]      # a change of what the model knew
    out = []
    for i, r in enumerate(reqs):
        pop.spawn(f"edited {i}")
        pop.edit(f"edited {i}", [r], "memoir", world=world)
        out.append(pop.snapshot(f"edited {i}"))
    return out, reqs


def population_of(path, snaps: list[Snapshot], n: int, solo: bool) -> PopulationPlacement:
    """`n` agents cloned round-robin from `snaps`; `solo`: MEMOIR's row form withheld, so each
    agent gets a model of its own."""
    pop = PopulationPlacement.from_dir(path, "cpu")
    rows = {} if solo else state.ROWS
    with mock.patch.dict(state.ROWS, rows, clear=True):
        for i in range(n):
            s = snaps[i % len(snaps)]
            pop.restore(Snapshot(f"agent {i}", s.persona, s.delta, s.state))
    return pop


def held_per_agent(pop: PopulationPlacement) -> float:
    """Bytes of every tensor the placement holds (base, memories, solo models), over the agents."""
    ts = list(pop.model.parameters()) + list(pop.base.values())
    for s in pop.slots.values():
        for fs in s.adds.values():
            ts += [t for ra in fs for t in ra.add.__self__.buffers()]
        if s.solo is not None:
            ts += list(s.solo.model.parameters()) + list(s.solo.model.buffers())
    return tensor_bytes(ts) / len(pop.slots)


def local_held_per_agent(local: LocalPlacement) -> float:
    ts = list(local.root.model.parameters()) + list(local.root.base.values())
    for a in local.agents.values():
        ts += list(a.model.parameters()) + list(a.model.buffers())
    return tensor_bytes(ts) / len(local.agents)


def asks_for(world, reqs, n: int, per: int, seed: int = 0) -> list[Ask]:
    """Each agent: half its queries about the person its memory edited (the memory fires),
    half about anyone."""
    rng = random.Random(seed)
    pool = world.queries()
    out = []
    for i in range(n):
        r = reqs[i % len(reqs)]
        own = [world.query(r.subject, rel) for rel in world.relations_of(r.subject)]
        qs = [own[j % len(own)] for j in range(per // 2)] + rng.sample(pool, per - per // 2)
        out.append(Ask(f"agent {i}", qs))
    return out


MEMOIR_JOB = ["individual.method=memoir", "individual.hparams={}", "individual.replay=0",
              "consolidation.method=memoir", "consolidation.hparams={}", "consolidation.replay=0"]


def job_table(generations: int, repeat: int) -> None:
    """The main job (configs/default.yaml) with the news and the consolidation written by
    MEMOIR instead of LoRA, its agents' memories per row vs solo models, the runs alternated
    (each from scratch)."""
    from evolution.run import run_experiment
    t0 = time.time()
    sets = MEMOIR_JOB + [f"generations={generations}"]
    modes = ("population, memory per row", "population, solo models (before)")
    secs, records = {m: [] for m in modes}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            for mode in modes:
                with mock.patch.dict(state.ROWS, {} if "solo" in mode else state.ROWS, clear=True):
                    t = time.perf_counter()
                    records[mode] = run_experiment("configs/default.yaml", Path(tmp) / f"{mode[12:]} {i}", sets,
                                                   progress=False)
                    secs[mode].append(time.perf_counter() - t)
    a, b = (records[m] for m in modes)
    same = bool((a["answer"].to_numpy() == b["answer"].to_numpy()).all()) if len(a) == len(b) else False
    df = pd.DataFrame([{"placement": m, "best job seconds": min(secs[m]),
                        "each run (s)": ", ".join(f"{x:.0f}" for x in secs[m]), "belief records": len(records[m])}
                       for m in modes]).set_index("placement")
    print(df.to_string(), "\nanswers equal:", same, flush=True)
    body = (md_table(df, ".4g") + f"\n\n`configs/default.yaml` (8 agents, {generations} generations) with "
            f"`--set {' '.join(MEMOIR_JOB)}`: each generation's news and the consolidation of what the talk "
            "changed are MEMOIR edits, so every agent that learned something carries a routed memory. The same "
            f"job, {repeat} runs of each alternated in one process, each from scratch: the agents' memories added "
            "per row of the shared model, or MEMOIR's row form withheld (each such agent a model of its own, as "
            "before). Every answer "
            f"of the two runs equal: {same}. Total {time.time() - t0:.0f} s.")
    write_section("memoir-population-job", "MEMOIR agents in the main job", body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="8,32,128")
    ap.add_argument("--queries", type=int, default=16, help="queries per agent per round")
    ap.add_argument("--edited", type=int, default=8, help="distinct edited agents the population is cloned from")
    ap.add_argument("--job", action="store_true", help="time the main job with MEMOIR updates instead")
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="--job: runs of each, alternated")
    args = ap.parse_args()
    if args.job:
        return job_table(args.generations, args.repeat)
    t0 = time.time()
    path = pretrained_dir(PretrainConfig())
    world = World.load(path / "world.json")
    snaps, reqs = edited_snapshots(path, world, args.edited)
    rows = []
    for n in (int(x) for x in args.agents.split(",")):
        batched, solo = population_of(path, snaps, n, False), population_of(path, snaps, n, True)
        assert all(s.adds and s.solo is None for s in batched.slots.values())
        assert all(s.solo is not None for s in solo.slots.values())
        local = LocalPlacement.from_dir(path, "cpu")
        for i in range(n):
            local.restore(batched.snapshot(f"agent {i}"))
        asks = asks_for(world, reqs, n, args.queries)
        same = [b.answer for bs in batched.beliefs_many(asks) for b in bs] == \
               [b.answer for bs in local.beliefs_many(asks) for b in bs]
        t = timed_together({"ceiling (bare forward)": ceiling(batched.model, batched.tokenizer, asks, 32),
                            "population, memory per row": lambda: batched.beliefs_many(asks),
                            "population, solo models (before)": lambda: solo.beliefs_many(asks),
                            "local": lambda: local.beliefs_many(asks)}, repeat=3)
        held = {"population, memory per row": held_per_agent(batched),
                "population, solo models (before)": held_per_agent(solo), "local": local_held_per_agent(local)}
        for k, secs in t.items():
            rows.append({"agents": n, "placement": k, "s per round": secs,
                         "x ceiling time": secs / t["ceiling (bare forward)"],
                         "MiB per agent": held.get(k, float("nan")) / 2**20,
                         "answers = local": same if k != "ceiling (bare forward)" else ""})
        print(pd.DataFrame(rows[-len(t):]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows).set_index(["agents", "placement"])
    body = (md_table(df, ".3g") + f"\n\nEvery agent holds one MEMOIR edit (a routed memory, {KEY!r}); the "
            f"population is cloned round-robin from {args.edited} agents edited apart. Each agent is asked "
            f"{args.queries} queries in one `beliefs_many` call, half about the person its edit changed (its "
            "memory fires there), half about anyone. `population, memory per row`: each agent's memory added "
            "to its rows of the shared base model (agents/state.row_additions); `solo models (before)`: "
            "the same agents with MEMOIR's row form withheld, each on a model of its own, as the population "
            "placement held every side memory before; `local`: a model per agent. `MiB per agent`: the "
            "bytes of the tensors held (base, memories, models) over the agents; the memories' fixed random "
            "expansion is one tensor shared by every memory of a structure. `answers = local`: every "
            f"answer the same as the local placement's. Total {time.time() - t0:.0f} s.")
    write_section("memoir-population", "MEMOIR agents on the population placement", body)


if __name__ == "__main__":
    main()
