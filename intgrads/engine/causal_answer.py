"""``attribute_lm``: integrated gradients of a causal LM's continuation, every target token from one pass per path
point (:mod:`.causal`), the points a fixed rule's or ``n_steps="auto"``'s (one set for the whole request, refined
until every target token meets the tolerance: :class:`~intgrads.engine.adaptive.GroupRefinement`).

For target token t, with the rule's points a_k and weights w_k, integrands A_(k,t,l) = (x - b)_l . g_(k,t,l):

    token_attributions[t, l]          = sum_k w_k A_(k,t,l)          (0 at positions l >= P + t)
    step_token_attributions[t, k, l]  = w_k A_(k,t,l)
    convergence_delta[t]              = sum_l token_attributions[t, l] - (F_t(x) - F_t(b))

(completeness per token). ``integrated_gradients`` (T, L, H) = (x - b) * sum_k w_k g_(k,t), the
``intermediate_gradients`` (T, S, L, H) and ``intermediates`` (S, L, H) only when ``outputs`` names them.
"""

from __future__ import annotations

import torch

from .adaptive import AUTO, GroupRefinement
from .causal import (DEFAULT_LM_BASELINE, DEFAULT_MAX_NEW_TOKENS, DEFAULT_VJP, INTERPOLATIONS, LM_BASELINES,
                     MAX_NEW_TOKENS, SCORES, VJP_MODES, Encoded, endpoint_scores, generate, layer_ends, path_rows,
                     prompt_ids, text_ids)
from .diagnostics import answer_warnings
from .options import DEFAULT_CHUNK_TOKENS, _is_int, auto_settings, check_choice, check_flag, check_steps
from .paths import refined_points
from .precision import DEFAULT_PRECISION, check_precision
from .quadrature import step_sizes_and_alphas

ADAPTIVE_METHOD = "adaptive"
ZERO_CORNER = ("the zero baseline of a pre-norm model (RMSNorm or LayerNorm first, as in Llama): the first norm maps "
               "a x to x / rms(x) for every a > 0 but 0 to 0, so the score jumps at alpha = 0 and no quadrature "
               "converges to F(x) - F(b); use baseline pad (the default), eos or unk")
FULL_OUTPUTS = ("integrated_gradients", "intermediate_gradients", "intermediates")


