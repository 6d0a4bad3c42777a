"""The main job: knowledge evolving over generations, measured against a truth that moves.

A run config with `generations: G` runs, per sweep point, generation 0 (every agent answers
alone before anything happens: the baseline) and then, for g = 1..G:

1. the world moves to epoch g (`world_change`: a share of people change company...);
2. *news*: some agents hear of the change (`news`) and learn it on their own (`individual`:
   an editor or a learner); in `misinformation.generation` some agents are also edited to a
   false fact;
3. *talk*: the group plays the protocol on every fact changed so far, the false facts, and a
   fixed probe of facts nobody changes (`queries`);
4. *consolidation*: each agent writes into its weights what the talk changed in its answers
   (its last-round answer where it differs from its own round-0 answer and is held with at
   least `min_confidence`), so round 0 of the next generation shows what entered the weights.

Everything random is drawn from the run's seed before any work (`make_plan`), and written to
the run dir (`facts.csv`: which fact was asked in which generation, its truth, its previous
value, the false object and who was told it). Every change to an agent goes through its
placement (agents/placement.py). After each phase that changes weights the changed agents'
deltas are saved under `checkpoints/<point>/g<g>-<phase>/` (each generation's consolidation
saves every agent), and a phase is marked done only when all of it is; records are written per
round (evolution/parts.py). A killed run resumes at the phase it stopped in.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from agents.delta import is_snapshot
from agents.methods import method_kind, takes
from agents.placement import Handle, Placement
from envs.facts import Fact
from envs.world import World
from evolution.learners.finetune import fact_texts
from evolution.outputs import agent_dir, write_whole
from evolution.parts import finished_records, merge_parts, write_part
from evolution.editors.requests import EditRequest
from evolution.plan import facts_table, make_plan, world_at
from evolution.run_config import RunConfig, UpdateConfig, assign_personas
from protocols.base import keyed_rng
from protocols.session import finished, play
from protocols.topology import build_graph

# -- how an agent changes ----------------------------------------------------------------------------
def update(handle: Handle, u: UpdateConfig, facts: list[Fact], world: World, replay: list[Fact], seed: int):
    """Write `facts` into the agent with `u`'s method (through its placement)."""
    if method_kind(u.method) == "learn":
        hp = {"seed": seed, **u.hparams}
        if u.replay:
            hp["replay_share"] = u.replay
        return handle.learn(fact_texts(world, facts, hp.get("forms", "both")), u.method,
                            replay=fact_texts(world, replay) if u.replay else None, **hp)
    requests = [EditRequest(f.subject, f.relation, f.object, world.query(f.subject, f.relation).prompt)
                for f in facts]
    hp = dict(u.hparams)
    if takes(u.method, "check_current"):
        # an agent may already answer a target (the talk made it so, or chance): the edit then
        # reinforces it, as learning would, instead of stopping the run
        hp.setdefault("check_current", False)
    return handle.edit(requests, u.method, world=world, **hp)


def consolidation_facts(records: list, agent: str, min_confidence: float) -> list[Fact]:
    """What the talk changed in `agent`'s answers and it now holds firmly enough."""
    mine = [r for r in records if r.agent == agent]
    if not mine:
        return []
    last = max(r.round for r in mine)
    alone = {(r.subject, r.relation): r.answer for r in mine if r.round == 0}
    return [Fact(r.subject, r.relation, r.answer) for r in mine
            if r.round == last and last > 0 and r.answer != alone.get((r.subject, r.relation))
            and r.confidence >= min_confidence]


# -- checkpoints ---------------------------------------------------------------------------------------
def updates_table(run_dir) -> pd.DataFrame:
    """Facts written into each agent, per point, generation and kind of update (news,
    misinformation, consolidation), from the finished phases' DONE files."""
    rows = []
    for done in sorted(Path(run_dir).glob("checkpoints/*/g*-*/DONE")):
        point, (g, _) = done.parent.parent.name, done.parent.name[1:].split("-")
        for agent, kinds in json.loads(done.read_text()).items():
            rows += [dict(point=int(point), generation=int(g), agent=agent, update=k, facts=v)
                     for k, v in (kinds or {}).items()]
    return pd.DataFrame(rows, columns=["point", "generation", "agent", "update", "facts"])


def _mark_done(phase_dir: Path, what: dict) -> None:
    write_whole(phase_dir / "DONE", json.dumps(what, default=str))


