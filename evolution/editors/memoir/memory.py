"""MEMOIR's routed residual memory (Wang et al., NeurIPS 2025), placed beside one MLP output
projection: out = W a + W_m (M ⊙ f(a)), where W_m starts at zero and M is a sparse mask.

- Features f(a): the MLP's hidden activation a, centred and whitened by its statistics on
  ordinary text, k = C^(-1/2) (a - mean) (as ROME's and WISE's keys), then, with `width` >
  d_ff, a fixed seeded random expansion of k. MEMOIR reads raw activations of an 8B model;
  on the default model (d_ff 256) raw top-k masks did not tell people apart (bench/memoir_masks.py,
  200 edited people, k=32): unrelated tokens shared up to .75 of an edited key's mask (11% of
  them at least .4), other people's keys up to .78. Whitened and expanded to 4,096 features:
  unrelated tokens at most .44 (0.15% at least .4), other keys at most .47, while the edited
  person's own held-out paraphrases share .81 (median; 96% at least .4).
- TopHash mask: the `k` features of largest magnitude, sent through a fixed permutation of
  the width (MEMOIR spreads the columns an edit writes away from the features that are large
  for every input; two masks overlap exactly as much as their top-k sets do).
- Routing, per token: the token's mask is compared with every stored edit's mask; where the
  best overlap (shared entries / k) reaches `threshold`, that edit's mask is applied to the
  token's features and the memory adds its output; every other token reads W alone. The
  comparison is one sparse (edits x width) @ (width x tokens) product, so its cost grows with the
  number of stored keys by a matrix column each, never by a weight matrix each (WISE's gate
  scores one full matrix per shard).

The module holds the projection's own weight and bias Parameters under their own names
(state-dict keys unchanged; ROME and MEMIT can still write into W), and the memory as
non-persistent buffers: `save_pretrained` and `agent.delta()` see the base model only, and
the memory travels as agent state (editor.py registers it as an extension).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from agents.architectures import layout_of, out_in, plain_projection


def key_features(a: torch.Tensor, center: torch.Tensor, whiten: torch.Tensor, expand: torch.Tensor | None) -> torch.Tensor:
    k = (a - center.to(a.dtype)) @ whiten.to(a.dtype)
    return k if expand is None else k @ expand.to(a.dtype).T


def tophash(f: torch.Tensor, perm: torch.Tensor, k: int) -> torch.Tensor:
    """TopHash: the k largest |f| entries, sent through the permutation: (..., k) indices."""
    return perm[f.abs().topk(k, dim=-1).indices]


@dataclass(eq=False)
class FixedPart:
    """What a memory computes of an input before it reads any stored edit: the features and
    their TopHash mask. Memories made on one base model with the same key statistics share
    it, so a population computes it once per batch for all their agents' rows (editor.py)."""
    center: torch.Tensor
    whiten: torch.Tensor
    expand: torch.Tensor | None
    perm: torch.Tensor
    k: int

    def __call__(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = key_features(a, self.center, self.whiten, self.expand)
        return f, tophash(f, self.perm, self.k)


class RoutedMemory(nn.Module):
    def __init__(self, main: nn.Module, layer: int, width: int, k: int, threshold: float, seed: int,
                 transposed: bool, center: torch.Tensor, whiten: torch.Tensor):
        super().__init__()
        self.weight, self.bias = main.weight, getattr(main, "bias", None)
        self.transposed = transposed
        d_out, d_ff = out_in(main.weight, transposed)
        self.layer, self.d_ff, self.d_out = layer, d_ff, d_out
        self.width, self.k, self.threshold, self.seed = width, k, threshold, seed
        dev, dt = main.weight.device, main.weight.dtype
        expand, perm = expansion(width, self.d_ff, seed, dev, dt)
        self.register_buffer("expand", expand, persistent=False)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("center", center.to(dev, dt), persistent=False)
        self.register_buffer("whiten", whiten.to(dev, dt), persistent=False)
        self.register_buffer("memory", torch.zeros(self.d_out, width, device=dev, dtype=dt), persistent=False)
        # Stored keys, sparse: each key's k mask entries and its features there; its value.
        self.register_buffer("index", torch.zeros(0, k, dtype=torch.long, device=dev), persistent=False)
        self.register_buffer("read", torch.zeros(0, k, device=dev, dtype=torch.float32), persistent=False)
        self.register_buffer("values", torch.zeros(0, self.d_out, device=dev, dtype=torch.float32), persistent=False)
        self._dense: torch.Tensor | None = None   # masks(), rebuilt when keys change
        self.subjects: list[str] = []            # the person each stored key belongs to
        self.facts: list[list[tuple]] = []       # per key: (relation, prompt, target) of its edits
        self.enabled = True
        self.sketch: torch.Tensor | None = None  # W @ r at install: which base model this memory belongs to
        self.last_routes: torch.Tensor | None = None   # per token of the last forward: key index, -1 none
        self.column_of: torch.Tensor | None = None     # compact(): the memory column of each feature

    def __getstate__(self):
        """Copies (spawn's deepcopy, pickling to a Ray actor) rebuild the sparse mask cache:
        sparse CSR tensors cannot be deep-copied."""
        state = self.__dict__.copy()
        state["_dense"] = None
        return state

    # -- features and masks ----------------------------------------------------------------
    def features(self, a: torch.Tensor) -> torch.Tensor:
        return key_features(a, self.center, self.whiten, self.expand)

    def mask_index(self, f: torch.Tensor) -> torch.Tensor:
        return tophash(f, self.perm, self.k)

    def fixed(self) -> "FixedPart":
        return FixedPart(self.center, self.whiten, self.expand, self.perm, self.k)

    @property
    def n_keys(self) -> int:
        return self.index.shape[0]

    def masks(self) -> torch.Tensor:
        """(keys, width) 0/1, sparse (CSR): every stored key's mask. Sparse because the overlap
        product then costs keys x k per token, not keys x width (measured, 640 tokens x 1,000
        keys, one thread: 30 ms sparse, 100 ms dense)."""
        if self._dense is None or self._dense.shape[0] != self.n_keys:
            dense = torch.zeros(self.n_keys, self.width, device=self.index.device).scatter_(1, self.index, 1.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")           # "sparse CSR support is in beta"
                self._dense = dense.to_sparse_csr()
        return self._dense

    def key_rows(self) -> torch.Tensor:
        """(keys, width): each key's features on its mask, zero elsewhere."""
        return torch.zeros(self.n_keys, self.width, device=self.index.device).scatter_(1, self.index, self.read)

    def base(self, a: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            out = a @ self.weight
            return out + self.bias if self.bias is not None else out
        return F.linear(a, self.weight, self.bias)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        out = self.base(a)
        if not self.enabled or self.n_keys == 0:
            self.last_routes = None
            return out
        add, self.last_routes = self.routed(a)
        return out + add

    def routed(self, a: torch.Tensor, prepared: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the memory adds to the projection's output for the input `a` (zero for a token
        that matches no stored edit's mask), and per token the key it read (-1: none).
        `prepared`: `a`'s features and mask (FixedPart), when computed already."""
        f, mask = prepared if prepared is not None else self.fixed()(a)
        m = torch.zeros(f.shape, device=f.device).scatter_(-1, mask, 1.0)
        overlap = (self.masks() @ m.reshape(-1, self.width).T).T.reshape(*f.shape[:-1], -1) / self.k  # (..., keys)
        best, idx = overlap.max(-1)
        fire = best >= self.threshold
        add = torch.zeros(*a.shape[:-1], self.d_out, device=a.device, dtype=a.dtype)
        if fire.any():
            cols = self.index[idx[fire]]                                     # (fired, k)
            read = f[fire].gather(-1, cols)
            at = cols if self.column_of is None else self.column_of[cols]
            w = self.memory.to(f.dtype)[:, at].permute(1, 0, 2)              # (fired, d_out, k)
            add[fire] = (w @ read[..., None])[..., 0].to(a.dtype)
        return add, torch.where(fire, idx, torch.full_like(idx, -1))

    def added(self, a: torch.Tensor, prepared: tuple | None = None) -> torch.Tensor:
        """The memory's addition alone: its row form for a population placement (editor.py)."""
        return self.routed(a, prepared)[0]

    # -- writing ---------------------------------------------------------------------------
    def solve(self, ridge: float) -> dict:
        """W_m = V^T (K K^T + lambda I)^-1 K: the least-change memory mapping every stored key
        (its masked features) to its value; lambda = ridge x the keys' mean squared norm."""
        self._check_full()
        K, V = self.key_rows().double(), self.values.double()
        gram = K @ K.T
        lam = ridge * float(gram.diagonal().mean())
        coef = torch.linalg.solve(gram + lam * torch.eye(len(K), dtype=K.dtype, device=K.device), K)
        self.memory = (V.T @ coef).to(self.memory.dtype)
        fit = (K @ self.memory.double().T - V).norm(dim=1) / V.norm(dim=1).clamp_min(1e-12)
        return {"fit_error_max": float(fit.max()), "fit_error_mean": float(fit.mean())}

    def put_key(self, subject: str, facts: list[tuple], key: torch.Tensor, value: torch.Tensor) -> int:
        """Store (or replace) `subject`'s key (its mask and features there) and value."""
        self._check_full()
        f = self.features(key.to(self.memory.dtype)[None])[0]
        index = self.mask_index(f)
        read = f[index].float()
        self._dense = None
        if subject in self.subjects:
            i = self.subjects.index(subject)
            self.index[i], self.read[i], self.values[i] = index, read, value.float()
            self.facts[i] = facts
            return i
        self.index = torch.cat([self.index, index[None]])
        self.read = torch.cat([self.read, read[None]])
        self.values = torch.cat([self.values, value.float()[None]])
        self.subjects.append(subject)
        self.facts.append(facts)
        return self.n_keys - 1

    def _check_full(self) -> None:
        if self.column_of is not None:
            raise RuntimeError("memoir: this memory was compacted for reading (a population's row form); "
                               "write and save the agent's own memory (agents.state) instead")

    def compact(self) -> None:
        """Keep only the memory columns some stored mask reads (one key: k of `width`), for a
        memory that is read and not written again (a population's row form, editor.py)."""
        used = self.index.unique()
        self.column_of = torch.full((self.width,), -1, dtype=torch.long, device=used.device)
        self.column_of[used] = torch.arange(len(used), device=used.device)
        self.memory = self.memory[:, used].clone()

    # -- state (rollback, saving) ---------------------------------------------------------
    def state(self) -> dict:
        self._check_full()
        return {"memory": self.memory.clone(), "index": self.index.clone(), "read": self.read.clone(),
                "values": self.values.clone(), "center": self.center.clone(), "whiten": self.whiten.clone(),
                "subjects": list(self.subjects),
                "facts": [list(f) for f in self.facts], "sketch": self.sketch.clone(),
                "layer": self.layer, "width": self.width, "k": self.k, "threshold": self.threshold,
                "seed": self.seed}

    def restore(self, st: dict) -> None:
        dev = self.memory.device
        self.column_of = None
        self.memory = st["memory"].to(dev, self.memory.dtype).clone()
        self.index = st["index"].to(dev, torch.long).clone()
        self.read = st["read"].to(dev, torch.float32).clone()
        self.values = st["values"].to(dev, torch.float32).clone()
        self.center = st["center"].to(dev, self.center.dtype).clone()
        self.whiten = st["whiten"].to(dev, self.whiten.dtype).clone()
        self._dense = None
        self.subjects, self.facts = list(st["subjects"]), [list(f) for f in st["facts"]]
        self.threshold = st["threshold"]


# -- installing ----------------------------------------------------------------------------
_EXPANSIONS: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}


def expansion(width: int, d_ff: int, seed: int, device, dtype) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The fixed random expansion (None when width == d_ff) and permutation of a memory's
    structure. Shared by every memory of that structure on a device: a population of MEMOIR
    agents holds one (4,096 x 256 floats, 4 MB, on the default model), not one per agent."""
    key = (width, d_ff, seed, str(device), dtype)
    if key not in _EXPANSIONS:
        g = torch.Generator().manual_seed(seed)
        expand = torch.randn(width, d_ff, generator=g) / d_ff ** 0.5 if width != d_ff else None
        perm = torch.randperm(width, generator=g)
        _EXPANSIONS[key] = (None if expand is None else expand.to(device, dtype), perm.to(device))
    return _EXPANSIONS[key]


STRUCTURE = ("layer", "width", "k", "seed")   # fixed once a model has a memory


def memory_of(model) -> RoutedMemory | None:
    for m in model.modules():
        if isinstance(m, RoutedMemory):
            return m
    return None


@torch.no_grad()
def weight_sketch(weight: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of a weight: equal for the same base model (edits move it a
    little), far apart for another model of the same shape."""
    g = torch.Generator().manual_seed(1234)
    r = torch.randn(weight.shape[1], generator=g).to(weight.device, torch.float64)
    return (weight.double() @ r).cpu()


def check_base(model, layer: int, sketch: torch.Tensor, where: str) -> None:
    """Raise ValueError when the model's projection at `layer` is not the one `sketch` was made on."""
    lay = layout_of(model)
    blocks = lay.layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"{where}: the memory is at layer {layer}; this model has layers 0..{len(blocks) - 1}")
    w = lay.mlp_out_of(blocks[layer]).weight
    now = weight_sketch(w)
    if now.shape != sketch.shape or (now - sketch).norm() > 0.25 * sketch.norm():
        raise ValueError(f"{where}: this memory was made on another base model (layer {layer}'s MLP output "
                         f"projection differs: shape {tuple(w.shape)}); load it into the model it was made on")


def install(model, layer: int, width: int, k: int, threshold: float, seed: int,
            center: torch.Tensor | None = None, whiten: torch.Tensor | None = None) -> RoutedMemory:
    """Put a routed memory at layer `layer`'s MLP output projection (the existing one when the
    structure matches; another structure is an error: one model holds one memory). A new
    memory needs the key statistics `center` and `whiten` (layer_stats.whitening)."""
    existing = memory_of(model)
    if existing is not None:
        built = {nm: getattr(existing, nm) for nm in STRUCTURE}
        asked = {"layer": layer, "width": width, "k": k, "seed": seed}
        for nm in STRUCTURE:
            if built[nm] != asked[nm]:
                raise ValueError(f"memoir: this model's memory was built with {nm}={built[nm]!r}; pass the same "
                                 "value, or start over with evolution.editors.memoir.uninstall(agent.model)")
        existing.threshold = threshold
        return existing
    lay = layout_of(model)
    blocks = lay.layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{len(blocks) - 1}")
    mlp = lay.mlp_of(blocks[layer])
    main = getattr(mlp, lay.mlp_out)
    if center is None or whiten is None:
        raise ValueError("memoir: a new memory needs its key statistics (center=, whiten=)")
    mem = RoutedMemory(main, layer, width, k, threshold, seed, lay.transposed, center, whiten)
    mem.sketch = weight_sketch(main.weight)
    setattr(mlp, lay.mlp_out, mem)
    return mem


def uninstall(model) -> None:
    """Put the plain projection back (its weights unchanged) and drop the memory."""
    mem = memory_of(model)
    if mem is None:
        return
    lay = layout_of(model)
    setattr(lay.mlp_of(lay.layers(model)[mem.layer]), lay.mlp_out, plain_projection(mem.weight, mem.bias, mem.transposed))
