"""The Ray Serve front end: the same service (``intgrads.serving``) behind Ray Serve's HTTP proxy.

- ``http``: a Starlette request into an ``Incoming`` (the body read up to its bound and deadline, the query
  string, the caller's address for the key check) and a ``Reply`` into a Starlette response (big gzip bodies in
  pieces);
- ``app``: the model deployment: one application per model at ``/predictions/NAME``;
- ``front``: a small front at ``/`` for ``/explanations/NAME``, ``/models/NAME``, ``/ping`` and ``/metrics``
  (it routes, and imports no torch);
- ``turns``: a replica's turns (one request's work at a time, a bounded queue, our 503 past it);
- ``metrics``: the ``Intgrads*`` counters of every replica, summed by one named actor and served as Prometheus
  text.

The launcher (``intgrads --frontend ray``) writes the Serve config that deploys them; nothing here imports the
launcher, and nothing outside this room imports Ray.
"""
