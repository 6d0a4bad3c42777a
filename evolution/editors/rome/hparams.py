"""ROME's hyperparameters as data (MEMIT's extend them: the same key and value steps, several
layers). Defaults were measured on the default model (2 layers, d=128, d_ff=256, 300 people;
see bench/editing.py); a user's own model may want others, passed as
`agent.edit(..., method="rome", v_steps=40)` or `knowevo edit --set v_steps=40`."""
from __future__ import annotations

from dataclasses import dataclass

from agents.hparams import HyperParams, is_int, is_number
from evolution.editors.requests import EditError


def stats_texts_rule(value) -> tuple[bool, str]:
    """The rule for a `stats_texts` hparam (ROME, MEMIT, MEMOIR): a count of world texts or the texts."""
    texts = isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(t, str) and t.strip()
                                                                         for t in value)
    return is_int(value, 1) or texts, "an int >= 1 (texts drawn from the world) or a non-empty list of texts"


@dataclass
class ValueHyperParams(HyperParams):
    """Where the key is read and how the new value is found (optimize_deltas): what ROME, MEMIT
    and MEMOIR share."""
    error = EditError

    subject_token: int | None = None  # the subject's token edited (-1 last, as the paper); None: tracing's
                                      # choice among the tokens that tell the subject apart (target.key_tokens)
    n_prefixes: int = 4               # random corpus sentences put before the prompt (key averaging)
    v_steps: int = 150                # Adam steps on the value (at most: it stops once the target NLL < 0.02)
    v_lr: float = 0.1                 # the tiny model's values have norm ~1: 0.5 overshot
    v_weight_decay: float = 0.01      # on |delta|^2 / |value|^2
    clamp_norm_factor: float = 10.0   # |delta| <= factor * |value| at the subject. 100 single ROME edits at
    #   the middle name token: 30 steps, clamp 4 -> reliability .92 (birth dates .62: the year token stayed
    #   the old one); 80, 10 -> .95; 150, 10 -> .96-.97, locality unchanged (.99). MEMIT: 30, 4 -> .92,
    #   generalization .90; 150, 10 -> .96, .95 (locality .99 both)
    kl_factor: float = 1.0            # KL to the unedited model on the neutral prompts (0.0625: same-person .3)
    paraphrases: bool = True          # also rewrite the relation's training question forms
    statements: bool = True           # and its bio sentences cut before the object (compute_u.prompt_forms)
    keep_other_relations: bool = True  # also hold the subject's other questions (needs a world)
    seed: int = 0

    def rules(self) -> dict[str, tuple[bool, str]]:
        out = {"subject_token": (self.subject_token is None or is_int(self.subject_token), "an int (-1: the last) or null"),
               "n_prefixes": (is_int(self.n_prefixes, 0), "an int >= 0"),
               "v_steps": (is_int(self.v_steps, 1), "an int >= 1"),
               "v_lr": (is_number(self.v_lr, above=0), "a number > 0")}
        for nm in ("v_weight_decay", "clamp_norm_factor", "kl_factor"):
            out[nm] = (is_number(getattr(self, nm), least=0), "a finite number >= 0")
        return out


@dataclass
class KeyValueHyperParams(ValueHyperParams):
    """What ROME and MEMIT share beside the value: the covariance that keeps other keys' outputs."""

    stats_texts: int | list[str] = 400  # the key covariance's corpus: how many of the world's texts (>= 10x
                                      # d_ff keys), or the texts themselves (a model without a world)
    subject_weight: float = 1.0       # weight of subject keys in C (layer_stats: 0 -> others get 32% of an edit)
    protect_weight: float = 1.0       # earlier edits' keys in C (edit_memory), in units of one key; 0: plain
    ridge: float = 1e-2               # ridge on the covariance, relative to its mean eigenvalue
    norm_anchor: bool = False         # each new value held at the unedited model's value norm there (NAS,
    #   compute_v.norm_anchored; ROME searches its value at that norm, MEMIT rescales its target after): for
    #   long runs of sequential edits. Default model, 100 sequential edits (with each person's edits valued
    #   together): ROME reliability .38 -> .84, locality .195 -> .76; MEMIT .54 -> .88, .30 -> .82. Off by
    #   default: 100 single ROME edits lose reliability with it (.96 -> .92; birth dates need a larger value)

    def rules(self) -> dict[str, tuple[bool, str]]:
        out = super().rules()
        out["stats_texts"] = stats_texts_rule(self.stats_texts)
        for nm in ("ridge", "subject_weight", "protect_weight"):
            out[nm] = (is_number(getattr(self, nm), least=0), "a finite number >= 0")
        return out

    def covariance_texts(self) -> tuple[int, list[str] | None]:
        """(how many world texts, or the given texts) for `layer_stats.key_covariance`."""
        return (self.stats_texts, None) if is_int(self.stats_texts) else (0, list(self.stats_texts))


@dataclass
class ROMEHyperParams(KeyValueHyperParams):
    method = "rome"

    layer: int | None = None          # None: the layer causal tracing finds (evolution.editors.target)
