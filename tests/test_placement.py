"""Placements give the same records: local (one model per agent), population (one base model,
each row its agent's delta) and Ray actors, for agents with distinct deltas (ROME edits, LoRA
and dense fine-tunes, none); deltas and method state saved and loaded; actor faults survived;
bad placement configs refused before any work."""
from __future__ import annotations

import random

import pytest

from agents.delta import factor, load_snapshot
from agents.placement import LocalPlacement, PlacementError, check_placement
from agents.placement_kinds import make_placement
from agents.population import PopulationPlacement
from envs.world import claim
from protocols.registry import make_protocol
from protocols.session import play
from protocols.topology import build_graph
from tests.placement_helpers import all_beliefs, give_deltas

N = 8


def assert_same(a, b, tol=1e-4):
    """Beliefs (or records) equal: same answers, probabilities to `tol`."""
    assert len(a) == len(b)
    diff = [(x.agent, x.subject, x.answer, y.answer) for x, y in zip(a, b) if x.answer != y.answer]
    assert not diff, f"answers differ: {diff[:5]}"
    worst = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x.probs, y.probs))
    assert worst < tol, f"probabilities differ by up to {worst}"


@pytest.fixture(scope="module")
def placements(small_dir, small_world):
    """The same 8 agents made on a local and on a population placement."""
    local, pop = LocalPlacement.from_dir(small_dir), PopulationPlacement.from_dir(small_dir)
    return (local, give_deltas(local, small_world, N)), (pop, give_deltas(pop, small_world, N))


def _discussion(handles, world, seed=0):
    queries = [world.query(p.name, rel) for p in world.people[:4] for rel in ("company", "birth_city")]
    names = [h.name for h in handles]
    return play(make_protocol("debate", {"rounds": 2}), handles, world, queries,
                build_graph("complete", names, seed), seed,
                make_agent=lambda name: handles[0].placement.spawn(name)
                if name not in handles[0].placement.names() else handles[0].placement.handle(name))


def test_population_holds_low_rank_deltas_where_they_are(placements):
    (_, _), (pop, hs) = placements
    kinds = {h.name: {k: isinstance(v, tuple) for k, v in pop.slots[h.name].delta.items()} for h in hs}
    assert kinds["agent 0"] == {}                                                   # none
    assert kinds["agent 1"] == {"model.layers.0.mlp.down_proj.weight": True}      # one ROME edit: rank 1
    assert [v[0].shape[1] for v in pop.slots["agent 4"].delta.values()] == [2]     # two edits: rank 2
    assert kinds["agent 2"] and all(kinds["agent 2"].values())                     # LoRA: rank 8 per module
    assert not all(kinds["agent 3"].values())                                       # a full fine-tune is dense


def test_local_and_population_give_the_same_beliefs_and_records(placements, small_world):
    (local, hl), (pop, hp) = placements
    qs = random.Random(0).sample(small_world.queries(), 30)
    ctx = [claim(small_world.relations[q.relation], q.subject, q.candidates[1], "agent 5") for q in qs]
    for contexts in (None, ctx):
        a, b = all_beliefs(local, hl, qs, contexts), all_beliefs(pop, hp, qs, contexts)
        assert_same([x for bs in a for x in bs], [x for bs in b for x in bs])
    # the deltas matter: the changed agents answer differently from the unchanged ones
    plain = {b.answer for b in all_beliefs(pop, hp[:1], qs)[0]}
    assert any([b.answer for b in bs] != [b.answer for b in all_beliefs(pop, hp[:1], qs)[0]]
               for bs in all_beliefs(pop, hp, qs)[1:]) and plain
    assert_same(_discussion(hl, small_world), _discussion(hp, small_world))


def test_both_ways_of_adding_low_rank_changes_give_the_local_beliefs(placements, small_world, monkeypatch):
    """Merged weights per run of one agent's rows, and the gathered low-rank matmul per row:
    each way, asked one agent at a time and all agents at once, gives the local records."""
    import agents.population as population
    (local, hl), (pop, hp) = placements
    qs = random.Random(1).sample(small_world.queries(), 40)
    want = [x for bs in all_beliefs(local, hl, qs) for x in bs]
    merges = []
    monkeypatch.setattr(population, "merged_linear",
                        lambda *a, real=population.merged_linear: merges.append(len(a[3])) or real(*a))
    for limit in (0, 10 ** 9):                       # every batch merged; none
        monkeypatch.setattr(population, "MERGE_TOKENS_PER_RANK", limit)
        together = [x for bs in all_beliefs(pop, hp, qs) for x in bs]
        one_by_one = [x for h in hp for x in all_beliefs(pop, [h], qs)[0]]
        assert_same(want, together, 1e-5)
        assert_same(want, one_by_one, 1e-5)
        if limit:
            assert not merges
        else:
            assert merges and min(merges) == 1 and max(merges) > 1     # one-agent batches, and mixed ones
            merges.clear()


