"""The answer's keys and dtypes, and its size before compression (no torch import).

An answer is one dict per sentence. Its tensors, for a sentence of T tokens, hidden size H and N steps:

    integrated_gradients    (1, T, H)    IG = (x - b) * sum_k w_k g_k
    intermediate_gradients  (N, T, H)    g_k = dF_target/dz at z_k
    step_sizes              (N, 1)       w_k
    intermediates           (N, T, H)    z_k = b + a_k (x - b)
    alphas                  (N,)         a_k, increasing
    step_outputs            (N,)         F_target(z_k)
    token_attributions      (T,)         IG summed over H
    logits                  (1, labels)  at the input
    input_ids               (1, T)       int64

plus ``tokens`` and ``convergence_delta``, and the settings keys (always sent). N is the answer's ``n_steps``: a
fixed rule's, or the points ``n_steps="auto"`` chose for this sentence.
"""

from __future__ import annotations

# The answer keys a client may choose with a request's "outputs" (the settings keys are always kept).
OUTPUT_NAMES = ("integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates", "alphas",
                "step_outputs", "tokens", "input_ids", "token_attributions", "logits", "convergence_delta")
# The ends of the path, x and b (1, T, H) float32: in an answer only when a request's "outputs" names them (the
# engine's attribute(endpoints=True)). With them a client rebuilds intermediates = b + a_k (x - b) itself
# (``intgrads.answer.rebuild``).
ENDPOINT_NAMES = ("layer_input", "layer_baseline")
# IDGI (intgrads.engine.idgi): (1, T, H) and its sum over H (T,), in an answer only when a request names them;
# naming "idgi" brings both.
IDGI_NAMES = ("idgi", "idgi_token_attributions")
# A causal LM's answer (``kind`` "causal_lm"; T target tokens, S path points, L input positions, H hidden; see
# docs/causal-lm.md): these outputs always, the full tensors only when named, and its settings keys.
LM_OUTPUT_NAMES = ("tokens", "input_ids", "target_tokens", "target_ids", "token_attributions",
                   "step_token_attributions", "scores", "baseline_scores", "step_outputs", "convergence_delta",
                   "alphas", "step_sizes")
# ... of which these are always sent, whatever "outputs" names (they are small and say what the answer is about)
LM_ALWAYS_NAMES = ("tokens", "input_ids", "target_tokens", "target_ids", "scores", "baseline_scores",
                   "convergence_delta", "alphas", "step_sizes")
LM_FULL_NAMES = ("integrated_gradients", "intermediate_gradients", "intermediates")
LM_IDGI_NAMES = ("idgi_token_attributions",)
LM_SENDABLE_NAMES = LM_OUTPUT_NAMES + LM_FULL_NAMES + LM_IDGI_NAMES
LM_SETTINGS_KEYS = ("kind", "prompt_length", "target_text", "generated", "n_steps", "gradient_evaluations", "method",
                    "baseline", "keep_special_tokens", "score", "interpolate", "contrast", "max_new_tokens", "layer",
                    "family", "architecture", "precision", "tolerance", "max_steps", "warnings")
SENDABLE_NAMES = OUTPUT_NAMES + ENDPOINT_NAMES + IDGI_NAMES
ALL_SENDABLE_NAMES = tuple(dict.fromkeys(SENDABLE_NAMES + LM_SENDABLE_NAMES))
# The "outputs" of a client that rebuilds the intermediates: every output but them, and x and b.
COMPACT_OUTPUTS = tuple(name for name in OUTPUT_NAMES if name != "intermediates") + ENDPOINT_NAMES
# What was actually used, what the model is, and the answer's warnings (a list of sentences, empty when all is
# well; see intgrads.engine.diagnostics): always in the answer and its summary.
# gradient_evaluations: every gradient computed for the sentence (n_steps when none was thrown away);
# forward_evaluations: forward-only passes beyond the one at x and b. tolerance and max_steps: n_steps "auto" only.
SETTINGS_KEYS = ("target", "convergence_delta", "n_steps", "gradient_evaluations", "forward_evaluations", "method",
                 "baseline", "keep_special_tokens", "layer", "truncated", "family", "layout", "activation",
                 "precision", "tolerance", "max_steps", "warnings")
