"""Liveness, readiness and metrics."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service import circuits
from service.api.deps import RuntimeDep
from service.models import Event, Task

router = APIRouter(tags=["operations"])
tasks = Task.__table__  # type: ignore[attr-defined]
events = Event.__table__  # type: ignore[attr-defined]

_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "Not ready; the body names the reasons"}
}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", responses=_NOT_READY)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """200 when the database answers, the schema is at head, the workers run and every
    upstream answers their polls with its key; else 503 with the reasons (a refused key
    names its upstream). ``upstreams`` says, by name, what this process's polls see:
    ``state`` (``not_polled_yet``, ``ok``, ``failing``, ``unreachable``,
    ``key_refused``, or ``not_polled_by_this_process``) and ``last_success_at`` (Unix
    seconds of the last answered poll, or null); ``upstream`` is the default's."""
    reasons = list(runtime.problems())
    try:
        if not await runtime.db.at_head():
            reasons.append("database migrations are not at head")
    except Exception as exc:
        reasons.append(f"database unreachable: {type(exc).__name__}")
    # What the workers of this process see: when polls last got an answer, and whether
    # the upstream refuses the key or does not answer at all (both are also reasons).
    views = {name: runtime.upstream_view(name) for name in runtime.upstreams}
    seen = {"upstream": views["default"], "upstreams": views}
    if reasons:
        body = {
            "status": "not_ready",
            "reasons": reasons,
            **seen,
            "error": {"code": "not_ready", "message": "; ".join(reasons), "param": None},
        }
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "reasons": [], **seen})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text."""
    now = time.time()
    async with runtime.db.read(quick=False) as conn:  # counts scan: off the event loop
        by_state = (
            await conn.execute(
                sa.select(tasks.c.upstream, tasks.c.state, sa.func.count()).group_by(
                    tasks.c.upstream, tasks.c.state
                )
            )
        ).all()
        depth, oldest = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.min(events.c.created_at)).where(
                    events.c.state == "pending"
                )
            )
        ).one()
        tripped, tripped_since = await circuits.summary(conn)
    for upstream in runtime.upstreams:
        for state in ("watching", "idle", "ended", "given_up"):
            runtime.metrics.tasks.labels(upstream, state).set(0)
    for upstream, state, count in by_state:
        runtime.metrics.tasks.labels(upstream, state).set(count)
    runtime.metrics.outbox_depth.set(depth)
    runtime.metrics.oldest_pending.set(max(0.0, now - oldest) if oldest else 0.0)
    runtime.metrics.open_circuits.set(tripped)
    runtime.metrics.oldest_open_circuit.set(max(0.0, now - tripped_since) if tripped_since else 0.0)
    return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4")
