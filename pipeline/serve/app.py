"""The HTTP face of `seal-tt serve`: OpenAI's `/v1/chat/completions` (whole or streamed as server-sent events),
`/v1/models`, and `/health`, over one `Worker`.

The handlers never touch the model: they check the request, queue a job, and relay what the worker thread emits.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from pipeline.serve.protocol import (ApiError, Limits, chunk_body, completion_body, completion_id, model_entry,
                                     models_body, parse_chat, sse)
from pipeline.serve.worker import Job, QueueFull, Worker

MAX_BODY_BYTES = 4 << 20  # far above any prompt a context window holds; a bigger body is refused before parsing


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(resident, *, limits: Limits = Limits(), queue_size: int = 16, api_key: str | None = None) -> FastAPI:
    """The app over `resident` (a `pipeline.serve.resident.Resident`); its worker starts and stops with the app."""
    from contextlib import asynccontextmanager

    worker = Worker(resident, limits, queue_size)
    created = int(time.time())
    model_id = resident.model_id

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        # Runs after the server finished the requests in flight (uvicorn's graceful shutdown on SIGTERM).
        await asyncio.get_running_loop().run_in_executor(None, worker.close, 60.0)

    app = FastAPI(title="seal-tt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker

    _install_error_handlers(app)
    authorize = _authorizer(api_key)

    @app.get("/health")
    async def health():
        # Open without a key (for load balancers and supervisors): it says nothing about the store's contents.
        return {"status": "ok", "queued": worker.queued, "busy": worker.busy, "served": worker.served}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return models_body(model_id, created)

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        authorize(request)
        if name != model_id:
            raise ApiError(404, f"The model {name!r} does not exist here; this server serves {model_id!r}",
                           param="model", code="model_not_found")
        return model_entry(model_id, created)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorize(request)
        return await _chat(request, worker, resident, limits)

    return app


def _install_error_handlers(app) -> None:
    """Every error, ours or the framework's (404, 405), in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return _error(err)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return _error(ApiError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=kind))

    @app.exception_handler(Exception)
    async def any_error(request, err: Exception):
        return _error(ApiError(500, f"internal error: {type(err).__name__}", type="server_error", code="internal_error"))


def _authorizer(api_key: str | None):
    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided (send Authorization: Bearer <key>)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    return authorize


async def _chat(request: Request, worker: Worker, resident, limits: Limits):
    """Check, queue, relay: the worker's events become one response or an event stream."""
    model_id = resident.model_id
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is {len(raw)} bytes; at most {MAX_BODY_BYTES}", code="too_large")
    req = parse_chat(raw, model_id, limits)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job = Job(req, resident.committed(), lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
    try:
        worker.submit(job)
    except QueueFull as full:
        raise ApiError(503, f"the server is busy ({worker.queued} requests queued); retry in {full.retry_after} s",
                       type="server_error", code="queue_full",
                       headers={"Retry-After": str(full.retry_after)}) from None
    try:
        first = await events.get()
        if first[0] == "error":
            raise first[1]
        if req.stream:
            return StreamingResponse(_stream(first, events, job, model_id), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        while True:  # a whole answer: the worker sends no pieces, only its end (or an error)
            ev = await events.get()
            if ev[0] == "error":
                raise ev[1]
            if ev[0] == "end":
                a = ev[1]
                return completion_body(completion_id(), model_id, first[1], a.text, a.finish_reason,
                                       a.prompt_tokens, a.completion_tokens)
    except asyncio.CancelledError:
        job.cancelled.set()
        raise


async def _stream(first: tuple, events: asyncio.Queue, job: Job, model_id: str):
    """The answer as OpenAI streams it: a role chunk, content chunks, a finish chunk, [usage], `data: [DONE]`."""
    _, tag, _ = first
    cid = completion_id()
    try:
        yield sse(chunk_body(cid, model_id, tag, {"role": "assistant", "content": ""}))
        while True:
            ev = await events.get()
            if ev[0] == "delta":
                yield sse(chunk_body(cid, model_id, tag, {"content": ev[1]}))
            elif ev[0] == "error":
                yield sse(ev[1].body())
                break
            else:
                a = ev[1]
                yield sse(chunk_body(cid, model_id, tag, {}, a.finish_reason))
                if job.request.include_usage:
                    yield sse(chunk_body(cid, model_id, tag, None, usage=(a.prompt_tokens, a.completion_tokens)))
                break
        yield sse("[DONE]")
    finally:
        job.cancelled.set()  # a client that hung up stops the decoding; after the end it changes nothing


def listen(host: str = "127.0.0.1", port: int = 8000):
    """A listening socket, bound before the model loads: a port in use is said at once, and port 0 gets a free one
    that `serve` can name."""
    import socket

    from core.errors import UserError

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def serve(resident, sock, *, api_key: str | None = None, limits: Limits = Limits(), queue_size: int = 16,
          ready=print) -> None:
    """Serve on `sock` (from `listen`) until SIGTERM or SIGINT; then finish the requests in flight and return."""
    import socket
    import threading
    from contextlib import contextmanager

    import uvicorn

    app = create_app(resident, limits=limits, queue_size=queue_size, api_key=api_key)

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal once it has shut down, so a stopped service would die of SIGTERM (143);
            # a graceful stop is a normal end here: exit 0.
            import signal

            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=None,
                            lifespan="on")
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    ready(f"serving {resident.model_id!r} at http://{shown}:{bound[1]}/v1 (SIGTERM or Ctrl-C stops it)")
    Server(config).run(sockets=[sock])
