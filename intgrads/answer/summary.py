"""The JSON summary of an answer: what a client needs without the big tensors (NumPy: the answer's tensors may be
torch's or NumPy's)."""

from __future__ import annotations

import numpy as np

from .keys import SETTINGS_KEYS


def _float64(values) -> np.ndarray:
    """A tensor (torch or NumPy) as a flat float64 NumPy array."""
    if not isinstance(values, np.ndarray) and hasattr(values, "detach"):   # a torch tensor (bfloat16 too)
        values = values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def summarize_answer(answer: dict) -> dict:
    """A JSON-able digest of one answer: tokens, token attributions, logits, probabilities = softmax(logits),
    the predicted class (argmax) and its label, and the settings keys."""
    logits = _float64(answer["logits"])
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    predicted = int(np.argmax(logits))
    labels = answer.get("label_names") or []
    return {
        "tokens": list(answer["tokens"]),
        "token_attributions": [float(v) for v in answer["token_attributions"]],
        "logits": [float(v) for v in logits],
        "probabilities": [float(v) for v in probabilities],
        "predicted": predicted,
        "label": labels[predicted] if predicted < len(labels) else str(predicted),
        **{key: answer[key] for key in SETTINGS_KEYS if key in answer},
    }


INDEX_KEYS = ("predicted", "label", "probability", "target", "n_steps", "gradient_evaluations", "method", "baseline",
              "precision", "convergence_delta", "warnings")


def index_record(summary: dict) -> dict:
    """The few fields a batch client's index keeps of one answer's summary: the predicted class, its label and
    probability, and the settings used (``summary`` from :func:`summarize_answer`)."""
    predicted = summary["predicted"]
    record = {"predicted": predicted, "label": summary["label"],
              "probability": round(summary["probabilities"][predicted], 6)}
    record.update({key: summary.get(key) for key in INDEX_KEYS[3:]})
    return record