# The float dtypes an answer may be sent in (a request's "dtype"; float32 is as computed).
DTYPE_NAMES = ("float32", "float16")
DTYPE_BYTES = {"float32": 4, "float16": 2}


def named_outputs(outputs):
    """``outputs`` as the answer's keys to send: None stays None (every output but those sent only when named);
    "idgi" brings "idgi_token_attributions"."""
    if outputs is None:
        return None
    outputs = list(dict.fromkeys(outputs))
    if "idgi" in outputs and "idgi_token_attributions" not in outputs:
        outputs.append("idgi_token_attributions")
    return outputs


def estimate_answer_bytes(n_tokens: int, hidden: int, n_steps: int, *, dtype: str = "float32", outputs=None) -> int:
    """Bytes of one answer's tensors before gzip, for the ``dtype`` and the ``outputs`` asked for (None: all):

        size = bytes(dtype) * (T * H * (N * [intermediates] + N * [intermediate_gradients]
                                        + [integrated_gradients] + [layer_input] + [layer_baseline] + [idgi])
                               + 3 N + (2 + [idgi]) T) + 64 T + 4096

    where [name] is 1 when that output is sent (x, b and IDGI only when named), the last terms a bound on the small
    keys (step sizes, alphas and step outputs: 3 N; token attributions and IDGI's, ids, tokens)."""
    size = DTYPE_BYTES.get(dtype, 4)
    outputs = named_outputs(outputs)

    def kept(name):   # None: every output but those sent only when named
        return name in OUTPUT_NAMES if outputs is None else name in outputs

    big = n_tokens * hidden * (n_steps * (kept("intermediates") + kept("intermediate_gradients"))
                               + kept("integrated_gradients") + kept("layer_input") + kept("layer_baseline")
                               + kept("idgi"))
    return size * (big + 3 * n_steps + (2 + kept("idgi")) * n_tokens) + 64 * n_tokens + 4096


# HTTP headers of the answer path. A client on the server's own machine asks with HANDOFF_HEADER: "file" to get
# the answer as a file the server wrote (the header of the reply then names it) instead of the body; every
# answer of one sentence carries its index record (see ``summary.index_record``) in SUMMARY_HEADER.
HANDOFF_HEADER = "X-Intgrads-Handoff"
HANDOFF_REQUEST = "file"
SUMMARY_HEADER = "X-Intgrads-Summary"


def estimate_lm_answer_bytes(n_inputs: int, n_targets: int, hidden: int, n_steps: int, *, dtype: str = "float32",
                             outputs=None) -> int:
    """Bytes of a causal LM answer's tensors before gzip (L = ``n_inputs``, T = ``n_targets``, S = ``n_steps``):

        size = bytes(dtype) * (T L (S + 1 + [idgi]) + T L H ([integrated_gradients] + S [intermediate_gradients])
                               + S L H [intermediates] + 3 T S + 6 T + 2 S) + 64 (L + T) + 4096

    (the full tensors only when named in ``outputs``; the step token attributions always)."""
    size = DTYPE_BYTES.get(dtype, 4)
    named = set(outputs or ())

    def kept(name):   # None: every output sent by default (the full tensors only when named)
        return name in named or (outputs is None and name not in LM_FULL_NAMES + LM_IDGI_NAMES)

    L, T, S, H = n_inputs, n_targets, n_steps, hidden
    big = (T * L * (S * kept("step_token_attributions") + 1 + kept("idgi_token_attributions"))
           + T * L * H * (kept("integrated_gradients") + S * kept("intermediate_gradients"))
           + S * L * H * kept("intermediates"))
    return size * (big + 3 * T * S + 6 * T + 2 * S) + 64 * (L + T) + 4096
