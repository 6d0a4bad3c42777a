"""ROME: one rank-one update of one MLP down-projection per request, applied in order.

    W' = W + delta u^T / (u^T k*),   u = C^-1 k*

with k* the key (compute_u), delta the value change (compute_v) and C the corpus key
covariance (layer_stats). Using the *same* averaged key k* in the numerator's u and in
the denominator is the r-ROME fix (Gupta et al. 2024): then W' k* = W k* + delta exactly,
and long runs of sequential edits do not blow the layer up (the original code divided by
the key of the bare prompt instead, and collapsed models after some dozens of edits).
"""
from __future__ import annotations

import time

import torch

from agents.methods import register_editor
from evolution.editors.target import chosen_key_tokens, critical_layers, mlp_effects
from evolution.editors.requests import (EditReport, EditRequest, check_finite, validate_requests,
                                weights_restored_on_error)
from evolution.editors.rome.compute_u import context_prefixes, left_vector, prompt_forms, rewrite_texts, subject_key
from evolution.editors.rome.compute_v import neutral_prompts, optimize_deltas
from evolution.editors.rome.hparams import ROMEHyperParams
from evolution.editors.rome.edit_memory import prior_keys, protected, remember, remember_facts, with_earlier_facts
from evolution.editors.rome.layer_stats import inverse_covariance, key_covariance
from evolution.editors.rome.repr_tools import add_update, base_weights, check_layer, down_proj, outputs_at_subject


def chosen_layer(agent, world, requests, layer: int | None) -> tuple[int, str]:
    """(layer, where it came from): the hparam if given, else the tracing argmax."""
    if layer is not None:
        return check_layer(agent.model, layer), "hparam"
    return critical_layers(mlp_effects(agent, world, requests))[0], "tracing"


def rank_one_update(delta: torch.Tensor, u: torch.Tensor, k_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [d_out, d_in] update delta u^T / (u^T k*) as its factors (B [d_out, 1], A [1, d_in]):
    it maps k* to exactly +delta (r-ROME)."""
    denom = torch.dot(u.double(), k_star.double())
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        check_finite("rank-one denominator u^T k*", torch.tensor(float("nan")), "raise ridge")
    return delta.float()[:, None].contiguous(), (u.double() / denom).float()[None, :].contiguous()


def rome_one(agent, request: EditRequest, layer: int, tokens: dict[str, int], cov: torch.Tensor,
             hp: ROMEHyperParams, world, seed: int, written: list, done: list[EditRequest], update: dict) -> dict:
    """Apply one request to agent.model in place, at the subject token `tokens` names, and add
    it to `update` (the call's returned change); returns its diagnostics. `written`: keys of
    this call's earlier requests (protected like the memory's); `done`: this call's earlier
    requests. The value is found for all of the
    person's edits (the memory's and this call's), since they share the person's key."""
    reqs = with_earlier_facts(agent, [r for r in done if r.subject == request.subject] + [request])
    texts = [rewrite_texts(prompt_forms(r, world, hp.paraphrases, hp.statements),
                           context_prefixes(agent, world, hp.n_prefixes, seed if r is request else seed + 7919 * (i + 1),
                                            r.subject, r.relation))
             for i, r in enumerate(reqs)]
    flat = [t for tx in texts for t in tx]
    k_star = subject_key(agent, request, layer, flat, tokens)
    earlier = [k for s, k in written if s != request.subject]
    mem = prior_keys(agent, layer, {request.subject})
    keys = torch.cat([x for x in (mem, torch.stack(earlier).double() if earlier else None) if x is not None]) \
        if (mem is not None or earlier) else None
    cov_inv = inverse_covariance(protected(cov, keys, hp.protect_weight), hp.ridge)
    u = left_vector(k_star, cov_inv.to(k_star.device))
    mod = down_proj(agent.model, layer)
    anchor = None
    if hp.norm_anchor:
        with base_weights(agent):
            anchor = outputs_at_subject(agent.model, agent.tokenizer, mod, flat, [request.subject] * len(flat),
                                        tokens).mean(0, keepdim=True)
    delta, value0, info = optimize_deltas(agent.model, agent.tokenizer, mod, layer, reqs, texts,
                                          [neutral_prompts(request.subject, [r.relation for r in reqs], world,
                                                           hp.keep_other_relations)],
                                          hp.v_steps, hp.v_lr, hp.v_weight_decay, hp.clamp_norm_factor, hp.kl_factor,
                                          groups=[0] * len(reqs), tokens=tokens, anchor=anchor)
    upd = rank_one_update(delta[0], u, k_star)
    for part in upd:
        check_finite(f"ROME update for {request.subject!r}", part, "lower v_lr or raise ridge")
    add_update(agent.model, mod, upd, update)
    check_finite(f"layer {layer}'s MLP output projection after the edit", mod.weight)
    written.append((request.subject, k_star.detach().double().cpu()))
    done.append(request)
    return {"subject": request.subject, "relation": request.relation, "target": request.target,
            "subject_token": tokens[request.subject], "edits_of_person": len(reqs),
            "nll_before": max(info["nll_before"]), "nll_after": max(info["nll_after"]), "steps": info["steps"],
            "delta_norm": float(delta[0].norm()), "update_norm": float(upd[0].norm() * upd[1].norm())}


@register_editor("rome", hparams=ROMEHyperParams, also=('world', 'check_current'))
def rome(agent, requests, world=None, check_current: bool = True, **hparams) -> EditReport:
    """Edit `requests` one after another with ROME. Bad input raises before any work; any
    failure (NaN, bad layer) raises with the weights exactly as they were."""
    hp = ROMEHyperParams.read(hparams, also_known=("world", "check_current"))
    t0 = time.time()
    reqs = validate_requests(agent, requests, world, check_current)
    layer, source = chosen_layer(agent, world, reqs, hp.layer)
    tokens, people_tokens, token_source = chosen_key_tokens(agent, world, reqs, [layer], hp.subject_token)
    n_texts, texts = hp.covariance_texts()
    cov = key_covariance(agent, layer, world, n_texts, hp.seed, texts=texts, subject_weight=hp.subject_weight,
                         tokens=people_tokens)
    written: list = []
    done: list = []
    update: dict = {}
    with weights_restored_on_error(agent.model):
        per = [rome_one(agent, r, layer, tokens, cov, hp, world, hp.seed * 100003 + i, written, done, update)
               for i, r in enumerate(reqs)]
    remember(agent, layer, written)
    remember_facts(agent, reqs)
    return EditReport("rome", len(reqs), round(time.time() - t0, 3), [layer], True,
                      {"layer_source": source, "subject_token_source": token_source, "per_request": per}, update)
