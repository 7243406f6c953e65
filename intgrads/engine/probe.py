"""What a model really runs, found by running it once; and the self-check every load ends with.

**The words call.** The baseline replaces the word vectors of the input's tokens, so the engine must hook the
one call of an embedding table that embeds ``input_ids``. That is not always ``get_input_embeddings()``: an
encoder-decoder classifier (BART, T5, …) embeds through its encoder's and its decoder's own ``embed_tokens``
(which share the table's weights), and GPT-2, GPT-Neo, OpenAI GPT, CTRL, GPTBigCode, XLM and FlauBERT embed their
token types with the word table too, a second call per forward. :func:`find_words_call` runs one probe sentence,
watches every module that holds the input-embedding weights, and returns the module and the index of the call
whose indices are the input ids (the encoder's, for an encoder-decoder).

**The self-check** (:func:`self_check`, at every load) runs the probe sentence through the engine's own path and
requires, with x the attributed layer's value at the input and b at the zero baseline:

1. the attributed layer runs exactly once per forward and the words call is found exactly once;
2. the logits the engine reports at x are the model's own on the tokenizer's input (``model(**encoded)``), and
   those at b are the model's with the word vectors replaced (|Δ| ≤ 1e-4 · (1 + max |logit|));
3. F(z) through the substituted layer reproduces both ends: F(z=x) = F(x), F(z=b) = F(b);
4. completeness on a short path: with 4 Gauss-Legendre nodes on α ∈ [1 - h, 1],
   Σ (x - b) · Σ_k w_k ∂F/∂z(z_k) = F(x) - F(z_{1-h}) within 2e-3 · |ΔF| + 1e-5 · (1 + |F|), for h = 0.1, else
   0.01, else 0.001 (a tiny random model can bend sharply near x; a gradient that does not flow through the
   substituted layer, or flows twice, fails at every h).

Anything that does not hold raises ``ValueError`` naming the model type and the check.
"""

from __future__ import annotations

import types

import torch
from torch import nn

PROBE_SENTENCE = "the good movie"
SHORT_PATH_SPANS = (0.1, 0.01, 0.001)   # the first that holds is enough (a small random model can bend sharply)
SHORT_PATH_NODES = 4
LOGIT_TOLERANCE = 1e-4
COMPLETENESS_RELATIVE, COMPLETENESS_ABSOLUTE = 2e-3, 1e-5


class ModelCheckError(ValueError):
    """A model the engine cannot attribute correctly."""


def encode_probe(tokenizer, input_names, sentence=PROBE_SENTENCE) -> dict:
    encoded = tokenizer([sentence], return_tensors="pt", return_token_type_ids="token_type_ids" in input_names)
    return {name: encoded[name] for name in input_names if name in encoded}


def _indices_of(args, kwargs):
    value = args[0] if args else next(iter(kwargs.values()), None)
    return value if torch.is_tensor(value) else None


def find_words_call(model: nn.Module, tokenizer, input_names) -> tuple[nn.Module, int]:
    """The module and call index (within one forward) that embed the input ids; see the module's docstring."""
    table = model.get_input_embeddings()
    weight = getattr(table, "weight", None)
    candidates = [module for module in model.modules()
                  if module is table or (weight is not None and getattr(module, "weight", None) is weight)]
    encoded = {key: value.to(_device_of(model)) for key, value in encode_probe(tokenizer, input_names).items()}
    ids = encoded["input_ids"].reshape(-1)
    found, handles = [], []
    for module in candidates:
        calls = [0]

        def hook(module, args, kwargs, output, calls=calls):
            indices = _indices_of(args, kwargs)
            flat = indices.reshape(-1) if indices is not None else None
            if flat is not None and flat.numel() >= ids.numel() and torch.equal(flat[:ids.numel()].to(ids), ids):
                found.append((module, calls[0]))
            calls[0] += 1

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(**encoded)
    finally:
        for handle in handles:
            handle.remove()
    if len(found) != 1:
        what = "never embeds the input ids with its input-embedding table" if not found else \
            f"embeds the input ids {len(found)} times per forward"
        raise ModelCheckError(f"{model_type(model)} model: {what}, so the word vectors cannot be replaced by a "
                              "baseline exactly once; it cannot be attributed correctly")
    return found[0]


def model_type(model) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


def _device_of(model):
    return next(model.parameters()).device


