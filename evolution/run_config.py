"""A protocol experiment as plain data: YAML in, checked in full before any work.

Every key is known and typed; a bad value gets an error naming the key and the fix.
`--set a.b=value` edits the mapping before the check (values parsed as YAML). `sweep`
repeats the experiment once per value of a key (each point is checked too); each point's
records carry `run = "<name>/<key>=<value>"`.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agents.pretrain import PretrainConfig, world_of
from envs.world import RELATED, World
from evolution import overrides
from evolution.plan import make_plan, people_pool
from protocols.base import Protocol, ProtocolError, keyed_rng
from protocols.personas import social_weight
from protocols.registry import make_protocol
from protocols.topology import GraphError, build_graph


class ConfigError(ValueError):
    """Bad run config: the message names the key and the fix."""


@dataclass
class QueriesConfig:
    people: int = 20                 # people asked about, sampled with the run's seed
    relations: list | str = "all"    # relation names, or "all"
    who: str = "any"                 # any | taught | untaught (people the default model never saw)
    form: str = "question"           # 'question', 'question:i', 'heldout:i', 'template:i'


@dataclass
class KnowledgeConfig:
    """What each agent learns before talking (its own part of the world)."""
    split: str = "none"              # none | partition: the queried people split among the agents
    copies: int = 1                  # partition: how many agents learn each person
    texts_per_person: int = 3        # bios per person (templates and order drawn from the seed)
    epochs: int = 10
    lr: float = 1e-3
    replay: float = 0.0              # pretraining-mix texts (bios, QA, social) per bio, against forgetting


@dataclass
class PlacementConfig:
    """Where the agents live (agents/placement.py); records do not depend on it."""
    kind: str = "population"         # local | population | ray | vllm
    serve: str = "population"        # ray: what each actor runs, population | vllm (an engine per actor)
    actors: int | None = None        # ray: actors (default one per device)
    dedicated: bool = False          # ray: one actor per agent (for comparison)
    num_cpus: float | None = None    # ray: CPUs per actor (default 1; dedicated 0.01)
    num_gpus: float = 0.0            # ray: GPUs per actor (fractions allowed; default 1 when the cluster has GPUs)
    device: str | None = None        # default: the run's `device`
    max_rank: int = 32               # deltas of higher rank are kept dense
    max_loras: int = 4               # vllm: adapters in one batch
    max_cpu_loras: int | None = None # vllm: adapters kept in CPU memory (default max(max_loras, 8))
    max_lora_rank: int = 8           # vllm: the largest adapter rank served


@dataclass
class WorldChangeConfig:
    """generations: how the world moves at the start of each generation (envs.world.evolve)."""
    share: float = 0.02              # share of people whose value of each relation changes
    relations: list = field(default_factory=lambda: ["company"])   # derived relations (company_city) follow


@dataclass
class NewsConfig:
    """generations: who hears of the world's change (and learns it on their own)."""
    agents: int = 2                  # k agents drawn from the seed each generation...
    source: str | None = None        # ...or this agent and everyone within `hops` of it on the graph
    hops: int = 1


@dataclass
class UpdateConfig:
    """generations: one way of changing an agent's weights: an editor (rome, memit, ft_l, wise)
    or a learner (lora, finetune) with its hparams. `replay`: learners only, the share of each
    batch drawn from facts of people nobody asks about (against forgetting)."""
    method: str = "lora"
    hparams: dict = field(default_factory=dict)
    replay: float = 0.0


@dataclass
class MisinformationConfig:
    """generations: agents edited to a false fact (drawn from the seed, recorded as such)."""
    agents: int = 0                  # 0: nobody is misinformed
    facts: int = 1                   # false facts per misinformed agent
    generation: int = 1              # when (before that generation's talk)
    method: str = "rome"
    hparams: dict = field(default_factory=dict)
    replay: float = 0.0


