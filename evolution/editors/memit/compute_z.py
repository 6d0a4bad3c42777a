"""MEMIT's targets z: the residual stream after the top edited layer, at the subject's edited
token, that makes each subject's prompts continue with their targets. One delta per subject
(all of a subject's requests share its key, so they must share its new value), optimized
in batches of subjects with compute_v's objective."""
from __future__ import annotations

import torch

from evolution.editors.requests import EditRequest
from evolution.editors.rome.compute_u import context_prefixes, prompt_forms, rewrite_texts
from evolution.editors.rome.compute_v import neutral_prompts, optimize_deltas
from evolution.editors.rome.repr_tools import decoder_layers


def subject_groups(requests: list[EditRequest]) -> tuple[list[str], list[int]]:
    """(distinct subjects in first-seen order, each request's subject index)."""
    subjects: dict[str, int] = {}
    for r in requests:
        subjects.setdefault(r.subject, len(subjects))
    return list(subjects), [subjects[r.subject] for r in requests]


def target_residuals(agent, requests: list[EditRequest], top: int, world, hp, texts: list[list[str]],
                     tokens: dict[str, int] | None = None):
    """(z [subjects, d], the current residual [subjects, d], per-batch info), at each subject's
    edited token (`tokens`; default its last)."""
    subjects, groups = subject_groups(requests)
    block = decoder_layers(agent.model)[top]
    zs, cur, infos = [], [], []
    for b in range(0, len(subjects), hp.z_batch):
        keep = [i for i, g in enumerate(groups) if b <= g < b + hp.z_batch]
        reqs = [requests[i] for i in keep]
        grp = [groups[i] - b for i in keep]
        kl = [neutral_prompts(s, {r.relation for r in requests if r.subject == s}, world, hp.keep_other_relations)
              for s in subjects[b:b + hp.z_batch]]
        delta, value0, info = optimize_deltas(agent.model, agent.tokenizer, block, top, reqs, [texts[i] for i in keep],
                                              kl, hp.v_steps, hp.v_lr, hp.v_weight_decay, hp.clamp_norm_factor,
                                              hp.kl_factor, grp, tokens)
        zs.append(value0 + delta)
        cur.append(value0)
        infos.append(info)
    return torch.cat(zs), torch.cat(cur), infos


def request_texts(agent, requests: list[EditRequest], world, hp) -> list[list[str]]:
    """Each request's rewrite texts: its prompt forms alone and behind random prefixes."""
    return [rewrite_texts(prompt_forms(r, world, hp.paraphrases, hp.statements),
                          context_prefixes(agent, world, hp.n_prefixes, hp.seed * 100003 + i, r.subject, r.relation))
            for i, r in enumerate(requests)]