def test_generation_is_batched_across_agents_and_equals_one_at_a_time(placements, small_world):
    (local, hl), (pop, hp) = placements
    prompts = [small_world.query(p.name, rel).prompt for p in small_world.people[:3] for rel in ("company", "major")]
    prompts[1] = "agent 3 answers Quasar . " + prompts[1]        # rows of different lengths share a batch
    pop.batch_size = 5                                          # several batches, each with several agents
    try:
        batched = pop.generate_many([(h.name, prompts) for h in hp], max_new_tokens=4)
    finally:
        pop.batch_size = 32
    alone = [local.agent(h.name).generate(prompts, max_new_tokens=4) for h in hl]
    assert batched == alone and len({tuple(x) for x in alone}) > 1     # and the deltas show in the text


def test_an_agent_change_touches_only_its_own_delta(small_dir, small_world):
    pop = PopulationPlacement.from_dir(small_dir)
    check_placement(lambda: pop, small_world)


def test_edit_memory_is_the_agents_own_and_is_saved(small_dir, small_world, tmp_path):
    from tests.edit_helpers import known_requests
    pop = PopulationPlacement.from_dir(small_dir)
    a, b = pop.spawn("a"), pop.spawn("b")
    reqs = known_requests(pop.handle("a"), small_world, 2, seed=3)
    a.edit([reqs[0]], method="rome", world=small_world)
    b.edit([reqs[1]], method="rome", world=small_world)
    subjects = lambda n: {s for rows in pop.slots[n].state["edit_memory"].values() for s, _ in rows}
    assert subjects("a") == {reqs[0].subject} and subjects("b") == {reqs[1].subject}
    pop.save("a", tmp_path / "a")
    snap = load_snapshot(tmp_path / "a")
    assert {s for rows in snap.state["edit_memory"].values() for s, _ in rows} == {reqs[0].subject}
    local = LocalPlacement.from_dir(small_dir)
    h = local.load(tmp_path / "a")
    qs = [r.query(small_world) for r in reqs] + small_world.queries()[:10]
    assert_same(h.beliefs(qs), a.beliefs(qs))
    assert h.beliefs(qs[:1])[0].answer == reqs[0].target
    assert (tmp_path / "a").exists() and not (tmp_path / "a.tmp").exists()


def test_an_agent_with_a_side_memory_keeps_its_own_model(small_dir, small_world, small_agent, tmp_path):
    from tests.edit_helpers import known_requests
    pop = PopulationPlacement.from_dir(small_dir)
    w, plain = pop.spawn("wise"), pop.spawn("plain")
    reqs = known_requests(small_agent, small_world, 1, seed=13)
    w.edit(reqs, method="wise", world=small_world)
    ref = small_agent.spawn("ref")
    ref.edit(reqs, method="wise", world=small_world)
    qs = [reqs[0].query(small_world)] + small_world.queries()[:10]
    assert_same(w.beliefs(qs), ref.beliefs(qs))
    assert_same(plain.beliefs(qs), small_agent.beliefs(qs))
    # saved and loaded through any placement: base + delta + the side memory as method state
    pop.save("wise", tmp_path / "wise")
    for other in (PopulationPlacement.from_dir(small_dir), LocalPlacement.from_dir(small_dir)):
        assert_same(other.load(tmp_path / "wise").beliefs(qs), ref.beliefs(qs))
    w.edit(known_requests(small_agent, small_world, 2, seed=14)[1:], method="wise", world=small_world)
    assert_same(pop.restore(pop.snapshot("wise")).beliefs(qs), w.beliefs(qs))    # a second edit, kept


