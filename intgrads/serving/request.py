"""Parsing and checking one HTTP request: TorchServe's view of it -> engine options (no TorchServe import).

A request reaches the handler as a dict of named parts (TorchServe's view of the body):

- a JSON body (``Content-Type: application/json``): ``{"body": b'{"sequence": "..."}'}`` (raw bytes
  when ``decode_input_request=false``, as the launcher's config sets it; an already decoded dict otherwise);
- a ``text/plain`` body: ``{"body": b"the sentence itself"}``;
- a form (``curl -d 'sequence=...'`` or ``--data-urlencode``, or a curl ``-d`` with no Content-Type):
  one part per field, ``{"sequence": b"...", "n_steps": b"20"}``;
- an instance of KServe's v1 envelope: the decoded JSON object itself, ``{"sequence": "...", "n_steps": 20}``
  (read as JSON when any value is not text, e.g. a number or a list; as form text otherwise).

:func:`parse_request` turns that into a :class:`Request` or raises :class:`RequestError` carrying the
HTTP status and a message that names the problem (and shows a working curl when nothing was sent).
Value ranges that depend on the model (target, method names...) are checked here too, so that the
engine's own ``ValueError`` is a second line of defence only.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field

from ..answer.keys import ENDPOINT_NAMES, HANDOFF_HEADER, HANDOFF_REQUEST, IDGI_NAMES
from ..engine.adaptive import AUTO
from .options import check_encoding, check_options
from .values import RequestError, fields_once, json_type, show

__all__ = ["RequestError", "Request", "parse_request", "check_options", "check_encoding", "fields_once", "lower_keys",
           "wants_json", "wants_handoff", "body_too_big", "usage_curl", "OPTION_FIELDS", "DEFAULT_OPTIONS",
           "DEFAULT_LIMITS"]

# The option fields a request may carry besides the sentence(s).
OPTION_FIELDS = ("target", "n_steps", "method", "baseline", "keep_special_tokens", "internal_batch_size", "precision",
                 "tolerance", "max_steps")   # the last two with n_steps "auto" only
TEXT_FIELDS = ("sequence", "sequences")
# How the answer is sent (not engine options): "dtype" of its float tensors, and which "outputs" it holds.
ENCODING_FIELDS = ("dtype", "outputs")
# A causal LM's own fields (intgrads.serving.lm_request); its "target" is text.
LM_FIELDS = ("messages", "contrast", "score", "interpolate", "max_new_tokens")
ALLOWED_FIELDS = TEXT_FIELDS + OPTION_FIELDS + ENCODING_FIELDS + LM_FIELDS
VISIBLE_CATEGORIES = "LMNPS"   # Unicode letters, marks, numbers, punctuation, symbols
EXAMPLE_SENTENCE = "This is the sequence that you want to get the sentiment of"

DEFAULT_OPTIONS = {"target": 1, "n_steps": 50, "method": "gausslegendre", "baseline": "zero",
                   "keep_special_tokens": False, "internal_batch_size": None, "precision": "float32"}
DEFAULT_LIMITS = {"max_steps": 500, "max_tokens": 512, "max_sequences": 16, "max_chars": 100_000,
                  "max_body_bytes": 1_048_576, "max_response_bytes": 1_073_741_824, "chunk_tokens": None,
                  "gzip_level": 0, "max_work": None}


@dataclass
class Request:
    sequences: list          # the sentences, in order
    single: bool             # "sequence" (one answer dict) rather than "sequences" (a list)
    options: dict            # target, n_steps, method, baseline, keep_special_tokens, internal_batch_size, precision
    #                          (+ tolerance and max_steps with n_steps "auto"; endpoints / idgi when outputs name them)
    want_json: bool = False  # JSON summary instead of the gzip answer
    given: list = field(default_factory=list)   # the option names the client set
    encoding: dict = field(default_factory=dict)  # {"dtype": "float32"|"float16", "outputs": list|None}
    handoff: bool = False    # the client asked for the answer as a file on this machine (X-Intgrads-Handoff)
    lengths: list = field(default_factory=list)   # each sentence's tokens as the engine runs it (set by the handler)


def body_too_big(limit: int) -> RequestError:
    """413 for a body over ``limit`` bytes (a front end that reads the body itself stops reading there)."""
    return RequestError(f"the request body is over {limit} bytes; this server takes at most {limit}", status=413)


def usage_curl(url: str = "http://127.0.0.1:8888/predictions/MODEL") -> str:
    return (f"curl {url} -H 'Content-Type: application/json' "
            f"-d '{{\"sequence\": \"{EXAMPLE_SENTENCE}\"}}' --output saved_file.gzip")


def lower_keys(headers) -> dict:
    """Request headers with lower-case names; TorchServe's per-part content types are dropped."""
    out = {}
    for key, value in (headers or {}).items():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str):
            out[str(key).lower()] = value
    return out


