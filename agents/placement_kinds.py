"""The placements by kind: `make_placement(kind, model_dir, ...)`, what a run config's
`placement.kind` names. Apart from agents/placement.py (the seam and the reference placement),
so the seam does not import the placements built on it."""
from __future__ import annotations

from pathlib import Path

from agents.placement import LocalPlacement, Placement, PlacementError

KINDS = ("local", "population", "ray", "vllm")


def make_placement(kind: str, model_dir: str | Path, device: str | None = None, batch_size: int = 32,
                   max_rank: int = 32, **ray_kw) -> Placement:
    """The placement `kind` on the model in `model_dir` (`ray_kw`: actors, dedicated, num_cpus,
    num_gpus, address and serve ('population' or 'vllm': what each actor runs) for kind 'ray';
    max_loras, max_lora_rank, ... for kind 'vllm' and for kind 'ray' serving 'vllm')."""
    if kind == "local":
        return LocalPlacement.from_dir(model_dir, device, batch_size, max_rank=max_rank)
    if kind == "population":
        from agents.population import PopulationPlacement
        return PopulationPlacement.from_dir(model_dir, device, batch_size, max_rank=max_rank)
    if kind == "ray":
        from agents.ray_placement import RayPlacement
        return RayPlacement(model_dir, device=device, batch_size=batch_size, max_rank=max_rank, **ray_kw)
    if kind == "vllm":
        from agents.vllm_placement import VllmPlacement
        return VllmPlacement(model_dir, batch_size=batch_size, max_rank=max_rank, **ray_kw)
    raise PlacementError(f"placement.kind: unknown kind {kind!r}; use one of {list(KINDS)}")
