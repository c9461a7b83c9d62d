"""What fills a plan's KV-cache slots: embeddings, rotary rows, the classes of guidance."""

from __future__ import annotations

import torch

from parcli.model import Transformer, rotary_rows
from parcli.plan import CLASS, TOKEN, Plan


def guided_labels(labels: torch.Tensor, num_classes: int, guided: bool) -> torch.Tensor:
    """Class of every decoded sequence: the labels, then as many with the null class if guided."""
    return torch.cat([labels, torch.full_like(labels, num_classes)]) if guided else labels


def slot_rotary(model: Transformer, plan: Plan) -> torch.Tensor:
    """Rotary rows of every KV-cache slot of the plan, on the model's device."""
    cfg = model.cfg
    return rotary_rows(plan.grid, plan.slot_cell, cfg.head_dim, cfg.rope_base).to(model.device)


def embed_slots(
    model: Transformer, plan: Plan, labels: torch.Tensor, seq: torch.Tensor, start: int, end: int
) -> torch.Tensor:
    """Input embeddings of cache slots [start, end) from tokens `seq` in PAR sequence order."""
    pieces = []
    for kind, run_start, run_end, source in plan.slot_runs:
        a, b = max(start, run_start), min(end, run_end)
        if a >= b:
            continue
        first = source + a - run_start
        if kind == CLASS:
            pieces.append(model.cls_embedding(labels)[:, None])
        elif kind == TOKEN:
            pieces.append(model.tok_embeddings(seq[:, first : first + b - a]))
        else:
            table = model.spe_tok_embeddings.special_embeddings.weight
            pieces.append(table[first : first + b - a].expand(labels.shape[0], -1, -1))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
