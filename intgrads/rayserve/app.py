"""The Serve deployments: glue between Ray Serve and :class:`intgrads.serving.service.AttributionService`.

One application per model (``model_app``, route ``/predictions/NAME``): a ``ModelServer`` replica opens the model's
``.mar`` (the same archive TorchServe serves, so the same weights, settings and limits), and answers one request
at a time, with torch's work in a thread so the replica's event loop stays free (it reads bodies and streams
answers meanwhile). A request takes its turn only once its whole body has come (within ``body_seconds``, else
408): a stalled upload costs a socket, not a turn; at most ``max_queued`` wait per replica, past that a JSON 503
(``turns``; Ray's own queue bounds sit above it). The routes besides ``/predictions/NAME`` are the front's
(:mod:`intgrads.rayserve.front`, which imports no torch).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

import torch
from ray import serve
from starlette.requests import Request

from ..serving.service import AttributionService
from ..system import OWNER_FILE, UNPACKED_PREFIX, sweep_orphans
from . import http
from .front import DEFAULT_BODY_SECONDS, DEFAULT_MAX_BODY, read_key
from .metrics import counters
from .turns import Busy, Turns

logger = logging.getLogger("ray.serve")
DEFAULT_MAX_QUEUED = 100


def open_archive(archive: str) -> tuple[Path, dict]:
    """The ``.mar`` unpacked into a folder of this replica's own, and its model-config.yaml. The folder names its
    replica's pid: folders of replicas that are gone (killed, or a cluster stopped) are removed first."""
    import yaml

    sweep_orphans(Path(tempfile.gettempdir()), UNPACKED_PREFIX)
    folder = Path(tempfile.mkdtemp(prefix=UNPACKED_PREFIX))
    (folder / OWNER_FILE).write_text(str(os.getpid()))
    with zipfile.ZipFile(archive) as packed:
        packed.extractall(folder)
    with open(folder / "model-config.yaml", encoding="utf-8") as handle:
        return folder, yaml.safe_load(handle) or {}


@serve.deployment(max_ongoing_requests=500, max_queued_requests=-1, ray_actor_options={"num_cpus": 1})
class ModelServer:
    """One model, one request's work at a time; see the module docstring."""

    def __init__(self, name: str, archive: str, threads: int = 1, device: str = "cpu", key_file: str | None = None,
                 handoff_dir: str | None = None, handoff_max_bytes: int = 0, body_seconds: float = DEFAULT_BODY_SECONDS,
                 max_queued: int = DEFAULT_MAX_QUEUED, trusted_proxies: list | None = None):
        self.name = name
        self.folder, config = open_archive(archive)
        settings = config["intgrads"]
        torch.set_num_threads(max(1, int(threads)))
        environ = {"INTGRADS_HANDOFF_DIR": handoff_dir or "", "INTGRADS_HANDOFF_MAX_BYTES": str(handoff_max_bytes),
                   "INTGRADS_REUSE_MEMORY": os.environ.get("INTGRADS_REUSE_MEMORY", "1")}   # from its runtime_env
        self.service = AttributionService.from_archive(
            settings, self.folder, model_name=name, device="cuda:0" if device == "cuda" else "cpu",
            threads=int(threads), response_timeout=float(config.get("responseTimeout") or 1800), environ=environ)
        self.key = read_key(key_file)
        self.max_body = int(self.service.limits.get("max_body_bytes") or DEFAULT_MAX_BODY)
        self.lock = threading.Lock()
        self.turns = Turns(max_queued)
        self.body_seconds = float(body_seconds)
        self.trusted = tuple(trusted_proxies or ())
        self.counters = counters()
        logger.info("intgrads: model %s loaded on %s with %d torch threads (pid %d)", name, device, threads,
                    os.getpid())

    def __del__(self):
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)

    async def __call__(self, request: Request):
        try:
            incoming = await http.incoming(request, max_body_bytes=self.max_body, key=self.key,
                                           body_seconds=self.body_seconds, trusted=self.trusted)
        except http.Refused as refused:
            reply = refused.reply
        else:
            reply = await self.explain(incoming)
        return http.response(reply)

    async def explain(self, incoming):
        """The reply to a request whose body has come, in its turn (what the front asks for an explanation), or
        the 503 of a full queue (counted)."""
        try:
            return await self.turns.run(self.answer, incoming)
        except Busy as busy:
            self.counters.add.remote(self.name, busy.reply.status, busy.reply.counters)
            return busy.reply

    def answer(self, incoming):
        """The service's reply, counted (also what the front asks for an explanation)."""
        with self.lock:
            reply = self.service.answer(incoming)
        self.counters.add.remote(self.name, reply.status, reply.counters)
        return reply

    def describe(self) -> dict:
        return {"modelName": self.name, "pid": os.getpid(), "node": _node_id(), **self.service.describe()}


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def model_app(args: dict):
    """The application of one model: ``args`` as ``ModelServer`` takes them (the launcher's Serve config);
    ``code_version`` only marks the code the config was written for (a new one rolls the replicas)."""
    return ModelServer.bind(**{key: value for key, value in args.items() if key != "code_version"})
