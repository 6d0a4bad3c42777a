"""MEMIT (Meng et al. 2023): many edits in one batch, spread over several MLP layers.

For the layers L1 < ... < Lk chosen by tracing: find each subject's target residual z after
Lk (compute_z); then for each layer in turn, with the keys K (one per subject, averaged over
its rewrite texts) and the residual gap R = (z - current) / (layers left), solve

    dW = R^T K (lambda C + K^T K)^-1

(C the corpus key covariance) so that the layer moves every subject part of the way while
keeping the corpus keys' outputs. In the default 2-layer model tracing finds one layer, and
MEMIT is then a least-squares batch version of ROME.
"""
from __future__ import annotations

import time

import torch

from agents.delta import as_dense
from agents.methods import register_editor
from evolution.editors.target import chosen_key_tokens, critical_layers, mlp_effects
from evolution.editors.memit.compute_z import request_texts, subject_groups, target_residuals
from evolution.editors.memit.hparams import MEMITHyperParams
from evolution.editors.requests import EditError, EditReport, check_finite, validate_requests, weights_restored_on_error
from evolution.editors.rome.compute_v import norm_anchored
from evolution.editors.rome.edit_memory import prior_keys, protected, remember, remember_facts, with_earlier_facts
from evolution.editors.rome.layer_stats import key_covariance
from evolution.editors.rome.repr_tools import (add_update, base_weights, check_layer, decoder_layers, down_proj, keys_at_subject,
                                               outputs_at_subject)


def chosen_layers(agent, world, requests, hp: MEMITHyperParams) -> tuple[list[int], str]:
    if hp.layers is not None:
        return sorted({check_layer(agent.model, int(l)) for l in hp.layers}), "hparam"
    return critical_layers(mlp_effects(agent, world, requests), hp.layer_share), "tracing"


def subject_means(values: torch.Tensor, owners: list[int], n: int) -> torch.Tensor:
    idx = torch.tensor(owners, device=values.device)
    s = torch.zeros(n, values.shape[1], device=values.device, dtype=values.dtype).index_add_(0, idx, values)
    return s / torch.bincount(idx, minlength=n)[:, None].to(values.dtype)


