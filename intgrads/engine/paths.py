"""The points of each sentence's integration path and the gradients there: a fixed rule's in one pass,
``n_steps="auto"``'s in rounds.

Both go through one ``evaluate(row_sentence, row_alpha, done, total)`` (``attribution._gradients_at``): for
rows r it returns g_r = dF/dz at z_r = b_s + alpha_r (x_s - b_s), s = row_sentence[r], and F(z_r), computed in
chunks of ``internal_batch_size`` rows with the deadline checked before each.

- A fixed rule evaluates every sentence's N points at once, rows sentence-major (exactly as before ``auto``
  existed, so its answers are bitwise the same).
- ``auto`` keeps one :class:`~intgrads.engine.adaptive.Refinement` per sentence. Each round gathers the points
  every unfinished sentence asks for into one list of rows (so the sentences of a bucket still share passes),
  evaluates them, and hands each sentence its token integrands a_t = sum_h g[t, h] (x - b)[t, h] (padding
  dropped). Sentences stop on their own, with different point counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adaptive import Refinement, most_points
from .quadrature import step_sizes_and_alphas


@dataclass
class Path:
    """One sentence's path: ``alphas`` ascending (floats), ``weights`` float32 (N, 1), ``grads`` (N, T, H) with the
    bucket's padding, ``outputs`` F_target(z_k) float32 (N,); ``refinement`` for ``auto`` (None for a fixed rule)."""

    alphas: list
    weights: torch.Tensor
    grads: torch.Tensor
    outputs: torch.Tensor
    refinement: Refinement | None = None

    @property
    def steps(self) -> int:
        return len(self.alphas)


def fixed_paths(evaluate, n_sentences: int, options, device) -> list[Path]:
    """Every sentence's points of ``options.method`` with ``options.n_steps`` points, in one list of rows."""
    step_sizes, alphas = step_sizes_and_alphas(options.method, options.n_steps)
    steps = options.n_steps
    weights = torch.tensor(step_sizes, dtype=torch.float32, device=device).view(steps, 1)
    row_sentence = torch.arange(n_sentences, device=device).repeat_interleave(steps)
    row_alpha = torch.tensor(alphas, dtype=torch.float32, device=device).repeat(n_sentences)
    grads, outputs = evaluate(row_sentence, row_alpha, 0, n_sentences * steps)
    return [Path(alphas, weights, grads[i * steps:(i + 1) * steps], outputs[i * steps:(i + 1) * steps])
            for i in range(n_sentences)]


def adaptive_paths(evaluate, difference, keep, f_input, f_baseline, options) -> list[Path]:
    """Every sentence refined on its own (``difference`` = x - b (S, T, H), ``keep`` its real tokens (S, T),
    ``f_input`` / ``f_baseline`` F_target at x and b), in rounds of rows shared by the unfinished sentences."""
    device = difference.device
    plans = [Refinement(fx, fb, options.tolerance, options.max_steps) for fx, fb in zip(f_input, f_baseline)]
    found = [{} for _ in plans]        # alpha -> (gradient (T, H), output)
    done, most = 0, len(plans) * most_points(options.max_steps)   # every round's rows count; the total is unknown
    while True:
        rows = [(i, alpha) for i, plan in enumerate(plans) for alpha in plan.request()]
        if not rows:
            break
        row_sentence = torch.tensor([i for i, _ in rows], device=device)
        grads, outputs = evaluate(row_sentence, torch.tensor([a for _, a in rows], dtype=torch.float32,
                                                             device=device), done, most, True)
        done += len(rows)
        integrands = (grads * difference[row_sentence]).sum(dim=-1)
        for i, plan in enumerate(plans):
            mine = [k for k, (owner, _) in enumerate(rows) if owner == i]
            if mine:
                found[i].update((rows[k][1], (grads[k], outputs[k])) for k in mine)
                plan.receive([rows[k][1] for k in mine], integrands[mine][:, keep[i]].double().cpu().numpy())
    paths = []
    for i, plan in enumerate(plans):
        alphas, weights = plan.rule()
        paths.append(Path(alphas, torch.tensor(weights, dtype=torch.float32, device=device).view(-1, 1),
                          torch.stack([found[i][a][0] for a in alphas]),
                          torch.stack([found[i][a][1] for a in alphas]), plan))
    return paths


def refined_points(evaluate, plan) -> dict:
    """``auto`` for one plan (a :class:`~intgrads.engine.adaptive.Refinement`, or a ``GroupRefinement`` for several
    integrals sharing their points): rounds of ``evaluate(alphas (R,), done, total)`` -> (integrands (R, ...),
    whatever else per row) until the plan ends. Returns {alpha: that row's results}."""
    found, done = {}, 0
    while True:
        alphas = plan.request()
        if not alphas:
            return found
        rows = evaluate(torch.tensor(alphas, dtype=torch.float32), done, done + len(alphas))
        done += len(alphas)
        for k, alpha in enumerate(alphas):
            found[alpha] = tuple(None if value is None else value[k] for value in rows)
        plan.receive(alphas, rows[0].double().cpu().numpy())
