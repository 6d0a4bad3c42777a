"""The keys of the edits already written into a model, so that a new edit leaves them alone.

Measured on the small test model: six sequential ROME edits, each landing when made, kept
only 3 of 6 at the end, because each rank-one update u^T k also moves earlier edits' keys
(u.k_earlier / u.k* averaged 0.1-0.3). Adding the earlier keys to the covariance,

    u = (C + protect_weight * sum_j k_j k_j^T)^-1 k*,

makes u nearly orthogonal to them (the denominator keeps W' k* = W k* + delta exact), as
MEMIT does for the edits of one batch. Keys of the same subject are not protected: a new
edit of that person is computed on the already-edited model, and its KL term holds the
person's other answers, the earlier edit included.

The memory lives beside the model object (a weak map), not in its weights: a spawned copy,
or a model saved and loaded again, starts with an empty memory (its edits stay in its
weights; only their protection from later edits is gone).
"""
from __future__ import annotations

import weakref

import torch

_MEMORY: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, list[tuple[str, torch.Tensor]]]]" = \
    weakref.WeakKeyDictionary()


def prior_keys(model, layer: int, exclude_subjects=()) -> torch.Tensor | None:
    """[m, d_ff] keys of earlier edits of `layer` (other subjects), or None."""
    rows = [k for s, k in _MEMORY.get(model, {}).get(layer, []) if s not in set(exclude_subjects)]
    return torch.stack(rows) if rows else None


def remember(model, layer: int, entries: list[tuple[str, torch.Tensor]]) -> None:
    _MEMORY.setdefault(model, {}).setdefault(layer, []).extend((s, k.detach().double().cpu()) for s, k in entries)


def forget(model) -> None:
    _MEMORY.pop(model, None)


def protected(cov: torch.Tensor, keys: torch.Tensor | None, weight: float) -> torch.Tensor:
    """cov + weight * K^T K (float64)."""
    if keys is None or weight == 0:
        return cov
    k = keys.double().to(cov.device)
    return cov + weight * k.T @ k