def test_factor_keeps_exact_low_rank_and_dense_otherwise():
    import torch
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(64, 48, generator=g), "n": torch.ones(48)}
    u, v = torch.randn(64, 3, generator=g), torch.randn(3, 48, generator=g)
    low = factor({"w": base["w"] + 0.01 * u @ v, "n": base["n"]}, base, max_rank=8)
    assert set(low) == {"w"} and low["w"][0].shape == (64, 3)
    assert (low["w"][0] @ low["w"][1] - 0.01 * u @ v).abs().max() < 1e-6
    full = factor({"w": base["w"] + 0.01 * torch.randn(64, 48, generator=g), "n": base["n"] + 1}, base, max_rank=8)
    assert not isinstance(full["w"], tuple) and torch.equal(full["n"], torch.ones(48))


def test_bad_placements_are_refused_before_any_work(small_dir, tmp_path):
    from evolution.run import run_experiment
    from evolution.run_config import ConfigError
    from tests.test_run import BASE
    for placement, msg in [({"kind": "gpu"}, r"placement.kind: 'gpu'; use one of"),
                           ({"kind": "vllm", "max_lora_rank": 0}, "placement.max_lora_rank: 0"),
                           ({"actors": 2}, "apply to kind 'ray' only"),
                           ({"kind": "ray", "num_cpus": 0}, "placement.num_cpus: 0"),
                           ({"kind": "ray", "actors": 0}, "placement.actors: 0"),
                           ({"kind": "local", "max_rank": 0}, "placement.max_rank: 0"),
                           ({"kind": "population", "dedicated": "yes"}, "placement.dedicated: 'yes' has the wrong type"),
                           ({"kind": "ray", "serve": "tgi"}, r"placement.serve: 'tgi'; use 'population' or 'vllm'"),
                           ({"kind": "population", "serve": "vllm"}, "placement.serve applies to kind 'ray' only"),
                           ({"kind": "ray", "serve": "vllm", "dedicated": True}, "placement.dedicated: not with serve")]:
        with pytest.raises(ConfigError, match=msg):
            run_experiment({**BASE, "placement": placement}, tmp_path / "x", progress=False)
        assert not (tmp_path / "x" / "config.yaml").exists()
    with pytest.raises(ConfigError, match="placement cannot be swept"):
        run_experiment({**BASE, "sweep": {"placement.kind": ["local", "population"]}}, tmp_path / "x", progress=False)
    with pytest.raises(PlacementError, match="unknown kind"):
        make_placement("gpu", small_dir)


def test_a_ray_address_that_does_not_answer_is_named_at_once(small_dir, tmp_path, monkeypatch):
    import socket
    import time

    from evolution.run import run_experiment
    from evolution.run_config import ConfigError
    from tests.test_run import BASE
    pytest.importorskip("ray")
    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    t = time.time()
    with pytest.raises(ConfigError, match=f"Ray address '127.0.0.1:{port}'.*does not answer"):
        run_experiment({**BASE, "placement": {"kind": "ray"}}, tmp_path / "r", progress=False)
    assert time.time() - t < 30 and not (tmp_path / "r" / "config.yaml").exists()


# -- Ray ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="class")
def ray_agents(ray_cluster, small_dir, small_world, tmp_path_factory):
    """The 8 agents on a Ray placement of 2 actors, made once for the actor tests: (placement,
    handles, marker). Its actors die once in a discussion round while the marker file exists
    (the test of a death in the middle of a round makes it); without it they are plain shards.
    Closed when the class of tests that use it ends: its actors hold the cluster's CPUs."""
    import os
    import signal

    from agents.ray_placement import RayPlacement, _Shard
    marker = str(tmp_path_factory.mktemp("ray") / "die once")

    class DiesInARound(_Shard):
        def beliefs_many(self, asks):
            if any(a.context for a in asks):                  # a round after round 0
                try:
                    os.remove(marker)                          # one actor, once: the restarted one lives
                except FileNotFoundError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            return super().beliefs_many(asks)

    class Faulty(RayPlacement):
        shard_class = DiesInARound

    rp = Faulty(small_dir, actors=2)
    try:
        yield rp, give_deltas(rp, small_world, N), marker
    finally:
        rp.close()


