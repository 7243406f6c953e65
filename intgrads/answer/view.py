"""Answers for people: :class:`Answer`, a dict whose repr is one line, and the public :func:`attribute` and
:func:`load_answer` that return it.

An answer holds tensors of (steps, tokens, hidden) floats; a plain dict's repr prints a sample of every one of
them, and a notebook cell that ends with ``answer`` would fill the screen. An :class:`Answer` is exactly the dict
the engine returns (every key, every dict operation), with a short repr::

    Answer(12 tokens, predicted 1 'positive' (p=0.93), target 1, n_steps 50 gausslegendre, delta 1.2e-04,
           no warnings; 17 keys)

``intgrads.encode_answer`` writes it as a plain dict (``torch.load(..., weights_only=True)`` reads it back); to
``torch.save`` one yourself is fine too: it pickles as an ``OrderedDict``, which weights_only loading reads."""

from __future__ import annotations

import collections
import functools

import torch

from ..engine.attribution import attribute as _attribute
from ..engine.causal_answer import attribute_lm as _attribute_lm
from .codec import load_answer as _load_answer


class Answer(dict):
    """One answer (a dict: see the answer keys in the docs) with a one-line repr; :meth:`summary` is
    ``intgrads.summarize_answer(answer)``."""

    def __reduce__(self):
        # torch.save(answer) writes what weights_only loading reads (an OrderedDict), not this class
        return (collections.OrderedDict, (), None, None, iter(self.items()))

    def __repr__(self) -> str:
        parts = []
        tokens = self.get("tokens")
        if tokens is not None:
            parts.append(f"{len(tokens)} tokens")
        if "target_tokens" in self:   # a causal LM's answer: T target tokens attributed to the L input tokens
            how = "generated" if self.get("generated") else "given"
            text = self.get("target_text")   # the decoded text (the tokens may show a tokenizer's own marks, e.g. Ġ)
            text = text if isinstance(text, str) else "".join(self["target_tokens"])
            parts.append(f"{len(self['target_tokens'])} target tokens ({how}): {text!r}"[:120])
        logits = self.get("logits")
        if isinstance(logits, torch.Tensor) and logits.numel():
            flat = logits.reshape(-1).double()
            predicted = int(flat.argmax())
            labels = self.get("label_names") or []
            label = f" {labels[predicted]!r}" if predicted < len(labels) else ""
            parts.append(f"predicted {predicted}{label} (p={float(flat.softmax(0)[predicted]):.2f})")
        if "target" in self:
            parts.append(f"target {self['target']}")
        if "n_steps" in self:
            parts.append(f"n_steps {self['n_steps']} {self.get('method', '')}".rstrip())
        if "convergence_delta" in self:
            delta = torch.as_tensor(self["convergence_delta"], dtype=torch.float64)
            parts.append(f"{'max |delta|' if delta.numel() > 1 else 'delta'} "
                         f"{float(delta.abs().max() if delta.numel() > 1 else delta.reshape(-1)[0]):.2g}"
                         if delta.numel() else "no delta")
        warnings = self.get("warnings") or []
        if warnings and all(isinstance(item, list) for item in warnings):   # a causal LM's: one list per target token
            warnings = [text for item in warnings for text in item]
        parts.append(f"{len(warnings)} warning(s)" if warnings else "no warnings")
        return f"Answer({', '.join(parts)}; {len(self)} keys)"

    def _repr_pretty_(self, printer, cycle) -> None:   # IPython's pretty printer: the same one line
        printer.text(repr(self))

    def summary(self) -> dict:
        """The JSON-able summary (``intgrads.summarize_answer``)."""
        from .summary import summarize_answer

        return summarize_answer(self)


def as_answers(obj):
    """``obj`` (an answer dict, or a list of them) as :class:`Answer` objects; anything else as it is."""
    if isinstance(obj, list):
        return [as_answers(item) for item in obj]
    if isinstance(obj, dict) and not isinstance(obj, Answer):
        return Answer(obj)
    return obj


def plain(obj):
    """``obj`` with every :class:`Answer` (in a list too) back to a plain dict: what ``torch.save`` may write for
    ``torch.load(..., weights_only=True)`` to read."""
    if isinstance(obj, list):
        return [plain(item) for item in obj]
    if isinstance(obj, dict) and type(obj) is not dict:
        return dict(obj)
    return obj


@functools.wraps(_attribute)
def attribute(bundle, sequence_or_list=None, **options):
    if getattr(bundle, "kind", None) == "causal_lm":   # a causal LM: a continuation attributed to its prompt
        return as_answers(_attribute_lm(bundle, sequence_or_list, **options))
    return as_answers(_attribute(bundle, sequence_or_list, **options))


@functools.wraps(_attribute_lm)
def attribute_lm(bundle, sequence=None, **options):
    return as_answers(_attribute_lm(bundle, sequence, **options))


def load_answer(path):
    """Load an answer file saved from a server or a run (``curl ... --output FILE``) as :class:`Answer`
    objects (``weights_only=True``)."""
    return as_answers(_load_answer(path))
