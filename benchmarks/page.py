"""Response time of ``faceage serve``'s page API for one photo, against the same work called in-process
(:func:`~faceage.serving.page.predict_photo`, what the request runs) in the same run: the ratio is what
serving over HTTP costs. Prints one JSON line with the CPU class.

Usage: python -m benchmarks.page [--model models/model.pt] [--photo tests/data/astronaut.jpg] [--repeats 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from faceage.data.sources import MAX_FILE_BYTES
from faceage.runtime import cpu_features
from faceage.serving.loading import load_any
from faceage.serving.page import create_app, predict_photo
from faceage.stage import pipeline_paths

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def served_in_thread(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn in a thread of this process on a free loopback port: its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the page's server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``call`` in milliseconds, after one untimed warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(pipeline_paths()["model"]))
    parser.add_argument("--photo", type=Path, default=REPO / "tests" / "data" / "astronaut.jpg")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    model, data = load_any(args.model), args.photo.read_bytes()
    with served_in_thread(create_app(model, MAX_FILE_BYTES)) as base:
        url = f"{base}api/photos?name={args.photo.name}&over=18"

        def request() -> None:
            with urllib.request.urlopen(urllib.request.Request(url, data, method="POST"), timeout=60) as response:
                response.read()

        served = median_ms(request, args.repeats)
    direct = median_ms(lambda: predict_photo(model, args.photo.name, data, 18.0), args.repeats)
    features = cpu_features()
    print(
        json.dumps(
            {
                "photo": args.photo.name,
                "model": args.model,
                "page_ms": served,
                "in_process_ms": direct,
                "ratio": round(served / direct, 2),
                "cpu_class": f"{features['capability']}, native bf16: {features['native_bf16']}",
                "threads": features["threads"],
            }
        )
    )


if __name__ == "__main__":
    main()
