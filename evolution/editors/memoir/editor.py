"""The `memoir` editor: lifelong edits in a routed sparse residual memory (memory.py).

Per edited person, one memory key: the MLP input at the person's edited subject token
(tracing's choice, as ROME), averaged over the edit prompts, their paraphrases and bio
statements behind a few prefixes (ROME's k*). Its value is what must be added to the MLP
output there so that every edit of that person holds at once: ROME's value optimization
(optimize_deltas) over all the person's edits, with the KL term holding the person's other
relations, run on the model with the memory switched off. A second edit of the same person
recomputes that person's value from all its edits (one key, one value: two values on one key
would be averaged away). Then the memory is solved in closed form so that each stored key,
read through its mask, gives its value (RoutedMemory.solve): earlier edits are kept exactly
as long as the keys are independent, which the sparse masks and a wider memory make likely.

MEMOIR (Wang et al., 2025) trains the memory columns by gradient descent, one edit at a
time; the closed form here is the same objective (the edit's output at its key, nothing
else moved) solved for every stored edit together, which is what keeps 1,000 sequential
edits from overwriting one another on a 256-wide MLP.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import torch

from agents.hparams import is_int, is_number
from agents.methods import register_editor
from agents.state import RowAddition, register_extension, register_state
from evolution.editors.memoir.memory import (STRUCTURE, FixedPart, RoutedMemory, check_base, install, memory_of,
                                            uninstall)
from evolution.editors.requests import EditError, EditReport, EditRequest, joint_requests, validate_requests
from evolution.editors.rome.compute_u import context_prefixes, prompt_forms, rewrite_texts
from evolution.editors.rome.compute_v import neutral_prompts, optimize_deltas
from evolution.editors.rome.hparams import ValueHyperParams, stats_texts_rule
from evolution.editors.rome.layer_stats import collect_moments, corpus_texts, inverse_sqrt
from evolution.editors.rome.repr_tools import check_layer, keys_at_subject, subject_index
from evolution.editors.rome.rome_main import chosen_layer
from evolution.editors.target import chosen_key_tokens


@dataclass
class MEMOIRHyperParams(ValueHyperParams):
    method = "memoir"

    layer: int | None = None      # None: the memory's layer, or on the first edit the layer tracing finds
    width: int | None = 4096      # memory features: a fixed random expansion of the whitened key; None: d_ff
    k: int = 32                   # TopHash mask size (entries of the width an edit reads and writes)
    threshold: float = 0.4        # a token reads the memory when its mask shares this share of a stored one
    ridge: float = 1e-4           # on the keys' Gram matrix, relative to its mean diagonal
    stats_texts: int | list[str] = 400  # the key statistics (mean, whitening): world texts, or the texts
    stats_ridge: float = 0.01     # on the key covariance before whitening, relative to its mean eigenvalue
    memory_seed: int = 0          # the expansion and the permutation (fixed for a model's memory)

    def rules(self) -> dict[str, tuple[bool, str]]:
        out = super().rules()
        out.update({"layer": (self.layer is None or is_int(self.layer, 0), "an int >= 0 or null"),
                    "width": (self.width is None or is_int(self.width, 1), "an int >= 1 or null (the MLP's width)"),
                    "k": (is_int(self.k, 1), "an int >= 1"),
                    "threshold": (is_number(self.threshold, above=0, most=1), "a number in (0, 1]"),
                    "ridge": (is_number(self.ridge, least=0), "a finite number >= 0"),
                    "stats_ridge": (is_number(self.stats_ridge, least=0), "a finite number >= 0"),
                    "stats_texts": stats_texts_rule(self.stats_texts),
                    "memory_seed": (is_int(self.memory_seed, 0), "an int >= 0")})
        return out


def person_requests(mem: RoutedMemory, request: EditRequest) -> list[EditRequest]:
    """Every edit the memory holds for the request's person, this request replacing an
    earlier one on the same relation."""
    held = mem.facts[mem.subjects.index(request.subject)] if request.subject in mem.subjects else []
    return joint_requests({request.subject: held}, [request])


def person_texts(agent, world, reqs: list[EditRequest], hp: MEMOIRHyperParams, seed: int) -> list[list[str]]:
    """Each request's prompt forms, and behind the world's prefixes. Without a world there are
    no prefixes: the model's own samples (ROME's fallback) moved the key so far from the bare
    prompt's that the prompt no longer reached it (measured: routed 0 of 1, the edit lost;
    without prefixes routed 1 of 1, target NLL .06)."""
    n = hp.n_prefixes if world is not None else 0
    return [rewrite_texts(prompt_forms(r, world, hp.paraphrases, hp.statements),
                          context_prefixes(agent, world, n, seed + i, r.subject, r.relation))
            for i, r in enumerate(reqs)]


def write_person(agent, mem: RoutedMemory, request: EditRequest, layer: int, tokens: dict[str, int],
                 hp: MEMOIRHyperParams, world, seed: int) -> dict:
    """Compute the person's key and joint value (memory off) and store them."""
    reqs = person_requests(mem, request)
    texts = person_texts(agent, world, reqs, hp, seed)
    flat = [t for tx in texts for t in tx]
    key = keys_at_subject(agent.model, agent.tokenizer, flat, [request.subject] * len(flat), layer, tokens).mean(0)
    kl = [neutral_prompts(request.subject, [r.relation for r in reqs], world, hp.keep_other_relations)]
    delta, _, info = optimize_deltas(agent.model, agent.tokenizer, mem, layer, reqs, texts, kl, hp.v_steps, hp.v_lr,
                                     hp.v_weight_decay, hp.clamp_norm_factor, hp.kl_factor,
                                     groups=[0] * len(reqs), tokens=tokens)
    idx = mem.put_key(request.subject, [(r.relation, r.prompt, r.target) for r in reqs], key, delta[0])
    return {"subject": request.subject, "relation": request.relation, "target": request.target, "key": idx,
            "edits_of_person": len(reqs), "nll_after": max(info["nll_after"]), "steps": info["steps"],
            "delta_norm": info["delta_norm"][0]}


