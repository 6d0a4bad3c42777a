"""An agent's change to the shared base, stored factored where it is low-rank.

ROME/MEMIT edits are rank k on a down-projection, a LoRA fine-tune is rank r per module, a
full fine-tune is dense. `factor` finds, per changed parameter of a linear layer, the
smallest rank whose product reproduces the change to float32 rounding of the base weights
(1e-6 of their largest entry) and keeps `B @ A` when that rank is at most `max_rank`; any
other change stays dense. This is the one on-disk form of an agent on every placement:
`delta.safetensors` (`<param>` dense, or `<param>.B` / `<param>.A`), `agent.json` (name,
persona, base fingerprint) and its method state (agents/state.py), written to a temporary
dir and renamed into place whole.

A method that knows the factors of what it changed returns them (ROME's design: the editor
computes the update, the placement keeps it): `report.update` or `report["update"]`, the same
{param: dense | (B, A)} form, every state-dict name whose tensor changed. The placement then
adds it to the agent's delta (`compose`), checks it against the weights the method left
(`mismatch`) and needs no SVD; a method that returns none is factored by `factor` as before.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from agents.state import load_state, save_state

LowRank = tuple[torch.Tensor, torch.Tensor]          # (B [out, r], A [r, in]): delta = B @ A


@dataclass
class Snapshot:
    """Everything that makes an agent itself on a known base: picklable (sent to Ray actors)."""
    name: str
    persona: str = "neutral"
    delta: dict[str, "torch.Tensor | LowRank"] = field(default_factory=dict)
    state: dict = field(default_factory=dict)


def rounding_atol(weight: torch.Tensor) -> float:
    """What a change of `weight` may be off by and still count as reproduced: float32
    rounding of the weight (1e-6 of its largest entry)."""
    return 1e-6 * float(weight.detach().abs().max().clamp_min(1e-12))


def low_rank(d: torch.Tensor, atol: float, max_rank: int) -> LowRank | None:
    """(B, A) with max|d - B A| <= atol at the smallest such rank <= max_rank, or None."""
    if d.ndim != 2 or min(d.shape) <= max_rank:
        return None
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    r = int((s > atol).sum())
    if r > max_rank:
        return None
    b, a = (u[:, :r] * s[:r]).float(), vh[:r].float()
    if r and (d - b @ a).abs().max() > atol:
        return None
    return b.contiguous(), a.contiguous()


def factor(new: dict[str, torch.Tensor], base: dict[str, torch.Tensor], max_rank: int = 32,
           linear: set[str] | None = None) -> dict[str, "torch.Tensor | LowRank"]:
    """The change from `base` to `new` per parameter that changed (`linear`: the parameter
    names that may be stored low-rank, the weights of linear layers; all 2-D ones if None)."""
    out = {}
    for k, v in new.items():
        d = v.detach().float().cpu() - base[k].detach().float().cpu()
        if not d.abs().max() > 0:
            continue
        lr = low_rank(d, rounding_atol(base[k]), max_rank) if linear is None or k in linear else None
        out[k] = lr if lr is not None else d
    return out


def as_dense(change: "torch.Tensor | LowRank") -> torch.Tensor:
    return change[0] @ change[1] if isinstance(change, tuple) else change


def dense(delta: dict[str, "torch.Tensor | LowRank"]) -> dict[str, torch.Tensor]:
    return {k: as_dense(v) for k, v in delta.items()}


# -- updates returned by the methods ------------------------------------------------------------
def plus(a: "torch.Tensor | LowRank | None", b: "torch.Tensor | LowRank") -> "torch.Tensor | LowRank":
    """a + b, two changes of one parameter: their factors side by side while both are factored
    and the factors stay smaller than the matrix (k sequential ROME edits: rank k), else dense."""
    if a is None:
        return b
    if isinstance(a, tuple) and isinstance(b, tuple):
        (m, r1), (r2, n) = a[0].shape, b[1].shape
        if (r1 + r2) * (m + n) < m * n:
            return (torch.cat([a[0], b[0].to(a[0])], 1).contiguous(),
                    torch.cat([a[1], b[1].to(a[1])], 0).contiguous())
    x = as_dense(a)
    return x + as_dense(b).to(x)


def compose(delta: dict, update: dict) -> dict:
    """The delta after `update` (a method's returned change) is added to it."""
    out = dict(delta)
    for k, v in update.items():
        out[k] = plus(out.get(k), v)
    return out


def fit(delta: dict, base: dict[str, torch.Tensor], max_rank: int, linear: set[str] | None = None) -> dict:
    """The delta in the form a placement stores: a factored change above `max_rank`, or of a
    parameter that may not be stored factored (not in `linear`), is re-factored to its
    numerical rank by SVD when that fits, else dense; dense changes stay dense (the method
    said so) and no SVD is run for them."""
    out = {}
    for k, v in delta.items():
        if isinstance(v, tuple) and v[0].shape[1] <= max_rank and (linear is None or k in linear):
            out[k] = v
            continue
        d = as_dense(v).detach().float().cpu()
        lr = low_rank(d, rounding_atol(base[k]), max_rank) if isinstance(v, tuple) and (linear is None or k in linear) \
            else None
        out[k] = lr if lr is not None else d
    return out


def mismatch(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor], delta: dict,
             aliases: dict[str, list[str]] | None = None, rel: float = 1e-5) -> str | None:
    """None when every weight in `state` is base + delta to float rounding (`rel`, or twice the
    weight's dtype epsilon if larger, of the larger of its largest base and new entry); else
    which parameter is off and by how much.
    `aliases`: the names each delta key also goes by (tied weights)."""
    want = {kk: v for k, v in delta.items() for kk in (aliases or {}).get(k, [k])}
    for k, v in state.items():
        if k not in base:
            return f"{k} is not a weight of the base model"
        b = base[k]
        if k not in want:
            if torch.equal(v, b.to(v.device)):
                continue
            off = float((v.detach().float() - b.to(v.device).float()).abs().max())
        else:
            d = as_dense(want[k]).to(v.device, torch.float32)
            off = float((v.detach().float() - b.to(v.device).float() - d).abs().max())
        eps = 2 * torch.finfo(v.dtype).eps if v.is_floating_point() else 0.0    # half-precision weights round more
        tol = max(rel, eps) * max(float(b.detach().abs().max()), float(v.detach().abs().max()), 1e-12)
        if not off <= tol:
            return f"{k} is off by {off:.3g} (tolerance {tol:.3g})" + ("" if k in want else ", and the update does not name it")
    return None


