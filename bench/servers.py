"""The reference servers the benchmarks measure against, each as small as it can be.

python -m bench.servers bare --port P       FastAPI: the same JSON, no status-proxy work
python -m bench.servers upstream --port P   aiohttp: a video upstream that answers at once
python -m bench.servers receiver --port P   aiohttp: a webhook receiver that counts
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from aiohttp import web
from fastapi import FastAPI, Response

from service.models import RegistrationCreate

VIDEO = {
    "id": "video_bench",
    "object": "video",
    "model": "doubao-seedance-1-0-pro",
    "status": "in_progress",
    "progress": 42,
    "created_at": 1795870000,
    "seconds": "5",
    "size": "1280x720",
}


def bare_app() -> FastAPI:
    """What a route costs with nothing behind it: same JSON in, same JSON out."""
    app = FastAPI()
    body = json.dumps(VIDEO).encode()

    @app.get("/v1/videos/{task_id}")
    async def video(task_id: str) -> Response:
        return Response(body, media_type="application/json")

    @app.post("/v1/registrations", status_code=201)
    async def register(registration: RegistrationCreate) -> dict[str, Any]:
        return {"object": "registration", **registration.model_dump()}

    return app


def upstream_app(status: str) -> web.Application:
    """Every task is in progress (or done, with ``status``), answered from memory."""
    app = web.Application()
    started = time.time()

    served = 0
    due: list[tuple[float, int]] = []  # (when, n) of each poll of a task video_due_{n}

    async def video(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        task_id = request.match_info["task_id"]
        if task_id.startswith("video_due_"):
            due.append((time.time(), int(task_id.removeprefix("video_due_"))))
        answer = {**VIDEO, "id": task_id, "status": status}
        if task_id.startswith("video_end_"):  # done once the time in its name has passed
            done = time.time() * 1000 >= int(task_id.removeprefix("video_end_").split("_")[0])
            answer["status"] = "completed" if done else "in_progress"
        if answer["status"] == "completed":
            answer["video_url"] = f"https://cdn.example/{task_id}.mp4"
        return web.json_response(answer)

    async def count(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"count": served, "since": started, "due": due[since:]})

    app.router.add_get("/v1/videos/{task_id}", video)
    app.router.add_get("/count", count)
    return app


def receiver_app() -> web.Application:
    """Takes every webhook with a 200; GET /count says how many, and when each came."""
    app = web.Application()
    arrivals: list[tuple[float, str]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrivals.append((time.time(), json.loads(body)["data"].get("id", "")))
        return web.Response(status=200)

    async def count(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"count": len(arrivals), "arrivals": arrivals[since:]})

    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bare", "upstream", "receiver"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", default="in_progress")
    args = parser.parse_args()
    if args.kind == "bare":
        import uvicorn

        uvicorn.run(bare_app(), host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False)  # fmt: skip
    elif args.kind == "upstream":
        web.run_app(upstream_app(args.status), host="127.0.0.1", port=args.port, print=None,
                    access_log=None)  # fmt: skip
    else:
        web.run_app(receiver_app(), host="127.0.0.1", port=args.port, print=None,
                    access_log=None)  # fmt: skip


if __name__ == "__main__":
    main()
