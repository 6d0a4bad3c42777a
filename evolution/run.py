"""Run a protocol experiment from YAML: `python -m evolution.run CONFIG [--set k=v ...] --out RUN_DIR`.

The config is checked in full (every sweep point) before the model is touched. Then, per
sweep point: the agents (personas, and each agent's own knowledge learned by fine-tuning on
bios), the queries and the graph, all drawn from the run's seed; the protocol is played and
each finished round is written at once as a Parquet part file under RUN_DIR/parts, merged
into RUN_DIR/records.parquet after each point. Rerunning with the same out dir and config
resumes: finished rounds are read back, not redone (a crash loses at most one round).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from agents.delta import is_snapshot
from agents.placement import Handle, Placement, PlacementError
from agents.placement_kinds import make_placement
from agents.pretrain import PretrainConfig, pretrained_dir
from envs.corpus import bio_text, sample_texts
from envs.world import World
from evolution.outputs import agent_dir, check_writable
from evolution.parts import finished_records, merge_parts, write_part
from evolution.plan import people_pool
from evolution.run_config import ConfigError, RunConfig, assign_personas, load, parse, pretrain_config
from protocols.base import keyed_rng
from protocols.session import finished, play
from protocols.topology import build_graph


# -- what a run is made of (every random choice from the run's seed) --------------------------
def sample_queries(cfg: RunConfig, world: World):
    pool = people_pool(world, cfg.queries.who)
    people = keyed_rng(cfg.seed, "queries").sample(pool, cfg.queries.people)
    rels = sorted(world.relations) if cfg.queries.relations == "all" else list(cfg.queries.relations)
    return [world.query(s, r, cfg.queries.form) for s in people for r in rels]


def knowledge_shares(cfg: RunConfig, queries) -> list[list[str]]:
    """Each agent's people: the queried people shuffled with the seed, dealt round-robin,
    each to `copies` agents."""
    people = list(dict.fromkeys(q.subject for q in queries))
    keyed_rng(cfg.seed, "knowledge").shuffle(people)
    shares = [[] for _ in range(cfg.agents)]
    for j, name in enumerate(people):
        for c in range(cfg.knowledge.copies):
            shares[(j + c) % cfg.agents].append(name)
    return shares


def _model_pretrain(cfg: RunConfig, model_dir: Path) -> PretrainConfig:
    if cfg.model == "default":
        return pretrain_config(cfg)
    meta = model_dir / "knowevo.json"
    pre = json.loads(meta.read_text()).get("pretrain") if meta.exists() else None
    return PretrainConfig.from_dict(pre) if pre else PretrainConfig()


def agents_key(cfg: RunConfig) -> str:
    """What makes a sweep point's agents: points that share it share the agents."""
    return hashlib.sha256(json.dumps([cfg.seed, cfg.agents, cfg.personas, cfg.to_dict()["knowledge"],
                                      cfg.to_dict()["queries"]], sort_keys=True).encode()).hexdigest()[:12]


def build_agents(cfg: RunConfig, placement: Placement, model_dir: Path, world: World, queries,
                 saved_in: Path) -> list[Handle]:
    """The point's agents on `placement`: spawned on the base, each fine-tuned on its own share
    of the world; every learned agent is saved (its delta) under `saved_in` as soon as it is
    made, and read back instead of relearned when the run resumes."""
    names, personas = cfg.agent_names, assign_personas(cfg)
    k = cfg.knowledge
    shares = knowledge_shares(cfg, queries) if k.split != "none" else [[] for _ in names]
    pre = _model_pretrain(cfg, model_dir) if k.split != "none" else None
    handles = []
    for name, persona, mine in zip(names, personas, shares):
        saved = agent_dir(saved_in, name)
        if mine and is_snapshot(saved):
            handles.append(placement.load(saved, name))
            continue
        h = placement.spawn(name, persona)
        if mine:
            texts = [bio_text(world, who, keyed_rng(cfg.seed, "bio", name, who, i), pre.corpus)
                     for who in mine for i in range(k.texts_per_person)]
            texts += sample_texts(world, keyed_rng(cfg.seed, "replay", name), pre.corpus, "mixed",
                                  round(k.replay * len(texts)))
            h.learn(texts, "finetune", epochs=k.epochs, lr=k.lr,
                    seed=keyed_rng(cfg.seed, "learn", name).randrange(2**31))
            placement.save(name, saved)
        handles.append(h)
    return handles


