"""The answer format: its keys and dtypes (``keys``), the gzip wire format (``codec``), the JSON summary
(``summary``) and the whole answer rebuilt from a compact one (``rebuild``). Depends on the engine at most;
nothing here knows about HTTP or TorchServe."""
