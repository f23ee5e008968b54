"""The API's own documentation, served by this middleware: ``/docs.json`` is BentoML's description amended with our
title, version and words, every error status the routes answer, the bearer scheme and example request bodies;
``/docs`` (and ``/``) is our page, rendered from it, with no third-party link, script or image (it works offline);
``/swagger`` is BentoML's interactive page (its files are local), without its tag manager."""

from __future__ import annotations

import html
import json
import re
from http import HTTPStatus
from importlib.metadata import version
from typing import Any, ClassVar

TITLE = "customer-lifecycle scoring API"
# What our routes answer besides 200 (401 too when a token is set)
DECLARED_ERRORS = (HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                   HTTPStatus.UNPROCESSABLE_ENTITY)
PAGES = ("/", "/docs", "/swagger", "/docs.json")
HISTORY_EXAMPLE = {
    "orders": [{"customer_id": "c-1001", "timestamp": "2025-03-02T10:15:00", "amount": 42.5, "order_id": "A-1"},
               {"customer_id": "c-1001", "timestamp": "2025-05-20T18:01:00", "amount": 19.9, "order_id": "A-2"},
               {"customer_id": "c-2002", "timestamp": "2025-06-11T09:30:00", "amount": 120.0, "order_id": "A-3"}],
    "events": [{"customer_id": "c-2002", "timestamp": "2025-06-20T12:00:00", "event_type": "email_open"}],
    "as_of": "2025-06-30",
}
OTHER_PATHS = (
    ("GET", "/livez", "the server is up"),
    ("GET", "/readyz", "the server answers requests (a model is loaded)"),
    ("GET", "/metrics", "Prometheus metrics (behind the token when one is set)"),
    ("GET", "/docs.json", "this API's OpenAPI description, with example bodies"),
    ("GET", "/swagger", "the interactive page (Swagger UI, served from this server)"),
)


class Served:
    """What the docs say of the model this worker serves (set by the service whenever it loads one)."""

    version: ClassVar[str | None] = None
    uri: ClassVar[str | None] = None
    example: ClassVar[dict[str, Any] | None] = None  # one feature record it was logged with