def request_url(headers: dict, model_name: str, explain: bool = False) -> str:
    host = headers.get("host") or "127.0.0.1:8888"
    route = "explanations" if explain else "predictions"
    return f"http://{host}/{route}/{model_name}"


# TorchServe hands a /predictions handler the body alone: not the method, not the URL's query string.
NO_QUERY = ("; a GET, or a sentence and options in the URL's query string (?sequence=...&n_steps=...), reach "
            "the model as an empty body: put them in the JSON body")
JSON_TYPES = ("application/json", "text/json")
GZIP_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream")


def _accepted(accept: str) -> list[tuple[float, int, str]]:
    """The media types of an Accept header with their q-values (RFC 9110, 12.5.1), best first; q=0 means "not
    this one". A q that is not a number counts as 1."""
    out = []
    for order, part in enumerate(item for item in accept.split(",") if item.strip()):
        kind, *params = [piece.strip() for piece in part.split(";")]
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(1.0, max(0.0, float(value)))
                except ValueError:
                    quality = 1.0
        out.append((-quality, order, kind.lower()))
    return sorted(out)


def wants_json(headers: dict, explain: bool) -> bool:
    """JSON when the route is /explanations, or when the client's Accept ranks JSON above gzip/octet-stream
    (q-values first, then the order given); gzip when it names neither or refuses JSON with q=0."""
    if explain:
        return True
    for negative_quality, _, kind in _accepted(headers.get("accept", "")):
        if negative_quality == 0:
            break
        if kind in JSON_TYPES:
            return True
        if kind in GZIP_TYPES:
            return False
    return False


