"""The ``intgrads`` command: package models into TorchServe archives, start TorchServe, print the curl.

- ``cli``: the flags, their checks and ``main``;
- ``specs``: the model flags -> checked model specs (and the demo model, built by ``demo`` on first use);
- ``archive``: building model_store/<name>.mar;
- ``tsconfig``: hosts, ports and the run's config.properties;
- ``start``: the steps of a start (check, build, configure, launch, wait, print, stay attached);
- ``process``: TorchServe's tools and processes: readiness, stop, logs, keys;
- ``paths``: where files are found and written.

It never imports TorchServe: ``torch-model-archiver`` and ``torchserve`` run as subprocesses. Everything a
run writes lives in its run directory (``logs/serve-<port>/`` by default). The names below are the ones
scripts and tests use; importing this package loads no torch.
"""

from .archive import RUNTIME_REQUIREMENTS, archive_settings, build_archive
from .cli import DEFAULT_CHUNK_TOKENS, build_parser, check_defaults, default_cpu_workers, main, resolve_workers
from .paths import LaunchError, default_config_properties, project_home
from .process import find_tool, stop_server
from .specs import model_specs
from .tsconfig import read_properties

__all__ = ["RUNTIME_REQUIREMENTS", "archive_settings", "build_archive", "DEFAULT_CHUNK_TOKENS", "build_parser",
           "check_defaults", "default_cpu_workers", "main", "resolve_workers", "LaunchError",
           "default_config_properties", "project_home", "find_tool", "stop_server", "model_specs", "read_properties"]
