"""A request to a causal LM, checked: the prompt (``sequence`` text or chat ``messages``), the ``target`` text (or
none: the greedy generation of ``max_new_tokens``), ``contrast``, ``score``, ``interpolate`` and the options a
classifier takes where they make sense (``n_steps`` integer or "auto", ``method``, ``baseline``, ``precision``,
``keep_special_tokens``, ``internal_batch_size``); ``outputs`` names the causal answer's keys. Each refusal is a
4xx naming the allowed values; the engine checks again (``intgrads.engine.causal_answer``)."""

from __future__ import annotations

from ..answer.keys import LM_FULL_NAMES, LM_SENDABLE_NAMES
from ..engine.causal import DEFAULT_MAX_NEW_TOKENS, INTERPOLATIONS, LM_BASELINES, MAX_NEW_TOKENS, SCORES
from .options import check_encoding, check_options
from .values import RequestError, is_int, json_type, show

LM_FIELDS = ("messages", "contrast", "score", "interpolate", "max_new_tokens")
# A causal LM's defaults where a classifier's differ (the server's --baseline is a classifier's: zero; a causal LM
# starts from the pad token, see docs/causal-lm.md).
LM_DEFAULTS = {"target": None, "contrast": None, "score": "logprob", "interpolate": "all",
               "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "baseline": "pad"}
ENGINE_KEYS = ("n_steps", "method", "baseline", "keep_special_tokens", "internal_batch_size", "precision", "tolerance",
               "max_steps", "target", "contrast", "score", "interpolate", "max_new_tokens", "messages")


def lm_form_value(name: str, text: str):
    """A causal LM's form field typed (target and contrast stay text)."""
    if name == "max_new_tokens":
        try:
            return int(text)
        except ValueError:
            raise RequestError(f"max_new_tokens must be an integer; got {text!r}") from None
    return text


def parse_lm_fields(fields: dict, defaults: dict, limits: dict) -> tuple[str | None, dict, dict]:
    """``(sequence, options, encoding)`` of a causal LM request, or :class:`RequestError`."""
    if "sequences" in fields:
        raise RequestError("a causal LM takes one prompt per request: send \"sequence\" (or \"messages\"), not "
                           "\"sequences\"")
    sequence, messages = fields.get("sequence"), fields.get("messages")
    if (sequence is None) == (messages is None):
        raise RequestError("send the prompt as \"sequence\" (text) or \"messages\" (a chat: [{\"role\": \"user\", "
                           "\"content\": \"...\"}]), one of the two")
    if sequence is not None and not (isinstance(sequence, str) and sequence.strip()):
        raise RequestError(f"sequence must be the prompt, non-empty text; got {json_type(sequence)}")
    if messages is not None and not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and set(m) <= {"role", "content"} and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages)):
        raise RequestError("messages must be a non-empty list of {\"role\": text, \"content\": text}")
    text = sequence if sequence is not None else "".join(m["content"] for m in messages)
    if len(text) > limits["max_chars"]:
        raise RequestError(f"the prompt has {len(text)} characters; this server takes at most {limits['max_chars']}",
                           status=413)
    options = {**defaults, **LM_DEFAULTS}
    for name in ENGINE_KEYS:
        if name in fields:
            options[name] = fields[name]
    for name in ("target", "contrast"):
        value = options[name]
        if value is not None and not (isinstance(value, str) and value):
            raise RequestError(f"{name} must be text for a causal LM (the continuation to attribute, teacher-forced "
                               f"after the prompt; leave target out to attribute the model's own greedy generation); "
                               f"got {show(value)}")
    if options["contrast"] is not None and options["target"] is None:
        raise RequestError("contrast needs a target text: score = score(target) - score(contrast)")
    if options["score"] not in SCORES:
        raise RequestError(f"score must be one of {', '.join(SCORES)}; got {show(options['score'])}")
    if options["interpolate"] not in INTERPOLATIONS:
        raise RequestError(f"interpolate must be one of {', '.join(INTERPOLATIONS)} (all: every position before a "
                           f"target token moves; prompt: earlier target tokens stay real); got "
                           f"{show(options['interpolate'])}")
    new = options["max_new_tokens"]
    if not (is_int(new) and 1 <= new):
        raise RequestError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}; got {show(new)}")
    if new > MAX_NEW_TOKENS:
        raise RequestError(f"max_new_tokens is {new}; this server generates at most {MAX_NEW_TOKENS}", status=413)
    if options["baseline"] not in LM_BASELINES:
        raise RequestError(f"baseline must be one of {', '.join(LM_BASELINES)}; got {show(options['baseline'])}")
    checked = {**options, "target": 0, "baseline": "zero"}   # the options shared with classifiers, checked alike
    check_options(checked, num_labels=1, limits=limits)
    for name in ("tolerance", "max_steps"):
        if name in checked:
            options[name] = checked[name]
    encoding = _lm_encoding(fields)
    options["outputs"] = [name for name in encoding["outputs"] or () if name in LM_FULL_NAMES] or None
    options["idgi"] = "idgi_token_attributions" in (encoding["outputs"] or ())
    if messages is not None:
        options["messages"] = messages
    options.pop("endpoints", None)
    return sequence, options, encoding


def _lm_encoding(fields: dict) -> dict:
    return check_encoding(fields, LM_SENDABLE_NAMES, " for a causal LM",
                          f"(the full tensors {', '.join(LM_FULL_NAMES)} only when named)",
                          lambda outputs: list(dict.fromkeys(outputs)))


def lm_lengths(bundle, request) -> tuple[int, int]:
    """(L, T) of a causal LM request before any work: the prompt's tokens plus the target's (or the most the
    generation may add)."""
    from ..engine.causal import prompt_ids, text_ids

    options = request.options
    try:
        prompt = prompt_ids(bundle.tokenizer, request.sequences[0] if request.sequences else None,
                            options.get("messages"))
        target = (len(text_ids(bundle.tokenizer, options["target"], "target")) if options["target"] is not None
                  else options["max_new_tokens"])
    except ValueError as error:
        raise RequestError(str(error)) from None
    return len(prompt) + target - 1, target
