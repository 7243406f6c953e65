"""The Serve config the launcher deploys on Ray, and the dashboard's Serve REST API that takes it.

One application per model (``intgrads.rayserve.app:model_app`` at ``/predictions/NAME``) and a front
(``intgrads.rayserve.front:front_app`` at ``/``). The config is the schema of KubeRay's ``RayService``
``serveConfigV2`` (``scripts/export_kuberay.py`` writes the same). Workers become replicas: on CPU
``--workers N`` replicas of ``cores / N`` CPUs (and torch threads) each; with ``--cuda``, ``--workers-per-gpu W``
per GPU, each with ``num_gpus = 1/W``. On a cluster Ray spreads them over the nodes.

The REST API (``PUT/GET /api/serve/applications/`` on the dashboard) is behind the cluster's token. A PUT
replaces the whole declared set of applications, so the launcher sends the applications already there (another
run's, on a shared cluster) with its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..engine.memory import reuse_memory_env
from .paths import LaunchError

MODEL_IMPORT = "intgrads.rayserve.app:model_app"
FRONT_IMPORT = "intgrads.rayserve.front:front_app"
FRONT_NAME = "intgrads"
MODEL_DEPLOYMENT = "ModelServer"
MAX_QUEUED = 100   # requests waiting per replica beyond this get 503 at once (TorchServe's job_queue_size)
# Ray's bounds sit above ours: a replica holds this many requests at once (bodies being read, answers streaming,
# the queue); Ray's own max_queued_requests counts per caller (the proxy), so it only backs ours up
REPLICA_REQUESTS = 500
RAY_QUEUED = 2000
BODY_SECONDS = 60.0


def replica_options(*, cuda: bool, workers_per_gpu: int, cpus_each: float) -> dict:
    if cuda:
        return {"num_cpus": 1, "num_gpus": round(1.0 / workers_per_gpu, 4)}
    return {"num_cpus": cpus_each, "num_gpus": 0}


def code_version() -> str:
    """A digest of the installed intgrads code: a changed engine rolls the replicas (Serve keeps them on an
    identical config)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_application(name: str, archive: Path, *, replicas: int, options: dict, threads: int, device: str,
                      key_file: str | None, handoff_dir: str | None, handoff_max_bytes: int, version: str,
                      body_seconds: float = BODY_SECONDS, trusted: tuple = ()) -> dict:
    """One model's application. Its replicas start with glibc told to reuse freed memory (the engine runs in a
    thread of the replica's); ``INTGRADS_REUSE_MEMORY=0`` in the launcher's environment reaches them instead."""
    application = {"name": name, "route_prefix": f"/predictions/{name}", "import_path": MODEL_IMPORT,
                   "args": {"name": name, "archive": str(archive), "threads": threads, "device": device,
                            "key_file": key_file, "handoff_dir": handoff_dir, "handoff_max_bytes": handoff_max_bytes,
                            "body_seconds": body_seconds, "max_queued": MAX_QUEUED, "trusted_proxies": list(trusted),
                            "code_version": version},
                   "deployments": [{"name": MODEL_DEPLOYMENT, "num_replicas": replicas,
                                    "max_ongoing_requests": REPLICA_REQUESTS, "max_queued_requests": RAY_QUEUED,
                                    "ray_actor_options": options}]}
    application["runtime_env"] = {"env_vars": reuse_memory_env(os.environ)}
    return application


def front_application(models: list, key_file: str | None, max_body_bytes: int, version: str,
                      body_seconds: float = BODY_SECONDS, trusted: tuple = ()) -> dict:
    return {"name": FRONT_NAME, "route_prefix": "/", "import_path": FRONT_IMPORT,
            "args": {"models": list(models), "key_file": key_file, "max_body_bytes": max_body_bytes,
                     "body_seconds": body_seconds, "trusted_proxies": list(trusted), "code_version": version},
            "deployments": [{"name": "Front", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}]}


def applications(args, archives: dict, *, cpus_each: float, threads: int, key_file: str | None,
                 handoff_dir: str | None, version: str) -> list[dict]:
    """The Serve applications for the launcher's ``args`` (model, device and limit flags) and the models'
    archives ({name: path}): one per model, then the front. The launcher deploys them; export_kuberay.py writes
    them into a RayService."""
    replicas = args.workers_per_gpu * args.num_cuda_devs if args.cuda else args.workers
    options = replica_options(cuda=args.cuda, workers_per_gpu=args.workers_per_gpu, cpus_each=cpus_each)
    device = "cuda" if args.cuda else "cpu"
    seconds = float(getattr(args, "body_timeout", BODY_SECONDS))
    trusted = tuple(getattr(args, "trusted_proxy", None) or ())
    apps = [model_application(name, archive, replicas=replicas, options=options, threads=threads, device=device,
                              key_file=key_file, handoff_dir=handoff_dir,
                              handoff_max_bytes=args.handoff_max_bytes if handoff_dir else 0, version=version,
                              body_seconds=seconds, trusted=trusted)
            for name, archive in archives.items()]
    return apps + [front_application(list(archives), key_file, args.max_body_bytes, version, seconds, trusted)]