class PublicDocs:
    """ASGI middleware: the pages above for GET requests; everything else goes to BentoML untouched."""

    def __init__(self, app, routes: tuple[str, ...], secured: tuple[str, ...]):
        self.app, self.routes, self.secured = app, routes, secured

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in PAGES:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/swagger":
            status, body = await self._fetch(scope, receive, "/")
            body = _without_tag_manager(body)
            kind = b"text/html; charset=utf-8"
        else:
            status, body = await self._fetch(scope, receive, "/docs.json")
            if status == HTTPStatus.OK:
                spec = self.amended(json.loads(body))
                body, kind = (json.dumps(spec).encode(), b"application/json") if scope["path"] == "/docs.json" else (
                    page(spec, self.routes, bool(self.secured)), b"text/html; charset=utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _fetch(self, scope, receive, path: str) -> tuple[int, bytes]:
        """BentoML's answer to GET ``path``: its status and body."""
        start, chunks = {}, []

        async def keep(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app({**scope, "path": path, "raw_path": path.encode()}, receive, keep)
        return start.get("status", HTTPStatus.INTERNAL_SERVER_ERROR), b"".join(chunks)

    def amended(self, spec: dict) -> dict:
        """BentoML's description with ours: title, version, words, errors, the bearer scheme and examples."""
        spec["info"] = {"title": TITLE, "version": version("customer-lifecycle"),
                        "description": "Churn, next lifecycle stage and customer lifetime value per customer, from "
                                       "the registered champion model. The page at /docs says what each route does."}
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["Error"] = {"type": "object", "required": ["error"], "description": "Why the request was refused",
                            "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        examples = {"/score": {"customers": [Served.example]} if Served.example else None,
                    "/score_history": HISTORY_EXAMPLE}
        for path in self.routes:
            operation = spec["paths"][path]["post"]
            responses = operation["responses"]
            for status in DECLARED_ERRORS:
                responses[str(int(status))] = {"description": status.phrase, "content": error}
            if path in self.secured:
                operation["security"] = [{"bearer": []}]
                responses["401"] = {"description": "Missing or wrong bearer token", "content": error}
            if examples.get(path) is not None:
                operation["requestBody"]["content"]["application/json"]["example"] = examples[path]
        if self.secured:
            spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            spec["paths"]["/metrics"]["get"]["security"] = [{"bearer": []}]
        return spec


def page(spec: dict, routes: tuple[str, ...], secured: bool) -> bytes:
    """Our documentation page, from the amended description: what each route does, with an example."""
    auth = ' -H "Authorization: Bearer $TOKEN"' if secured else ""
    sections = []
    for path in routes:
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"].get("example", {})
        example = json.dumps(body, indent=2)
        if len(example) > 1200:  # a feature record: its first fields, then the rest elided
            example = example[:1200].rsplit("\n", 1)[0] + "\n    ...\n"
        sections.append(
            f"<section id='{path[1:]}'><h2><code>POST {path}</code></h2>"
            f"<p>{_paragraphs(operation.get('description', ''))}</p>"
            f"<h3>Example</h3><pre>curl -X POST http://HOST:PORT{path}{auth} -H 'content-type: application/json' "
            f"-d @body.json</pre><pre>{html.escape(example)}</pre></section>")
    others = "".join(f"<tr><td><code>{method} {path}</code></td><td>{html.escape(what)}</td></tr>"
                     for method, path, what in OTHER_PATHS)
    statuses = sorted({*DECLARED_ERRORS, *((HTTPStatus.UNAUTHORIZED,) if secured else ())})
    errors = "".join(f"<tr><td>{int(s)}</td><td>{s.phrase}</td></tr>" for s in statuses)
    info = spec["info"]
    model = html.escape(f"version {Served.version} ({Served.uri})" if Served.version else "not loaded yet")
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(info['title'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
pre{{background:#f4f4f4;padding:.6rem;overflow-x:auto}}table{{border-collapse:collapse}}
td{{border-bottom:1px solid #ddd;padding:.25rem .6rem}}nav a{{margin-right:1rem}}</style></head>
<body><h1>{html.escape(info['title'])}</h1>
<p>customer-lifecycle {html.escape(info['version'])} &middot; serving the model {model}</p>
<p>{html.escape(info['description'])}</p>
<nav>{''.join(f"<a href='#{p[1:]}'>{p}</a>" for p in routes)}<a href="#errors">errors</a>
<a href="/docs.json">/docs.json</a><a href="/swagger">/swagger</a></nav>
<p>Every route takes and answers JSON{'; each needs <code>Authorization: Bearer &lt;token&gt;</code>' if secured
                                       else ''}.</p>
{''.join(sections)}
<h2>Other paths</h2><table>{others}</table>
<h2 id="errors">Errors</h2><p>A refused request is answered <code>{{"error": "...", "detail": "..."}}</code> with the
reason, never a server error:</p><table>{errors}</table>
</body></html>
"""
    return text.encode()


def _paragraphs(text: str) -> str:
    return "</p><p>".join(html.escape(" ".join(part.split())) for part in text.split("\n\n") if part.strip())


def _without_tag_manager(page_html: bytes) -> bytes:
    """BentoML's Swagger page without the Google Tag Manager script and its noscript frame."""
    page_html = re.sub(rb"<script>(?:(?!</script>).)*googletagmanager(?:(?!</script>).)*</script>", b"", page_html,
                       flags=re.S)
    return re.sub(rb"<noscript>(?:(?!</noscript>).)*googletagmanager(?:(?!</noscript>).)*</noscript>", b"",
                  page_html, flags=re.S)
