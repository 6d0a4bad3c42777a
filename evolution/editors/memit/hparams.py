"""MEMIT's hyperparameters as data: ROME's (rome/hparams.py) with a window of layers and the
weight that keeps corpus keys (defaults measured on the default model, bench/editing.py)."""
from __future__ import annotations

from dataclasses import dataclass

from agents.hparams import is_int, is_number
from evolution.editors.rome.hparams import KeyValueHyperParams


@dataclass
class MEMITHyperParams(KeyValueHyperParams):
    method = "memit"

    layers: list[int] | None = None   # None: the tracing window (evolution.editors.target.critical_layers)
    layer_share: float = 0.5          # window: layers whose MLP effect is >= share x the largest
    mom2_update_weight: float = 10.0   # lambda: keeps corpus keys. Default model, single edits: 10 -> reliability 1.0,
    #   locality .99; 100 -> no edit lands (1.0 -> 0.0). 16 edits in a batch: 10 -> locality .70, 100 -> .83
    z_batch: int = 64                 # subjects whose target residuals are optimized together
    null_space: float = 0.0           # > 0: AlphaEdit; updates only along key directions whose corpus variance is
    #   below this x the mean eigenvalue (memit_main.null_space_projector); 0: MEMIT's covariance solve

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {**super().rules(),
                "z_batch": (is_int(self.z_batch, 1), "an int >= 1"),
                "layer_share": (is_number(self.layer_share, above=0, most=1), "a number in (0, 1]"),
                "layers": (self.layers is None or (isinstance(self.layers, (list, tuple)) and len(self.layers) > 0
                                                   and all(is_int(x) for x in self.layers)),
                           "a non-empty list of layer indices, or null"),
                "mom2_update_weight": (is_number(self.mom2_update_weight, least=0), "a finite number >= 0"),
                "null_space": (is_number(self.null_space, least=0), "a finite number >= 0 (0: off)")}
