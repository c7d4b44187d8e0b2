"""Calls from the web pages into the service's own HTTP API, in process.

The web layer holds no second copy of the API's rules (who may do what, what a valid upload or
job is, what is left of a budget): each page asks the API with the signed-in user's session
token and shows what it answers. The call goes through the ASGI interface of the same app, so
request bodies (uploads) and response bodies (server-sent events, downloads) stream through
without being held in memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]


@dataclass
class Answer:
    """Status, headers and (for a buffered call) the body of an API answer."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = field(default=None, repr=False)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def detail(self) -> str:
        """The API's error message as one readable string."""
        try:
            d = self.json()
        except ValueError:
            return self.body.decode(errors="replace")
        d = d.get("detail", d) if isinstance(d, dict) else d
        if isinstance(d, dict) and "message" in d:
            return str(d["message"])
        if isinstance(d, list):  # pydantic validation errors
            parts = []
            for e in d:
                loc = [str(x) for x in e.get("loc", []) if x not in ("body", "spec")]
                # a discriminated union puts the task name in the location: drop it
                loc = [x for x in loc if "." not in x or x.startswith("resources")]
                parts.append(f"{'.'.join(loc) or 'form'}: {e.get('msg', e)}")
            return "; ".join(parts)
        return str(d)


def path(*parts: str | int) -> str:
    """An API path with every part percent-encoded (names cannot smuggle '/' or '?')."""
    return "/" + "/".join(quote(str(p), safe="") for p in parts)


async def call(
    app: ASGIApp,
    method: str,
    url_path: str,
    *,
    token: str | None,
    client: tuple[str, int],
    query: dict[str, Any] | None = None,
    json_body: Any = None,
    body: AsyncIterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    stream: bool = False,
) -> Answer:
    """Send one request to ``app`` and return its answer.

    ``body`` streams a request body chunk by chunk; ``stream=True`` returns as soon as the
    response starts, with ``Answer.stream`` yielding its body.
    """
    raw_headers = [(b"host", b"lifelm-web")]
    if token:
        raw_headers.append((b"authorization", f"Bearer {token}".encode()))
    payload = b""
    if json_body is not None:
        payload = json.dumps(json_body).encode()
        raw_headers.append((b"content-type", b"application/json"))
        raw_headers.append((b"content-length", str(len(payload)).encode()))
    for k, v in (headers or {}).items():
        raw_headers.append((k.lower().encode(), v.encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": url_path,
        "raw_path": url_path.encode(),
        "root_path": "",
        "query_string": urlencode(query or {}, doseq=True).encode(),
        "headers": raw_headers,
        "client": client,
        "server": ("lifelm-web", 80),
    }
    finished = asyncio.Event()
    body_done = False

    async def receive() -> Message:
        nonlocal body_done
        if not body_done:
            if body is None:
                body_done = True
                return {"type": "http.request", "body": payload, "more_body": False}
            try:
                chunk = await body.__anext__()
                return {"type": "http.request", "body": chunk, "more_body": True}
            except StopAsyncIteration:
                body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # after the body: the "client" leaves when we stop reading
        return {"type": "http.disconnect"}

    queue: asyncio.Queue[Message | None] = asyncio.Queue()

    async def send(message: Message) -> None:
        await queue.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await queue.put(None)

    task = asyncio.ensure_future(run())
    start = await queue.get()
    if start is None or start["type"] != "http.response.start":
        finished.set()
        await task  # re-raises what the app raised
        raise RuntimeError("the API sent no response")
    status = int(start["status"])
    hdrs = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                msg = await queue.get()
                if msg is None:
                    return
                if msg["type"] == "http.response.body":
                    if msg.get("body"):
                        yield msg["body"]
                    if not msg.get("more_body", False):
                        return
        finally:
            finished.set()
            if not task.done():
                task.cancel()

    if stream:
        return Answer(status, hdrs, stream=chunks())
    data = b"".join([c async for c in chunks()])
    return Answer(status, hdrs, body=data)