def serve_config(applications: list, *, host: str, port: int) -> dict:
    return {"proxy_location": "HeadOnly", "http_options": {"host": host, "port": port, "keep_alive_timeout_s": 60},
            "applications": applications}


class Dashboard:
    """The Serve REST API of a cluster's dashboard, with its token."""

    def __init__(self, address: str, token: str | None):
        self.url = f"http://{address}/api/serve/applications/"
        self.token = token

    def _call(self, method: str, body: dict | None = None, timeout: float = 30):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url, data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
        return json.loads(text) if text.strip() else {}

    def details(self) -> dict:
        return self._call("GET")

    def wait_answering(self, timeout: float = 120) -> None:
        """Wait until the dashboard answers (``ray start`` returns before its HTTP server listens)."""
        deadline = time.time() + timeout
        while True:
            try:
                self.details()
                return
            except (urllib.error.URLError, OSError, ValueError) as error:
                if isinstance(error, urllib.error.HTTPError) or time.time() > deadline:
                    raise LaunchError(f"the Ray dashboard at {self.url} did not answer ({error})") from None
                time.sleep(0.5)

    def applications(self) -> list[dict]:
        """The declared applications now (each as it was sent)."""
        apps = (self.details().get("applications") or {}).values()
        return [app["deployed_app_config"] for app in apps if app.get("deployed_app_config")]

    def deploy(self, ours: list[dict], *, host: str, port: int, drop: tuple = ()) -> dict:
        """Declare ``ours`` beside the other applications already there (less the names in ``drop``)."""
        names = {app["name"] for app in ours} | set(drop)
        others = [app for app in self.applications() if app["name"] not in names]
        config = serve_config(others + ours, host=host, port=port)
        self._call("PUT", config)
        return config

    def wait_ready(self, apps: list[dict], timeout: float, on_failure=None) -> dict:
        """Wait until every application in ``apps`` runs as sent, with all its replicas; raises LaunchError on a
        failed deployment or at the timeout. Returns the details."""
        deadline = time.time() + timeout
        status = "no answer"
        while time.time() < deadline:
            try:
                details = self.details()
            except (urllib.error.URLError, OSError, ValueError) as error:
                status, details = f"dashboard not answering ({error})", None
            if details is not None:
                done, status = _all_running(details, apps)
                if done:
                    return details
                if status.startswith("failed"):
                    raise LaunchError(f"the Serve deployment {status}", log_tail=on_failure() if on_failure else "")
            time.sleep(0.5)
        raise LaunchError(f"the replicas were not ready after {timeout:.0f} s ({status}); a big model on a slow "
                          "machine may need a longer --ready-timeout", log_tail=on_failure() if on_failure else "")


def _all_running(details: dict, apps: list[dict]) -> tuple[bool, str]:
    running = details.get("applications") or {}
    for app in apps:
        current = running.get(app["name"])
        if not current:
            return False, f"{app['name']}: not deployed yet"
        if current.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
            return False, f"failed for {app['name']}: {str(current.get('message'))[-3000:]}"
        sent = current.get("deployed_app_config") or {}
        if (sent.get("args") != app["args"] or sent.get("deployments") != app["deployments"]
                or (sent.get("runtime_env") or {}) != (app.get("runtime_env") or {})):
            return False, f"{app['name']}: the new config is not applied yet"
        if current.get("status") != "RUNNING":
            return False, f"{app['name']}: {current.get('status')}"
        for name, deployment in (current.get("deployments") or {}).items():
            replicas = deployment.get("replicas") or []
            want = deployment.get("target_num_replicas")
            ready = sum(1 for replica in replicas if replica.get("state") == "RUNNING")
            if want is not None and (ready != want or len(replicas) != want):
                return False, f"{app['name']}: {ready}/{want} replicas of {name} ready"
    return True, "running"


def replica_pids(details: dict, name: str) -> list[int]:
    app = (details.get("applications") or {}).get(name) or {}
    deployment = (app.get("deployments") or {}).get(MODEL_DEPLOYMENT) or {}
    return sorted(int(r["pid"]) for r in deployment.get("replicas") or [] if r.get("pid"))
