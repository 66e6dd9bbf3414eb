"""`create_app(predictor, settings)`: a `Predictor` as an HTTP service (FastAPI).

POST /predict   {"texts": [...]} or {"rows": [{column: text}]} -> predictions in input order
GET  /health    200 once the model is loaded
GET  /info      the model card: task, labels or targets, backbone, engine, version, cv score, fidelity figures
GET  /metrics   Prometheus text: requests by status, latency and batch-size histograms, queue depth
GET  /          the playground page; /docs the OpenAPI page

Every refusal is JSON `{"error": "..."}` naming what to change: 401 (TEXTTUNE_API_KEY set, no matching Bearer
token), 413 (body, texts per request, characters per text), 422 (malformed JSON, wrong types), 429 with Retry-After
(the queue is full), 503 (the request's deadline passed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, StrictStr, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from texttune.errors import TexttuneError, first_line
from texttune.predictor import Predictor
from texttune.serving.batcher import MicroBatcher, Overloaded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and behaviour of the service.

    Args:
        max_body_bytes: request bodies larger than this get 413.
        max_texts: texts (or rows) per request; more get 413.
        max_chars: characters per text; longer texts get 413, or are cut to this length with `truncate`.
        truncate: cut long texts instead of refusing them (the model truncates to its max_length anyway).
        max_queued_texts: texts waiting for the model; past this, 429 with Retry-After.
        deadline_seconds: a request not answered by then gets 503 (and its texts are dropped from the queue).
        api_key: when set, every request but /health and the page needs `Authorization: Bearer <api_key>`.
    """

    max_body_bytes: int = 1_000_000
    max_texts: int = 64
    max_chars: int = 20_000
    truncate: bool = False
    max_queued_texts: int = 256
    deadline_seconds: float = 10.0
    api_key: str | None = None

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_texts, self.max_chars, self.max_queued_texts) < 1:
            raise TexttuneError("the server's limits must be positive integers")
        if self.max_texts > self.max_queued_texts:
            raise TexttuneError(
                f"a request may hold {self.max_texts} texts but the queue only {self.max_queued_texts}; "
                "raise the queue (--queue) or lower --max-texts"
            )
        if not self.deadline_seconds > 0:
            raise TexttuneError(f"the deadline must be a positive number of seconds, got {self.deadline_seconds}")

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "api_key"} | {"auth": self.api_key is not None}


