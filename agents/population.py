"""The population placement: one base model per device, every agent's delta added per row.

A round's asks from all agents become packed rows (agents/scoring.py) in shared batches; each
row carries its agent's id. Forward hooks on the base model's modules add, for each row, that
row's agent's change:
- a low-rank change of a linear layer (nn.Linear, or GPT-2's Conv1D; ROME/MEMIT rank k, LoRA
  rank r) as one gathered low-rank matmul over the batch, `out += (x A_g^T) B_g^T` with `A_g`, `B_g` the row's agent's
  factors stacked and zero-padded to the batch's largest rank (Punica's BGMV, S-LoRA);
- any other change (a dense fine-tune, a norm's weight, an embedding) by recomputing that
  module for the rows of each agent that has one, with base + that agent's delta (the
  fallback that stays correct for any module whose parameters are its own).
Rows of agents with no delta, and identical (prompt, candidates) asks of agents in the same
state (every agent alone at round 0 before any changed), are scored once.

Edits and learning run on a scratch `Agent` materialized as base + the agent's delta and
state; the placement keeps the update the method returned (added to the agent's delta once it
is checked against the weights the method left), or factors the change by SVD when the method
returned none (agents/delta.py). A method that changes the model's modules leaves an agent
that is not base + delta:
- where its extension has a row form (MEMOIR's routed memory: an addition to one projection's
  output), the hooks add it to that agent's rows of the shared model;
- otherwise (WISE's side memory) the agent keeps its own model ("solo") and its rows are
  scored by that model.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D

from agents.agent import Agent, pick_device
from agents.checkpoint import load_model_dir
from agents.delta import Snapshot, add_delta, compose, factor, fingerprint, fit, mismatch
from agents.placement import (Ask, Handle, Placement, PlacementError, _check_new, extensions_of, lookup,
                              structure)
from agents.state import carries_extensions, put_extensions, row_additions
from agents.records import beliefs_from_scores, prompts_with_context
from agents.scoring import (candidate_logprobs, check_readable, greedy_continuations, mask_dtype, packed_rows,
                            score_packed, text_nll)


@dataclass
class _Slot:
    id: int                                   # row id in the hooks' stacks (0 is the bare base)
    persona: str
    delta: dict = field(default_factory=dict)  # param -> dense tensor | (B, A)
    state: dict = field(default_factory=dict)
    version: int = 0
    solo: Agent | None = None                 # a model of its own (structure changed)
    adds: dict = field(default_factory=dict)  # module -> its extensions' additions (agents/state.row_additions)


# A batch takes the merged-weight path when it has at least this many tokens per run of a
# changed agent's rows, per unit of rank. Measured on the default model (2 threads): a merge
# (in x out x R) and its own matmul call cost about what the gathered low-rank path's extra
# passes cost on 400 tokens at rank 8. Rows are batched by length, so runs are long only
# when one agent (or a few) is asked many queries: an agent's evaluation, its texts' NLL.
MERGE_TOKENS_PER_RANK = 50


def runs_of(ids: list[int]) -> list[tuple[int, int, int]]:
    """(first, end, id) of each run of equal ids."""
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            out.append((start, i, ids[start]))
            start = i
    return out


def merged_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, runs: list[tuple[int, int, int]],
                  At: torch.Tensor, Bt: torch.Tensor) -> torch.Tensor:
    """x W_j^T + b for each run (first row, end row, slot j) of x's rows, W_j = W + B_j A_j
    (slot 0: W itself), each run's product written into its part of one output."""
    tokens = x.numel() // x.shape[-1]
    per_row = tokens // x.shape[0]
    x2 = x.reshape(tokens, x.shape[-1])
    out = x2.new_empty(tokens, w.shape[0])
    for a, b, j in runs:
        wj = torch.addmm(w, Bt[j].T, At[j].T) if j else w
        rows, part = x2[a * per_row:b * per_row], out[a * per_row:b * per_row]
        if bias is None:
            torch.mm(rows, wj.T, out=part)
        else:
            torch.addmm(bias, rows, wj.T, out=part)
    return out.view(*x.shape[:-1], w.shape[0])


