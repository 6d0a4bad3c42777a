"""Knowledge editing on the default model, EasyEdit-style: the issue's three must-shows.

    python -m bench.editing single     [--n 100]   [--methods rome,memit,ft_l,wise,finetune]
    python -m bench.editing sequential [--n 1000]  [--checkpoints 10,100,1000] [--methods ...]
    python -m bench.editing batch      [--n 1000]  (MEMIT, every edit in one call)
    python -m bench.editing neighbours [--n 100]   [--methods rome,rome:subject_token=-3,...]
    python -m bench.editing cli        [--n 20]    (`knowevo edit` as a new user runs it)
    python -m bench.editing report                 (tables + plot from what is stored)

A method may carry hyperparameters: `--methods wise:shard_size=10:merge=ties`. `--preset wide`
runs on the wider default model (agents.model.PRESETS); its rows are stored as `method@wide`.

single: each counterfactual edit on a fresh copy of the base model (distinct people), scored
against one baseline of the unedited model. sequential: the edits one after another on one
agent; the metrics after 10, 100, 1,000 edits cover every edit made so far. The 1,000
sequential edits are every editable fact (5 relations; company city is derived) of 200 of
the 240 taught people; the other 40 people are the locality probe (the same 200 queries at
every checkpoint). Rows are stored in docs/bench_data/editing.json as they are measured, so
an interrupted run resumes where it stopped (`--fresh` starts over). Every number comes from
belief records (analysis.edit_metrics); a method that raises on an edit counts it as
failed (the editors leave the weights as they were) and goes on.

neighbours: the single edits again, scored on the people who share the edited person's first
name (the same relation's question): locality samples random people and so almost never
meets them, yet they are whom an edit keyed on the first name token would hit.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

import pandas as pd
import torch

from agents.agent import Agent
from agents.model import PRESETS
from agents.pretrain import PretrainConfig, pretrained_dir
from analysis.edit_metrics import edit_baseline, evaluate_edits
from bench.common import DOC, md_table, write_section
from envs.facts import Fact
from envs.world import World
from evolution.overrides import flat_sets
from evolution.editors.requests import counterfactual_requests

METHODS = ("rome", "memit", "ft_l", "wise", "memoir", "finetune")
STORE = DOC.parent / "bench_data" / "editing.json"
PLOT = DOC.parent / "img" / "editing_sequential.png"
METRICS = ("reliability", "generalization", "locality", "locality_same_person", "portability", "bio_ppl_ratio")
# the same by greedy generation, and EasyEdit's fluency (n-gram entropy of generated text)
GEN_METRICS = ("reliability_gen", "generalization_gen", "locality_gen", "locality_same_person_gen",
               "portability_gen", "fluency")
# plain fine-tuning (the `finetune` learner on the fact's statements and questions) as the
# baseline every editor should beat on locality; the editors run with their defaults
FINETUNE = dict(epochs=5, lr=1e-3, batch_size=16)
LOCALITY_PEOPLE = 40


PRESET = "small"     # the default model's shape (main's --preset)


def model_config() -> PretrainConfig:
    return PretrainConfig.from_dict({"preset": PRESET})


def method_spec(spec: str) -> tuple[str, dict]:
    """'wise' or 'wise:shard_size=10:merge=ties': a method and hyperparameters that differ
    from its defaults (rows are stored under the whole spec, and '@preset' off the small model)."""
    name, *items = spec.split("@")[0].split(":")
    if name not in METHODS:
        raise SystemExit(f"--methods: unknown {name!r}; choose from {list(METHODS)}")
    try:
        return name, flat_sets(items)      # what `knowevo edit --set` does with its pairs
    except ValueError as e:
        raise SystemExit(f"--methods {spec!r}: {e}") from None


def apply_edit(agent: Agent, world: World, requests, method: str) -> dict:
    """One call of `method` (a spec, see method_spec) on `requests`; {'seconds', 'failed', 'error'}."""
    name, hp = method_spec(method)
    t0 = time.perf_counter()
    try:
        if name == "finetune":
            agent.learn([Fact(r.subject, r.relation, r.target) for r in requests], "finetune", world=world,
                        **{**FINETUNE, **hp})
        else:
            agent.edit(requests, method=name, world=world, **hp)
        err = None
    except (ValueError, FloatingPointError) as e:   # EditError, LearnError: weights restored
        err = f"{type(e).__name__}: {e}"[:200]
    return {"seconds": time.perf_counter() - t0, "failed": err is not None, "error": err}


# -- storage: one JSON list of rows, keyed by (experiment, method, edits) ----------------------
def load_rows() -> list[dict]:
    """Stored rows; rows measured before the rename read their `fluency` as `bio_ppl_ratio`."""
    rows = json.loads(STORE.read_text()) if STORE.exists() else []
    for r in rows:
        if "bio_ppl_ratio" not in r and "fluency" in r:
            r["bio_ppl_ratio"] = r.pop("fluency")
    return rows


def save_row(row: dict) -> None:
    row = {**row, "measured": f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads, "
                              f"load avg {os.getloadavg()[0]:.1f}"}
    rows = [r for r in load_rows() if (r["experiment"], r["method"], r["edits"]) !=
            (row["experiment"], row["method"], row["edits"])]
    STORE.parent.mkdir(exist_ok=True)
    STORE.write_text(json.dumps(rows + [row], indent=1, default=float))


def done(experiment: str, method: str, edits: int) -> bool:
    return any((r["experiment"], r["method"], r["edits"]) == (experiment, method, edits) for r in load_rows())


def default_model() -> tuple[Agent, World]:
    path = pretrained_dir(model_config(), progress=False)
    return Agent.from_dir(path), World.load(path / "world.json")


# -- experiments -----------------------------------------------------------------------------
def run_single(base: Agent, world: World, n: int, methods) -> None:
    reqs = counterfactual_requests(world, n, seed=0)   # as measured (no target was the current answer)
    baseline = edit_baseline(base, world, reqs, n_locality=200, n_bios=20)
    for method in methods:
        if done("single", method, n):
            print(f"single/{method}: stored, skipped")
            continue
        per, fails, seconds = [], 0, []
        for i, r in enumerate(reqs):
            agent = base.spawn(f"{method}-{i}")
            res = apply_edit(agent, world, [r], method)
            fails += res["failed"]
            seconds.append(res["seconds"])
            per.append(evaluate_edits(agent, world, [r], before=baseline))
            if (i + 1) % 20 == 0:
                print(f"single/{method}: {i + 1}/{n} edits, {sum(seconds) / len(seconds):.2f} s/edit", flush=True)
        df = pd.DataFrame(per)
        row = {"experiment": "single", "method": method, "edits": n, "failed": fails,
               "s/edit": sum(seconds) / n, **{m: float(df[m].astype(float).mean()) for m in METRICS + GEN_METRICS}}
        save_row(row)
        print(row, flush=True)


def run_neighbours(base: Agent, world: World, n: int, methods) -> None:
    cases = [(r, nb) for r in counterfactual_requests(world, n, seed=0)
             if (nb := first_name_neighbours(world, r.subject))]
    for method in methods:
        if done("neighbours", method, n):
            print(f"neighbours/{method}: stored, skipped")
            continue
        kept = hit = hit_before = total = fails = 0
        for i, (r, neighbours) in enumerate(cases):
            queries = [world.query(p, r.relation, "question") for p in neighbours]
            before = [b.answer for b in base.beliefs(queries)]
            agent = base.spawn(f"{method}-{i}")
            fails += apply_edit(agent, world, [r], method)["failed"]
            after = [b.answer for b in agent.beliefs(queries)]
            total += len(after)
            kept += sum(x == y for x, y in zip(before, after))
            hit += sum(y == r.target for y in after)
            hit_before += sum(x == r.target for x in before)
        row = {"experiment": "neighbours", "method": method, "edits": n, "failed": fails, "edited people": len(cases),
               "neighbour facts": total, "kept": kept / total, "the target before": hit_before / total,
               "now the target": hit / total}
        save_row(row)
        print(row, flush=True)


def first_name_neighbours(world: World, subject: str) -> list[str]:
    first = subject.split()[0]
    return [p.name for p in world.people if p.taught and p.name != subject and p.name.split()[0] == first]


def sequential_requests(base: Agent, world: World, n: int):
    """n distinct facts of the people outside the locality probe (seeded), each target
    something the base model does not answer now."""
    taught = sorted(p.name for p in world.people if p.taught)
    keep_out = set(random.Random(0).sample(taught, LOCALITY_PEOPLE))
    return counterfactual_requests(world, n, seed=1, subjects=[s for s in taught if s not in keep_out],
                                   distinct_subjects=False, agent=base)


def run_sequential(base: Agent, world: World, n: int, checkpoints: list[int], methods, max_minutes: float) -> None:
    reqs = sequential_requests(base, world, n)
    baseline = edit_baseline(base, world, reqs, n_locality=200, n_bios=20)
    for method in methods:
        if all(done("sequential", method, c) for c in checkpoints):
            print(f"sequential/{method}: stored, skipped")
            continue
        agent, fails, spent, t_start = base.spawn(method), 0, 0.0, time.time()
        for i, r in enumerate(reqs, start=1):
            res = apply_edit(agent, world, [r], method)
            fails += res["failed"]
            spent += res["seconds"]
            over = (time.time() - t_start) / 60 > max_minutes
            if i in checkpoints or over:   # out of time: measure where it stopped, then stop
                t_eval = time.time()
                m = evaluate_edits(agent, world, reqs[:i], before=baseline)
                row = {"experiment": "sequential", "method": method, "edits": i, "failed": fails,
                       "s/edit": spent / i, "eval s": round(time.time() - t_eval, 1), "agent MB": agent_mb(agent),
                       "stopped": "time budget" if over and i not in checkpoints else "",
                       **{k: float(m[k]) if m.get(k) is not None else float("nan") for k in METRICS + GEN_METRICS}}
                save_row(row)
                print(row, flush=True)
            if over:
                print(f"sequential/{method}: stopped after {i} edits ({max_minutes} min budget); later "
                      "checkpoints not measured", flush=True)
                break


def run_cli(base: Agent, world: World, n: int, methods) -> None:
    """`knowevo edit --method M` with `n` requests (distinct people) on the default model, as a
    new user runs it: every request in one call, metrics from the command's metrics.json."""
    import tempfile
    from pathlib import Path

    from evolution.cli import main as knowevo
    reqs = counterfactual_requests(world, n, seed=0, agent=base)
    for method in methods:
        if done("cli", method, n):
            print(f"cli/{method}: stored, skipped")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "requests.jsonl"
            f.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in reqs))
            t0 = time.perf_counter()
            name, hp = method_spec(method)
            sets = [x for k, v in hp.items() for x in ("--set", f"{k}={json.dumps(v)}")]
            rc = knowevo(["edit", "--model", str(pretrained_dir(model_config(), progress=False)), "--method", name,
                          "--requests", str(f), "--out", str(Path(tmp) / "out")] + sets)
            seconds = time.perf_counter() - t0
            m = json.loads((Path(tmp) / "out" / "metrics.json").read_text())["metrics"] if rc == 0 else {}
        row = {"experiment": "cli", "method": method, "edits": n, "failed": n if rc else 0, "seconds": seconds,
               "s/edit": seconds / n,
               **{k: float(m[k]) if m.get(k) is not None else float("nan") for k in METRICS + GEN_METRICS}}
        save_row(row)
        print(row, flush=True)


