"""Simulated upstreams, one per provider family, on 127.0.0.1 for trials and tests.

``Simulator`` plays a new-api gateway (``openai-video``, and its task route for
``new-api-task``); service/simulator/ark.py, runway.py and replicate.py play those
providers' status routes. All share service/simulator/stage.py: the task clock, the
faults tests inject and the admin routes (``/_sim/tasks``, ``/_sim/faults``,
``/_sim/key``, ``/_sim/stats``). ``for_family`` makes the one a family needs.
"""

from __future__ import annotations

from service.simulator.clock import SimTask, TaskSpec
from service.simulator.gateway import Created, Profile, Simulator, byte_range, video_bytes
from service.simulator.stage import Faults, Stage

__all__ = [
    "FAMILIES",
    "Created",
    "Faults",
    "Profile",
    "SimTask",
    "Simulator",
    "Stage",
    "TaskSpec",
    "byte_range",
    "for_family",
    "video_bytes",
]

FAMILIES = ("openai-video", "new-api-task", "ark", "runway", "replicate")


def for_family(
    name: str,
    api_key: str | None = None,
    duration: float = 20.0,
    profile: Profile = "octopusx",
    refresh: float = 2.0,
    fail_rate: float = 0.0,
) -> Stage:
    """The simulator of a family: ``openai-video`` as ``profile`` says, ``new-api-task``
    as vanilla new-api (refreshing its tasks every ``refresh`` seconds), or a
    provider's own. Raises KeyError for a family that does not exist."""
    from service.simulator import ark, replicate, runway

    if name in ("openai-video", "new-api-task"):
        chosen: Profile = "new-api" if name == "new-api-task" else profile
        return Simulator(api_key, duration, fail_rate, chosen, refresh)
    providers: dict[str, type[Stage]] = {
        "ark": ark.Ark, "runway": runway.Runway, "replicate": replicate.Replicate,
    }  # fmt: skip
    return providers[name](api_key, duration)
