"""The key covariance C = E[k k^T] of one MLP's down-projection input, from this project's
own corpus (the world's bios and QA, as pretraining renders them; no wiki download).

ROME's update spreads a new value along C^-1 k*, so C must be well conditioned: at least
10x the key dimension keys, plus a small ridge. C depends on the base weights, the layer
and the sample, so it is cached on disk under that key and computed once.

Measured on the default model: with C over all corpus tokens, another person's key in the
edited relation's question received on average 32% of an edit's value (u.k_other / u.k*;
max 95%), and one edit flipped 3-14% of other people's answers, mostly to the edit's
target. Keys at subjects' last tokens inside questions and statements are rare among all
tokens, so C^-1 *amplified* the direction they share. Adding their own second moment,
`subject_weight` x E_subject[k k^T] (from the same corpus: every taught person's question
and statement prompts), cut that share to 12% (weight 1) and 8% (weight 10).
"""
from __future__ import annotations

import copy
import hashlib
import os
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from agents.pretrain import cache_root
from envs.corpus import CorpusConfig, bio_text, qa_text
from evolution.editors.requests import EditError
from evolution.editors.rome.repr_tools import captured_input, down_proj, keys_at_subject, layout, padded

MIN_KEYS_PER_DIM = 10


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names and values (cache key of anything derived from it)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def world_fingerprint(world) -> str:
    blob = repr(sorted((s, sorted(a.items())) for s, a in world.epochs[0].items())).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def corpus_texts(world, n: int, seed: int = 0) -> list[str]:
    """`n` texts in the pretraining mix (3 bios : 1 QA) about the people the model was taught."""
    rng = random.Random(seed)
    people = [p.name for p in world.people if p.taught] or [p.name for p in world.people]
    cfg = CorpusConfig()
    return [qa_text(world, rng.choice(people), rng) if i % 4 == 3 else bio_text(world, rng.choice(people), rng, cfg)
            for i in range(n)]


def subject_prompts(world) -> tuple[list[str], list[str]]:
    """(prompts, subjects): every taught person's question forms and statement prefixes."""
    prompts, subjects = [], []
    for p in world.people:
        if not p.taught:
            continue
        for rel in world.relations.values():
            for form in rel.questions + rel.templates:
                prompts.append(rel.prompt(p.name, form))
                subjects.append(p.name)
    return prompts, subjects


def stats_path(base_hash: str, world_hash: str, layer: int, n_texts: int, kind: str = "") -> Path:
    return cache_root().parent / "stats" / f"{base_hash}-{world_hash}-L{layer}-n{n_texts}{kind}.safetensors"


@torch.no_grad()
def collect_moments(model, tokenizer, texts: list[str], layer: int, batch_size: int = 64):
    """(E[k], E[k k^T], number of keys) over every non-pad token of `texts`."""
    device = next(model.parameters()).device
    mod = down_proj(model, layer)
    d = layout(model).key_width(mod)
    acc, tot, n = torch.zeros(d, d, dtype=torch.float64, device=device), torch.zeros(d, dtype=torch.float64,
                                                                                     device=device), 0
    for b in range(0, len(texts), batch_size):
        ids, mask = padded(tokenizer(texts[b:b + batch_size]).input_ids, tokenizer.pad_token_id, device)
        with captured_input(mod) as box:
            model(input_ids=ids, attention_mask=mask)
        k = box[0][mask.bool()].double()
        acc += k.T @ k
        tot += k.sum(0)
        n += k.shape[0]
    return (tot / max(n, 1)).cpu(), (acc / max(n, 1)).cpu(), n


def collect_covariance(model, tokenizer, texts: list[str], layer: int, batch_size: int = 64):
    """(E[k k^T] over every non-pad token, number of keys)."""
    _, mom2, n = collect_moments(model, tokenizer, texts, layer, batch_size)
    return mom2, n


def _cached(path: Path, compute) -> torch.Tensor:
    if path.exists():
        return load_file(str(path))["mom2"]
    cov, n_keys = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"mom2": cov, "n_keys": torch.tensor(n_keys)}, str(tmp))
    tmp.replace(path)
    return cov