def changed_weights(model, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense change of every weight since `before` (a copy of the state dict): the returned
    update of a method that trains weights in place (FT-L, the erasers, full fine-tuning)."""
    return {k: (v.detach() - before[k]).clone() for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def take_update(report) -> dict | None:
    """The update a method returned with its report (`report.update` or `report["update"]`),
    removed from the report so that it stays light; None when the method returned none."""
    if isinstance(report, dict):
        return report.pop("update", None)
    upd = getattr(report, "update", None)
    if upd is not None:
        report.update = None
    return upd


def add_delta(model, delta: dict[str, "torch.Tensor | LowRank"]) -> None:
    """The model's weights += the delta (dense or factored), in place."""
    sd = model.state_dict()
    with torch.no_grad():
        for k, d in dense(delta).items():
            sd[k].add_(d.to(sd[k].device, sd[k].dtype))


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().float().cpu().contiguous()
        h.update(k.encode())
        h.update(t.flatten()[:: max(1, t.numel() // 997)].numpy().tobytes())
    return h.hexdigest()[:16]


def save_snapshot(snap: Snapshot, path: str | Path, base_fingerprint: str) -> Path:
    """Write the agent whole: into `path`.tmp, then renamed to `path` (an old copy replaced)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {}
    for k, v in snap.delta.items():
        if isinstance(v, tuple):
            tensors[k + ".B"], tensors[k + ".A"] = v[0].contiguous(), v[1].contiguous()
        else:
            tensors[k] = v.contiguous()
    save_file({k: t.detach().cpu() for k, t in tensors.items()}, str(tmp / "delta.safetensors"))
    save_state(snap.state, tmp)
    (tmp / "agent.json").write_text(json.dumps({"name": snap.name, "persona": snap.persona,
                                                "base": base_fingerprint, "format": "knowevo-delta-1"}))
    if path.exists():
        shutil.rmtree(path)
    tmp.replace(path)
    return path


def is_snapshot(path: str | Path) -> bool:
    return (Path(path) / "delta.safetensors").exists() and (Path(path) / "agent.json").exists()


def load_snapshot(path: str | Path, base_fingerprint: str | None = None, name: str | None = None) -> Snapshot:
    path = Path(path)
    if not is_snapshot(path):
        raise FileNotFoundError(f"{str(path)!r} is not a saved agent (no delta.safetensors + agent.json); "
                                "write one with placement.save(name, path)")
    meta = json.loads((path / "agent.json").read_text())
    if base_fingerprint is not None and meta.get("base") not in (None, base_fingerprint):
        raise ValueError(f"{str(path)!r}: this agent was saved on another base model (fingerprint "
                         f"{meta.get('base')}, this placement's {base_fingerprint}); load it on the model it was made on")
    tensors = load_file(str(path / "delta.safetensors"))
    delta: dict = {}
    for k, t in tensors.items():
        if k.endswith(".B") and k[:-2] + ".A" in tensors:
            delta[k[:-2]] = (t, tensors[k[:-2] + ".A"])
        elif not (k.endswith(".A") and k[:-2] + ".B" in tensors):
            delta[k] = t
    return Snapshot(name or meta["name"], meta.get("persona", "neutral"), delta, load_state(path))