class PredictRequest(BaseModel):
    """Texts, or rows holding the model's text columns (joined as in training); one of the two."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = None
    rows: list[dict[str, Any]] | None = None  # the text columns are checked to be strings; others are ignored

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.texts is None) == (self.rows is None):
            raise ValueError('give either "texts" (a list of strings) or "rows" (a list of objects), not both')
        return self


class _Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "texttune_requests", "HTTP requests by path and status", ["path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "texttune_request_seconds", "latency of /predict", registry=self.registry,
            buckets=(0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch = Histogram(
            "texttune_batch_texts", "texts per model run", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )  # fmt: skip
        self.queue = Gauge("texttune_queue_texts", "texts waiting for the model", registry=self.registry)


_KNOWN_PATHS = {"/predict", "/health", "/info", "/metrics", "/", "/docs", "/openapi.json"}


_OPEN_PATHS = {"/health", "/", "/docs", "/openapi.json"}  # the page asks for the key; the docs show only the schema


class _Edge:
    """ASGI middleware around the app: the API key first (before any body is read), then a body over `limit`
    bytes refused (by its Content-Length, or as it streams in); responses counted by path and status. Plain ASGI,
    so a client's disconnect still reaches the route."""

    def __init__(self, app: Any, limit: int, metrics: _Metrics, api_key: str | None) -> None:
        self.app, self.limit, self.metrics, self.api_key = app, limit, metrics, api_key

    def _authorized(self, scope: dict) -> bool:
        if self.api_key is None or scope["path"] in _OPEN_PATHS:
            return True
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token, self.api_key.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
        message = f"the request body is over {self.limit} bytes; send fewer or shorter texts per request"

        async def counted_send(event: dict) -> None:
            if event["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(event["status"])).inc()
            await send(event)

        if not self._authorized(scope):
            refusal = JSONResponse(
                {"error": "send the API key as 'Authorization: Bearer <key>'"}, 401, {"WWW-Authenticate": "Bearer"}
            )
            return await refusal(scope, receive, counted_send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"error": message}, 413)(scope, receive, counted_send)
        chunks, size, more = [], 0, True
        while more:  # read the body here (it is small), counting as it streams in
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            chunks.append(event.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await JSONResponse({"error": message}, 413)(scope, receive, counted_send)
            more = event.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replayed() -> dict:
            nonlocal body
            if body is None:
                return await receive()  # after the body: the disconnect, when the client leaves
            event, body = body, None
            return event

        await self.app(scope, replayed, counted_send)


def create_app(predictor: Predictor | Callable[[], Predictor], settings: ServeSettings | None = None) -> FastAPI:
    """The service for a loaded `Predictor`, or for a function that loads one when the server starts.

    Example:
        >>> app = create_app(lambda: Predictor.load("texttune-runs/model"), ServeSettings(max_texts=16))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    settings = settings or ServeSettings()
    metrics = _Metrics()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = predictor if isinstance(predictor, Predictor) else await asyncio.to_thread(predictor)
        batcher = MicroBatcher(
            model.outputs_of,
            model.tokens,
            model.max_tokens,
            settings.max_queued_texts,
            observe_batch=metrics.batch.observe,
        )
        await asyncio.to_thread(model.predict_outputs, ["warm up"])  # the first request pays no set-up
        batcher.start()
        state.update(predictor=model, batcher=batcher)
        yield
        await batcher.stop()

    app = FastAPI(title="texttune", summary="predictions of a fine-tuned text model", lifespan=lifespan)

    @app.exception_handler(_Refusal)
    async def refused(request: Request, exc: _Refusal) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
            problems.append(f"{where}: {error['msg']}")
        return JSONResponse({"error": "; ".join(problems)}, 422)

    def texts_of(body: PredictRequest, model: Predictor) -> list[str]:
        count = len(body.texts if body.texts is not None else body.rows)
        if count > settings.max_texts:
            raise _Refusal(413, f"{count} texts in one request; send at most {settings.max_texts} per request")
        if body.texts is not None:
            texts, field = body.texts, "texts"
            for index, text in enumerate(texts):
                if not text.strip():
                    raise _Refusal(422, f"texts.{index}: an empty text; send text to predict")
        else:
            columns = model.pipeline.text_columns
            for index, row in enumerate(body.rows):
                for column in columns:
                    value = row.get(column)
                    if not isinstance(value, str):
                        wrong = "no" if value is None else f"a {type(value).__name__} as"
                        raise _Refusal(422, f"rows.{index}: {wrong} '{column}'; each row needs the text columns "
                                            f"{list(columns)} as strings")  # fmt: skip
                    if not value.strip():
                        raise _Refusal(422, f"rows.{index}.{column}: an empty text; send text to predict")
            texts = model.pipeline.join({column: [row[column] for row in body.rows] for column in columns})
            field = "rows"
        for index, text in enumerate(texts):
            if len(text) > settings.max_chars and not settings.truncate:
                raise _Refusal(
                    413, f"{field}.{index}: {len(text)} characters, over the limit of {settings.max_chars}; shorten it"
                )
        return [text[: settings.max_chars] for text in texts]

    @app.post("/predict")
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        """Predictions in input order: label, index and probabilities per class, or scores per target."""
        started = time.perf_counter()
        model: Predictor = state["predictor"]
        texts = texts_of(body, model)
        if not texts:
            return {"predictions": []}
        features = await asyncio.to_thread(model.encode, texts)
        try:
            future = state["batcher"].submit(features)
        except Overloaded as exc:
            raise _Refusal(429, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except RuntimeError:
            raise _Refusal(
                503, "the server is stopping or its model worker has stopped", {"Retry-After": "1"}
            ) from None
        metrics.queue.set(state["batcher"].queued_texts)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait(
                {future, gone}, timeout=settings.deadline_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
        if future not in done:
            future.cancel()  # dropped from the queue, or its result discarded
            if gone in done:
                return Response(status_code=499)  # nobody is listening; the status is for the logs and metrics
            raise _Refusal(503, f"no answer within {settings.deadline_seconds:g} s; the server is busy, retry later")
        if future.cancelled():  # the server is stopping
            raise _Refusal(503, "the server is shutting down; retry in a moment", {"Retry-After": "1"})
        if future.exception() is not None:  # the model failed on this run: said in one line, logged in full
            logger.error("the model failed on a batch", exc_info=future.exception())
            raise _Refusal(500, f"the model failed on this request ({first_line(future.exception())})")
        records = model.records(future.result())
        metrics.latency.observe(time.perf_counter() - started)
        return {"predictions": records}

    @app.get("/health")
    async def health() -> dict[str, str]:
        if "batcher" not in state or not state["batcher"].alive:
            raise _Refusal(503, "the model is loading, or its worker has stopped")
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The model card."""
        return {**state["predictor"].card(), "limits": settings.public()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        if "batcher" in state:
            metrics.queue.set(state["batcher"].queued_texts)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("texttune.serving").joinpath("playground.html").read_text()
    page = page.replace("__AUTH__", json.dumps(settings.api_key is not None))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_middleware(_Edge, limit=settings.max_body_bytes, metrics=metrics, api_key=settings.api_key)
    return app


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