@torch.no_grad()
def routed_share(agent, mem: RoutedMemory, requests: list[EditRequest], tokens: dict[str, int]) -> float:
    """Share of the requests whose prompt reads its own key at the edited subject token."""
    hits = 0
    for r in requests:
        enc = agent.tokenizer(r.prompt, return_tensors="pt").to(agent.device)
        agent.model(**enc)
        pos = subject_index(agent.tokenizer, r.prompt, r.subject, tokens.get(r.subject, -1))
        hits += int(mem.last_routes[0, pos]) == mem.subjects.index(r.subject)
    return hits / max(1, len(requests))


@register_editor("memoir", hparams=MEMOIRHyperParams, also=("world", "check_current"))
def memoir(agent, requests, world=None, check_current: bool = True, **hparams) -> EditReport:
    """Write `requests` into the agent's routed memory (installed on first use). Bad input
    raises before any work; a failure leaves the model and its memory as they were."""
    hp = MEMOIRHyperParams.read(hparams, also_known=("world", "check_current"))
    t0 = time.time()
    reqs = validate_requests(agent, requests, world, check_current)
    mem = memory_of(agent.model)
    if mem is not None and hp.layer is not None and hp.layer != mem.layer:
        raise EditError(f"memoir: layer={hp.layer}, but this model's memory is at layer {mem.layer}; pass "
                        f"layer={mem.layer} (or null), or start over with evolution.editors.memoir.uninstall")
    layer = mem.layer if mem is not None else (check_layer(agent.model, hp.layer) if hp.layer is not None else None)
    width = hp.width
    if width is None:
        width = mem.width if mem is not None else _key_width(agent.model)
    if hp.k > width:
        raise EditError(f"memoir: k={hp.k} (the mask size) is above the memory width {width}; pass k <= {width} "
                        "or a wider memory (width=...)")
    if mem is not None:
        built = {"width": mem.width, "k": mem.k, "seed": mem.seed}
        for nm, asked in (("width", width), ("k", hp.k), ("seed", hp.memory_seed)):
            if built[nm] != asked:
                key = "memory_seed" if nm == "seed" else nm
                raise EditError(f"memoir: this model's memory was built with {key}={built[nm]!r}; pass the same "
                                "value, or start over with evolution.editors.memoir.uninstall(agent.model)")
    if layer is None:
        layer, _ = chosen_layer(agent, world, reqs, None)
    fresh = mem is None
    snapshot = None if fresh else mem.state()
    per = []
    try:
        stats = key_statistics(agent, world, layer, hp) if fresh else (None, None)
        mem = install(agent.model, layer, width, hp.k, hp.threshold, hp.memory_seed, *stats)
        mem.enabled = False          # keys, values and tracing read the model without its memory
        tokens, _, token_source = chosen_key_tokens(agent, world, reqs, [layer], hp.subject_token)
        for i, r in enumerate(reqs):
            per.append(write_person(agent, mem, r, layer, tokens, hp, world, hp.seed * 100003 + 7 * i))
            fit = mem.solve(hp.ridge)
            if not torch.isfinite(mem.memory).all():
                raise EditError("memoir: the solved memory holds NaN or inf; raise ridge")
        mem.enabled = True
        routed = routed_share(agent, mem, reqs, tokens)
    except BaseException:
        if fresh:
            uninstall(agent.model)
        else:
            mem.restore(snapshot)
            mem.enabled = True
        raise
    finally:
        agent.model.eval()
    return EditReport("memoir", len(reqs), round(time.time() - t0, 3), [layer], True,
                      {"keys": mem.n_keys, "routed": routed, "subject_token_source": token_source, **fit,
                       "per_request": per, "hparams": asdict(hp)})


