"""One-pass layer integrated gradients, with every intermediate gradient kept.

For a sentence with attributed-layer value ``x`` (the layer's output at the input) and ``b`` (its
output when every word vector is the baseline's), and a quadrature rule ``(a_k, w_k)``:

    z_k = b + a_k (x - b)                       the interpolated layer values ("intermediates")
    g_k = d F_target / d z_k                    one batched forward + backward over all k
    IG  = (x - b) * sum_k w_k g_k               (elementwise)
    delta = sum(IG) - (F_target(x) - F_target(b))

``z_k`` is substituted for the layer's output inside the model's forward, so the layers below it
are not recomputed and only the gradient with respect to ``z`` is taken (no parameter gradients).
A list of sentences is cut into buckets of similar length (``buckets``), each padded into one batch
(rows ordered sentence-major, then step); the attention mask keeps the padding out of every real
token's value.

Which points: a fixed rule's (``quadrature``), or with ``n_steps="auto"`` those the engine refines per sentence
until its error estimate and r are within ``tolerance`` (``adaptive``); ``paths`` runs either.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from .baselines import baseline_word_vector, baseline_word_vectors
from .adaptive import AUTO, DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE
from .buckets import length_buckets
from .budget import check_deadline
from .diagnostics import answer_warnings
from .idgi import idgi_attributions
from .options import DEFAULT_CHUNK_TOKENS, check_options, check_sequences, check_token_counts
from .paths import adaptive_paths, fixed_paths
from .precision import DEFAULT_PRECISION, computing_in

ADAPTIVE_METHOD = "adaptive"   # the answer's method with n_steps "auto" (its points are in alphas)


def attribute(bundle, sequence_or_list, *, target=1, n_steps=50, method="gausslegendre", baseline="zero",
              keep_special_tokens=False, internal_batch_size=None, max_tokens=512,
              chunk_tokens=DEFAULT_CHUNK_TOKENS, deadline=None, precision=DEFAULT_PRECISION, endpoints=False,
              tolerance=None, max_steps=None, idgi=False):
    """Integrated and intermediate gradients of ``bundle``'s ``target`` logit for one sentence
    (returns a dict) or a list of sentences (returns a list of dicts). See the README for the keys.

    ``internal_batch_size`` is the number of interpolation rows per forward/backward chunk. When it is None,
    ``chunk_tokens`` bounds memory instead: a chunk holds at most that many (padded) tokens, at least one row
    (default 3200, the launcher's; None: every step at once, as captum does). Chunks change no number beyond
    float rounding (1e-6). ``deadline`` (a ``time.monotonic()`` value) is checked before each chunk: once it
    has passed, :class:`~intgrads.engine.budget.DeadlineExceeded` is raised and the work stops there.
    ``precision`` ("float32", "bfloat16" or "float16") is the arithmetic of the model's passes (see
    :mod:`intgrads.engine.precision`); the answer's tensors are float32 in every precision. ``endpoints=True``
    adds the path's ends x and b as ``layer_input`` and ``layer_baseline`` (1, T, H): with them the intermediates
    can be rebuilt (:func:`interpolate`), so a server may send those two instead.

    ``n_steps="auto"`` chooses each sentence's points (:mod:`intgrads.engine.adaptive`): refined until the estimated
    relative error of the token attributions and r = |convergence delta| / |F(x) - F(b)| are both within
    ``tolerance`` (default DEFAULT_TOLERANCE), with at most ``max_steps`` points (default DEFAULT_MAX_STEPS); with
    a fixed ``n_steps`` they raise ValueError, as a server refuses them; ``method`` is then not used, and the answer's ``method`` is
    "adaptive". ``idgi=True`` adds ``idgi`` (1, T, H) and ``idgi_token_attributions`` (T,) (:mod:`.idgi`)."""
    if getattr(bundle, "kind", None) == "causal_lm":
        raise ValueError("this model is a causal LM: attribute a continuation with intgrads.attribute_lm(bundle, "
                         "prompt, target=TEXT) (see docs/causal-lm.md)")
    sentences, single = check_sequences(sequence_or_list)
    tokenizer = bundle.tokenizer
    options = check_options(
        target=target, n_steps=n_steps, method=method, baseline=baseline,
        keep_special_tokens=keep_special_tokens, internal_batch_size=internal_batch_size, max_tokens=max_tokens,
        num_labels=bundle.num_labels, min_tokens=tokenizer.num_special_tokens_to_add() + 1,
        max_positions=bundle.max_positions, precision=precision, tolerance=tolerance, max_steps=max_steps)
    full_lengths = [len(ids) for ids in tokenizer(sentences, add_special_tokens=True)["input_ids"]]
    check_token_counts(full_lengths, tokenizer.num_special_tokens_to_add(), single)
    if not (chunk_tokens is None or (isinstance(chunk_tokens, int) and chunk_tokens >= 1)):
        raise ValueError(f"chunk_tokens must be a positive integer or None; got {chunk_tokens!r}")
    answers = [None] * len(sentences)
    with bundle.lock:  # the layer substitution must not interleave with another thread's call
        for bucket in length_buckets([min(length, options.max_tokens) for length in full_lengths],
                                     exact="attention_mask" not in bundle.input_names):
            batch = _encode(bundle, [sentences[i] for i in bucket], [full_lengths[i] for i in bucket],
                            options.max_tokens)
            bucket_answers = _attribute_batch(bundle, batch, _chunked(options, batch, chunk_tokens), deadline,
                                              endpoints=endpoints, idgi=idgi)
            for index, answer in zip(bucket, bucket_answers):
                answers[index] = answer
    return answers[0] if single else answers


def _chunked(options, batch, chunk_tokens):
    """The options with internal_batch_size set from ``chunk_tokens`` (padded tokens per chunk) when not given."""
    if options.internal_batch_size is not None or chunk_tokens is None:
        return options
    return dataclasses.replace(options, internal_batch_size=max(1, chunk_tokens // batch["input_ids"].shape[1]))


def _encode(bundle, sentences, full_lengths, max_tokens):
    tokenizer = bundle.tokenizer
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt",
                        return_token_type_ids=bundle.accepts_token_types, return_special_tokens_mask=True)
    device = bundle.device
    mask = encoded["attention_mask"].to(device)
    batch = {
        "input_ids": encoded["input_ids"].to(device),
        "attention_mask": mask,
        "special": encoded["special_tokens_mask"].to(device).bool() & mask.bool(),
        "truncated": [length > max_tokens for length in full_lengths],
        "full_lengths": full_lengths,
        "feed": tuple(name for name in bundle.input_names if name in encoded),   # what the model is given
    }
    if bundle.accepts_token_types:
        batch["token_type_ids"] = encoded["token_type_ids"].to(device)
    return batch


@contextlib.contextmanager
def _hooked(module, hook):
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _substituted(bundle, value):
    """Within the block, the attributed layer returns ``value`` (batch-first) without computing."""
    layer = bundle.layer
    inside = value.transpose(0, 1) if bundle.sequence_first else value
    layer.forward = lambda *args, **kwargs: inside.clone()   # a copy: some models (XLM) change it in place
    try:
        yield
    finally:
        del layer.forward


def _model_inputs(batch, rows=None, repeat=1):
    out = {}
    for key in batch["feed"]:
        if key in batch:
            value = batch[key].repeat_interleave(repeat, dim=0) if repeat > 1 else batch[key]
            out[key] = value if rows is None else value[rows]
    return out


def _layer_values(bundle, batch, options):
    """x, b (B, L, H) at the input and the baseline, and the logits there, in one no-grad forward."""
    ids = batch["input_ids"]
    n = ids.shape[0]
    model_inputs = {key: torch.cat([value, value]) for key, value in _model_inputs(batch).items()}
    captured = {}
    vector = baseline_word_vector(bundle, options.baseline)

    calls = [0]

    def replace_words(module, args, output):
        calls[0] += 1
        if calls[0] != bundle.word_call + 1:   # another call of the same table (e.g. token types): untouched
            return output
        keep = ~batch["attention_mask"].bool()
        if options.keep_special_tokens:
            keep |= batch["special"]
        words = output.transpose(0, 1) if bundle.sequence_first else output
        words = words.clone()
        words[n:] = baseline_word_vectors(vector, words[:n], _fit(keep, words.shape[1]))
        return words.transpose(0, 1) if bundle.sequence_first else words

    def capture(module, args, output):
        captured["value"] = (output.transpose(0, 1) if bundle.sequence_first else output).detach().clone()

    with torch.no_grad(), _hooked(bundle.word_embedding, replace_words), _hooked(bundle.layer, capture), \
            computing_in(options.precision, ids.device):
        logits = bundle.model(**model_inputs).logits.float()
    value = captured["value"].float()
    length = ids.shape[1]
    if value.shape[1] > length:
        # the model padded its input inside forward (e.g. Longformer, to a multiple of its attention window):
        # the padding tail is the same at x and b and masked out of every real token; it rides along unchanged
        batch["tail"] = captured["value"][:n, length:]
        value = value[:, :length]
    return value[:n], value[n:], logits[:n], logits[n:]


def _fit(keep, length):
    """``keep`` (B, L) extended with True to ``length`` positions (padding a model added inside forward)."""
    if keep.shape[1] >= length:
        return keep
    return torch.cat([keep, keep.new_ones((keep.shape[0], length - keep.shape[1]))], dim=1)


def _attribute_batch(bundle, batch, options, deadline=None, endpoints=False, idgi=False):
    n_sentences = batch["input_ids"].shape[0]
    x, b, logits_x, logits_b = _layer_values(bundle, batch, options)
    if options.target == "predicted":
        targets = logits_x.argmax(dim=1)
    else:
        targets = torch.full((n_sentences,), options.target, device=x.device)

    def evaluate(row_sentence, row_alpha, done_rows, total_rows, at_most=False):
        return _gradients_at(bundle, batch, options, x, b, targets, row_sentence, row_alpha, deadline,
                             done_rows, total_rows, at_most)

    if options.n_steps == AUTO:
        chosen = targets.view(-1, 1)
        paths = adaptive_paths(evaluate, x - b, batch["attention_mask"].bool(), logits_x.gather(1, chosen).view(-1)
                               .tolist(), logits_b.gather(1, chosen).view(-1).tolist(), options)
    else:
        paths = fixed_paths(evaluate, n_sentences, options, x.device)
    return [_sentence_answer(bundle, batch, options, i, x=x, b=b, path=paths[i], logits_x=logits_x,
                             logits_b=logits_b, target=int(targets[i]), endpoints=endpoints, idgi=idgi)
            for i in range(n_sentences)]


def _gradients_at(bundle, batch, options, x, b, targets, row_sentence, row_alpha, deadline, done_rows, total_rows,
                  at_most=False):
    """g_r = dF_target/dz (R, T, H) and F_target(z_r) float32 (R,) at z_r = b_s + alpha_r (x_s - b_s), s =
    ``row_sentence[r]``, in chunks of ``internal_batch_size`` rows; the deadline is checked before each chunk
    (``done_rows`` of ``total_rows`` done before these)."""
    rows_n = row_sentence.shape[0]
    chunk = options.internal_batch_size or rows_n
    grads = torch.empty((rows_n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    outputs = torch.empty(rows_n, dtype=torch.float32, device=x.device)
    for start in range(0, rows_n, chunk):
        check_deadline(deadline, done_rows + start, total_rows, x.device, at_most)
        rows = slice(start, min(start + chunk, rows_n))
        owner = row_sentence[rows]
        with torch.enable_grad():
            z = (b[owner] + row_alpha[rows].view(-1, 1, 1) * (x[owner] - b[owner])).requires_grad_()
            whole = torch.cat([z, batch["tail"][owner].to(z.dtype)], dim=1) if "tail" in batch else z
            with _substituted(bundle, whole), computing_in(options.precision, z.device):
                logits = bundle.model(**_model_inputs(batch, owner)).logits
            chosen = logits.gather(1, targets[owner].view(-1, 1))
            (grads[rows],) = torch.autograd.grad(chosen.sum(), z)
        outputs[rows] = chosen.detach().view(-1).float()
    return grads, outputs


def _sentence_answer(bundle, batch, options, i, *, x, b, path, logits_x, logits_b, target, endpoints=False,
                     idgi=False):
    """The answer dict of sentence ``i`` of the batch (padding dropped), with its warnings."""
    steps = path.steps
    keep = batch["attention_mask"][i].bool()
    xi, bi = x[i][keep], b[i][keep]
    gi = path.grads[:, keep]
    total = (gi.reshape(steps, -1) * path.weights).sum(dim=0).view_as(xi)
    ig = (xi - bi) * total
    f_input, f_baseline = float(logits_x[i, target]), float(logits_b[i, target])
    delta = float(ig.sum() - (logits_x[i, target] - logits_b[i, target]))
    ids = batch["input_ids"][i][keep].cpu()
    finite = bool(torch.isfinite(gi).all() and torch.isfinite(ig).all() and torch.isfinite(logits_x[i]).all())
    refinement = path.refinement
    warnings = answer_warnings(delta=delta, f_input=f_input, f_baseline=f_baseline,
                               step_maxima=gi.abs().amax(dim=(1, 2)).tolist(), alphas=path.alphas, n_steps=steps,
                               finite=finite, full_length=batch["full_lengths"][i], max_tokens=options.max_tokens,
                               auto=refinement is not None, unfinished=refinement and refinement.warning(),
                               method=options.method)
    answer = {
        "integrated_gradients": ig.unsqueeze(0).cpu(),
        "intermediate_gradients": gi.cpu(),
        "step_sizes": path.weights.cpu(),
        "intermediates": interpolate(xi, bi, path.alphas).cpu(),
        "alphas": torch.tensor(path.alphas, dtype=torch.float32),
        "step_outputs": path.outputs.cpu(),
        "tokens": bundle.tokenizer.convert_ids_to_tokens(ids.tolist()),
        "input_ids": ids.view(1, -1),
        "token_attributions": ig.sum(dim=-1).cpu(),
        "logits": logits_x[i:i + 1].cpu(),
        "convergence_delta": delta,
        "target": target,
        "n_steps": steps,
        "gradient_evaluations": steps,   # every point evaluated is one of the answer's (auto reuses them all)
        "forward_evaluations": 0,        # no forward-only pass beyond the one at x and b every answer has
        "method": ADAPTIVE_METHOD if refinement else options.method,
        "baseline": options.baseline,
        "keep_special_tokens": options.keep_special_tokens,
        "layer": bundle.layer_name,
        "truncated": bool(batch["truncated"][i]),
        "family": bundle.family,
        "layout": bundle.layout,
        "activation": bundle.activation,
        "precision": options.precision,
        "label_names": list(bundle.label_names),
        "warnings": warnings,
    }
    if refinement:
        answer.update(tolerance=options.tolerance, max_steps=options.max_steps)
    if idgi:   # over the answer's points, in increasing alpha
        values = idgi_attributions(gi, path.outputs)
        answer.update(idgi=values.unsqueeze(0).cpu(), idgi_token_attributions=values.sum(dim=-1).cpu())
    if endpoints:   # the path's ends x and b (1, T, H): the intermediates are interpolate(x, b, alphas)
        answer.update(layer_input=xi.unsqueeze(0).cpu(), layer_baseline=bi.unsqueeze(0).cpu())
    return answer


def interpolate(x, b, alphas):
    """The interpolated layer values z_k = b + a_k (x - b), (N, T, H) from x and b (T, H) and the N alphas a_k.

    The one definition of the answer's intermediates: the engine builds them with it, and a client that received
    x and b instead rebuilds them with it, bitwise the same (three elementwise float32 operations, each
    correctly rounded on any device)."""
    alpha = torch.tensor(alphas, dtype=x.dtype, device=x.device)
    return b + alpha.view(-1, 1, 1) * (x - b)