def layer_update(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, lam: float,
                 ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dW [d, d_ff] = R^T K (lam C + K^T K + ridge)^-1 as its factors (R^T [d, n], [n, d_ff]):
    rank n, the edited subjects. Solved in float64 (C may hold earlier edits' keys: edit_memory)."""
    k, r = keys.double(), resid.double()
    a = lam * cov.to(k.device) + k.T @ k
    a = a + ridge * torch.trace(a) / a.shape[0] * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return r.T.float().contiguous(), torch.linalg.solve(a, k.T).T.float().contiguous()


def null_space_projector(cov: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """(P [d_ff, d_ff], its rank): the projector onto the directions along which the corpus
    keys hardly vary (eigenvalues of C below `threshold` x its mean eigenvalue). An update
    that reads keys only through P leaves every corpus key's output as it was: AlphaEdit's
    null space (Fang et al., ICLR 2025)."""
    vals, vecs = torch.linalg.eigh(cov.double())
    small = vecs[:, vals < threshold * vals.mean()]
    return small @ small.T, small.shape[1]


def null_space_update(keys: torch.Tensor, resid: torch.Tensor, proj: torch.Tensor, earlier: torch.Tensor | None,
                      ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dW [d, d_ff] = R^T K P (P (K^T K + Kp^T Kp) + ridge I)^-1 (AlphaEdit, sequential form),
    as its factors (R^T [d, n], [n, d_ff]): the least-change update within the null space that
    moves K to R and holds the earlier edits' keys Kp. `ridge` is absolute here (the caller
    scales it to the corpus keys)."""
    k, r, p = keys.double(), resid.double(), proj.to(keys.device)
    kk = k.T @ k + (earlier.double().to(k.device).T @ earlier.double().to(k.device) if earlier is not None else 0)
    a = p @ kk + ridge * torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    return r.T.float().contiguous(), torch.linalg.solve(a, p @ k.T).T.float().contiguous()


@register_editor("memit", hparams=MEMITHyperParams, also=('world', 'check_current'))
def memit(agent, requests, world=None, check_current: bool = True, **hparams) -> EditReport:
    """Apply all `requests` in one batch. Bad input raises before any work; any failure
    raises with the weights exactly as they were."""
    hp = MEMITHyperParams.read(hparams, also_known=("world", "check_current"))
    t0 = time.time()
    reqs = validate_requests(agent, requests, world, check_current)
    layers, source = chosen_layers(agent, world, reqs, hp)
    tokens, people_tokens, token_source = chosen_key_tokens(agent, world, reqs, layers, hp.subject_token)
    n_texts, texts = hp.covariance_texts()
    covs = {l: key_covariance(agent, l, world, n_texts, hp.seed, texts=texts, subject_weight=hp.subject_weight,
                              tokens=people_tokens) for l in layers}
    reqs = with_earlier_facts(agent, reqs)      # a person's earlier edits share the person's new value
    subjects, groups = subject_groups(reqs)
    per_request = request_texts(agent, reqs, world, hp)
    texts = [t for tx in per_request for t in tx]
    owners = [g for g, tx in zip(groups, per_request) for _ in tx]
    names = [r.subject for r, tx in zip(reqs, per_request) for _ in tx]
    top = layers[-1]
    block = decoder_layers(agent.model)[top]
    times = {}
    with weights_restored_on_error(agent.model):
        t1 = time.time()
        z, _, infos = target_residuals(agent, reqs, top, world, hp, per_request, tokens)
        if hp.norm_anchor:      # rescaled after the search: searching at the norm (as ROME) measured worse here,
            # 100 sequential edits reliability .78 vs .88 (z is the whole residual, not one MLP's output)
            with base_weights(agent):
                unedited = subject_means(outputs_at_subject(agent.model, agent.tokenizer, block, texts, names, tokens),
                                         owners, len(subjects))
            z = norm_anchored(z, unedited)
        times["targets_s"] = round(time.time() - t1, 3)
        norms, written, null_dims, update = [], [], {}, {}
        for i, l in enumerate(layers):
            keys = subject_means(keys_at_subject(agent.model, agent.tokenizer, texts, names, l, tokens), owners,
                                 len(subjects))
            cur = subject_means(outputs_at_subject(agent.model, agent.tokenizer, block, texts, names, tokens), owners,
                                len(subjects))
            resid = (z - cur) / (len(layers) - i)
            earlier = prior_keys(agent, l, set(subjects))
            if hp.null_space:
                proj, null_dims[l] = null_space_projector(covs[l], hp.null_space)
                if not null_dims[l]:
                    raise EditError(f"null_space={hp.null_space}: layer {l}'s corpus keys vary along every direction "
                                    "more than that; raise null_space (x the mean eigenvalue) or set it to 0")
                upd = null_space_update(keys, resid, proj, earlier, hp.ridge * float(torch.trace(covs[l])) / len(covs[l]))
            else:
                cov = protected(covs[l], earlier, hp.protect_weight / hp.mom2_update_weight
                                if hp.mom2_update_weight else 0.0)
                upd = layer_update(keys, resid, cov, hp.mom2_update_weight, hp.ridge)
            for part in upd:
                check_finite(f"MEMIT update of layer {l}", part, "raise mom2_update_weight or ridge")
            add_update(agent.model, down_proj(agent.model, l), upd, update)
            norms.append(float(as_dense(upd).norm()))
            written.append((l, [(s, k) for s, k in zip(subjects, keys)]))
    for l, entries in written:
        remember(agent, l, entries)
    remember_facts(agent, reqs)
    nll_after = [x for info in infos for x in info["nll_after"]]
    return EditReport("memit", len(reqs), round(time.time() - t0, 3), layers, True,
                      {"layer_source": source, "subject_token_source": token_source,
                       "subject_tokens": sorted(set(tokens.values())), "subjects": len(subjects), "update_norms": norms,
                       **({"null_space_dims": null_dims} if hp.null_space else {}),
                       "target_nll_mean": sum(nll_after) / len(nll_after), **times}, update)
