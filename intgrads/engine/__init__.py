"""The attribution engine: torch and transformers only, no HTTP, no server, no launcher, no client.

- ``quadrature``: the quadrature rules (alphas and step sizes) of captum's approximation methods.
- ``baselines``: the baseline word vectors.
- ``weights``: reading state dicts safely (``weights_only=True``) and checking their keys.
- ``families``: the model families (BERT, XLNet, any HF classifier), their layers and legacy layouts.
- ``models``: :func:`load_model` -> :class:`ModelBundle` (model, tokenizer, attributed layer).
- ``options``: validation of the attribution options.
- ``attribution``: :func:`attribute`, the one-pass layer integrated gradients with intermediate gradients.
- ``memory``: the process's memory handling (glibc reuse of freed memory).
"""
