"""The front application (``front_app``, route ``/``): what no model route takes. ``POST /explanations/NAME`` (the
JSON summary, through the model's deployment), ``GET /models/NAME`` (what the model is, its defaults and limits),
``GET /ping`` and ``GET /metrics``, and a 404 naming the model otherwise.

It only routes: it imports no torch and no transformers (its replica starts in about a second and holds no model
library), and hands the work to the models' ``ModelServer`` deployments (:mod:`intgrads.rayserve.app`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ray import serve
from starlette.requests import Request

from . import http
from .metrics import counters

DEFAULT_MAX_BODY = 1_048_576
DEFAULT_BODY_SECONDS = 60.0


def read_key(key_file: str | None) -> str | None:
    """The inference key of a key file (TorchServe's key_file.json layout), or None when there is none."""
    if not key_file:
        return None
    return json.loads(Path(key_file).read_text(encoding="utf-8"))["inference"]["key"]


@serve.deployment(max_ongoing_requests=500, ray_actor_options={"num_cpus": 0})
class Front:
    """The routes besides ``/predictions/NAME``; see the module docstring."""

    def __init__(self, models: list, key_file: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
                 body_seconds: float = DEFAULT_BODY_SECONDS, trusted_proxies: list | None = None):
        self.models = set(models)
        self.handles: dict = {}   # a model's handle, got at its first request (the front may be up before it)
        self.key = read_key(key_file)
        self.max_body = int(max_body_bytes)
        self.body_seconds = float(body_seconds)
        self.trusted = tuple(trusted_proxies or ())
        self.counters = counters()

    async def __call__(self, request: Request):
        parts = [part for part in request.url.path.split("/") if part]
        try:
            if parts == ["ping"]:
                return http.json_response(200, {"status": "Healthy"})
            http.check_key(request, self.key, self.trusted)
            if parts == ["metrics"]:
                text = await self.counters.render.remote()
                return http.Response(text, media_type="text/plain; version=0.0.4")
            if len(parts) >= 2 and parts[0] in ("explanations", "models") and parts[1] in self.models:
                handle = await self.handle(parts[1])
                if parts[0] == "models":
                    return http.json_response(200, [await handle.describe.remote()])
                incoming = await http.incoming(request, max_body_bytes=self.max_body, key=self.key, explain=True,
                                               body_seconds=self.body_seconds, trusted=self.trusted)
                return http.response(await handle.explain.remote(incoming))
        except http.Refused as refused:
            return http.response(refused.reply)
        name = parts[1] if len(parts) >= 2 else "/".join(parts)
        return http.json_response(404, {"code": 404, "type": "ModelNotFoundException",
                                        "message": f"Model not found: {name}"})

    async def handle(self, name: str):
        if name not in self.handles:
            self.handles[name] = await asyncio.to_thread(serve.get_deployment_handle, "ModelServer", app_name=name)
        return self.handles[name]


def front_app(args: dict):
    """The front application: ``args`` {"models": [...], "key_file": ..., "max_body_bytes": ...}."""
    return Front.bind(**{key: value for key, value in args.items() if key != "code_version"})

