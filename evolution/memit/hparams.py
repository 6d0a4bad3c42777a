"""MEMIT's hyperparameters as data (defaults measured on the default model, bench/editing.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from evolution.requests import EditError


@dataclass
class MEMITHyperParams:
    layers: list[int] | None = None   # None: the tracing window (evolution.locate.critical_layers)
    layer_share: float = 0.5          # window: layers whose MLP effect is >= share x the largest
    subject_token: int | None = None  # as ROME's (evolution.locate.key_tokens)
    n_prefixes: int = 4
    v_steps: int = 150                # as ROME's; 100 single edits: 30 steps, clamp 4 -> reliability .92,
    v_lr: float = 0.1                 #   generalization .90; 150, 10 -> .96, .95 (locality .99 both)
    v_weight_decay: float = 0.01
    clamp_norm_factor: float = 10.0
    kl_factor: float = 1.0            # KL to the unedited model on the neutral prompt(s)
    paraphrases: bool = True          # also rewrite the relation's training question forms
    statements: bool = True           # and its bio sentences cut before the object (compute_u.prompt_forms)
    keep_other_relations: bool = True
    mom2_update_weight: float = 10.0   # lambda: keeps corpus keys. Default model, single edits: 10 -> reliability 1.0,
    #   locality .99; 100 -> no edit lands (1.0 -> 0.0). 16 edits in a batch: 10 -> locality .70, 100 -> .83
    stats_texts: int = 400
    subject_weight: float = 1.0       # weight of subject keys in C (layer_stats: 0 -> others get 32% of an edit)
    protect_weight: float = 1.0       # earlier edits' keys (edit_memory), in units of one key
    ridge: float = 1e-2
    z_batch: int = 64                 # subjects whose target residuals are optimized together
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"subject_token": self.subject_token is None or (isinstance(self.subject_token, int)
                                                                  and not isinstance(self.subject_token, bool)),
                  "n_prefixes": isinstance(self.n_prefixes, int) and self.n_prefixes >= 0,
                  "v_steps": isinstance(self.v_steps, int) and self.v_steps >= 1,
                  "stats_texts": isinstance(self.stats_texts, int) and self.stats_texts >= 1,
                  "z_batch": isinstance(self.z_batch, int) and self.z_batch >= 1,
                  "layer_share": 0.0 < self.layer_share <= 1.0,
                  "layers": self.layers is None or (isinstance(self.layers, (list, tuple)) and len(self.layers) > 0)}
        for nm in ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "ridge", "mom2_update_weight", "subject_weight",
                   "protect_weight"):
            v = getattr(self, nm)
            checks[nm] = isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 and (nm != "v_lr" or v > 0)
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise EditError(f"hparam {bad[0]}={getattr(self, bad[0])!r} is invalid: counts are positive "
                            "integers, weights finite and >= 0, layer_share in (0, 1], layers a non-empty list")