class _Progress:
    """A bar on a terminal, one line per step in job logs."""

    def __init__(self, total: int, label: str, on: bool):
        self.on, self.bar = on, None
        if on and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label or "run", unit="phase", leave=False)

    def say(self, msg: str) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def step(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(msg[:60])
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the loop -----------------------------------------------------------------------------------------
def run_point(i: int, label: str, cfg: RunConfig, placement: Placement, world0: World, out: Path,
              progress: bool, on_generation=None) -> None:
    """Run (or resume) sweep point `i`'s generations into `out`."""
    plan = make_plan(cfg, world0)
    G, names, stem = cfg.generations, cfg.agent_names, f"{i:03d}"
    facts = facts_table(plan, label, G)
    write_whole(out / "facts" / f"{stem}.csv", facts.to_csv(index=False))
    ckpt = out / "checkpoints" / stem
    graph = build_graph(cfg.graph, names, cfg.seed)
    personas = assign_personas(cfg)
    run_name = cfg.name + (f"/{label}" if label else "")
    tag = f"[{label}] " if label else ""
    bar = _Progress(3 * G + 1, label, progress)
    live: dict[str, Handle] = {}
    latest: dict[str, Path] = {}
    priors: dict = {}

    def ensure_live():
        if live:
            return
        for n in placement.names():         # the last point's agents, judges included
            placement.remove(n)
        for n, p in zip(names, personas):
            live[n] = placement.load(latest[n], n) if n in latest else placement.spawn(n, p)

    def reload(n: str, path: Path) -> None:
        placement.remove(n)
        live[n], latest[n] = placement.load(path, n), path

    def phase(g: int, what: str, fn) -> None:
        """Run one weight-changing phase of generation g, skipping agents it already saved."""
        d = ckpt / f"g{g:02d}-{what}"
        if (d / "DONE").exists():
            saved = {n: agent_dir(d, n) for n in names if is_snapshot(agent_dir(d, n))}
            latest.update(saved)
            for n in saved if live else ():      # agents already up: take the phase's result
                reload(n, saved[n])
            bar.step(f"g{g} {what} (done before)")
            return
        ensure_live()
        report = {}
        for n in names:
            saved = agent_dir(d, n)
            if is_snapshot(saved):                  # this agent finished the phase before a crash
                reload(n, saved)
                continue
            got = fn(n)
            if got is not None or what == "consolidate":
                placement.save(n, saved)
                latest[n] = saved
                report[n] = got
        _mark_done(d, report)
        bar.step(f"g{g} {what}")

    def talk(g: int) -> list:
        done = finished_records(out, f"{stem}-g{g:02d}")
        protocol = cfg.protocol_obj()
        last = 0 if g == 0 else None
        queries = [plan.world.query(s, r, cfg.queries.form, epoch=g) for s, r in plan.asked(g)]
        if done and finished(protocol, world_at(plan.world, g), queries, graph, cfg.seed, names, done, stop_after=last):
            bar.step(f"g{g} talk (done before)")
            return done
        ensure_live()

        def on_round(rnd, records):
            write_part(out, f"{stem}-g{g:02d}", rnd, records)
            bar.say(f"{tag}generation {g} round {rnd}: " + _round_line(records, facts[facts["generation"] == g]))

        def make_agent(name):
            return placement.handle(name) if name in placement.names() else placement.spawn(name)

        got = play(protocol, [live[n] for n in names], world_at(plan.world, g), queries, graph, cfg.seed,
                   run=run_name, generation=g, form=cfg.queries.form, trial=label, done=done, on_round=on_round,
                   priors=priors, make_agent=make_agent, stop_after=last)
        bar.step(f"g{g} talk")
        return got

    try:
        talk(0)
        for g in range(1, G + 1):
            world = world_at(plan.world, g)

            def news(n, g=g, world=world):
                out_ = {}
                if n in plan.news[g] and plan.changed[g]:
                    update(live[n], cfg.individual, plan.changed[g], world, plan.replay,
                           keyed_rng(cfg.seed, "individual", g, n).randrange(2**31))
                    out_["news"] = len(plan.changed[g])
                if g == cfg.misinformation.generation and n in plan.misinformed:
                    update(live[n], cfg.misinformation, plan.misinformed[n], world, plan.replay,
                           keyed_rng(cfg.seed, "misinform", n).randrange(2**31))
                    out_["misinformation"] = len(plan.misinformed[n])
                return out_ or None

            phase(g, "news", news)
            records = talk(g)

            def consolidate(n, g=g, world=world, records=records):
                if cfg.consolidation.method == "none":
                    return {"consolidation": 0}
                todo = consolidation_facts(records, n, cfg.consolidation.min_confidence)
                if todo:
                    update(live[n], cfg.consolidation, todo, world, plan.replay,
                           keyed_rng(cfg.seed, "consolidate", g, n).randrange(2**31))
                return {"consolidation": len(todo)}

            phase(g, "consolidate", consolidate)
            if on_generation is not None:
                on_generation(g)
    finally:
        bar.close()
        for n in names:
            if n in placement.names():
                placement.remove(n)


def _round_line(records, facts: pd.DataFrame) -> str:
    kind = {(r.subject, r.relation): r.kind for r in facts.itertuples()}
    parts = []
    for k, name in (("changed", "changed facts"), ("untouched", "untouched"), ("misinformation", "false facts")):
        rs = [r for r in records if kind.get((r.subject, r.relation)) == k]
        if rs:
            parts.append(f"{name} {sum(r.answer == r.truth for r in rs) / len(rs):.2f}")
    return "accuracy " + ", ".join(parts) + f" ({len(records)} records)"


def run_generations(cfg: RunConfig, points, placement: Placement, world: World, out: Path,
                    progress: bool) -> pd.DataFrame:
    """Every sweep point's generations; records merged (and metrics written) after each."""
    from evolution.report import build_report, summary_of, write_metrics
    for i, (label, pcfg) in enumerate(points):
        run_point(i, label, pcfg, placement, world, out, progress,
                  on_generation=lambda g: (merge_parts(out), write_metrics(out)))
    df = merge_parts(out)
    report = build_report(out)
    if progress:
        print("\n".join(summary_of(out)) + f"\nreport: {report}", flush=True)
    return df
