"""``faceage serve``: a web page where a person drops photos and sees every face boxed with its age and interval.

A FastAPI app (FastAPI and uvicorn come with MLflow) with one static page and no asset from elsewhere, so it
works offline. The page sends each photo's bytes to ``POST /api/photos``, which finds and predicts its faces as
``faceage predict`` does (:func:`~faceage.serving.photos.find_faces`, :meth:`AgeEstimator.results`) and answers
that command's JSON result for the photo. Photos are worked on one at a time; a body over ``max_upload`` bytes
is read but not kept, then refused, so a burst of requests queues instead of filling the memory.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from faceage.errors import FaceageError
from faceage.serving.loading import LoadedModel
from faceage.serving.photos import find_faces

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"


def create_app(model: LoadedModel, max_upload: int) -> FastAPI:
    """The page's app for ``model``; uploads larger than ``max_upload`` bytes are answered 413."""
    app = FastAPI(title="faceage", docs_url=None, redoc_url=None, openapi_url=None)
    one_at_a_time = asyncio.Semaphore(1)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/api/model")
    def describe() -> dict:
        return model.describe()

    @app.post("/api/photos")
    async def photo(request: Request, name: str = Query("photo", max_length=255), over: str = "") -> dict:
        threshold = parse_over(over)
        try:
            model.estimator.check_over(threshold)
        except FaceageError as error:
            raise HTTPException(400, str(error)) from None
        async with one_at_a_time:
            data = await read_body(request, max_upload)
            return await run_in_threadpool(predict_photo, model, name, data, threshold)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the server failed on this request ({type(error).__name__})"}, 500)

    return app


def parse_over(text: str) -> float | None:
    """The ``over`` query value as a number of years; empty is none, anything else not a number is a 400."""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise HTTPException(400, f"over: {text!r} is not an age") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; one over ``limit`` bytes is read to its end but not kept, then refused (413), so the
    client, still sending, reads the answer instead of a reset connection."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        else:
            chunks.clear()
    if size > limit:
        raise HTTPException(413, f"the file is over the page's limit of {limit // 2**20} MiB")
    return b"".join(chunks)


def predict_photo(model: LoadedModel, name: str, data: bytes, over: float | None) -> dict:
    """``faceage predict``'s JSON result for one photo: ``file`` and ``faces``, or ``error``."""
    estimator = model.estimator
    found = find_faces(name, data, estimator.chip_size, estimator.faces, landmarks=model.landmarks)
    return estimator.results([found], over=over)[0]


def serve(model: LoadedModel, host: str, port: int, max_upload: int) -> None:
    """Serve the page for ``model`` on ``host``:``port`` until interrupted."""
    import uvicorn

    print(f"faceage: the page for {model.name} is at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(model, max_upload), host=host, port=port, log_level="warning")