def _decode_text(value, what: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(f"{what} is not valid UTF-8 (byte {error.start}): send text encoded as UTF-8") from None
    if isinstance(value, str):
        return value
    raise RequestError(f"{what} must be text; got {type(value).__name__}")


def _body_fields(parts: dict, headers: dict, url: str, sees_query: bool = False) -> tuple[dict, bool]:
    """The request's fields as a dict, and whether they came from a form (values are then text). ``sees_query``:
    the front end reads the query string (the hints then do not send options to the body)."""
    no_query = "" if sees_query else NO_QUERY
    body_key = next((key for key in ("body", "data") if key in parts), None)
    if body_key is None:
        if not parts:
            raise RequestError(
                "empty request: POST a JSON body with a \"sequence\" (and say it is JSON, or TorchServe reads "
                f"it as a form and it arrives empty){no_query}, e.g. {usage_curl(url)}", usage=usage_curl(url))
        if any(not isinstance(value, (bytes, bytearray, str)) for value in parts.values()):
            return dict(parts), False    # already decoded JSON (a KServe envelope's instance): typed values
        return dict(parts), True
    if len(parts) > 1:
        extra = sorted(key for key in parts if key != body_key)
        raise RequestError(f"send either a body or form fields, not both (got {', '.join(extra)} as well): options "
                           "go in the JSON body, next to \"sequence\", not in the URL's query string")
    value = parts[body_key]
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if isinstance(value, dict):          # TorchServe already decoded the JSON
        return value, False
    if isinstance(value, list):
        raise RequestError(f"the JSON body must be an object like {{\"sequence\": \"...\"}}; got a list")
    if content_type and not (content_type.startswith("text/") or content_type.endswith("json")
                             or content_type == "application/octet-stream"):
        raise RequestError(f"unsupported Content-Type {content_type!r}: send application/json "
                           f"(or text/plain with the sentence itself), e.g. {usage_curl(url)}", status=415)
    text = _decode_text(value, "the request body")
    stripped = text.strip()
    if not stripped:
        raise RequestError(f"empty request body: POST a sentence{no_query}, e.g. {usage_curl(url)}",
                           usage=usage_curl(url))
    plain_text = content_type.startswith("text/") and not content_type.endswith("json")
    looks_json = stripped[0] in "{[\"" or content_type.endswith("json")
    if plain_text and stripped[0] != "{":
        looks_json = False
    if not looks_json:
        return {"sequence": text}, False
    try:
        decoded = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        if plain_text:   # text/plain is the sentence, even one that starts with "{"
            return {"sequence": text}, False
        raise RequestError(f"the body is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                           f"e.g. {usage_curl(url)}", usage=usage_curl(url)) from None
    except (ValueError, RecursionError) as error:   # nested too deeply, or an integer literal too long for Python
        what = "nested too deeply" if isinstance(error, RecursionError) else str(error).split(";")[0]
        raise RequestError(f"the body is not valid JSON here ({what})") from None
    if not isinstance(decoded, dict):
        raise RequestError("the JSON body must be an object like {\"sequence\": \"...\"}; "
                           f"got {json_type(decoded)}")
    return decoded, False


def _no_duplicate_keys(pairs) -> dict:
    """json.loads' object hook."""
    return fields_once(pairs, "the JSON body")


def _form_value(name: str, value, causal: bool = False):
    """Form fields arrive as text: turn numbers and booleans into their types."""
    if causal and name in LM_FIELDS + ("target",) and name != "messages":
        from .lm_request import lm_form_value

        return lm_form_value(name, _decode_text(value, f"field {name!r}"))
    text = _decode_text(value, f"field {name!r}").strip()
    if name == "n_steps" and text.lower() == AUTO:
        return AUTO
    if name == "tolerance":
        try:
            return float(text)
        except ValueError:
            raise RequestError(f"tolerance must be a number between 0 and 1; got {text!r}") from None
    if name in ("n_steps", "internal_batch_size", "max_steps"):
        if name == "internal_batch_size" and text.lower() in ("", "null", "none"):
            return None
        try:
            return int(text)
        except ValueError:
            raise RequestError(f"{name} must be an integer; got {text!r}") from None
    if name == "target":
        if text.lower() == "predicted":
            return "predicted"
        try:
            return int(text)
        except ValueError:
            raise RequestError(f"target must be an integer or \"predicted\"; got {text!r}") from None
    if name == "keep_special_tokens":
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off", ""):
            return False
        raise RequestError(f"keep_special_tokens must be true or false; got {text!r}")
    if name == "outputs":   # a form sends "a,b" (or a JSON list)
        if text.startswith("["):
            try:
                return json.loads(text)
            except (ValueError, RecursionError):
                raise RequestError("outputs in a form must be a comma-separated list or a JSON list of strings") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if name in ("sequences", "messages"):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise RequestError(f"{name} in a form must be a JSON list") from None
    return _decode_text(value, f"field {name!r}")


def _check_text(fields: dict, limits: dict) -> tuple[list, bool]:
    present = [name for name in TEXT_FIELDS if name in fields]
    if not present:
        raise RequestError("no \"sequence\" in the request: send {\"sequence\": \"the sentence\"} "
                           "(or \"sequences\": [\"...\", \"...\"])")
    if len(present) == 2:
        raise RequestError("send either \"sequence\" or \"sequences\", not both")
    name = present[0]
    value = fields[name]
    if name == "sequence":
        if not isinstance(value, str):
            raise RequestError(f"sequence must be a string; got {json_type(value)}")
        items, single = [value], True
    else:
        if not isinstance(value, list):
            raise RequestError(f"sequences must be a list of strings; got {json_type(value)}")
        if not value:
            raise RequestError("sequences is an empty list: send at least one sentence")
        if len(value) > limits["max_sequences"]:
            raise RequestError(f"sequences has {len(value)} sentences; this server takes at most "
                               f"{limits['max_sequences']} per request", status=413)
        items, single = value, False
    for index, item in enumerate(items):
        where = "sequence" if single else f"sequences[{index}]"
        if not isinstance(item, str):
            raise RequestError(f"{where} must be a string; got {json_type(item)}")
        if "\x00" in item:
            raise RequestError(f"{where} contains a NUL character")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as error:   # a lone surrogate ("\ud800" in JSON): the tokenizer cannot read it
            raise RequestError(f"{where} is not valid Unicode text (an unpaired surrogate at character {error.start}): "
                               "send UTF-8 text") from None
        if not item.strip():
            raise RequestError(f"{where} is empty: send the sentence to attribute")
        if not any(unicodedata.category(ch)[0] in VISIBLE_CATEGORIES for ch in item):
            raise RequestError(f"{where} has no visible character (only control, format or zero-width ones): "
                               "send the sentence to attribute")
        if len(item) > limits["max_chars"]:
            raise RequestError(f"{where} has {len(item)} characters; this server takes at most "
                               f"{limits['max_chars']}", status=413)
    return list(items), single


def parse_request(parts, headers=None, *, model_name: str = "MODEL", num_labels: int = 2, defaults=None,
                  limits=None, explain: bool = False, query=None, causal: bool = False) -> Request:
    """Turn a front end's view of one request into a :class:`Request`, or raise :class:`RequestError`.

    ``query``: the URL's query string as (name, value) pairs, where the front end sees it (None: it does not, as
    TorchServe's /predictions route). Its fields join the body's: a field given twice in the query, or in the
    query and the body with two values, is a 400. ``causal``: the model is a causal LM
    (:mod:`intgrads.serving.lm_request`)."""
    headers = lower_keys(headers)
    defaults = {**DEFAULT_OPTIONS, **(defaults or {})}
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    url = request_url(headers, model_name, explain)
    if parts is None:
        parts = {}
    if not isinstance(parts, dict):
        raise RequestError("unreadable request")
    size = sum(len(value) for value in parts.values() if isinstance(value, (bytes, bytearray, str)))
    if size > limits["max_body_bytes"]:
        raise body_too_big(limits["max_body_bytes"])
    from_query = _query_fields(query, causal)
    if not parts and set(from_query) & set(TEXT_FIELDS):
        fields, from_form = {}, True
    else:
        fields, from_form = _body_fields(parts, headers, url, sees_query=query is not None)
    _check_known(fields, from_form, url, where="")
    if from_form:
        fields = {name: _form_value(name, value, causal) for name, value in fields.items()}
    fields = _join_query(fields, from_query)
    if causal:
        from .lm_request import parse_lm_fields

        sequence, options, encoding = parse_lm_fields(fields, defaults, limits)
        return Request(sequences=[sequence] if sequence is not None else [], single=True, options=options,
                       want_json=wants_json(headers, explain), given=[n for n in fields if n not in TEXT_FIELDS],
                       encoding=encoding, handoff=wants_handoff(headers))
    lm_only = [name for name in LM_FIELDS if name in fields]
    if lm_only:
        raise RequestError(f"{', '.join(lm_only)}: only for a causal LM, and this model is a classifier")
    sequences, single = _check_text(fields, limits)
    options = dict(defaults)
    given = [name for name in OPTION_FIELDS if name in fields]
    for name in given:
        options[name] = fields[name]
    check_options(options, num_labels=num_labels, limits=limits)
    encoding = check_encoding(fields)
    if set(encoding["outputs"] or ()) & set(ENDPOINT_NAMES):
        options["endpoints"] = True   # the engine then keeps x and b (layer_input, layer_baseline)
    if set(encoding["outputs"] or ()) & set(IDGI_NAMES):
        options["idgi"] = True        # the engine then computes IDGI
    return Request(encoding=encoding, sequences=sequences, single=single, options=options,
                   want_json=wants_json(headers, explain), given=given, handoff=wants_handoff(headers))


def _check_known(fields: dict, from_form: bool, url: str, where: str):
    unknown = sorted(str(name) for name in fields if name not in ALLOWED_FIELDS)
    if unknown:
        hint = ""
        if from_form and any(name.lstrip().startswith("{") for name in unknown):
            hint = (" (a JSON body sent without -H 'Content-Type: application/json' is read as a form: "
                    f"add that header, e.g. {usage_curl(url)})")
        shown = ", ".join(repr(name if len(name) <= 40 else name[:37] + "...") for name in unknown[:5])
        raise RequestError(f"unknown field(s) {shown}{where}; a request may carry {', '.join(ALLOWED_FIELDS)}{hint}")


def _query_fields(query, causal: bool = False) -> dict:
    """The query string's fields, typed as form fields are; a name given twice is a 400."""
    fields = fields_once(query or (), "the query string")
    _check_known(fields, False, "", where=" in the query string")
    return {name: _form_value(name, value, causal) for name, value in fields.items()}


def _join_query(fields: dict, from_query: dict) -> dict:
    """The body's fields with the query's; the same field with two values is a 400."""
    joined = dict(fields)
    for name, value in from_query.items():
        if name in joined and joined[name] != value:
            raise RequestError(f"{name} is {show(value)} in the query string and {show(joined[name])} in the body: "
                               "give it in one place")
        joined[name] = value
    return joined


def wants_handoff(headers: dict) -> bool:
    """``X-Intgrads-Handoff: file``: the answer as a file the server writes; any other value is refused (the
    server alone chooses where an answer goes)."""
    value = headers.get(HANDOFF_HEADER.lower())
    if value is None:
        return False
    if value.strip().lower() != HANDOFF_REQUEST:
        raise RequestError(f"{HANDOFF_HEADER} takes only \"{HANDOFF_REQUEST}\" (the server chooses where the answer "
                           "file goes); leave the header out to get the answer in the body")
    return True
