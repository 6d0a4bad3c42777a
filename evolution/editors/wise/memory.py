"""The side memory: a module that replaces one MLP down-projection inside `agent.model`.

WISE (Wang et al., 2024) keeps the pretrained down-projection as *main memory* and writes
edits into a *side memory*, a copy of it. Here each side memory is stored as its difference
from the main weight (the copy is `main + delta`), in shards: a shard takes edits until it
holds `shard_size` of them, and trains only a random `mask_ratio` share of its entries, so
different shards write mostly to different entries and can be merged (`ties_merge`).

Keys: side memories read the activation a centred on the mean of unrelated text and whitened
by that text's covariance, k = C^(-1/2) (a - mu) (ROME whitens its keys the same way). So
side memory k computes W a + D_k k: a copy of the down-projection, W + D_k C^(-1/2), with a
bias. Without whitening, activations share a few large directions, and a delta trained on
one edit raised every prompt's score with it (measured: the gate opened for 38 of 60
unrelated prompts after 10 edits); with whitening an edit's key is nearly orthogonal to
other keys, as in a high-dimensional model.

Routing (the gate): a token's score for side memory k is |D_k k|, the activation distance
|W_side a - W_main a| of WISE. A row uses side memory k from the first token where the
running maximum of its score passes k's threshold (the running maximum keeps the choice
causal: padding after a row, or candidate tokens after a prompt, never change the answer
read at the prompt), choosing among several passing shards the one furthest over its
threshold; every other row and token reads the untouched main memory. A sequence's first
token (<s>) is never scored, nor a left-padded row's padding (batched generation): a padded
row routes as it does alone.

The main weight stays the model's own Parameter under its own state-dict key, and side
memories are non-persistent buffers, so `agent.delta()` and `save_pretrained` see the main
model only (see evolution/editors/wise/persist.py for saving the side memory).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from agents.architectures import layout_of, out_in, plain_projection


class SideMemoryLinear(nn.Module):
    """An MLP output projection with gated side memories (its bias, where it has one, is the
    main memory's and no edit changes it). The main weight keeps its family's storage (GPT-2's
    `Conv1D` holds it [in, out], `transposed`); side memories are [out, in] whatever it is."""

    def __init__(self, main: nn.Module, layer: int, transposed: bool = False):
        super().__init__()
        self.weight = main.weight                 # the main memory, same Parameter and key
        self.bias = main.bias                     # None for Llama-family MLPs
        self.transposed = transposed
        self.out_features, self.in_features = self.shape
        self.layer = layer
        n, m = self.shape
        self.register_buffer("deltas", torch.zeros(0, n, m, dtype=main.weight.dtype, device=main.weight.device),
                             persistent=False)
        self.register_buffer("masks", torch.zeros(0, n, m, dtype=torch.bool, device=main.weight.device),
                             persistent=False)
        self.register_buffer("thresholds", torch.zeros(0, dtype=torch.float32, device=main.weight.device),
                             persistent=False)
        # The mean activation over unrelated text: side memories read a - center, so their
        # scores measure how a token differs from typical ones (see `forward`).
        self.register_buffer("center", torch.zeros(self.in_features, dtype=main.weight.dtype,
                                                   device=main.weight.device), persistent=False)
        self.register_buffer("whiten", torch.eye(self.in_features, dtype=main.weight.dtype,
                                                 device=main.weight.device), persistent=False)
        self.shard_prompts: list[list[tuple]] = []  # (prompt, target, subject, is_request) per shard row
        self.ref_norm: float | None = None        # mean |W_main a| on the first edits: the margins' unit
        # Training state: while set, `forward` uses shard `train_shard` plus the trainable `train_delta`
        # (masked) at the (row, token) places where `force_rows` is True, and records every token's score.
        self.train_shard: int | None = None
        self.train_delta: torch.Tensor | None = None
        self.force_rows: torch.Tensor | None = None
        self.train_gate: tuple[float, float] | None = None   # (act_ratio, floor) to mimic the gate
        self.last_scores: torch.Tensor | None = None
        self.last_routes: torch.Tensor | None = None  # per token: side index used, -1 main
        self.carry: torch.Tensor | None = None        # running max scores at the last token (generation)
        self.unscored: torch.Tensor | None = None     # (B, T) tokens the gate skips: padding, each row's first

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in): the shape of a side memory's delta."""
        return out_in(self.weight, self.transposed)

    # -- shards ----------------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        return self.deltas.shape[0]

    def add_shard(self, mask: torch.Tensor) -> int:
        self.deltas = torch.cat([self.deltas, self.deltas.new_zeros(1, *self.shape)])
        self.masks = torch.cat([self.masks, mask.to(self.masks.device)[None]])
        self.thresholds = torch.cat([self.thresholds, torch.full((1,), float("inf"), device=self.thresholds.device)])
        self.shard_prompts.append([])
        return self.n_shards - 1

    def state(self) -> dict:
        """Everything an edit may change (for rollback and for saving)."""
        return {"deltas": self.deltas.clone(), "masks": self.masks.clone(), "thresholds": self.thresholds.clone(),
                "center": self.center.clone(), "whiten": self.whiten.clone(),
                "shard_prompts": [list(p) for p in self.shard_prompts], "ref_norm": self.ref_norm}

    def restore(self, st: dict) -> None:
        self.deltas, self.masks, self.thresholds = st["deltas"].clone(), st["masks"].clone(), st["thresholds"].clone()
        self.center, self.whiten = st["center"].clone(), st["whiten"].clone()
        self.shard_prompts = [list(p) for p in st["shard_prompts"]]
        self.ref_norm = st["ref_norm"]
        self.train_shard = self.train_delta = self.force_rows = self.train_gate = None

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = F.linear(x, self.weight.T if self.transposed else self.weight, self.bias)
        if self.train_delta is not None:
            k = self.train_shard
            delta = self.deltas[k] + self.train_delta * self.masks[k]
            side = F.linear(self.keys(x), delta)
            self.last_scores = side.norm(dim=-1)
            use = self.force_rows
            if self.train_gate is not None:
                # Open the side memory where the gate will: from the first token of the allowed
                # span whose running score passes the threshold these rows would set.
                ratio, floor = self.train_gate
                s = self.last_scores.detach() * use
                top = s.max(1).values[use.any(1)]
                thr = max(ratio * float(top.min()), floor) if top.numel() else floor
                gated = use & (torch.cummax(s, 1).values >= thr)
                closed = ~gated.any(1)     # a row the gate would not open yet (a new edit): its whole span
                use = torch.where(closed[:, None], use, gated)
            return main + use[..., None].to(side.dtype) * side
        if self.n_shards == 0:
            return main
        keys = self.keys(x)
        scores = self.scores(x, keys)                                      # (K, B, T)
        if self.carry is None:
            # A sequence's first token (<s>) is the same in every text: it carries nothing to
            # route on, and scoring it let one shared token open the gate for every row. A
            # left-padded row (batched generation) starts later, and its padding is never scored.
            if self.unscored is not None and self.unscored.shape == scores.shape[1:]:
                scores[:, self.unscored] = 0.0
            else:
                scores[:, :, 0] = 0.0
        running = torch.cummax(scores, dim=2).values
        if self.carry is not None and self.carry.shape == running.shape[:2]:
            running = torch.maximum(running, self.carry[..., None])
        self.carry = running[..., -1]
        ratio = running / self.thresholds[:, None, None]
        best, idx = ratio.max(0)                                           # (B, T)
        use = best > 1.0
        self.last_routes = torch.where(use, idx, torch.full_like(idx, -1))
        out = main.clone()
        for k in idx[use].unique().tolist():   # only the shards some token is routed to
            where = use & (idx == k)
            out[where] = out[where] + keys[where] @ self.deltas[k].to(x.dtype).T
        return out

    @torch.no_grad()
    def scores(self, x: torch.Tensor, keys: torch.Tensor | None = None, chunk: int = 16) -> torch.Tensor:
        """Every shard's score per token, (K, B, T): what the gate compares with the thresholds.
        Shards are taken `chunk` at a time, so memory stays at chunk x (B, T, d) however many
        shards there are (one shard per edit, 1,000 edits, would otherwise need GBs)."""
        keys = self.keys(x) if keys is None else keys
        d = self.deltas.to(x.dtype)
        return torch.cat([torch.einsum("btm,knm->kbtn", keys, d[i:i + chunk]).norm(dim=-1).float()
                          for i in range(0, d.shape[0], chunk)])

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """What side memories read: the activation, centred and whitened."""
        return (x - self.center) @ self.whiten.to(x.dtype)


def ties_merge(deltas: torch.Tensor, density: float = 1.0) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023) of K deltas (K, n, m): keep each delta's largest
    `density` share of entries, elect each entry's sign by the summed mass, and average the
    entries that agree with it. Shards trained on disjoint random masks merge to their sum."""
    if deltas.shape[0] == 1:
        return deltas[0].clone()
    trimmed = deltas.clone()
    if density < 1.0:
        for k in range(deltas.shape[0]):
            flat = trimmed[k].abs().flatten()
            nz = int((flat > 0).sum())
            keep = max(1, int(density * nz))
            if nz > keep:
                cut = flat.kthvalue(flat.numel() - keep + 1).values
                trimmed[k][trimmed[k].abs() < cut] = 0
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign[None]) & (trimmed != 0)
    count = agree.sum(0).clamp(min=1)
    return (trimmed * agree).sum(0) / count


# -- installing ----------------------------------------------------------------------------
def side_memory_of(model) -> SideMemoryLinear | None:
    for m in model.modules():
        if isinstance(m, SideMemoryLinear):
            return m
    return None


def _reset_carry(model, args, kwargs):
    """A forward that starts a sequence (no cache, or an empty one) forgets the running scores
    kept for cached generation; only cached steps continue them."""
    mem = side_memory_of(model)
    if mem is None:
        return None
    pkv = kwargs.get("past_key_values")
    if pkv is None or (hasattr(pkv, "get_seq_length") and pkv.get_seq_length() == 0):
        mem.carry = None
        mem.unscored = None
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
            # left padding: each row's padding and its first real token are not scored
            real = mask.bool()
            first = real & (real.long().cumsum(1) == 1)
            mem.unscored = ~real | first
    return None


def install(model, layer: int) -> SideMemoryLinear:
    """Replace layer `layer`'s down-projection with a side-memory module (idempotent for the
    same layer; another layer is an error: one model holds one side memory)."""
    existing = side_memory_of(model)
    if existing is not None:
        if existing.layer != layer:
            raise ValueError(f"layer {layer}: this model's side memory is at layer {existing.layer}; "
                             f"use layer={existing.layer} or remove it with evolution.editors.wise.uninstall")
        return existing
    lay = layout_of(model)
    layers = lay.layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(layers) - 1}")
    mlp = lay.mlp_of(layers[layer])
    mem = SideMemoryLinear(getattr(mlp, lay.mlp_out), layer, lay.transposed)
    setattr(mlp, lay.mlp_out, mem)
    if _reset_carry not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_reset_carry, with_kwargs=True)
    return mem


def uninstall(model) -> None:
    """Put a plain down-projection back (main memory, unchanged) and drop the side memory."""
    mem = side_memory_of(model)
    if mem is None:
        return
    for key in [k for k, fn in model._forward_pre_hooks.items() if fn is _reset_carry]:
        # Removed by key, not by a handle: a handle would not follow the model through deepcopy (spawn).
        del model._forward_pre_hooks[key]
        model._forward_pre_hooks_with_kwargs.pop(key, None)
    lay = layout_of(model)
    setattr(lay.mlp_of(lay.layers(model)[mem.layer]), lay.mlp_out, plain_projection(mem.weight, mem.bias, mem.transposed))