class TestActors:
    """Both tests on one placement (`ray_agents`): making it and its agents takes most of a test."""

    def test_ray_actors_give_the_local_records_and_survive_a_killed_actor(self, ray_cluster, ray_agents, placements,
                                                                           small_dir, small_world):
        from agents.ray_placement import RayPlacement
        (local, hl), _ = placements
        rp, hr, _ = ray_agents
        assert sorted(set(rp.where.values())) == [0, 1]                 # the population is sharded
        qs = random.Random(1).sample(small_world.queries(), 20)
        want = [x for bs in all_beliefs(local, hl, qs) for x in bs]
        assert_same(want, [x for bs in all_beliefs(rp, hr, qs) for x in bs])
        assert_same(_discussion(hl, small_world), _discussion(hr, small_world))
        pids = rp.pids()
        ray_cluster.kill(rp.actors[1], no_restart=False)                # dies; Ray restarts it empty
        assert_same(want, [x for bs in all_beliefs(rp, hr, qs) for x in bs])   # shard restored, asks re-sent
        assert rp.pids()[1] != pids[1]
        with pytest.raises(PlacementError, match="num_gpus: 1 per actor, but the Ray cluster has 0"):
            RayPlacement(small_dir, num_gpus=1)

    def test_an_actor_that_dies_in_the_middle_of_a_round_is_restarted_and_its_asks_resent(
            self, ray_agents, placements, small_world):
        """The actor holding half the agents kills its own process while answering a discussion
        round's asks (after the round began, before it answered): Ray restarts it, the driver
        restores its shard and sends the asks again; the records equal the local run's, none
        missing, none twice."""
        import os
        (local, hl), _ = placements
        rp, hr, marker = ray_agents
        pids = rp.pids()
        open(marker, "w").close()
        want, got = _discussion(hl, small_world), _discussion(hr, small_world)
        assert not os.path.exists(marker), "no actor died: the fault was never injected"
        assert sum(a != b for a, b in zip(pids, rp.pids())) == 1            # one actor was restarted
        key = lambda r: (r.round, r.agent, r.subject, r.relation)
        assert len({key(r) for r in got}) == len(got)                       # nothing written twice
        assert_same(sorted(want, key=key), sorted(got, key=key))


def test_a_run_on_ray_writes_the_records_of_a_population_run(ray_cluster, small_dir, tmp_path):
    from evolution.run import run_experiment
    from tests.test_run import BASE
    cfg = {**BASE, "agents": 3, "rounds": 1,
           "queries": {"people": 2, "relations": ["company"], "who": "untaught"},
           "knowledge": {"split": "partition", "texts_per_person": 2, "epochs": 5}}
    pop = run_experiment(cfg, tmp_path / "p", progress=False)
    on_ray = run_experiment({**cfg, "placement": {"kind": "ray", "actors": 2}}, tmp_path / "r", progress=False)
    local = run_experiment({**cfg, "placement": {"kind": "local"}}, tmp_path / "l", progress=False)
    for other in (on_ray, local):
        assert list(other["answer"]) == list(pop["answer"])
        worst = max(abs(p - q) for a, b in zip(pop["probs"], other["probs"]) for p, q in zip(a, b))
        assert worst < 1e-4, worst


def test_editing_metrics_read_agents_through_the_placement(placements, small_world):
    """The edit metrics (beliefs, perplexity) of a ROME-edited agent are the same read on the
    population as on its local copy."""
    from analysis.edit_metrics import edit_baseline, evaluate_edits, perplexity
    from tests.placement_helpers import bio_texts
    (local, hl), (pop, hp) = placements
    texts = bio_texts(small_world, [p.name for p in small_world.people[:5]], 0)
    for i in (0, 1, 3):              # none, a ROME edit, a dense fine-tune
        assert perplexity(hp[i], texts) == pytest.approx(perplexity(local.agent(hl[i].name), texts), rel=1e-5)
    assert perplexity(hp[3], texts) != pytest.approx(perplexity(hp[0], texts), rel=1e-3)
    from tests.edit_helpers import known_requests
    fresh = [p.spawn("metrics") for p in (local, pop)]
    reqs = known_requests(fresh[1], small_world, 2, seed=7)
    got = []
    for h in fresh:
        before = edit_baseline(h, small_world, reqs, n_locality=20, n_bios=5)
        h.edit(reqs, method="rome", world=small_world)
        got.append(evaluate_edits(h, small_world, reqs, before=before))
    for k, v in got[0].items():
        if isinstance(v, float):
            assert v == pytest.approx(got[1][k], abs=1e-4, nan_ok=True), k
