"""Single-process references the parallel runs must reproduce: the plain model, the whole
global batch at once, no micro-batches, truly tied weights, and greedy decoding that recomputes
the whole sequence every token (no KV cache)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from costmodel.model import ModelSpec

from .model import build_model
from .run import OptimConfig, cross_entropy, synthetic_tokens


@dataclass
class ReferenceTraining:
    losses: list[float]
    grads_first_step: dict[str, torch.Tensor]
    params: dict[str, torch.Tensor]


def _tie(model) -> dict[str, str]:
    """Share the embedding with a tied head; returns {head name: embedding name}."""
    head_key = str(len(model.spec.layers) - 1)
    if not model.spec.layers[-1].tied:
        return {}
    model.layers[head_key].proj.weight = model.layers["0"].tok.weight
    return {f"layers.{head_key}.proj.weight": "layers.0.tok.weight"}


def _named(model, aliases: dict[str, str], grads: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        t = p.grad if grads else p
        out[name] = (torch.zeros_like(p) if t is None else t).detach().clone().float()
    for alias, name in aliases.items():
        out[alias] = out[name]
    return out


def train_reference(spec: ModelSpec, *, batch: int, seq_len: int, steps: int, seed: int = 0,
                    cfg: OptimConfig = OptimConfig(), max_positions: int | None = None) -> ReferenceTraining:
    model = build_model(spec, seed=seed, max_positions=max_positions)
    aliases = _tie(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
    losses, grads0 = [], {}
    for step in range(steps):
        tokens = synthetic_tokens(seed, step, batch, seq_len + 1, spec.vocab)
        opt.zero_grad(set_to_none=True)
        loss = cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        if step == 0:
            grads0 = _named(model, aliases, grads=True)
        opt.step()
        losses.append(float(loss.detach()))
    return ReferenceTraining(losses=losses, grads_first_step=grads0, params=_named(model, aliases, grads=False))


@torch.no_grad()
def generate_reference(spec: ModelSpec, prompt: torch.Tensor, output_tokens: int, *, seed: int = 0,
                       max_positions: int | None = None) -> torch.Tensor:
    model = build_model(spec, seed=seed, max_positions=max_positions)
    _tie(model)
    seq = prompt
    out = []
    for _ in range(output_tokens):
        nxt = model(seq)[:, -1].float().argmax(-1)
        out.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)
