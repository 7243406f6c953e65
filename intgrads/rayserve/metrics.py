"""The ``Intgrads*`` counters of every replica, summed in one place and served as Prometheus text.

Each replica sends, after each reply, ``IntgradsRequests`` by model and status and, for an answer, its counters
(engine and encode seconds, token-steps, answer bytes, warnings) to one named actor (fire and forget: a lost
message never fails a request). The front's ``GET /metrics`` renders them the way TorchServe's metrics port names
them, so one scrape config reads either front end::

    # TYPE IntgradsRequests counter
    IntgradsRequests{ModelName="demo",Status="200"} 12.0
"""

from __future__ import annotations

import ray

ACTOR_NAME = "intgrads-metrics"
NAMESPACE = "intgrads"


@ray.remote(num_cpus=0)
class Counters:
    """{(name, model, status or None): value}, added to by replicas, rendered for /metrics."""

    def __init__(self):
        self.values: dict = {}

    def add(self, model: str, status: int, counters: dict) -> None:
        key = ("IntgradsRequests", model, str(status))
        self.values[key] = self.values.get(key, 0.0) + 1.0
        for name, value in counters.items():
            key = (name, model, None)
            self.values[key] = self.values.get(key, 0.0) + float(value)

    def render(self) -> str:
        lines, typed = [], set()
        for (name, model, status), value in sorted(self.values.items(), key=lambda item: tuple(map(str, item[0]))):
            if name not in typed:
                lines.append(f"# TYPE {name} counter")
                typed.add(name)
            labels = f'ModelName="{model}"' + (f',Status="{status}"' if status is not None else "")
            lines.append(f"{name}{{{labels}}} {value!r}")
        return "\n".join(lines) + "\n"


def counters():
    """The cluster's one counters actor (made by the first caller; it lives as long as the cluster)."""
    return Counters.options(name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()