@dataclass
class ConsolidationConfig:
    """generations: after the talk, each agent writes into its weights what the talk changed
    in its answers (final answer != its own round-0 answer) held with at least `min_confidence`."""
    method: str = "lora"             # a learner or an editor, or 'none'
    hparams: dict = field(default_factory=dict)
    replay: float = 0.0
    min_confidence: float = 0.5


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    model: str = "default"           # 'default' (PretrainConfig + `pretrain`) or a model dir
    pretrain: dict = field(default_factory=dict)
    agents: int = 3
    personas: str | list | dict = "neutral"   # one for all, one per agent, or {persona: share}
    protocol: str = "discussion"     # name, 'package.module:Class', or 'debate,reflection,debate'
    params: dict = field(default_factory=dict)
    rounds: int | None = None        # None: the protocol's default
    synchronous: bool | None = None  # None: the protocol's default
    graph: str | dict | list = "complete"
    queries: QueriesConfig = field(default_factory=QueriesConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    sweep: dict = field(default_factory=dict)
    batch_size: int = 32             # packed rows (one prompt with all its candidates) per forward
    device: str | None = None
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    # the generation loop (evolution/generations.py): set `generations` to run it
    generations: int | None = None
    world_change: WorldChangeConfig = field(default_factory=WorldChangeConfig)
    news: NewsConfig = field(default_factory=NewsConfig)
    individual: UpdateConfig = field(default_factory=UpdateConfig)
    misinformation: MisinformationConfig = field(default_factory=MisinformationConfig)
    consolidation: ConsolidationConfig = field(default_factory=ConsolidationConfig)

    @property
    def agent_names(self) -> list[str]:
        return [f"agent {i}" for i in range(self.agents)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def protocol_obj(self) -> Protocol:
        params = dict(self.params)
        for k in ("rounds", "synchronous"):
            if getattr(self, k) is not None:
                params[k] = getattr(self, k)
        return make_protocol(self.protocol, params)


SECTIONS = {"queries": QueriesConfig, "knowledge": KnowledgeConfig, "placement": PlacementConfig,
            "world_change": WorldChangeConfig, "news": NewsConfig, "individual": UpdateConfig,
            "misinformation": MisinformationConfig, "consolidation": ConsolidationConfig}
GENERATION_SECTIONS = ("world_change", "news", "individual", "misinformation", "consolidation")
KINDS = {"name": str, "seed": int, "model": str, "pretrain": dict, "agents": int,
         "personas": (str, list, dict), "protocol": str, "params": dict, "rounds": (int, type(None)),
         "synchronous": (bool, type(None)), "graph": (str, dict, list), "sweep": dict,
         "batch_size": int, "device": (str, type(None)),
         "queries.people": int, "queries.relations": (list, str), "queries.who": str, "queries.form": str,
         "knowledge.split": str, "knowledge.copies": int, "knowledge.texts_per_person": int,
         "knowledge.epochs": int, "knowledge.lr": (float, int), "knowledge.replay": (float, int),
         "placement.kind": str, "placement.serve": str, "placement.actors": (int, type(None)),
         "placement.dedicated": bool,
         "placement.num_cpus": (float, int, type(None)), "placement.num_gpus": (float, int),
         "placement.device": (str, type(None)), "placement.max_rank": int, "placement.max_loras": int,
         "placement.max_cpu_loras": (int, type(None)),
         "placement.max_lora_rank": int, "generations": (int, type(None)),
         "world_change.share": (float, int), "world_change.relations": list,
         "news.agents": int, "news.source": (str, type(None)), "news.hops": int,
         "individual.method": str, "individual.hparams": dict, "individual.replay": (float, int),
         "misinformation.agents": int, "misinformation.facts": int, "misinformation.generation": int,
         "misinformation.method": str, "misinformation.hparams": dict, "misinformation.replay": (float, int),
         "consolidation.method": str, "consolidation.hparams": dict, "consolidation.replay": (float, int),
         "consolidation.min_confidence": (float, int)}


def apply_sets(raw: dict, pairs: list[str]) -> dict:
    """`key.sub=value` edits on a copy of the raw mapping (evolution/overrides.py reads them)."""
    try:
        return overrides.apply_sets(raw, pairs)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _kind_ok(v, kinds) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(v, bool) and bool not in kinds:
        return False
    return isinstance(v, kinds)


def parse(raw: dict) -> RunConfig:
    """Keys and types only (no world, no protocol)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of keys, got {type(raw).__name__}")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    for k, v in raw.items():
        if k not in top:
            raise ConfigError(f"{k}: unknown key; known keys: {sorted(top)}")
        if k in SECTIONS:
            if not isinstance(v, dict):
                raise ConfigError(f"{k}: give a mapping with keys {[f.name for f in dataclasses.fields(SECTIONS[k])]}")
            sub = {f.name for f in dataclasses.fields(SECTIONS[k])}
            for kk, vv in v.items():
                if kk not in sub:
                    raise ConfigError(f"{k}.{kk}: unknown key; known keys of {k}: {sorted(sub)}")
                if not _kind_ok(vv, KINDS[f"{k}.{kk}"]):
                    raise ConfigError(f"{k}.{kk}: {vv!r} has the wrong type; expected {_names(KINDS[f'{k}.{kk}'])}")
        elif not _kind_ok(v, KINDS[k]):
            raise ConfigError(f"{k}: {v!r} has the wrong type; expected {_names(KINDS[k])}")
    kw = {k: v for k, v in raw.items() if k not in SECTIONS}
    for k, cls in SECTIONS.items():
        kw[k] = cls(**raw.get(k, {}))
    return RunConfig(**kw)


def _names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def pretrain_config(cfg: RunConfig) -> PretrainConfig:
    try:
        return PretrainConfig.from_dict(cfg.pretrain, where="pretrain.")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def world_for(cfg: RunConfig) -> World:
    """The world the model knows (cheap: no training)."""
    if cfg.model == "default":
        return world_of(pretrain_config(cfg))
    path = Path(cfg.model).expanduser()
    if cfg.pretrain:
        raise ConfigError("pretrain: settings apply to model: default only; drop them or use model: default")
    if not (path / "world.json").exists():
        raise ConfigError(f"model: {str(path)!r} is not a model dir with a world.json (the world its facts "
                          "come from); give 'default' or a dir written by `knowevo pretrain`")
    return World.load(path / "world.json")


def check(cfg: RunConfig, world: World) -> Protocol:
    """Every semantic check of one (sweep-free) config; returns its protocol."""
    if cfg.agents < 1:
        raise ConfigError(f"agents: {cfg.agents}; a run needs at least 1 agent")
    if cfg.rounds is not None and cfg.rounds < 1:
        raise ConfigError(f"rounds: {cfg.rounds}; give at least 1 round (round 0, answering alone, "
                          "always comes first)")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size: {cfg.batch_size}; give at least 1")
    _check_personas(cfg)
    _check_placement(cfg.placement)
    try:
        protocol = cfg.protocol_obj()
    except ProtocolError as e:
        raise ConfigError(str(e)) from None
    except TypeError as e:
        raise ConfigError(f"params: {e}") from None
    try:
        build_graph(cfg.graph, cfg.agent_names, cfg.seed)
    except GraphError as e:
        raise ConfigError(str(e)) from None
    q = cfg.queries
    rels = sorted(world.relations) if q.relations == "all" else q.relations
    if isinstance(rels, str) or not rels:
        raise ConfigError(f"queries.relations: {q.relations!r}; give 'all' or a list of relations "
                          f"from {sorted(world.relations)}")
    for r in rels:
        if r not in world.relations:
            raise ConfigError(f"queries.relations: unknown relation {r!r}; known: {sorted(world.relations)}")
    if q.who not in ("any", "taught", "untaught"):
        raise ConfigError(f"queries.who: {q.who!r}; use 'any', 'taught' or 'untaught'")
    pool = people_pool(world, q.who)
    if not 1 <= q.people <= len(pool):
        raise ConfigError(f"queries.people: {q.people}; the world has {len(pool)} people for who={q.who!r}; "
                          f"give 1..{len(pool)}")
    try:
        world.query(pool[0], rels[0], q.form)
    except Exception as e:
        raise ConfigError(f"queries.form: {q.form!r} ({e})") from None
    k = cfg.knowledge
    if k.split not in ("none", "partition"):
        raise ConfigError(f"knowledge.split: {k.split!r}; use 'none' or 'partition'")
    if k.split == "partition":
        if not 1 <= k.copies <= cfg.agents:
            raise ConfigError(f"knowledge.copies: {k.copies}; each person is learned by 1..{cfg.agents} agents")
        if k.texts_per_person < 1 or k.epochs < 1 or not k.lr > 0 or k.replay < 0:
            raise ConfigError("knowledge: texts_per_person and epochs must be >= 1, lr > 0 and replay >= 0")
    try:
        protocol.bind(world, cfg.seed, cfg.agent_names, make_agent=lambda name: None)
    except ProtocolError as e:
        raise ConfigError(str(e)) from None
    _check_support(cfg, world, rels)
    _check_generations(cfg, world)
    return protocol


def _check_support(cfg: RunConfig, world: World, rels: list[str]) -> None:
    """Asked-for evidence the debate cannot render is an error, not a silent debate without it."""
    for key, params in (("params.supported", cfg.params), ("params.debate.supported", cfg.params.get("debate"))):
        if not (isinstance(params, dict) and params.get("supported") is True):
            continue
        backed = [r for r in rels if RELATED.get(r) in world.relations]
        if not backed:
            pairs = sorted(f"{r} -> {s}" for r, s in RELATED.items() if r in world.relations and s in world.relations)
            raise ConfigError(f"{key}: debate backs a claim with the speaker's related fact, but none of the "
                              f"queried relations {rels} has one in this world (related pairs here: "
                              f"{pairs or 'none'}); query relations that have one, or set {key}=false")


def _check_generations(cfg: RunConfig, world: World) -> None:
    defaults = RunConfig()
    if cfg.generations is None:
        set_ = [k for k in GENERATION_SECTIONS if getattr(cfg, k) != getattr(defaults, k)]
        if set_:
            raise ConfigError(f"{set_[0]}: applies to generation runs only; set `generations: N` or drop it")
        return
    if cfg.generations < 1:
        raise ConfigError(f"generations: {cfg.generations}; give at least 1 (each generation: the world changes, "
                          "news, talk, consolidation)")
    if cfg.knowledge.split != "none":
        raise ConfigError("knowledge.split: applies to single-protocol runs; in a generation run agents learn "
                          "through `news` and `individual`")
    w = cfg.world_change
    if not 0 < w.share <= 1:
        raise ConfigError(f"world_change.share: {w.share}; give a share of people in (0, 1]")
    if not w.relations:
        raise ConfigError("world_change.relations: give at least one relation that changes")
    for r in w.relations:
        if r not in world.relations:
            raise ConfigError(f"world_change.relations: unknown relation {r!r}; known: {sorted(world.relations)}")
        if r in world.derived:
            raise ConfigError(f"world_change.relations: {r!r} follows {world.derived[r][0]!r}; change "
                              f"{world.derived[r][0]!r} instead")
    n = cfg.news
    if n.source is not None:
        nodes = cfg.agent_names
        if n.source not in nodes:
            raise ConfigError(f"news.source: {n.source!r} is not a node of the graph; give an agent name, "
                              f"one of {nodes[:3]}{'...' if len(nodes) > 3 else ''}")
        if n.hops < 0:
            raise ConfigError(f"news.hops: {n.hops}; give 0 (the source alone) or more")
    elif not 0 <= n.agents <= cfg.agents:
        raise ConfigError(f"news.agents: {n.agents}; the run has {cfg.agents} agents; give 0..{cfg.agents}")
    _check_update("individual", cfg.individual)
    m = cfg.misinformation
    if m.agents:
        if not 0 < m.agents <= cfg.agents:
            raise ConfigError(f"misinformation.agents: {m.agents}; the run has {cfg.agents} agents")
        if m.facts < 1:
            raise ConfigError(f"misinformation.facts: {m.facts}; give at least 1 false fact per agent")
        if not 1 <= m.generation <= cfg.generations:
            raise ConfigError(f"misinformation.generation: {m.generation}; give 1..{cfg.generations}")
        _check_update("misinformation", m)
    elif m.agents < 0:
        raise ConfigError(f"misinformation.agents: {m.agents}; give 0 (nobody) or more")
    c = cfg.consolidation
    if c.method != "none":
        _check_update("consolidation", c)
    if not 0 <= c.min_confidence <= 1:
        raise ConfigError(f"consolidation.min_confidence: {c.min_confidence}; give a probability in [0, 1]")
    try:
        make_plan(cfg, world)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_update(key: str, u) -> None:
    from agents.methods import check_hparams, method_kind
    try:
        kind = method_kind(u.method)
        check_hparams(u.method, u.hparams)
    except ValueError as e:
        raise ConfigError(f"{key}.method / {key}.hparams: {e}") from None
    if not 0 <= u.replay < 1:
        raise ConfigError(f"{key}.replay: {u.replay}; give the share of each batch replayed, in [0, 1)")
    if u.replay and kind != "learn":
        raise ConfigError(f"{key}.replay: {u.method!r} is an editor; replay applies to learners (lora, finetune)")
    if "replay_share" in u.hparams:
        raise ConfigError(f"{key}.hparams.replay_share: set {key}.replay instead (its replay texts come from the run)")


def _check_placement(p: PlacementConfig) -> None:
    kinds = ("local", "population", "ray", "vllm")
    if p.kind not in kinds:
        raise ConfigError(f"placement.kind: {p.kind!r}; use one of {list(kinds)}")
    if p.serve not in ("population", "vllm"):
        raise ConfigError(f"placement.serve: {p.serve!r}; use 'population' or 'vllm' (what each Ray actor runs)")
    if p.serve != "population" and p.kind != "ray":
        raise ConfigError(f"placement.serve applies to kind 'ray' only, not {p.kind!r}; set placement.kind=ray "
                          "(an engine per actor) or drop it")
    if p.serve == "vllm" and p.dedicated:
        raise ConfigError("placement.dedicated: not with serve 'vllm' (a vLLM engine per agent); drop it")
    if p.kind == "vllm" or p.serve == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError(f"placement.{'kind' if p.kind == 'vllm' else 'serve'}: 'vllm' needs vLLM: "
                              "pip install -e .[serve-cpu] on CPU, pip install vllm on GPU") from None
    if p.actors is not None and p.actors < 1:
        raise ConfigError(f"placement.actors: {p.actors}; give at least 1, or leave it out (one per device)")
    if p.num_cpus is not None and not p.num_cpus > 0:
        raise ConfigError(f"placement.num_cpus: {p.num_cpus}; give a number > 0 (fractions allowed)")
    if not p.num_gpus >= 0:
        raise ConfigError(f"placement.num_gpus: {p.num_gpus}; give a number >= 0 (fractions allowed)")
    for key in ("max_rank", "max_loras", "max_lora_rank"):
        if getattr(p, key) < 1:
            raise ConfigError(f"placement.{key}: {getattr(p, key)}; give at least 1")
    if p.max_cpu_loras is not None and p.max_cpu_loras < p.max_loras:
        raise ConfigError(f"placement.max_cpu_loras: {p.max_cpu_loras}; give at least max_loras ({p.max_loras}), "
                          "or leave it out")
    if p.kind != "ray" and (p.actors is not None or p.dedicated or p.num_cpus is not None or p.num_gpus):
        raise ConfigError(f"placement: actors, dedicated, num_cpus and num_gpus apply to kind 'ray' only, "
                          f"not {p.kind!r}; set placement.kind=ray or drop them")
    if p.kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("placement.kind: 'ray' needs Ray: pip install 'ray[default]'") from None


def _check_personas(cfg: RunConfig) -> None:
    p = cfg.personas
    names = [p] if isinstance(p, str) else list(p)
    if isinstance(p, list) and len(p) != cfg.agents:
        raise ConfigError(f"personas: {len(p)} given for {cfg.agents} agents; give one per agent, one "
                          "name for all, or {persona: share}")
    if isinstance(p, dict):
        if not p or not all(isinstance(v, (int, float)) and v >= 0 for v in p.values()) or sum(p.values()) <= 0:
            raise ConfigError("personas: shares must be numbers >= 0 with a positive sum, e.g. "
                              "{neutral: 0.5, easy-going: 0.5}")
    for n in names:
        try:
            social_weight(n)
        except ValueError as e:
            raise ConfigError(f"personas: {e}") from None


def assign_personas(cfg: RunConfig) -> list[str]:
    """Each agent's persona: one for all, one per agent, or shares dealt by largest remainder
    and shuffled by the seed."""
    p = cfg.personas
    if isinstance(p, str):
        return [p] * cfg.agents
    if isinstance(p, list):
        return list(p)
    total = sum(p.values())
    exact = {k: cfg.agents * v / total for k, v in p.items()}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:cfg.agents - sum(counts.values())]:
        counts[k] += 1          # largest remainders get the agents left over
    out = [k for k, c in counts.items() for _ in range(c)]
    keyed_rng(cfg.seed, "personas").shuffle(out)
    return out


def expand(cfg: RunConfig, raw: dict) -> list[tuple[str, RunConfig]]:
    """(label, config) per sweep point; ('', cfg) without a sweep."""
    if not cfg.sweep:
        return [("", cfg)]
    keys = list(cfg.sweep)
    for k in keys:
        if k == "sweep" or k.startswith("sweep."):
            raise ConfigError(f"sweep.{k}: a sweep cannot sweep itself")
        if not isinstance(cfg.sweep[k], list) or not cfg.sweep[k]:
            raise ConfigError(f"sweep.{k}: give a non-empty list of values")
    out = []
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for values in itertools.product(*(cfg.sweep[k] for k in keys)):
        label = ",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in zip(keys, values))
        pairs = [f"{k}={json.dumps(v)}" for k, v in zip(keys, values)]   # JSON is YAML
        try:
            point = parse(apply_sets(base, pairs))
        except ConfigError as e:
            raise ConfigError(f"sweep ({label}): {e}") from None
        out.append((label, point))
    return out


def _short(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def load(source, sets: list[str] | None = None) -> tuple[dict, RunConfig, list[tuple[str, RunConfig]], World]:
    """(raw mapping, config, sweep points, world) from a YAML path or a mapping, fully
    checked (every sweep point included)."""
    if isinstance(source, RunConfig):
        raw = _raw_of(source)
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config: {str(path)!r} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
    raw = apply_sets(raw, sets or [])
    cfg = parse(raw)
    points = expand(cfg, raw)
    world = world_for(cfg)
    if cfg.sweep:     # keys the sweep sets are still checked as written
        try:
            check(parse({k: v for k, v in raw.items() if k != "sweep"}), world)
        except ConfigError as e:
            raise ConfigError(f"{e} (in the config as written; the sweep sets other values, but this one must "
                              "be valid too)") from None
    for label, point in points:
        if point.model != cfg.model or point.pretrain != cfg.pretrain or point.placement != cfg.placement:
            raise ConfigError(f"sweep ({label}): model, pretrain and placement cannot be swept; run one config "
                              "per model and placement")
        try:
            check(point, world)
        except ConfigError as e:
            raise ConfigError(f"sweep ({label}): {e}" if label else str(e)) from None
    return raw, cfg, points, world


def _raw_of(cfg: RunConfig) -> dict:
    d = cfg.to_dict()
    defaults = RunConfig().to_dict()
    return {k: v for k, v in d.items() if v != defaults[k]}
