"""The Serve config of a model: its replicas start with glibc told to reuse freed memory, or, when the launcher's
environment says ``INTGRADS_REUSE_MEMORY=0``, with that setting (the replicas' environments are checked on a live
cluster in test_ray_frontend)."""

from __future__ import annotations

from pathlib import Path

from intgrads.launcher.ray_deploy import model_application


def _application():
    return model_application("demo", Path("/x/demo.mar"), replicas=2, options={"num_cpus": 1}, threads=1,
                             device="cpu", key_file=None, handoff_dir=None, handoff_max_bytes=0, version="v")


def test_replicas_start_with_the_memory_settings(monkeypatch):
    monkeypatch.delenv("INTGRADS_REUSE_MEMORY", raising=False)
    assert _application()["runtime_env"] == {"env_vars": {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                                                          "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}}
    monkeypatch.setenv("INTGRADS_REUSE_MEMORY", "0")   # the replicas are told not to (on any cluster)
    assert _application()["runtime_env"] == {"env_vars": {"INTGRADS_REUSE_MEMORY": "0"}}