def count_calls(bundle, encoded) -> tuple[int, int, torch.Tensor]:
    """(attributed layer's calls, words module's calls, the model's own float32 logits) in one forward on
    ``encoded``."""
    counts = [0, 0]

    def counter(index):
        def hook(module, args, output):
            counts[index] += 1
        return hook

    handles = [bundle.layer.register_forward_hook(counter(0)), bundle.word_embedding.register_forward_hook(counter(1))]
    try:
        with torch.no_grad():
            logits = bundle.model(**encoded).logits.float()
    finally:
        for handle in handles:
            handle.remove()
    return counts[0], counts[1], logits


def self_check(bundle) -> None:
    """Raise :class:`ModelCheckError` unless the engine's path reproduces the model (see the module's docstring)."""
    from . import attribution

    name = f"{model_type(bundle.model)} model"
    try:
        tokenizer = bundle.tokenizer
        length = len(tokenizer(PROBE_SENTENCE)["input_ids"])
        batch = attribution._encode(bundle, [PROBE_SENTENCE], [length], length)
        encoded = attribution._model_inputs(batch)
        layer_calls, word_calls, own = count_calls(bundle, encoded)
        if layer_calls != 1:
            raise ModelCheckError(f"{name}: its attributed layer {bundle.layer_name} runs {layer_calls} times per "
                                  "forward (it must run exactly once)")
        if word_calls <= bundle.word_call:
            raise ModelCheckError(f"{name}: its word embedding runs {word_calls} times per forward, not on the input")
        options = types.SimpleNamespace(baseline="zero", keep_special_tokens=False, precision="float32",
                                        internal_batch_size=None)
        x, b, logits_x, logits_b = attribution._layer_values(bundle, batch, options)
        scale = LOGIT_TOLERANCE * (1.0 + float(own.abs().max()))
        if float((logits_x - own).abs().max()) > scale:
            raise ModelCheckError(f"{name}: the logits through the engine's hooks differ from the model's own by "
                                  f"{float((logits_x - own).abs().max()):.3g}")
        target = int(logits_x[0].abs().argmax())
        targets = torch.tensor([target], device=x.device)
        f_x, f_b = float(logits_x[0, target]), float(logits_b[0, target])
        ends = _path(bundle, batch, options, x, b, targets, [0.0, 1.0])[1]
        if abs(float(ends[1]) - f_x) > scale or abs(float(ends[0]) - f_b) > scale:
            raise ModelCheckError(f"{name}: substituting the attributed layer {bundle.layer_name} does not reproduce "
                                  f"the logits at the input and the baseline ({float(ends[1]):.6g} vs {f_x:.6g}, "
                                  f"{float(ends[0]):.6g} vs {f_b:.6g})")
        gaps = [_short_path_gap(bundle, batch, options, x, b, targets, f_x, span) for span in SHORT_PATH_SPANS]
        if not any(gap <= bound for gap, bound, _, _ in gaps):
            _, _, integral, change = gaps[0]
            raise ModelCheckError(f"{name}: completeness fails on a short path (integrated gradients sum to "
                                  f"{integral:.6g}, the logit changes by {change:.6g}): the gradient does not "
                                  f"flow through the attributed layer {bundle.layer_name} as the logits do")
    except ModelCheckError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the probe is a refusal, with its cause
        raise ModelCheckError(f"{name}: the engine's probe sentence fails ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); it cannot be attributed") from error


def _path(bundle, batch, options, x, b, targets, alphas):
    from . import attribution

    row_alpha = torch.tensor(alphas, dtype=x.dtype, device=x.device)
    row_sentence = torch.zeros(len(alphas), dtype=torch.long, device=x.device)
    return attribution._gradients_at(bundle, batch, options, x, b, targets, row_sentence, row_alpha, None, 0,
                                     len(alphas))


def _short_path_gap(bundle, batch, options, x, b, targets, f_x, span):
    """(|IG sum - ΔF|, its bound, IG sum, ΔF) on α ∈ [1 - span, 1]."""
    from .quadrature import step_sizes_and_alphas

    weights, alphas = step_sizes_and_alphas("gausslegendre", SHORT_PATH_NODES)
    start = 1.0 - span
    grads, outputs = _path(bundle, batch, options, x, b, targets, [start] + [start + span * a for a in alphas])
    w = torch.tensor(weights, dtype=x.dtype, device=x.device) * span
    integral = float(((x[0] - b[0]) * (grads[1:] * w.view(-1, 1, 1)).sum(dim=0)).sum())
    change = f_x - float(outputs[0])
    bound = COMPLETENESS_RELATIVE * abs(change) + COMPLETENESS_ABSOLUTE * (1 + abs(f_x))
    return abs(integral - change), bound, integral, change
