"""The answer format: its keys and dtypes (``keys``), the gzip wire format (``codec``), the JSON summary
(``summary``), the whole answer rebuilt from a compact one (``rebuild``), and an answer from elsewhere read
without torch (``reader``) and checked (``checks``, ``stream``: inflated as it arrives). Depends on the engine at most;
nothing here knows about HTTP or TorchServe."""
