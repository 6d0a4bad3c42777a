"""Personas: how far an agent lets its peers move it, through the Agent API only.

An agent's answer in a round combines two of its own beliefs: `prior` (no context: what
it thinks alone) and `social` (with the peers' claims before the question). We mix them
log-linearly with the persona's social weight s:

    log p  =  log p_prior + s * (log p_social - log p_prior)   (then normalized)

s = 1 is the plain model (neutral: the social belief as is); s < 1 keeps more of its own
view (overconfident 0.2: a fifth of the pull; stubborn 0: ignores peers); s > 1 follows
the pull further than the model does (easy-going 2: twice the shift in log-odds). We chose
log-linear over a linear mixture w * p_prior + (1 - w) * p_social because a linear mixture
cannot go beyond the plain model (its easy-going would be *less* easy-going than neutral),
while the log-linear form extrapolates and stays a distribution. The prior is the agent's
round-0 belief, computed once, so a persona costs no extra model call.

When s > 1 both beliefs are first smoothed toward uniform (SMOOTHING of the mass): extrapolating
(s > 1) multiplies every ratio p_social / p_prior, and for candidates the model rules out
alone and with peers alike (1e-9 -> 1e-5) that ratio is noise. Unsmoothed, easy-going
agents took such an answer, which no peer had given, in 18% of Asch trials (default model,
2-6 confederates; runs/asch, 2026-12-02); smoothed, see docs/benchmarks.md.
"""
from __future__ import annotations

import dataclasses
import math

from agents.records import Belief

SMOOTHING = 0.01
PERSONAS: dict[str, float] = {"neutral": 1.0, "overconfident": 0.2, "easy-going": 2.0, "stubborn": 0.0}


def social_weight(persona: str) -> float:
    """The weight of a persona name, or of 'social:<s>' for any s >= 0."""
    if persona in PERSONAS:
        return PERSONAS[persona]
    if persona.startswith("social:"):
        try:
            s = float(persona.split(":", 1)[1])
        except ValueError:
            s = -1.0
        if s >= 0 and math.isfinite(s):
            return s
    raise ValueError(f"persona {persona!r}: unknown; use one of {sorted(PERSONAS)} or 'social:<weight>' "
                     "with weight >= 0 (1 = the plain model)")


def blend(prior: Belief, social: Belief, weight: float) -> Belief:
    """`social` with its distribution moved by the persona (see the module docstring)."""
    if weight == 1.0:
        return social
    n, eps = len(prior.probs), SMOOTHING if weight > 1 else 0.0   # interpolation needs no smoothing
    smooth = lambda p: math.log(max((1 - eps) * p + eps / n, 1e-12))
    logits = [smooth(a) + weight * (smooth(b) - smooth(a)) for a, b in zip(prior.probs, social.probs)]
    top = max(logits)
    ex = [math.exp(x - top) for x in logits]
    z = sum(ex)
    probs = [round(x / z, 6) for x in ex]
    i = max(range(len(probs)), key=probs.__getitem__)
    truth = social.truth
    return dataclasses.replace(social, probs=probs, answer=social.candidates[i], confidence=probs[i],
                               p_truth=probs[social.candidates.index(truth)] if truth else None)
