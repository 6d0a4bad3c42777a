"""ROME's hyperparameters as data. Defaults were measured on the default model (2 layers,
d=128, d_ff=256, 300 people; see bench/editing.py); a user's own model may want others,
passed as `agent.edit(..., method="rome", v_steps=40)` or `knowevo edit --set v_steps=40`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from evolution.requests import EditError


@dataclass
class ROMEHyperParams:
    layer: int | None = None          # None: the layer causal tracing finds (evolution.locate)
    subject_token: int | None = None  # the subject's token edited (-1 last, as the paper); None: tracing's
                                      # choice among the tokens that tell the subject apart (locate.key_tokens)
    n_prefixes: int = 4               # random corpus sentences put before the prompt (key averaging)
    v_steps: int = 150                # Adam steps on the value (at most: it stops once the target NLL < 0.02)
    v_lr: float = 0.1                 # the tiny model's values have norm ~1: 0.5 overshot
    v_weight_decay: float = 0.01      # on |delta|^2 / |value|^2
    clamp_norm_factor: float = 10.0   # |delta| <= factor * |value| at the subject. 100 single edits at the
    #   middle name token: 30 steps, clamp 4 -> reliability .92 (birth dates .62: the year token stayed the
    #   old one); 80, 10 -> .95; 150, 10 -> .96-.97, locality unchanged (.99)
    kl_factor: float = 1.0            # KL to the unedited model on the neutral prompts (0.0625: same-person .3)
    paraphrases: bool = True          # also rewrite the relation's training question forms
    statements: bool = True           # and its bio sentences cut before the object (compute_u.prompt_forms)
    keep_other_relations: bool = True  # also hold the subject's other questions (needs a world)
    stats_texts: int = 400            # corpus texts for the key covariance (>= 10x d_ff keys)
    subject_weight: float = 1.0       # weight of subject keys in C (layer_stats: 0 -> others get 32% of an edit)
    protect_weight: float = 1.0       # earlier edits' keys in C (edit_memory); 0: plain r-ROME
    ridge: float = 1e-2               # ridge on the covariance, relative to its mean eigenvalue
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"subject_token": self.subject_token is None or (isinstance(self.subject_token, int)
                                                                  and not isinstance(self.subject_token, bool)),
                  "n_prefixes": isinstance(self.n_prefixes, int) and self.n_prefixes >= 0,
                  "v_steps": isinstance(self.v_steps, int) and self.v_steps >= 1,
                  "stats_texts": isinstance(self.stats_texts, int) and self.stats_texts >= 1}
        for nm in ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "ridge", "subject_weight", "protect_weight"):
            v = getattr(self, nm)
            checks[nm] = isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 and (nm != "v_lr" or v > 0)
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise EditError(f"hparam {bad[0]}={getattr(self, bad[0])!r} is invalid: counts are positive "
                            "integers, rates and weights finite and >= 0 (v_lr > 0)")
