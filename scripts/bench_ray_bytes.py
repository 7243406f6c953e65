"""Ray Serve's own byte path, the counterpart of bench_frontend.py's TorchServe: a Serve app that answers prebuilt
random bytes of the size asked (``{"mb": S, "piece_mb": P}``; P = 0: one whole body, else a streamed response in
pieces of P MB), one replica, Ray's HTTP proxy on 127.0.0.1, on a Ray head started as the launcher starts it
(token auth, its own folder; stopped without touching any other Ray). bench_frontend.py --frontends ray runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

APP = '''
import hashlib, json, os
from ray import serve
from starlette.responses import Response, StreamingResponse

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Bytes:
    def __init__(self):
        self.cache = {}

    async def __call__(self, request):
        ask = json.loads(await request.body())
        mb = ask["mb"]
        if mb not in self.cache:
            self.cache = {mb: os.urandom(int(mb * 1e6))}
        payload = self.cache[mb]
        headers = {"X-Sha256": hashlib.sha256(payload).hexdigest(), "X-Pid": str(os.getpid())}
        piece = int(ask.get("piece_mb", 0) * 1e6)
        if piece <= 0 or piece >= len(payload):
            return Response(payload, media_type="application/octet-stream", headers=headers)
        view = memoryview(payload)
        pieces = (bytes(view[start:start + piece]) for start in range(0, len(payload), piece))
        return StreamingResponse(pieces, media_type="application/octet-stream", headers=headers)

app = Bytes.bind()
'''


class RayBytes:
    """The byte-path app on a Ray head of its own: ``start()`` -> port, ``pids()`` -> (proxy-side pids, replica),
    ``stop()``."""

    def __init__(self, port: int):
        self.port = port
        self.work = Path(tempfile.mkdtemp(prefix="intgrads-raybytes-"))

    def start(self):
        from intgrads.launcher import ray_cluster

        (self.work / "bytes_app.py").write_text(APP)
        self.folder = self.work / "ray"
        token = ray_cluster.make_token(self.work / "private" / "token")
        ports = ray_cluster.free_block(self.port)
        ray_cluster.start_head(self.folder, ports, token, cpus=2, gpus=0, log=self.work / "ray.out")
        env = dict(ray_cluster.ray_env(token, ports), PYTHONPATH=str(self.work))
        code = (f"import ray; from ray import serve; ray.init(address='127.0.0.1:{ports.gcs}'); "
                f"serve.start(http_options={{'host': '127.0.0.1', 'port': {self.port}}}); "
                "import bytes_app; serve.run(bytes_app.app, route_prefix='/predictions/bytes', name='bytes')")
        subprocess.run([sys.executable, "-c", code], env=env, cwd=self.work, check=True, capture_output=True,
                       timeout=600)
        return self.port

    def pids(self, replica_pid: int) -> tuple[list[int], int]:
        from intgrads.launcher.ray_cluster import cluster_processes

        others = [pid for pid in cluster_processes(self.folder) if pid != replica_pid]
        return others, replica_pid

    def stop(self):
        from intgrads.launcher.ray_cluster import stop_cluster

        stop_cluster(self.folder)
        subprocess.run(["rm", "-rf", str(self.work)], check=False)


def wait_ready(port: int, timeout: float = 120) -> None:
    import http.client

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("POST", "/predictions/bytes", body=json.dumps({"mb": 0.001}))
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the Ray byte-path app did not answer")
