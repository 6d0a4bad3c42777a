"""The population sharded over Ray actors, each a placement on its shard: a `PopulationPlacement`
(`serve="population"`, the default) or a vLLM engine with each agent a LoRA adapter
(`serve="vllm"`: one engine per actor, hence per device).

One actor per device by default (`actors: N` to choose; `dedicated=True`: one actor per agent,
for comparison). A round phase sends every actor its agents' asks at once and waits for all.
The driver keeps each agent's last snapshot (its delta and state, small when low-rank); an
actor that dies is restarted by Ray (`max_restarts`), its shard is restored from those
snapshots and the phase's asks are sent again, so no answer is lost or given twice.

Without `RAY_ADDRESS` (or `address`) a local Ray is started with the dashboard on 127.0.0.1;
under `ray job submit` the job's cluster is used as is.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from agents.delta import Snapshot
from agents.placement import Ask, Handle, Placement, PlacementError, _check_new, lookup


SERVES = ("population", "vllm")


class _Shard:
    """The actor: a placement of kind `serve` on part of the agents."""

    def __init__(self, serve: str, model_dir: str, device: str | None, batch_size: int, max_rank: int,
                 threads: int, serve_kw: dict):
        import torch
        torch.set_num_threads(threads)
        if serve == "vllm":
            from agents.vllm_placement import VllmPlacement
            self.p = VllmPlacement(model_dir, batch_size=batch_size, max_rank=max_rank, **serve_kw)
        else:
            from agents.population import PopulationPlacement
            self.p = PopulationPlacement.from_dir(model_dir, device, batch_size, max_rank=max_rank)

    def ready(self) -> str:
        return self.p.base_fingerprint()

    def beliefs_many(self, asks):
        return self.p.beliefs_many(asks)

    def generate_many(self, asks, max_new_tokens):
        return self.p.generate_many(asks, max_new_tokens)

    def nll_many(self, asks, batch_size):
        return self.p.nll_many(asks, batch_size)

    def spawn(self, name, persona):
        self.p.spawn(name, persona)
        return self.p.snapshot(name)

    def change(self, how: str, name: str, data, method: str, hparams: dict):
        report = getattr(self.p, how)(name, data, method, **hparams)
        return report, self.p.snapshot(name)

    def restore(self, snaps: list[Snapshot]) -> None:
        for s in snaps:
            self.p.restore(s)

    def remove(self, name: str) -> None:
        self.p.remove(name)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.p.close()


def check_address(address: str, timeout: float = 10.0) -> None:
    """A Ray address that does not answer is an error naming it, not a long hang in ray.init."""
    import socket
    if address in ("auto", "local") or address.startswith("ray://"):
        hostport = address[len("ray://"):] if address.startswith("ray://") else None
    else:
        hostport = address.split("://")[-1]
    if not hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise PlacementError(f"Ray address {address!r} (RAY_ADDRESS or placement) does not answer ({e}); start the "
                             "head with `ray start --head`, or unset RAY_ADDRESS to run on a local Ray") from None


def ensure_ray(address: str | None = None):
    """Connect to the cluster at `address` / RAY_ADDRESS, or start a local one."""
    import ray
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            check_address(address)
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(dashboard_host="127.0.0.1", include_dashboard=False, log_to_driver=False)
    return ray


class RayPlacement(Placement):
    kind = "ray"
    shard_class = _Shard        # what each actor runs (a subclass injects faults in the tests)

    def __init__(self, model_dir: str | Path, actors: int | None = None, dedicated: bool = False,
                 num_cpus: float | None = None, num_gpus: float = 0.0, device: str | None = None,
                 batch_size: int = 32, max_rank: int = 32, address: str | None = None, max_restarts: int = 3,
                 serve: str = "population", **serve_kw):
        """`serve_kw`: the shard placement's own options (vllm: max_loras, max_lora_rank, ...)."""
        if serve not in SERVES:
            raise PlacementError(f"placement.serve: {serve!r}; use one of {list(SERVES)}")
        if serve == "vllm" and dedicated:
            raise PlacementError("placement: dedicated with serve 'vllm' would start a vLLM engine per agent; "
                                 "drop dedicated (each agent is an adapter on its actor's engine)")
        ray = ensure_ray(address)
        have = ray.cluster_resources()
        if num_gpus and num_gpus > have.get("GPU", 0):
            raise PlacementError(f"placement.num_gpus: {num_gpus} per actor, but the Ray cluster has "
                                 f"{have.get('GPU', 0)} GPU(s); lower num_gpus or add GPU nodes")
        gpus = int(have.get("GPU", 0))
        self.dedicated = dedicated
        if dedicated:
            n = 0                                   # one per agent, made by spawn
        elif actors:
            n = actors
        else:
            n = max(1, gpus) if (num_gpus or gpus) else 1   # one per device
        cpus = num_cpus if num_cpus is not None else (0.01 if dedicated else 1)
        if cpus * max(n, 1) > have.get("CPU", 0) + 1e-9:
            raise PlacementError(f"placement: {n} actor(s) x num_cpus {cpus} is more than the cluster's "
                                 f"{have.get('CPU', 0)} CPUs; lower actors or num_cpus")
        use_gpus = num_gpus if num_gpus else (1.0 if gpus and not dedicated else 0.0)
        self._opts = dict(num_cpus=cpus, num_gpus=use_gpus, max_restarts=max_restarts)
        self._args = (serve, str(model_dir), device or ("cuda" if use_gpus else "cpu"), batch_size, max_rank,
                      max(1, int(cpus)), serve_kw)
        self._Shard = ray.remote(self.shard_class)
        self.ready_timeout = 300.0
        self._fp = None
        self._spare: int | None = None      # dedicated: an actor started before its agent (base_fingerprint)
        self.actors = []
        for _ in range(n):
            self.actors.append(self._new_actor())
        self.where: dict[str, int] = {}
        self.snaps: dict[str, Snapshot] = {}
        self.versions: dict[str, int] = {}

    def _new_actor(self):
        """A started actor; an error (not a hang) when the cluster cannot place it."""
        import ray
        actor = self._Shard.options(**self._opts).remote(*self._args)
        try:
            fp = ray.get(actor.ready.remote(), timeout=self.ready_timeout)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor)
            raise PlacementError(f"placement: a Ray actor ({self._opts['num_cpus']} CPU, {self._opts['num_gpus']} GPU) "
                                 f"did not start within {self.ready_timeout:.0f} s; the cluster has "
                                 f"{ray.available_resources()} free. Lower num_cpus/num_gpus or actors, or add "
                                 "nodes") from None
        self._fp = self._fp or fp
        return actor

    # -- bookkeeping on the driver ----------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.where)

    def persona(self, name: str) -> str:
        return self._snap(name).persona

    def version(self, name: str) -> int:
        return lookup(self.versions, name)

    def _snap(self, name: str) -> Snapshot:
        return lookup(self.snaps, name)

    def snapshot(self, name: str) -> Snapshot:
        return self._snap(name)

    def base_fingerprint(self) -> str:
        if self._fp is None:            # dedicated, before any agent: start the first agent's actor early
            self.actors.append(self._new_actor())
            self._spare = len(self.actors) - 1
        return self._fp

    def _kept(self, snap: Snapshot) -> None:
        self.snaps[snap.name] = snap
        self.versions[snap.name] = self.versions.get(snap.name, -1) + 1

    def _call(self, i: int, method: str, *args):
        """Run `method` on actor i; if the actor died, restore its shard and run it again."""
        import ray
        try:
            return ray.get(getattr(self.actors[i], method).remote(*args))
        except ray.exceptions.RayActorError:
            self._recover(i)
            return ray.get(getattr(self.actors[i], method).remote(*args))

    def _recover(self, i: int) -> None:
        """Ray restarts a dead actor empty (its __init__ again); give it its agents back."""
        import ray
        mine = [self.snaps[n] for n, j in self.where.items() if j == i]
        for attempt in range(50):
            try:
                ray.get(self.actors[i].restore.remote(mine))
                return
            except ray.exceptions.RayActorError:
                if attempt == 49:
                    raise
                time.sleep(0.2)

    # -- the interface ----------------------------------------------------------------------------
    def _place(self, name: str) -> int:
        """The actor a new agent goes to: its own (dedicated), else the one holding the fewest."""
        _check_new(self, name)
        if self.dedicated:
            if self._spare is not None:
                i, self._spare = self._spare, None
            else:
                self.actors.append(self._new_actor())
                i = len(self.actors) - 1
        else:
            counts = [0] * len(self.actors)
            for j in self.where.values():
                counts[j] += 1
            i = counts.index(min(counts))
        self.where[name] = i
        return i

    def spawn(self, name: str, persona: str = "neutral", parent: str | None = None) -> Handle:
        source = None if parent is None else self._snap(parent)
        i = self._place(name)
        if source is None:
            self._kept(self._call(i, "spawn", name, persona))
        else:
            snap = dataclasses.replace(source, name=name, persona=persona)
            self._call(i, "restore", [snap])
            self._kept(snap)
        return Handle(self, name)

    def restore(self, snap: Snapshot) -> Handle:
        i = self.where[snap.name] if snap.name in self.where else self._place(snap.name)
        self._call(i, "restore", [snap])
        self._kept(snap)
        return Handle(self, snap.name)

    def remove(self, name: str) -> None:
        self._snap(name)
        self._call(self.where[name], "remove", name)
        for d in (self.where, self.snaps, self.versions):
            d.pop(name)

    def _change(self, how: str, name: str, data, method: str, hparams: dict):
        self._snap(name)
        report, snap = self._call(self.where[name], "change", how, name, data, method, hparams)
        self._kept(snap)
        return report

    def edit(self, name: str, requests, method: str, **hparams):
        return self._change("edit", name, requests, method, hparams)

    def learn(self, name: str, data, method: str = "finetune", **hparams):
        return self._change("learn", name, data, method, hparams)

    def _scatter(self, method: str, items: list, agent_of, *extra) -> list:
        """Send each actor its items in one call, all actors at once; answers in input order."""
        import ray
        by_actor: dict[int, list[int]] = {}
        for k, it in enumerate(items):
            self._snap(agent_of(it))
            by_actor.setdefault(self.where[agent_of(it)], []).append(k)
        refs = {i: getattr(self.actors[i], method).remote([items[k] for k in ks], *extra)
                for i, ks in by_actor.items()}
        out: list = [None] * len(items)
        for i, ks in by_actor.items():
            try:
                got = ray.get(refs[i])
            except ray.exceptions.RayActorError:
                self._recover(i)
                got = self._call(i, method, [items[k] for k in ks], *extra)
            for k, g in zip(ks, got):
                out[k] = g
        return out

    def beliefs_many(self, asks: list[Ask]):
        return self._scatter("beliefs_many", asks, lambda a: a.agent)

    def generate_many(self, asks, max_new_tokens: int = 12):
        return self._scatter("generate_many", asks, lambda a: a[0], max_new_tokens)

    def nll_many(self, asks, batch_size: int = 32):
        return self._scatter("nll_many", asks, lambda a: a[0], batch_size)

    def pids(self) -> list[int]:
        import ray
        return ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        import ray
        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=60)       # the shard's own clean-up (vllm: its adapter dir)
            except Exception:  # noqa: BLE001 - a dead or hung actor is killed all the same
                pass
            ray.kill(a)
        self.actors = []