def _enough(n_keys: int, d: int, what: str) -> None:
    need = MIN_KEYS_PER_DIM * d
    if n_keys < need:
        raise EditError(f"{what} gave {n_keys} keys, fewer than {need} ({MIN_KEYS_PER_DIM}x the key dimension "
                        f"{d}); raise stats_texts or use a world with more people")


def key_covariance(agent, layer: int, world=None, n_texts: int = 400, seed: int = 0,
                   texts: list[str] | None = None, subject_weight: float = 0.0,
                   tokens: dict[str, int] | None = None) -> torch.Tensor:
    """E[k k^T] (float64, d_ff x d_ff) of the agent's *base* model at `layer` over corpus
    tokens, plus `subject_weight` x the second moment of subject keys (needs a world) at the
    subject token each person would be edited at (`tokens`; default the last); all parts
    cached on disk. Computed on the base weights so that earlier edits do not move it."""
    if texts is None and world is None:
        raise EditError("the key covariance needs text: pass world= (the model's world) or stats texts")
    base_hash = fingerprint(agent.base)
    src = world_fingerprint(world) if texts is None else hashlib.sha256("\n".join(texts).encode()).hexdigest()[:8]
    n = n_texts if texts is None else len(texts)
    base = None

    def base_model():
        nonlocal base
        if base is None:
            base = copy.deepcopy(agent.model)
            base.load_state_dict(agent.base)
            base.eval()
        return base

    def corpus():
        cov, n_keys = collect_covariance(base_model(), agent.tokenizer,
                                         texts if texts is not None else corpus_texts(world, n_texts, seed), layer)
        _enough(n_keys, cov.shape[0], f"stats_texts: {n} texts")
        return cov, n_keys

    cov = _cached(stats_path(base_hash, src, layer, n), corpus)
    if subject_weight and world is not None:
        prompts, names = subject_prompts(world)

        def prompt_keys():
            # every token of every taught person's question and statement prompts: the
            # question words' keys, which an edit must not move in anyone's question
            return collect_covariance(base_model(), agent.tokenizer, prompts, layer)

        def subject_keys():
            # the subjects' own keys in those prompts: other people, whom an edit must miss
            k = keys_at_subject(base_model(), agent.tokenizer, prompts, names, layer, tokens).double().cpu()
            return k.T @ k / len(k), len(k)
        whash = world_fingerprint(world)
        moved = sorted((n, t) for n, t in (tokens or {}).items() if t != -1)
        at = "-" + hashlib.sha256(repr(moved).encode()).hexdigest()[:8] if moved else ""
        cov = cov + subject_weight * (_cached(stats_path(base_hash, whash, layer, 0, "-prompts"), prompt_keys)
                                      + _cached(stats_path(base_hash, whash, layer, 0, "-subj" + at), subject_keys))
    return cov


def inverse_covariance(cov: torch.Tensor, ridge: float) -> torch.Tensor:
    """(C + ridge * mean eigenvalue * I)^-1: the ridge is relative, so it means the same for
    any key scale."""
    d = cov.shape[0]
    lam = ridge * torch.trace(cov) / d
    return torch.linalg.inv(cov + lam * torch.eye(d, dtype=cov.dtype))


def whitening(acts: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, C^(-1/2)) of activations (N, m), with a ridge relative to C's mean eigenvalue: keys
    read as C^(-1/2) (a - mean) are nearly orthogonal for different inputs (WISE's gate, MEMOIR's masks)."""
    mu = acts.mean(0)
    xc = (acts - mu).double()
    return mu, inverse_sqrt(xc.T @ xc / max(1, len(xc) - 1), ridge).to(acts.dtype)


def inverse_sqrt(cov: torch.Tensor, ridge: float) -> torch.Tensor:
    """(C + ridge * mean eigenvalue * I)^(-1/2), float64."""
    cov = cov.double() + ridge * cov.diagonal().double().mean() * torch.eye(cov.shape[0], dtype=torch.float64,
                                                                          device=cov.device)
    vals, vecs = torch.linalg.eigh(cov)
    return (vecs * vals.clamp(min=1e-12).rsqrt()) @ vecs.T
