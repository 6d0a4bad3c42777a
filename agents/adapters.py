"""An agent's change as a peft LoRA adapter: base + adapter = the edited model.

`agent.delta()` (dense, per changed parameter) is factorized per module by SVD: a ROME edit
is rank one on one down-projection, so k sequential edits of one layer export exactly at
rank >= k; a dense fine-tune is truncated at `rank`, and the export reports the relative
error it leaves. The directory loads with `peft.PeftModel.from_pretrained(base, dir)` and
serves in vLLM as a LoRA (`LoRARequest`), which is how a population shares one base model.
Parameters LoRA cannot hold (norm weights, biases) are listed as dropped, or refused with
`strict=True`.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


class AdapterError(ValueError):
    """The delta cannot be exported as asked; the message says why and what to change."""


@dataclass
class ModuleExport:
    rank: int               # rank written
    numerical_rank: int     # singular values above tol x the largest
    rel_error: float        # |delta - B A|_F / |delta|_F
    kind: str               # "linear" | "embedding"


@dataclass
class AdapterExport:
    path: str
    rank: int
    modules: dict[str, ModuleExport] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)   # parameter -> |delta|_F not exported

    @property
    def max_rel_error(self) -> float:
        return max((m.rel_error for m in self.modules.values()), default=0.0)

    @property
    def exact(self) -> bool:
        return not self.dropped and all(m.rank >= m.numerical_rank for m in self.modules.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "max_rel_error": self.max_rel_error, "exact": self.exact}


def low_rank_factors(delta: torch.Tensor, rank: int, tol: float = 1e-6):
    """(B [m, r], A [r, n], rel_error, numerical rank) with B A the best rank-r approximation
    of delta [m, n] (Eckart-Young); r = min(rank, numerical rank), at least 1."""
    d = delta.double()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    num = int((s > tol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    r = max(1, min(rank, num))
    root = s[:r].sqrt()
    b, a = u[:, :r] * root, root[:, None] * vh[:r]
    err = float(torch.linalg.norm(d - b @ a) / torch.linalg.norm(d).clamp_min(1e-30))
    return b.float(), a.float(), err, num


def base_model_of(agent):
    """A copy of the agent's model holding the base weights (what the adapter sits on)."""
    model = copy.deepcopy(agent.model).cpu()
    model.load_state_dict({k: v.cpu() for k, v in agent.base.items()})
    return model.eval()


def export_adapter(agent, out_dir: str | Path, rank: int = 8, strict: bool = False, tol: float = 1e-6,
                   atol: float = 0.0) -> AdapterExport:
    """Write the agent's delta as a peft LoRA adapter directory and say how exact it is."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"rank: {rank!r}; give a positive integer")
    delta = agent.delta(atol)
    if not delta:
        raise AdapterError("the agent has no delta to export (its weights equal its base)")
    base = base_model_of(agent)
    modules = dict(base.named_modules())
    report = AdapterExport(str(out_dir), rank)
    factors = {}
    for pname, d in delta.items():
        mname, _, leaf = pname.rpartition(".")
        mod = modules.get(mname)
        kind = ("linear" if isinstance(mod, (torch.nn.Linear, Conv1D)) else
                "embedding" if isinstance(mod, torch.nn.Embedding) else None)
        if leaf != "weight" or kind is None:
            report.dropped[pname] = float(d.float().norm())
            continue
        # nn.Linear stores [out, in] = B A; GPT-2's Conv1D stores [in, out] (peft adapts it with
        # fan_in_fan_out, B A still [out, in]); peft's embedding LoRA stores delta^T = B A.
        b, a, err, num = low_rank_factors(d.cpu() if isinstance(mod, torch.nn.Linear) else d.cpu().T, rank, tol)
        factors[mname] = (kind, b, a)
        report.modules[mname] = ModuleExport(b.shape[1], num, err, kind)
    if strict and report.dropped:
        raise AdapterError(f"strict: {sorted(report.dropped)} changed but LoRA cannot hold them (not a Linear or "
                           "Embedding weight); export with strict=False to drop them, or keep them frozen")
    if not factors:
        raise AdapterError(f"no changed parameter is a Linear or Embedding weight ({sorted(report.dropped)})")
    ranks = {m: f[1].shape[1] for m, f in factors.items()}
    cfg = LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()), lora_dropout=0.0, bias="none",
                     target_modules=sorted(factors), rank_pattern=ranks, alpha_pattern=ranks,
                     fan_in_fan_out=any(isinstance(modules[m], Conv1D) for m in factors))
    peft_model = get_peft_model(base, cfg)
    named = dict(peft_model.named_modules())
    with torch.no_grad():
        for mname, (kind, b, a) in factors.items():
            lm = named[f"base_model.model.{mname}"]
            if kind == "linear":
                lm.lora_A["default"].weight.copy_(a)
                lm.lora_B["default"].weight.copy_(b)
            else:
                lm.lora_embedding_A["default"].copy_(a)
                lm.lora_embedding_B["default"].copy_(b)
            if abs(lm.scaling["default"] - 1.0) > 1e-12:
                raise AdapterError(f"{mname}: peft scaling {lm.scaling['default']} != 1; peft's rank/alpha "
                                   "patterns were not applied")
    out = Path(out_dir)
    # peft's default ('auto') would also save the full base embedding and lm_head matrices
    # whenever they are targets; the base is shared, the adapter holds only the factors.
    peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    (out / "knowevo_adapter.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report