def key_statistics(agent, world, layer: int, hp: MEMOIRHyperParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, C^(-1/2)) of the MLP input at `layer` over ordinary text: the world's corpus
    (`stats_texts` of them) or the given texts."""
    if isinstance(hp.stats_texts, int):
        if world is None:
            raise EditError("memoir: no world to draw the key statistics' texts from; pass world= or "
                            "stats_texts=[...] (ordinary text the model reads)")
        texts = corpus_texts(world, hp.stats_texts, hp.seed)
    else:
        texts = list(hp.stats_texts)
    mean, mom2, n = collect_moments(agent.model, agent.tokenizer, texts, layer)
    if n < 2:
        raise EditError(f"memoir: stats_texts gave {n} tokens; give more text")
    return mean.float(), inverse_sqrt(mom2 - torch.outer(mean, mean), hp.stats_ridge).float()


def _key_width(model) -> int:
    from agents.architectures import layout_of
    lay = layout_of(model)
    return lay.key_width(lay.mlp_out_of(lay.layers(model)[0]))


# -- the memory as agent state: Agent.save / Agent.load and every placement carry it ----------
KEY = "memoir_memory"
TENSORS = ("memory", "index", "read", "values", "center", "whiten", "sketch")


def take_memory(model) -> dict | None:
    mem = memory_of(model)
    return None if mem is None else mem.state()


def put_memory(model, value: dict) -> RoutedMemory:
    """Install `value` as the model's memory; an error, the model untouched, when it was made
    on another base model."""
    try:
        check_base(model, value["layer"], value["sketch"], "memoir memory")
        mem = install(model, value["layer"], value["width"], value["k"], value["threshold"], value["seed"],
                      value["center"], value["whiten"])
    except ValueError as e:
        raise EditError(str(e)) from None
    mem.restore(value)
    mem.sketch = value["sketch"].clone()
    return mem


def memory_rows(model, value: dict) -> dict:
    """The memory as an addition to the output of `model`'s own projection at its layer (the
    row form a population placement applies per agent); an error when it was made on another
    base model."""
    from agents.architectures import layout_of
    try:
        check_base(model, value["layer"], value["sketch"], "memoir memory")
    except ValueError as e:
        raise EditError(str(e)) from None
    lay = layout_of(model)
    main = lay.mlp_out_of(lay.layers(model)[value["layer"]])
    if isinstance(main, RoutedMemory):
        raise EditError("memoir memory: this model holds a memory of its own; add a memory's rows to a base model")
    mem = RoutedMemory(main, value["layer"], value["width"], value["k"], value["threshold"], value["seed"],
                       lay.transposed, value["center"], value["whiten"])
    mem.restore(value)
    mem.compact()
    fixed = shared_fixed_part(mem)
    mem.center, mem.whiten = fixed.center, fixed.whiten       # one copy of the statistics
    return {next(n for n, m in model.named_modules() if m is main): RowAddition(mem.added, fixed)}


_FIXED: dict[tuple, FixedPart] = {}


def shared_fixed_part(mem: RoutedMemory) -> FixedPart:
    """One FixedPart for every memory with the same statistics, expansion and mask size (the
    memories of agents edited on one base model and world), so a population computes their
    rows' features together."""
    digest = hashlib.sha1(mem.center.cpu().numpy().tobytes() + mem.whiten.cpu().numpy().tobytes()).hexdigest()
    key = (mem.width, mem.d_ff, mem.seed, mem.k, str(mem.center.device), mem.center.dtype, digest)
    if key not in _FIXED:
        _FIXED[key] = mem.fixed()
    return _FIXED[key]


def _to_tensors(value: dict):
    meta = {k: value[k] for k in ("subjects", "layer", "width", "k", "threshold", "seed")}
    meta["facts"] = [[list(f) for f in fs] for fs in value["facts"]]
    return {f"{KEY}.{k}": value[k] for k in TENSORS}, meta


def _from_tensors(tensors: dict, meta: dict) -> dict:
    return {**{k: tensors[f"{KEY}.{k}"] for k in TENSORS}, **meta,
            "facts": [[tuple(f) for f in fs] for fs in meta["facts"]]}


register_state(KEY, _to_tensors, _from_tensors)
register_extension(KEY, take_memory, put_memory, memory_rows)

__all__ = ["MEMOIRHyperParams", "memoir", "STRUCTURE"]
