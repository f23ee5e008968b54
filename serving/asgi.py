"""What the scoring API adds around BentoML: ASGI middlewares, a log filter and a patch of BentoML's metrics,
installed on the service by one explicit step (``install``) when the service module loads.

Every 4xx and 5xx body is ``{"error": ..., "detail": ...}``; a body too large or not JSON is refused before it
is parsed; the API documents itself (``serving.api_docs``); the metrics count only known paths; a client's mistake
is one log line, not a traceback, and no client text can forge one.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from pathlib import Path

import bentoml
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from serving.api_docs import PAGES, PublicDocs
from serving.records import MAX_TEXT
from serving.settings import ServingSettings

UNKNOWN_PATH = "/unknown"  # what the metrics call every path that is not a route


def install(service, settings: ServingSettings) -> None:
    """Install everything above on ``service`` (a ``bentoml.service`` class), once: JSON answers, the metrics'
    known paths, the one-line client errors, and the middlewares (error bodies, request limits, the published
    docs, the bearer token when ``settings.api_token`` is set)."""
    routes = tuple(api.route for api in service.apis.values())
    for api in service.apis.values():  # every answer is JSON: saves BentoML a JSON schema per response
        api.output_spec.media_type = "application/json"
    _count_known_paths_only(routes)
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsInOneLine())
    service.add_asgi_middleware(ErrorBodies)
    service.add_asgi_middleware(RequestLimits, max_bytes=settings.max_body_bytes)
    secured = (*routes, "/metrics") if settings.api_token is not None else ()
    service.add_asgi_middleware(PublicDocs, routes=routes, secured=secured)
    if settings.api_token is not None:
        service.add_asgi_middleware(BearerToken, token=settings.api_token.get_secret_value(), routes=secured)


class BearerToken:
    """ASGI middleware: the API's routes and the metrics need ``Authorization: Bearer <token>`` (not health)."""

    def __init__(self, app, token: str, routes: tuple[str, ...]):
        self.app, self.expected, self.routes = app, f"Bearer {token}".encode(), routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] in self.routes and \
                dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": HTTPStatus.UNAUTHORIZED,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": json.dumps({"error": "missing or wrong bearer token"
                                                                         }).encode()})
            return
        await self.app(scope, receive, send)


class RequestLimits:
    """ASGI middleware in front of every route: a body over ``max_bytes`` is a 413 before any of it is parsed
    (by its Content-Length, or counted as it streams in), and a POST body that is not JSON a 415 (a multipart
    body without a boundary was a 500 inside the framework)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            await _refuse(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {self.max_bytes} bytes")
            return
        kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if scope["method"] == "POST" and kind not in (b"application/json", b""):
            await _refuse(send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the request body as application/json")
            return
        seen, refused = 0, False

        async def counted():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not refused:
                    refused = True
                    await _refuse(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  f"request body over {self.max_bytes} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)


async def _refuse(send, status: HTTPStatus, reason: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"error": reason}).encode()})


class ErrorBodies:
    """ASGI middleware: every 4xx and 5xx body is ``{"error": text}`` (plus ``"detail"``: text), as /docs.json
    declares. BentoML answers a refused request with a one-element list, a validation error with a list of
    objects as its detail, and an unknown path with plain text."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, chunks = {}, []

        async def rewritten(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start.update(message)
            elif not start:
                await send(message)
            else:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    body = json.dumps(_error_body(b"".join(chunks))).encode()
                    headers = [(k, v) for k, v in start.get("headers", [])
                               if k.lower() not in (b"content-length", b"content-type")]
                    await send({**start, "headers": [*headers, (b"content-type", b"application/json"),
                                                     (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewritten)


def _error_body(raw: bytes) -> dict[str, str]:
    try:
        found = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace")[:MAX_TEXT]}
    if isinstance(found, list) and len(found) == 1:
        found = found[0]
    if not isinstance(found, dict):
        return {"error": str(found)[:MAX_TEXT]}
    body = {"error": str(found.get("error", ""))}
    detail = found.get("detail")
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" if isinstance(e, dict)
                           else str(e) for e in detail[:5])
    if detail:
        body["detail"] = str(detail)
    return body


class ClientErrorsInOneLine(logging.Filter):
    """BentoML logs every failed request at ERROR with its traceback; a client's mistake (a 4xx) becomes one
    WARNING line with the status and the reason. Client text (the path, the reason) is only ever an argument of
    the line, never its format, cut to ``MAX_TEXT`` characters with control characters escaped: no text a client
    sends can break the line or forge another (a 5xx keeps its trace)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(record.args, tuple):
            record.args = tuple(_printable(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(error, ClientDisconnect):  # the client left, or RequestLimits cut off its body (a 413)
            status, reason = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body refused while it streamed in, or client gone"
        elif isinstance(error, ValidationError):
            status, reason = HTTPStatus.BAD_REQUEST, "; ".join(e["msg"] for e in error.errors()[:3])
        elif isinstance(error, bentoml.exceptions.BentoMLException) and error.error_code < 500:
            status, reason = error.error_code, str(error)
        else:
            return True
        record.msg, record.args = "client error on %s [%s]: %d %s", (*record.args, int(status), _printable(reason))
        record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        return True


def _printable(text: str) -> str:
    """``text`` cut to ``MAX_TEXT`` characters, its control characters (newlines included) written as escapes."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda found: f"\\x{ord(found.group()):02x}", text[:MAX_TEXT])


def _count_known_paths_only(routes: tuple[str, ...]) -> None:
    """BentoML labels its request metrics with the raw path, so every path a client invents became a series
    (memory and /metrics grew without bound: 12 MB in a 10-minute soak). Its metrics middleware runs before
    any of ours and offers no hook, so its entry point is wrapped: a path that is none of the server's routes
    or static files is counted, and routed, as ``UNKNOWN_PATH`` (a 404 either way)."""
    from bentoml._internal import server as internal_server
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    static = Path(internal_server.__file__).parent / "static_content"
    known = {*routes, *PAGES, "/metrics", "/healthz",
             "/livez", "/readyz", *(f"/static_content/{f.relative_to(static)}" for f in static.rglob("*"))}
    count = RunnerTrafficMetricsMiddleware.__call__

    async def known_paths_only(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in known:
            scope = {**scope, "path": UNKNOWN_PATH, "raw_path": UNKNOWN_PATH.encode()}
        await count(self, scope, receive, send)

    RunnerTrafficMetricsMiddleware.__call__ = known_paths_only
