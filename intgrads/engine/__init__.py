"""The attribution engine: torch and transformers only, no HTTP, no server, no launcher, no client.

- ``quadrature``: the quadrature rules (alphas and step sizes) of captum's approximation methods.
- ``adaptive``: ``n_steps="auto"``: nested Gauss-Kronrod-Patterson rules on three panels, the error estimate and
  the stopping rule (pure math).
- ``baselines``: the baseline word vectors.
- ``weights``: reading state dicts safely (``weights_only=True``) and checking their keys.
- ``families``: the model families (BERT, XLNet, any HF classifier), their layers and legacy layouts.
- ``models``: :func:`load_model` -> :class:`ModelBundle` (model, tokenizer, attributed layer).
- ``options``: validation of the attribution options.
- ``precision``: the arithmetic of the model's passes (float32, or bfloat16 / float16 under autocast).
- ``buckets``: a list of sentences cut into buckets of similar length, each one padded batch.
- ``paths``: each sentence's path points and the gradients there: a fixed rule's in one pass, ``auto``'s in rounds.
- ``attribution``: :func:`attribute`, the one-pass layer integrated gradients with intermediate gradients.
- ``causal_models``, ``causal``, ``causal_answer``: a causal LM as a model kind: loading it, its prompt, target and
  scores, every target token's gradients from one pass per path point, and :func:`attribute_lm`.
- ``idgi``: IDGI attributions from an answer's own path.
- ``diagnostics``: the warnings of a poor answer (convergence, gradient spikes, truncation, non-finite values).
- ``budget``: the work a request is (multiply-accumulates) and its deadline.
- ``memory``: the process's memory handling (glibc reuse of freed memory).
"""