def attribute_lm(bundle, sequence=None, *, messages=None, target=None, contrast=None, score="logprob",
                 interpolate="all", max_new_tokens=DEFAULT_MAX_NEW_TOKENS, n_steps=32, method="gausslegendre",
                 baseline=DEFAULT_LM_BASELINE, keep_special_tokens=False, precision=DEFAULT_PRECISION,
                 tolerance=None, max_steps=None, idgi=False, outputs=None,
                 max_tokens=None, chunk_tokens=DEFAULT_CHUNK_TOKENS, internal_batch_size=None, deadline=None,
                 vjp=DEFAULT_VJP):
    """The attribution of ``target`` (text, teacher-forced; None: the greedy generation of up to ``max_new_tokens``)
    after the prompt (``sequence`` text, or chat ``messages``) by a causal LM bundle. Returns one dict (keys in the
    module docstring and docs/causal-lm.md). ``outputs`` may name the full tensors (:data:`FULL_OUTPUTS`);
    ``tolerance`` and ``max_steps`` go with ``n_steps="auto"`` only (None: their defaults), as for a classifier."""
    tolerance, max_steps = _check(score, interpolate, max_new_tokens, n_steps, method, baseline, keep_special_tokens,
                                  precision, tolerance, max_steps, vjp, outputs)
    tokenizer = bundle.tokenizer
    with bundle.lock:
        prompt = prompt_ids(tokenizer, sequence, messages)
        generated = target is None
        if generated:
            if contrast is not None:
                raise ValueError("contrast needs a target text (a contrast to a generation is not defined)")
            target_list = generate(bundle, prompt, max_new_tokens)
            if not target_list:
                raise ValueError("the model generated nothing to attribute")
        else:
            target_list = text_ids(tokenizer, target, "target")
        contrast_list = None
        if contrast is not None:
            contrast_list = text_ids(tokenizer, contrast, "contrast")
            if len(contrast_list) != len(target_list):
                raise ValueError(f"contrast must have as many tokens as target ({len(target_list)}); it has "
                                 f"{len(contrast_list)}: score_t = score(target_t) - score(contrast_t) per position")
        _check_length(bundle, len(prompt) + len(target_list), max_tokens)
        ids = torch.tensor(prompt + target_list[:-1])
        special = torch.tensor([i in set(tokenizer.all_special_ids) for i in ids.tolist()], dtype=torch.bool)
        encoded = Encoded(ids, len(prompt), torch.tensor(target_list),
                          None if contrast_list is None else torch.tensor(contrast_list), generated, special)
        x, b = layer_ends(bundle, encoded, baseline, interpolate, keep_special_tokens)
        f_x, f_b = endpoint_scores(bundle, x, b, encoded, score, precision)
        wanted = set(outputs or ())
        keep_grads = bool(wanted & {"integrated_gradients", "intermediate_gradients"}) or (
            idgi and "integrated_gradients" in wanted)
        chunk_rows = internal_batch_size or (max(1, chunk_tokens // len(ids)) if chunk_tokens else 1 << 30)
        evaluate = path_rows(bundle, x, b, encoded, score=score, precision=precision, chunk_rows=chunk_rows,
                             keep_grads=keep_grads, deadline=deadline, vjp=vjp)
        if n_steps == AUTO:
            plan = GroupRefinement(f_x.tolist(), f_b.tolist(), tolerance, max_steps)
            found = refined_points(evaluate, plan)
            alphas, weights = plan.rule()
            rows = [torch.stack([found[a][i] for a in alphas]) if found[alphas[0]][i] is not None else None
                    for i in range(5)]
        else:
            plan = None
            weights, alphas = step_sizes_and_alphas(method, n_steps)
            rows = list(evaluate(torch.tensor(alphas, dtype=torch.float32), 0, len(alphas)))
    return _answer(bundle, encoded, x, b, f_x, f_b, alphas, weights, rows, plan, dict(
        score=score, interpolate=interpolate, method=ADAPTIVE_METHOD if plan else method, baseline=baseline,
        keep_special_tokens=keep_special_tokens, precision=precision, contrast=contrast,
        max_new_tokens=max_new_tokens if generated else None, tolerance=tolerance, max_steps=max_steps),
        wanted, idgi)


def _answer(bundle, encoded, x, b, f_x, f_b, alphas, weights, rows, plan, settings, wanted, idgi):
    integrands, outputs, squares, maxima, grads = rows          # (S, T, L), (S, T), (S, T, L), (S, T), (S,T,L,H)
    steps = len(alphas)
    w = torch.tensor(weights, dtype=torch.float32, device=integrands.device)
    step_tokens = (w.view(-1, 1, 1) * integrands).transpose(0, 1).contiguous()        # (T, S, L)
    tokens_t = step_tokens.sum(dim=1)                                                 # (T, L)
    delta = tokens_t.sum(dim=1) - (f_x - f_b)
    tokenizer = bundle.tokenizer
    count = len(encoded.target_ids)
    warnings = []
    for t in range(count):
        finite = bool(torch.isfinite(integrands[:, t]).all() and torch.isfinite(f_x[t]))
        warnings.append(answer_warnings(
            delta=float(delta[t]), f_input=float(f_x[t]), f_baseline=float(f_b[t]), step_maxima=maxima[:, t].tolist(),
            alphas=alphas, n_steps=steps, finite=finite, full_length=0, max_tokens=1, auto=plan is not None,
            unfinished=plan and plan.group_warning(t)))
        if settings["baseline"] == "zero" and warnings[-1]:
            warnings[-1].append(ZERO_CORNER)
    answer = {
        "kind": "causal_lm",
        "tokens": tokenizer.convert_ids_to_tokens(encoded.ids.tolist()),
        "input_ids": encoded.ids.view(1, -1).clone(),
        "prompt_length": encoded.prompt_length,
        "target_tokens": tokenizer.convert_ids_to_tokens(encoded.target_ids.tolist()),
        "target_ids": encoded.target_ids.clone(),
        "target_text": tokenizer.decode(encoded.target_ids.tolist()),
        "generated": encoded.generated,
        "token_attributions": tokens_t.cpu(),
        "step_token_attributions": step_tokens.cpu(),
        "scores": f_x.cpu(),
        "baseline_scores": f_b.cpu(),
        "step_outputs": outputs.t().contiguous().cpu(),
        "convergence_delta": delta.cpu(),
        "alphas": torch.tensor(alphas, dtype=torch.float32),
        "step_sizes": w.view(-1, 1).cpu(),
        "n_steps": steps,
        "gradient_evaluations": steps,
        "layer": bundle.layer_name,
        "family": bundle.family,
        "architecture": bundle.architecture,
        "warnings": warnings,
        **{key: value for key, value in settings.items() if value is not None
           and (plan is not None or key not in ("tolerance", "max_steps"))},
    }
    difference = (x - b).cpu()
    if grads is not None:
        weighted = (w.cpu().view(-1, 1, 1, 1) * grads).sum(dim=0)                     # (T, L, H)
        if "integrated_gradients" in wanted:
            answer["integrated_gradients"] = difference * weighted
        if "intermediate_gradients" in wanted:
            answer["intermediate_gradients"] = grads.transpose(0, 1).contiguous()
    if "intermediates" in wanted:
        alpha = torch.tensor(alphas, dtype=torch.float32)
        answer["intermediates"] = b.cpu() + alpha.view(-1, 1, 1) * difference
    if idgi:
        answer["idgi_token_attributions"] = _idgi_tokens(squares, outputs)
    return answer


def _idgi_tokens(squares, outputs):
    """IDGI per target token summed over H (T, L) (:mod:`.idgi`): sum_(i < S-1) sq_(i,t,l) (F_t(z_(i+1)) - F_t(z_i))
    / sum_l sq_(i,t,l), points in increasing alpha; in float64."""
    sq = squares.double()
    change = outputs.double()[1:] - outputs.double()[:-1]                            # (S-1, T)
    norms = sq[:-1].sum(dim=2)
    share = torch.where(norms > 0, change / torch.where(norms > 0, norms, torch.ones_like(norms)),
                        torch.zeros_like(norms))
    return (sq[:-1] * share.unsqueeze(2)).sum(dim=0).float().cpu()


def _check_length(bundle, total: int, max_tokens):
    limit = bundle.max_positions
    if max_tokens is not None:
        limit = min(limit, max_tokens) if limit else max_tokens
    if limit and total > limit:
        raise ValueError(f"prompt and target together are {total} tokens, more than the {limit} allowed "
                         "(max_tokens or the model's positions): send a shorter prompt or target")


def _check(score, interpolate, max_new_tokens, n_steps, method, baseline, keep_special, precision, tolerance,
           max_steps, vjp, outputs):
    check_choice("score", score, SCORES)
    check_choice("interpolate", interpolate, INTERPOLATIONS)
    if not (_is_int(max_new_tokens) and 1 <= max_new_tokens <= MAX_NEW_TOKENS):
        raise ValueError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}; got {max_new_tokens!r}")
    check_steps(method, n_steps)
    tolerance, max_steps = auto_settings(n_steps, tolerance, max_steps)
    check_choice("baseline", baseline, LM_BASELINES)
    check_flag("keep_special_tokens", keep_special)
    check_precision(precision)
    check_choice("vjp", vjp, VJP_MODES)
    unknown = set(outputs or ()) - set(FULL_OUTPUTS)
    if unknown:
        raise ValueError(f"outputs of a causal LM may name {', '.join(FULL_OUTPUTS)}; got {sorted(unknown)}")
    return tolerance, max_steps
