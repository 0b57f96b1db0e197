"""The FastAPI application: routes, validation messages, status codes.

Every error answers ``{"error": "<one line naming the culprit>"}``: 401 without the bearer token
(when one is set), 408 for a body too slow to arrive, 413 for an oversized body or too many
inputs, 422 for a malformed body, 400 for inputs the engine refuses (an image over the pixel
limit, a broken image) and for image paths it may not read, 503 when the queue is full, 504 on
timeout. An image path that is missing, unreadable, not a regular file or outside the image root
gets the same 400 and the same words, so answers never tell which files exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modmerge.errors import ModmergeError
from modmerge.regular_files import open_regular
from modmerge.serve.batcher import Batcher, Failed, QueueFull, ShuttingDown
from modmerge.serve.limits import BearerAuth, BodyLimit
from modmerge.serve.protocol import Engine, config_id, engine_tasks
from modmerge.serve.schema import (
    ConfigsResponse,
    ErrorBody,
    Health,
    PredictRequest,
    PredictResponse,
    Stats,
)
from modmerge.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "The engine refused an input (an image over max_image_pixels, a broken image), "
              "or an image path this server may not read."),
        (401, "No bearer token, or a wrong one (when the server has a token)."),
        (408, "The body did not arrive within body_timeout_s."),
        (413, "Body over max_body_bytes, or more inputs than max_inputs."),
        (422, "Malformed body: unknown or missing field, unknown task."),
        (503, "The request queue is full, or the service is shutting down."),
        (504, "No answer within request_timeout_s."),
    )
}


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """The service for ``engine``, ready for uvicorn.

    Example::

        >>> import uvicorn                                                    # doctest: +SKIP
        >>> app = create_app(ReuseEngine(Library.open("lib"), budget=0.5), ServeSettings())  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                     # doctest: +SKIP
    """
    tasks = engine_tasks(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modmerge-engine")
        batcher = Batcher(engine, executor, queue_size=settings.queue_size,
                          window_s=settings.batch_window_ms / 1000, max_batch=settings.max_batch)
        batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="modmerge reuse service",
        summary="MERGE on-demand reuse: route inputs to expert chains of a merged module library.",
        version="1",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_line(exc.errors()), "detail": _plain(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS)
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        """Route every input to its task's expert chain and answer its label, in input order."""
        if len(body.inputs) > settings.max_inputs:
            raise HTTPException(413, f"inputs: {len(body.inputs)} inputs, over the limit of {settings.max_inputs} per request (max_inputs)")
        if body.task is not None and tasks is not None and body.task not in tasks:
            raise HTTPException(422, f"task: unknown task {body.task!r} (tasks: {', '.join(tasks)})")
        inputs = [x.as_engine_input() for x in body.inputs]
        for i, item in enumerate(body.inputs):
            if item.image is not None:
                inputs[i] = {"image": readable_image_path(i, item.image, settings)}
        batcher: Batcher = request.app.state.batcher
        try:
            future = batcher.submit(inputs, body.task)
        except QueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from None
        try:
            answer = await asyncio.wait_for(future, settings.request_timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"no answer within {settings.request_timeout_s:g} s (request_timeout_s)") from None
        if isinstance(answer, Failed):
            raise _refusal(answer.error)
        return PredictResponse(config=config_id(engine), outputs=answer)  # type: ignore[arg-type]

    @app.get("/healthz", response_model=Health)
    async def healthz(request: Request) -> Health:
        """Liveness, the selected configuration and how many requests wait."""
        return Health(status="ok", config=config_id(engine), queue_depth=request.app.state.batcher.depth,
                      queue_size=settings.queue_size)

    @app.get("/v1/configs", response_model=ConfigsResponse)
    async def configs() -> ConfigsResponse:
        """The library's configurations (storage cost, performance) and the one being served."""
        selected = config_id(engine)
        rows = [{**c, "selected": c.get("id") == selected} for c in engine.configs()]
        return ConfigsResponse(selected=selected, configurations=rows)

    @app.get("/v1/stats", response_model=Stats)
    async def stats(request: Request) -> Stats:
        """Batching counters: requests, inputs, batches (engine calls) and their sizes."""
        return request.app.state.batcher.snapshot()

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.token is not None:  # added last, so it runs first: no body is read for a stranger
        app.add_middleware(BearerAuth, token=settings.token.get_secret_value(), open_paths=("/healthz",))
    return app


def _refusal(err: Exception) -> HTTPException:
    if isinstance(err, ShuttingDown):
        return HTTPException(503, str(err))
    if isinstance(err, ModmergeError):
        return HTTPException(400, str(err))
    return HTTPException(500, f"engine failed: {type(err).__name__}: {err}")


def readable_image_path(index: int, path: str, settings: ServeSettings) -> str:
    """The resolved path of image input ``index`` if this server may read it, else HTTPException 400.

    Missing, unreadable, special (FIFO, device) and outside-the-root files all get the same
    answer, word for word, so a client cannot map which files exist.

    >>> readable_image_path(0, "/etc/shadow", ServeSettings(image_root=Path("/srv/images")))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    starlette.exceptions.HTTPException: 400: inputs.0.image: no readable image file '/etc/shadow' under the image root
    """
    where = f"inputs.{index}.image"
    if not settings.accepts_image_paths:
        raise HTTPException(400, f"{where}: this server reads no image paths (it allows remote clients and has no "
                                 "--image-root); upload the file's bytes as image_b64")
    root = settings.image_root
    refusal = HTTPException(400, f"{where}: no readable image file {path!r}{' under the image root' if root else ''}")
    try:
        resolved = Path(os.path.realpath(Path(path).expanduser()))
        open_regular(resolved, root=None if root is None else root.expanduser()).close()
    except (OSError, ValueError):  # missing, unreadable, special, outside the root, NUL in the name: one answer
        raise refusal from None
    return str(resolved)


def _validation_line(errors: Any) -> str:
    """The first validation error as one line: ``inputs.0.txt: Extra inputs are not permitted``."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{'.'.join(loc) or 'body'}: {msg}{more}"


def _plain(errors: Any) -> list[dict[str, Any]]:
    # pydantic puts exception objects in ``ctx``; JSON needs plain values
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type")} for e in errors]
