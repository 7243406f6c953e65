"""Serving: turning an HTTP request into engine options (``request``). The TorchServe handler in
``handler/intgrads_handler.py`` is thin glue over this and the engine; another server front end would
use the same pieces."""