def placement_for(cfg: RunConfig, model_dir: Path) -> Placement:
    p = cfg.placement
    lora = dict(max_loras=p.max_loras, max_cpu_loras=p.max_cpu_loras, max_lora_rank=p.max_lora_rank)
    kw = {"ray": dict(actors=p.actors, dedicated=p.dedicated, num_cpus=p.num_cpus, num_gpus=p.num_gpus,
                      serve=p.serve, **(lora if p.serve == "vllm" else {})),
          "vllm": lora}.get(p.kind, {})
    try:
        return make_placement(p.kind, model_dir, p.device or cfg.device, cfg.batch_size, p.max_rank, **kw)
    except PlacementError as e:
        raise ConfigError(str(e)) from None


# -- the run --------------------------------------------------------------------------------------
def run_experiment(config, out_dir, sets: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the experiment of `config` (a YAML path, a mapping or a RunConfig)
    into `out_dir`; the belief records of every sweep point and round."""
    raw, cfg, points, _ = load(config, sets)
    out = check_writable(out_dir, "out")
    now = cfg.to_dict()
    saved = out / "config.yaml"
    if saved.exists():
        old = yaml.safe_load(saved.read_text()) or {}
        try:    # keys added since that run was written take their defaults
            old = parse(old).to_dict()
        except ConfigError:
            pass
        # where the agents live and how rows are batched change no record beyond float rounding
        diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k)
                      and k not in ("placement", "batch_size", "device"))
        if diff:
            raise ConfigError(f"out: {str(out)!r} holds a run of another config (differs in {diff}); "
                              "give another --out, or delete that dir to start over")
    model_dir = pretrained_dir(pretrain_config(cfg), progress=progress) if cfg.model == "default" else Path(cfg.model)
    placement = placement_for(cfg, model_dir)       # Ray resources are checked here, before any work
    saved.write_text(yaml.safe_dump(now, sort_keys=False))
    try:
        if cfg.generations is not None:
            from evolution.generations import run_generations
            return run_generations(cfg, points, placement, World.load(model_dir / "world.json"), out, progress)
        return _run_points(cfg, points, placement, model_dir, out, print if progress else (lambda *a, **k: None))
    finally:
        placement.close()


def _run_points(cfg: RunConfig, points, placement: Placement, model_dir: Path, out: Path, say) -> pd.DataFrame:
    world = World.load(model_dir / "world.json")
    priors: dict = {}
    built: dict[str, list[Handle]] = {}
    for i, (label, pcfg) in enumerate(points):
        queries = sample_queries(pcfg, world)
        protocol = pcfg.protocol_obj()
        done = finished_records(out, f"{i:03d}")
        tag = f"[{label}] " if label else ""
        graph = build_graph(pcfg.graph, pcfg.agent_names, pcfg.seed)
        if done and finished(protocol, world, queries, graph, pcfg.seed, pcfg.agent_names, done):
            say(f"{tag}done before: {len(done)} records")
            continue
        key = agents_key(pcfg)
        if key not in built:            # a point with other agents: the last point's go
            for h in (h for hs in built.values() for h in hs):
                placement.remove(h.name)
            built = {key: build_agents(pcfg, placement, model_dir, world, queries, out / "agents" / key)}
        agents = built[key]

        def make_agent(name):           # judges and moderators: fresh agents on the base weights
            return placement.handle(name) if name in placement.names() else placement.spawn(name)

        def on_round(rnd, records, i=i, tag=tag):
            write_part(out, f"{i:03d}", rnd, records)
            acc = sum(r.answer == r.truth for r in records) / max(1, len(records))
            say(f"{tag}round {rnd}: accuracy {acc:.3f} over {len(records)} records")

        play(protocol, agents, world, queries, graph, pcfg.seed, run=cfg.name + (f"/{label}" if label else ""),
             form=pcfg.queries.form, trial=label, done=done, on_round=on_round, priors=priors,
             make_agent=make_agent)
        merge_parts(out)
    df = merge_parts(out)
    say(f"wrote {len(df)} records to {out / 'records.parquet'}")
    return df


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evolution.run", description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set rounds=2 --set params.confederates=4")
    p.add_argument("--out", required=True, help="run dir: records.parquet and config.yaml go here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        run_experiment(args.config, args.out, args.set, progress=not args.quiet)
    except ValueError as e:   # config, protocol and graph errors: one clear line
        print(f"evolution.run: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
