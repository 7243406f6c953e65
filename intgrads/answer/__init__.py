"""The answer format: its keys and dtypes (``keys``), the gzip wire format (``codec``) and the JSON summary
(``summary``). Depends on the engine at most; nothing here knows about HTTP or TorchServe."""
