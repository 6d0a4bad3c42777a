"""FT-L: constrained fine-tuning of one layer's MLP on the edit prompts (ROME's FT-L baseline).

The loss is -log P(target | prompt) on the target's tokens only; after every Adam step the
trained weights are clamped to within `norm_constraint` (L-infinity) of their values before
the edit, as ROME's FT-L does, so the change stays small and local to one layer. Training
stops early once every target is the model's most likely continuation by a margin
(`stop_loss`), which keeps the change smaller than a fixed step count would.

Which layer: the caller's choice (`layer=`); only layer 0's MLP is editable in the 2-layer
default model (docs/design.md, "The default model"), so 0 is the default here.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from agents.delta import changed_weights
from agents.hparams import HyperParams, is_int, is_number
from agents.methods import register_editor
from evolution.editors.requests import (EditError, EditReport, check_finite, validate_requests,
                                weights_restored_on_error)
from evolution.editors.rome.repr_tools import check_layer, decoder_layers, layout

MODULES = ("down_proj", "mlp")


@dataclass
class FTLHyperParams(HyperParams):
    method = "ft_l"
    error = EditError

    layer: int = 0
    module: str = "down_proj"      # "down_proj": the MLP's output projection (ROME's FT-L; GPT-2's c_proj,
                                   # ...), or "mlp": all of the MLP's projections
    lr: float = 5e-3
    steps: int = 40
    norm_constraint: float = 5e-3  # L-inf bound on each weight's change; 0 = unconstrained
    stop_loss: float = 0.05        # stop when the mean target NLL falls below this
    batch_size: int = 0            # 0: all requests in one batch
    check_current: bool = True     # refuse requests the agent already answers

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {"layer": (is_int(self.layer), "a layer index"),
                "module": (self.module in MODULES, f"one of {MODULES}"),
                "lr": (is_number(self.lr, above=0), "a number > 0"),
                "steps": (is_int(self.steps, 1), "an int >= 1"),
                "norm_constraint": (is_number(self.norm_constraint, least=0), "a finite number >= 0 (0: unconstrained)"),
                "stop_loss": (is_number(self.stop_loss, least=0), "a finite number >= 0"),
                "batch_size": (is_int(self.batch_size, 0), "an int >= 0 (0: all requests at once)")}


def trained_weights(model, layer: int, module: str) -> list[torch.nn.Parameter]:
    """The weights FT-L trains: layer `layer`'s MLP output projection ("down_proj", whatever the
    family calls it), or all of its MLP's projections ("mlp"); an EditError names the valid
    layers or the unknown family."""
    lay = layout(model)
    block = decoder_layers(model)[check_layer(model, layer)]
    names = (lay.mlp_out,) if module == "down_proj" else (*lay.mlp_in, lay.mlp_out)
    return [getattr(lay.mlp_of(block), n).weight for n in names]


def target_batch(tokenizer, prompts: list[str], targets: list[str], device):
    """(input_ids, attention_mask, labels): prompt + " " + target per row, labels only on the
    target's tokens (-100 elsewhere), right-padded; the target tokenizes as the scorer does."""
    p_ids = tokenizer(prompts, add_special_tokens=True).input_ids
    t_ids = tokenizer([" " + t for t in targets], add_special_tokens=False).input_ids
    width = max(len(p) + len(t) for p, t in zip(p_ids, t_ids))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        mask[i, :len(p) + len(t)] = 1
        labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
    return ids.to(device), mask.to(device), labels.to(device)


def row_logprobs(model, ids, mask, labels) -> torch.Tensor:
    """Per row, the target's summed token log-probability (multi-token targets weigh fully)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    lab = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), lab, reduction="none", ignore_index=-100)
    return -nll.sum(1)


def target_nll(model, ids, mask, labels) -> torch.Tensor:
    """Mean over rows of the target's summed token NLL."""
    return -row_logprobs(model, ids, mask, labels).mean()


@torch.no_grad()
def kept_near(params, start, bound: float, name: str, hint: str) -> None:
    """After a step: a non-finite weight is an EditError (the caller restores the weights);
    with `bound` > 0 each weight is clamped to within `bound` of its value in `start`."""
    for p, p0 in zip(params, start):
        check_finite(name, p, hint)
        if bound > 0:
            p.copy_(torch.clamp(p, p0 - bound, p0 + bound))


@contextlib.contextmanager
def trainable_only(model, params):
    """Only `params` take gradients inside the block; every flag, the grads and eval mode are
    put back after it."""
    trainable = {id(p) for p in params}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
            p.grad = None
        model.eval()


@register_editor("ft_l", hparams=FTLHyperParams, also=('world',))
def ft_l(agent, requests, world=None, **hparams) -> EditReport:
    """Edit by fine-tuning one layer's MLP (down-projection by default) under an L-inf clamp.
    Bad requests or hparams raise before any weight moves; a non-finite loss or update
    restores every weight and raises EditError."""
    hp = FTLHyperParams.read(hparams, also_known=("world",))
    model = agent.model
    params = trained_weights(model, hp.layer, hp.module)
    reqs = validate_requests(agent, requests, world, check_current=hp.check_current)
    names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
    t0, losses = time.time(), []
    bs = hp.batch_size or len(reqs)
    with weights_restored_on_error(model) as before, trainable_only(model, params):
        for b in range(0, len(reqs), bs):
            chunk = reqs[b:b + bs]
            ids, mask, labels = target_batch(agent.tokenizer, [r.prompt for r in chunk],
                                             [r.target for r in chunk], agent.device)
            start = [p.detach().clone() for p in params]
            opt = torch.optim.Adam(params, lr=hp.lr)
            for _ in range(hp.steps):
                loss = target_nll(model, ids, mask, labels)
                check_finite("ft_l loss", loss.detach(), f"lower lr ({hp.lr})")
                losses.append(loss.item())
                if loss.item() < hp.stop_loss:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                kept_near(params, start, hp.norm_constraint, f"ft_l update of layer {hp.layer}", f"lower lr ({hp.lr})")
    return EditReport("ft_l", len(reqs), round(time.time() - t0, 4), [hp.layer], True,
                      {"params": names, "steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
                       "norm_constraint": hp.norm_constraint, "module": hp.module}, changed_weights(model, before))