def _linear_like(m: nn.Module) -> bool:
    """Modules whose weight acts as a matmul (+ b): nn.Linear (out = x W^T + b) and GPT-2's
    Conv1D (out = x W + b, W stored [in, out]); a low-rank change is a gathered matmul."""
    return isinstance(m, (nn.Linear, Conv1D))


def _as_linear(m: nn.Module) -> torch.Tensor:
    """The module's weight as nn.Linear holds it, [out, in] (a view of Conv1D's [in, out])."""
    return m.weight.T if isinstance(m, Conv1D) else m.weight


class PopulationPlacement(Placement):
    kind = "population"

    def __init__(self, model, tokenizer, device: str | None = None, batch_size: int = 32, max_rank: int = 32):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.batch_size, self.max_rank = tokenizer, batch_size, max_rank
        self.base = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._structure = structure(self.model)
        self._fp = fingerprint(self.base)
        self.slots: dict[str, _Slot] = {}
        self._next_id = 1
        self._scratch: Agent | None = None
        # parameter name -> (module name, attribute); tied parameters map to every owner
        self._owner: dict[str, list[tuple[str, str]]] = {}
        self.modules = dict(self.model.named_modules())
        for mname, m in self.modules.items():
            for pname in m._parameters:
                if m._parameters[pname] is not None:
                    self._owner.setdefault(f"{mname}.{pname}" if mname else pname, []).append((mname, pname))
        self._linear_params = {f"{n}.weight" for n, m in self.modules.items() if _linear_like(m)}
        self._tied = self._tied_names()
        self._packs: dict[str, dict] | None = None      # per module: stacks, rebuilt when deltas change
        self._rows: torch.Tensor | None = None          # agent id of each row of the running forward
        self._in_hook = False
        self._runs: list[tuple[int, int, int]] | None = None   # (first row, end row, agent id) of each agent's run
        self._looked: dict[int, tuple] = {}             # per slot table: the running batch's (slots, changed, rows' slots)
        for mname, m in self.modules.items():
            if any(p is not None for p in m._parameters.values()):
                m.register_forward_hook(self._hook(mname), with_kwargs=True)
            if _linear_like(m):
                m.forward = self._linear_forward(mname, m)

    @classmethod
    def from_dir(cls, path: str | Path, device: str | None = None, batch_size: int = 32, **kw) -> "PopulationPlacement":
        model, tok = load_model_dir(path)
        return cls(model, tok, device, batch_size, **kw)

    def _tied_names(self) -> dict[str, list[str]]:
        """state-dict keys that name one tensor (tied embeddings): a change to one is a change to all."""
        by_ptr: dict[int, list[str]] = {}
        for k, v in self.model.state_dict(keep_vars=True).items():
            by_ptr.setdefault(id(v), []).append(k)
        return {k: names for names in by_ptr.values() for k in names if len(names) > 1}

    # -- the interface --------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.slots)

    def _slot(self, name: str) -> _Slot:
        return lookup(self.slots, name)

    @staticmethod
    def _row_id(s: _Slot) -> int:
        """The id its rows carry into the hooks: 0 (the bare base) for an agent with no change."""
        return s.id if s.delta or s.adds else 0

    def persona(self, name: str) -> str:
        return self._slot(name).persona

    def version(self, name: str) -> int:
        return self._slot(name).version

    def base_fingerprint(self) -> str:
        return self._fp

    def spawn(self, name: str, persona: str = "neutral", parent: str | None = None) -> Handle:
        _check_new(self, name)
        if parent is None:
            self.slots[name] = _Slot(self._next_id, persona)
            self._next_id += 1
            return Handle(self, name)
        return self.restore(dataclasses.replace(self.snapshot(parent), name=name, persona=persona))

    def snapshot(self, name: str) -> Snapshot:
        s = self._slot(name)
        if s.solo is not None:      # base + its weight delta + what its method added (a side memory)
            m = s.solo.model
            return Snapshot(name, s.persona, factor(m.state_dict(), self.base, self.max_rank, self._linear_params),
                            {**copy.deepcopy(s.solo.state), **extensions_of(m, name, self.model)})
        return Snapshot(name, s.persona, dict(s.delta), copy.deepcopy(s.state))

    def restore(self, snap: Snapshot) -> Handle:
        for k in snap.delta:
            if k not in self.base:
                raise PlacementError(f"agent {snap.name!r}: its delta changes {k!r}, which this base model does not have")
        old = self.slots.get(snap.name)
        solo, adds = None, {}
        if carries_extensions(snap.state):      # it carries modules of its own
            adds = row_additions(self.model, snap.state)
            if adds is None:                    # that have no row form: a model of its own
                solo, adds = Agent(self._bare_model(), self.tokenizer, snap.name, snap.persona, self.device,
                                   self.batch_size, self.base), {}
                add_delta(solo.model, snap.delta)
                solo.state = put_extensions(solo.model, copy.deepcopy(snap.state))
        self.slots[snap.name] = _Slot(old.id if old else self._next_id, snap.persona,
                                      {} if solo else self._canonical(snap.delta), copy.deepcopy(snap.state),
                                      old.version + 1 if old else 0, solo, adds)
        if old is None:
            self._next_id += 1
        self._packs = None
        return Handle(self, snap.name)

    def remove(self, name: str) -> None:
        self._slot(name)
        del self.slots[name]
        self._packs = None

    def _canonical(self, delta: dict) -> dict:
        """One entry per tensor: a change to a tied parameter is kept under its first name only
        (the hook of every module that owns the tensor applies it)."""
        out = {}
        for k, v in delta.items():
            first = self._tied.get(k, [k])[0]
            out.setdefault(first, v)
        return out

    # -- changing an agent: run the method on a materialized model, keep what it left -------------
    def _materialize(self, name: str) -> Agent:
        s = self._slot(name)
        if s.solo is not None:
            return s.solo
        if self._scratch is None or structure(self._scratch.model) != self._structure:
            self._scratch = Agent(self._bare_model(), self.tokenizer, device=self.device, batch_size=self.batch_size, base=self.base)
        a = self._scratch
        a.model.load_state_dict(self.base)
        add_delta(a.model, s.delta)
        a.name, a.persona = name, s.persona
        a.state = put_extensions(a.model, copy.deepcopy(s.state))   # its modules, when it has some
        a.model.eval()
        return a

    def _bare_model(self):
        """A copy of the base model without this placement's hooks."""
        m = type(self.model)(self.model.config)
        m.load_state_dict(self.base)
        return m.to(self.device).eval()

    def _keep(self, name: str, a: Agent) -> None:
        s = self._slot(name)
        s.version += 1
        self._packs = None
        if s.solo is not None:
            return
        ext, adds = {}, {}
        if structure(a.model) != self._structure:
            ext = extensions_of(a.model, name, self.model)
            adds = row_additions(self.model, ext)
            if adds is None:                   # modules without a row form: the model is the agent's own
                s.solo, s.delta, s.adds, self._scratch = a, {}, {}, None
                return
        self._scratch = a if not ext else None     # learners may replace the model object
        s.delta = self._kept_delta(name, s, a)
        s.state, s.adds = {**a.state, **ext}, adds

    def _kept_delta(self, name: str, s: _Slot, a: Agent) -> dict:
        """The agent's delta after the method: its returned update added to the old delta when
        that reproduces the weights it left (no SVD), else the change factored by SVD."""
        if a.last_update is not None:
            new = self._canonical(compose(s.delta, a.last_update))
            off = mismatch(a.model.state_dict(), self.base, new, self._tied)
            if off is None:
                return fit(new, self.base, self.max_rank, self._linear_params)
            warnings.warn(f"agent {name!r}: the update the method returned does not match what it wrote to the "
                          f"weights ({off}); the placement factored the change itself instead. Return the change "
                          "the method made, or none")
        return self._canonical(factor(a.model.state_dict(), self.base, self.max_rank, self._linear_params))

    def edit(self, name: str, requests, method: str, **hparams):
        a = self._materialize(name)
        report = a.edit(requests, method, **hparams)      # a method that fails leaves the agent as it was
        self._keep(name, a)
        return report

    def learn(self, name: str, data, method: str = "finetune", **hparams):
        a = self._materialize(name)
        report = a.learn(data, method, **hparams)
        self._keep(name, a)
        return report

    def materialize(self, name: str) -> Agent:
        """A copy of the agent as a plain in-process Agent (for analysis that needs a model)."""
        a = self._materialize(name)
        out = Agent(copy.deepcopy(a.model), self.tokenizer, name, a.persona, self.device, self.batch_size, self.base)
        out.state = copy.deepcopy(a.state)
        return out

    # -- answering -------------------------------------------------------------------------------
    def beliefs_many(self, asks: list[Ask]) -> list[list]:
        items, keys = [], {}                    # distinct (state key, prompt, candidates) -> item index
        per_ask = []
        for a in asks:
            s = self._slot(a.agent)
            check_readable(self.tokenizer, a.queries)
            contexts, prompts = prompts_with_context(a.queries, a.context)
            # agents in the same state share rows: a solo model or a delta is the agent's own
            state = (a.agent, s.version) if s.solo is not None or self._row_id(s) else ("base",)
            where = []
            for q, p in zip(a.queries, prompts):
                key = (state, p, tuple(q.candidates))
                if key not in keys:
                    keys[key] = len(items)
                    items.append((a.agent, p, tuple(q.candidates)))
                where.append(keys[key])
            per_ask.append((contexts, where))
        scores = self._score(items)
        return [beliefs_from_scores(a.queries, contexts, [scores[w] for w in where], a.agent, **a.fields)
                for a, (contexts, where) in zip(asks, per_ask)]

    def _score(self, items: list[tuple[str, str, tuple]]) -> list[torch.Tensor]:
        out: list = [None] * len(items)
        shared = [i for i, (n, _, _) in enumerate(items) if self.slots[n].solo is None]
        for name in {n for n, _, _ in items if self.slots[n].solo is not None}:
            idx = [i for i, it in enumerate(items) if it[0] == name]
            solo = self.slots[name].solo
            for i, sc in zip(idx, candidate_logprobs(solo.model, self.tokenizer, [items[i][1] for i in idx],
                                                     [items[i][2] for i in idx], self.batch_size)):
                out[i] = sc
        if not shared:
            return out
        rows = packed_rows(self.tokenizer, [items[i][1] for i in shared], [items[i][2] for i in shared])
        ids = torch.tensor([self._row_id(self.slots[items[i][0]]) for i in shared])

        def forward(idx, input_ids, position_ids, mask):
            with self._rows_of(ids[idx]):
                return self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask).logits

        with torch.inference_mode():
            scores = score_packed(forward, rows, self.tokenizer.pad_token_id, self.batch_size,
                                  mask_dtype(self.model), self.device)
        for i, sc in zip(shared, scores):
            out[i] = sc
        return out

    def generate_many(self, asks: list[tuple[str, list[str]]], max_new_tokens: int = 12) -> list[list[str]]:
        """Greedy continuations of every agent's prompts, `batch_size` rows per `generate` call
        (left-padded), each row with its agent's delta."""
        out = [[""] * len(prompts) for _, prompts in asks]
        rows = []
        for i, (name, prompts) in enumerate(asks):
            s = self._slot(name)
            if s.solo is not None:
                out[i] = s.solo.generate(prompts, max_new_tokens)
                continue
            rows += [(i, j, self._row_id(s), p) for j, p in enumerate(prompts)]
        ids = torch.tensor([r for _, _, r, _ in rows], dtype=torch.long)

        def generate(idx, **enc):
            with torch.inference_mode(), self._rows_of(ids[idx]):
                return self.model.generate(**enc)
        texts = greedy_continuations(generate, self.tokenizer, [p for *_, p in rows], max_new_tokens,
                                     self.batch_size, self.device)
        for (i, j, _, _), t in zip(rows, texts):
            out[i][j] = t
        return out

    def nll_many(self, asks: list[tuple[str, list[str]]], batch_size: int = 32) -> list[tuple[float, int]]:
        out = []
        for name, texts in asks:
            s = self._slot(name)
            if s.solo is not None:
                out.append(s.solo.nll(texts, batch_size))
                continue
            ids = torch.full((len(texts),), self._row_id(s), dtype=torch.long)

            def forward(idx, input_ids, mask):
                with self._rows_of(ids[idx]):
                    return self.model(input_ids=input_ids, attention_mask=mask).logits
            with torch.inference_mode():
                out.append(text_nll(forward, self.tokenizer, texts, batch_size, self.device))
        return out

    # -- the hooks -------------------------------------------------------------------------------
    def _rows_of(self, ids: torch.Tensor):
        placement = self

        class _Rows:
            def __enter__(self):
                placement._ensure_packs()
                placement._rows = ids.to(placement.device)
                placement._runs = runs_of(ids.tolist())
                placement._looked = {}

            def __exit__(self, *exc):
                placement._rows = placement._runs = None
                placement._looked = {}
        return _Rows()

    def _ensure_packs(self) -> None:
        """Per module: the low-rank factors of every agent stacked, transposed for the batched
        matmuls (`At` [slots, in, R], `Bt` [slots, R, out], slot 0 zero) and each agent's slot;
        the dense changes per agent id."""
        if self._packs is not None:
            return
        packs: dict[str, dict] = {}
        tables: dict[tuple, torch.Tensor] = {}
        n_ids = self._next_id
        for s in self.slots.values():
            for mname, fs in s.adds.items():
                packs.setdefault(mname, {"low": {}, "dense": {}}).setdefault("adds", {})[s.id] = fs
            for k, v in s.delta.items():
                for mname, pname in (o for kk in self._tied.get(k, [k]) for o in self._owner[kk]):
                    pk = packs.setdefault(mname, {"low": {}, "dense": {}})
                    if isinstance(v, tuple) and pname == "weight" and _linear_like(self.modules[mname]):
                        pk["low"][s.id] = v
                    else:
                        pk["dense"].setdefault(s.id, {})[pname] = v if not isinstance(v, tuple) else v[0] @ v[1]
        for mname, pk in packs.items():
            low = pk.pop("low")
            if low:
                r = max(b.shape[1] for b, _ in low.values())
                ref = _as_linear(self.modules[mname])
                conv = isinstance(self.modules[mname], Conv1D)
                Bt = torch.zeros(len(low) + 1, r, ref.shape[0], dtype=ref.dtype, device=self.device)
                At = torch.zeros(len(low) + 1, ref.shape[1], r, dtype=ref.dtype, device=self.device)
                slot_of = torch.zeros(n_ids, dtype=torch.long, device=self.device)
                for j, (aid, (b, a)) in enumerate(low.items(), start=1):
                    if conv:                 # the change of W [in, out] = B A is (B A)^T = A^T B^T as [out, in]
                        b, a = a.T, b.T
                    Bt[j, :b.shape[1]] = b.T.to(Bt)
                    At[j, :, :a.shape[0]] = a.T.to(At)
                    slot_of[aid] = j
                # modules whose agents sit in the same slots share one table, and a batch's
                # lookups in it are made once (by profile, the forward's per-module Python was ~3% of a round)
                slot_of = tables.setdefault(tuple(slot_of.tolist()), slot_of)
                pk["Bt"], pk["At"], pk["slot_of"], pk["slots"] = Bt, At, slot_of, slot_of.tolist()
            pk["dense"] = {aid: {p: (self.modules[mname]._parameters[p] + d.to(self.device)).detach()
                                 for p, d in ds.items()} for aid, ds in pk["dense"].items()}
        self._packs = packs

    def _linear_forward(self, mname: str, module: nn.Module):
        """The linear layer's forward with each row's low-rank change (the rows' dense changes
        are the hook's). Two ways, the cheaper for the batch:
        - per run of rows of one agent, the agent's merged weight `W + B A` in the one matmul
          (costs `in x out x R` per run, nothing per token: a batch of few agents costs the
          bare forward);
        - the base matmul, then the gathered low-rank matmul of every row (costs two more
          passes over the activations: many agents of few tokens each)."""
        def forward(x: torch.Tensor) -> torch.Tensor:
            pk = None if self._rows is None or self._in_hook or not self._packs else self._packs.get(mname)
            w = _as_linear(module)
            if pk is None or "Bt" not in pk:
                return nn.functional.linear(x, w, module.bias)
            rows, runs, bias = self._rows, self._runs, module.bias
            if x.shape[0] != rows.shape[0]:
                raise PlacementError(f"module {mname!r}: its input is not one tensor per batch row, so a "
                                     "per-agent change to it cannot be applied here")
            tokens = x.numel() // x.shape[-1]
            looked = self._looked.get(id(pk["slot_of"]))
            if looked is None:
                slots = [pk["slots"][aid] for _, _, aid in runs]
                looked = self._looked[id(pk["slot_of"])] = (slots, sum(1 for j in slots if j), pk["slot_of"][rows])
            slots, changed, g = looked
            if not changed:
                return nn.functional.linear(x, w, bias)
            if tokens >= MERGE_TOKENS_PER_RANK * pk["At"].shape[-1] * changed and not torch.is_grad_enabled():
                return merged_linear(x, w, bias, [(a, b, j) for (a, b, _), j in zip(runs, slots)], pk["At"], pk["Bt"])
            out = nn.functional.linear(x, w, bias)
            h = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), pk["At"][g])    # [b, s, R]
            flat = out.view(out.shape[0], -1, out.shape[-1])
            if torch.is_grad_enabled() and out.requires_grad:
                out = torch.baddbmm(flat, h, pk["Bt"][g]).view(out.shape)
            else:           # in place: a new [b, s, out] tensor per module cost more than the matmuls
                flat.baddbmm_(h, pk["Bt"][g])
            return out
        return forward

    def _hook(self, mname: str):
        def hook(module, args, kwargs, out):
            rows = self._rows
            if rows is None or self._in_hook or self._packs is None or mname not in self._packs:
                return None
            pk = self._packs[mname]
            if not isinstance(out, torch.Tensor) or out.shape[0] != rows.shape[0]:
                raise PlacementError(f"module {mname!r} ({type(module).__name__}): its output is not one "
                                     "tensor per batch row, so a per-agent change to it cannot be applied here")
            present = set(rows.tolist()) if pk["dense"] or pk.get("adds") else set()
            if pk["dense"]:
                out = out.clone()
                for aid, params in pk["dense"].items():
                    if aid not in present:
                        continue
                    sel = (rows == aid).nonzero()[:, 0]
                    cut = lambda t: t[sel] if isinstance(t, torch.Tensor) and t.shape[:1] == rows.shape else t
                    self._in_hook = True
                    try:
                        out[sel] = functional_call(module, params, tuple(cut(a) for a in args),
                                                   {k: cut(v) for k, v in kwargs.items()})
                    finally:
                        self._in_hook = False
            if pk.get("adds"):                    # the agents' extensions' additions (MEMOIR's memory)
                out = self._add_rows(pk["adds"], args[0] if args else next(iter(kwargs.values())),
                                     out if pk["dense"] else out.clone(), rows, present)
            return out
        return hook

    @staticmethod
    def _add_rows(adds: dict, x: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, present: set) -> torch.Tensor:
        """Each present agent's row additions to `out` (in place); a `prepare` the additions
        share is computed once over all their rows (MEMOIR's features: most of its cost)."""
        groups: dict[int, tuple] = {}
        for aid, ras in adds.items():
            if aid in present:
                sel = (rows == aid).nonzero()[:, 0]
                for ra in ras:
                    groups.setdefault(id(ra.prepare), (ra.prepare, []))[1].append((sel, ra))
        for prepare, members in groups.values():
            prepared = None
            if prepare is not None:
                prepared = prepare(x[torch.cat([sel for sel, _ in members])])
                prepared = prepared if isinstance(prepared, tuple) else (prepared,)
            start = 0
            for sel, ra in members:
                part = None if prepared is None else tuple(t[start:start + len(sel)] for t in prepared)
                start += len(sel)
                out.index_add_(0, sel, ra.add(x[sel], part).to(out.dtype))
        return out