def agent_mb(agent: Agent) -> float:
    """What the agent holds beyond the shared base: its weight delta and its method state
    (edit memory, a side memory, a routed memory), in MB as saved (float32)."""
    from agents.state import state_tensors, take_extensions
    tensors, _ = state_tensors({**agent.state, **take_extensions(agent.model)})
    held = list(agent.delta().values()) + list(tensors.values())
    return round(sum(t.numel() * t.element_size() for t in held) / 2 ** 20, 3)


def run_batch(base: Agent, world: World, n: int) -> None:
    reqs = sequential_requests(base, world, n)
    baseline = edit_baseline(base, world, reqs, n_locality=200, n_bios=20)
    agent = base.spawn("memit-batch")
    res = apply_edit(agent, world, reqs, "memit")
    m = evaluate_edits(agent, world, reqs, before=baseline)
    row = {"experiment": "batch", "method": "memit", "edits": n, "failed": n if res["failed"] else 0,
           "seconds": res["seconds"], "s/edit": res["seconds"] / n, "error": res["error"],
           **{k: float(m[k]) if m.get(k) is not None else float("nan") for k in METRICS + GEN_METRICS}}
    save_row(row)
    print(row, flush=True)


# -- report ----------------------------------------------------------------------------------
def plot_sequential(df: pd.DataFrame) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ("reliability", "generalization", "locality", "portability")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharey=True)
    for ax, k in zip(axes, keys):
        for method, g in df.groupby("method"):
            g = g.sort_values("edits")
            ax.plot(g.edits, g[k], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_title(k)
        ax.set_xlabel("sequential edits")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def report() -> None:
    rows = pd.DataFrame(load_rows())
    if rows.empty:
        raise SystemExit(f"nothing stored in {STORE}; run `python -m bench.editing single` first")
    cols = ["failed", "s/edit", "reliability", "generalization", "locality", "locality_same_person",
            "portability", "bio_ppl_ratio"]
    gen_cols = [c for c in GEN_METRICS if c in rows]
    note = ("Default model (300 people, seed 0). reliability = edit prompt answered with the target; "
            "generalization = the 2 held-out question paraphrases; locality = unchanged answers on 200 "
            "facts of people no edit touches; locality_same_person = the edited people's other relations "
            "unchanged; portability = company city follows a company edit (where the city changes); "
            "bio_ppl_ratio = perplexity of 20 untouched bios before / after (1 = unchanged; called fluency "
            "before 2026-12-03). Argmax over each relation's closed candidate set. The `*_gen` tables score "
            "the same edits by greedy generation: the continuation begins with the target's words (locality: "
            "its first words are the unedited model's; see the reading below for the sequential rows); fluency = "
            "EasyEdit's n-gram entropy (bits) of 40 tokens generated from 20 edit prompts. Rows "
            "without generation figures were measured before generation scoring existed. `finetune` = plain full fine-tuning on the fact's texts "
            f"({FINETUNE}). locality_same_person is nan where no relation of an edited person is left unedited "
            "(1,000 sequential edits cover nearly every fact of the people they draw from). Timings on 2 "
            "CPU cores shared with other runs (`measured` gives the load average, and the threads where "
            "they were recorded); rows without a thread count ran with 1 thread.")
    cols += [c for c in ("agent MB", "stopped", "measured") if c in rows]   # absent from rows of older stores
    rows = rows.assign(**{c: rows[c].fillna("") for c in ("agent MB", "stopped", "measured") if c in rows})
    parts = []
    single = rows[rows.experiment == "single"]
    if not single.empty:
        parts.append("### 100 single counterfactual edits (each on a fresh copy)\n\n" +
                     md_table(single.set_index("method")[[c for c in cols if c not in ("stopped", "agent MB")]]))
    seq = rows[rows.experiment == "sequential"]
    if not seq.empty:
        plot_sequential(seq)
        t = seq.sort_values(["method", "edits"]).set_index(["method", "edits"])[cols]
        gen = seq.dropna(subset=gen_cols[:1]) if gen_cols else seq.iloc[:0]
        gen_t = ("\n\nThe same, by greedy generation:\n\n" +
                 md_table(gen.sort_values(["method", "edits"]).set_index(["method", "edits"])[gen_cols])) \
            if not gen.empty else ""
        parts.append("### Sequential edits (metrics over every edit so far)\n\n" + md_table(t) + gen_t +
                     "\n\n`stopped: time budget`: the method ran out of its `--max-minutes` there; the row is "
                     "measured where it stopped and later checkpoints were not reached." +
                     f"\n\n![sequential editing]({PLOT.relative_to(DOC.parent)})")
    nb = rows[rows.experiment == "neighbours"]
    if not nb.empty:
        parts.append("### Locality on first-name neighbours (the single edits' people who share a first name)\n\n" +
                     md_table(nb.set_index("method")[["edits", "failed", "edited people", "neighbour facts", "kept",
                                                      "the target before", "now the target", "measured"]]) +
                     "\n\nkept = the neighbour's answer on the edited relation is what the unedited model said; "
                     "now the target = it is the edit's target. `rome` edits the token tracing picks "
                     "(`evolution.editors.target.key_tokens`); `subject_token=-3` is the first name, -1 the last.")
    cli = rows[rows.experiment == "cli"]
    if not cli.empty:
        parts.append("### `knowevo edit` on a fresh default model (every request in one call, distinct people)\n\n" +
                     md_table(cli.sort_values("edits").set_index(["method", "edits"])
                              [["seconds"] + [c for c in cols if c not in ("stopped", "agent MB")] +
                               [c for c in gen_cols if c in cli]]))
    batch = rows[rows.experiment == "batch"]
    if not batch.empty:
        parts.append("### MEMIT, all edits in one batch\n\n" +
                     md_table(batch.sort_values("edits").set_index(["method", "edits"])
                              [["seconds"] + [c for c in cols if c not in ("stopped", "agent MB")]]))
    write_section("editing", "Knowledge editing: single, sequential and batch", "\n\n".join(parts + [note]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", choices=("single", "sequential", "batch", "neighbours", "cli", "report"))
    ap.add_argument("--n", type=int, default=None, help="edits (single: 100, sequential/batch: 1000)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--checkpoints", default="10,100,1000")
    ap.add_argument("--max-minutes", type=float, default=60.0, help="per method, sequential only")
    ap.add_argument("--fresh", action="store_true", help="forget stored rows of this experiment")
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS), help="the default model's shape")
    args = ap.parse_args()
    global PRESET
    PRESET = args.preset
    methods = [m.strip() + ("" if PRESET == "small" else f"@{PRESET}") for m in args.methods.split(",") if m.strip()]
    for m in methods:
        method_spec(m)
    if args.fresh and STORE.exists():
        STORE.write_text(json.dumps([r for r in load_rows() if r["experiment"] != args.experiment], indent=1))
    if args.experiment != "report":
        base, world = default_model()
        if args.experiment == "single":
            run_single(base, world, args.n or 100, methods)
        elif args.experiment == "neighbours":
            run_neighbours(base, world, args.n or 100, methods)
        elif args.experiment == "cli":
            run_cli(base, world, args.n or 20, methods)
        elif args.experiment == "sequential":
            cps = sorted(int(c) for c in args.checkpoints.split(","))
            run_sequential(base, world, args.n or max(cps), cps, methods, args.max_minutes)
        else:
            run_batch(base, world, args.n or 1000)
    report()


if __name__ == "__main__":
    main()
