"""A request as a front end hands it to the service (:class:`Incoming`): nothing here imports torch, so that a
front end that only reads requests (the Ray front's routes) stays light."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Incoming:
    """A request as a front end hands it over: ``parts`` is the body as TorchServe gives it to a handler
    (``{"body": bytes}`` or form fields, see ``intgrads.serving.request``), ``headers`` its headers, ``query`` the
    URL's query string as (name, value) pairs (None where the front end cannot see it), ``explain`` the
    ``/explanations`` route."""

    parts: dict
    headers: dict
    query: list | None = None
    explain: bool = False
