"""The JSON summary of an answer: what a client needs without the big tensors (NumPy: the answer's tensors may be
torch's or NumPy's)."""

from __future__ import annotations

import numpy as np

from .keys import LM_SETTINGS_KEYS, SETTINGS_KEYS


def _float64(values) -> np.ndarray:
    """A tensor (torch or NumPy) as a flat float64 NumPy array."""
    if not isinstance(values, np.ndarray) and hasattr(values, "detach"):   # a torch tensor (bfloat16 too)
        values = values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def summarize_answer(answer: dict) -> dict:
    """A JSON-able digest of one answer: tokens, token attributions, logits, probabilities = softmax(logits),
    the predicted class (argmax) and its label, and the settings keys. A causal LM's answer: see
    :func:`summarize_lm_answer`."""
    if answer.get("kind") == "causal_lm":
        return summarize_lm_answer(answer)
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


def summarize_lm_answer(answer: dict) -> dict:
    """A causal LM answer's digest: input and target tokens, the (T, L) token attributions as lists, the scores at
    the input and the baseline, the convergence deltas, and the settings keys."""
    def floats(tensor):
        values = tensor.detach().double().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, np.float64)
        return values.tolist()

    return {
        "tokens": list(answer["tokens"]),
        "target_tokens": list(answer["target_tokens"]),
        "target_ids": [int(i) for i in answer["target_ids"]],
        "token_attributions": floats(answer["token_attributions"]),
        "scores": floats(answer["scores"]),
        "baseline_scores": floats(answer["baseline_scores"]),
        "convergence_delta": floats(answer["convergence_delta"]),
        **{key: answer[key] for key in LM_SETTINGS_KEYS if key in answer},
    }


LM_INDEX_KEYS = ("kind", "target_text", "generated", "score", "n_steps", "gradient_evaluations", "method", "baseline",
                 "interpolate", "precision", "warnings")


def index_record(summary: dict) -> dict:
    """The few fields a batch client's index keeps of one answer's summary: the predicted class, its label and
    probability, and the settings used (``summary`` from :func:`summarize_answer`); for a causal LM, the target
    text, its summed score and the settings."""
    if summary.get("kind") == "causal_lm":
        record = {key: summary.get(key) for key in LM_INDEX_KEYS}
        record["total_score"] = round(sum(summary["scores"]), 6)
        return record
    predicted = summary["predicted"]
    record = {"predicted": predicted, "label": summary["label"],
              "probability": round(summary["probabilities"][predicted], 6)}
    record.update({key: summary.get(key) for key in INDEX_KEYS[3:]})
    return record
