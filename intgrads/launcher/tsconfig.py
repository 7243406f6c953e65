"""A run's TorchServe configuration: reading config.properties, hosts and ports, and writing the run's
config.properties from the project's one and the launcher's flags."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ..system import bind_error
from .paths import LaunchError, program


# ---------------------------------------------------------------------------------------------- config.properties
def read_properties(path: Path) -> dict:
    props = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def is_loopback(host: str) -> bool:
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    return False


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def public_host(host: str) -> str:
    """The address to print in the curl: the host itself, or this machine's address for 0.0.0.0 / ::."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))   # no packet is sent; picks the outgoing interface
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


@dataclass
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    def items(self):
        return [("inference", self.inference), ("management", self.management), ("metrics", self.metrics),
                ("gRPC inference", self.grpc_inference), ("gRPC management", self.grpc_management)]


def choose_ports(args) -> Ports:
    port = args.port
    management = args.management_port or port + 1
    metrics = args.metrics_port or port + 2
    grpc = max(port, management, metrics) + 1
    ports = Ports(port, management, metrics, grpc, grpc + 1)
    values = [value for _, value in ports.items()]
    if len(set(values)) != len(values):
        raise LaunchError(f"the ports collide ({', '.join(f'{n} {v}' for n, v in ports.items())}): choose distinct "
                          "-p, --management-port and --metrics-port")
    for name, value in ports.items():
        if not 1 <= value <= 65535:
            raise LaunchError(f"{name} port {value} is not a valid port")
    return ports


def check_ports_free(host: str, ports: Ports):
    for name, value in ports.items():
        error = bind_error(value, host)
        if error is not None:
            raise LaunchError(
                f"the {name} port {value} on {host or '*'} is taken ({error.strerror}). Another server may be "
                f"running there: stop it ({program()} --stop -p {ports.inference}, if it is ours) or choose other "
                "ports with -p PORT (management, metrics and gRPC follow PORT unless given)")


def write_run_config(path: Path, base: dict, *, host: str, ports: Ports, model_store: Path, mar_names: list[str],
                     token_auth: bool, args, source: str, management_socket: Path | None = None):
    """The run's config.properties. With ``management_socket`` the management API listens there (a Unix socket,
    which needs TorchServe's native transport) instead of on a TCP port."""
    props = dict(base)
    h = url_host(host)
    props.update({
        "inference_address": f"http://{h}:{ports.inference}",
        "management_address": f"unix:{management_socket}" if management_socket else f"http://{h}:{ports.management}",
        "metrics_address": f"http://{h}:{ports.metrics}",
        "grpc_inference_address": host,
        "grpc_management_address": host,
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "model_store": str(model_store),
        "load_models": ",".join(mar_names),
        "disable_token_authorization": "false" if token_auth else "true",
        "enable_model_api": "false",
        "allowed_urls": "file://" + re.escape(str(model_store)) + r"/[^/]+\.mar",
        "install_py_dep_per_model": "false",
        "number_of_gpu": str(args.num_cuda_devs if args.cuda else 0),
    })
    if management_socket:
        props["use_native_io"] = "true"
    if args.token_expiration_min:
        props["token_expiration_min"] = str(args.token_expiration_min)
    lines = [f"# Written by the intgrads launcher from {source} and its flags; edit that file, not this one."]
    lines += [f"{key}={value}" for key, value in props.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return props


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


