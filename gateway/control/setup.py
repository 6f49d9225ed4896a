"""Which control plane a worker runs, from the settings and its place in ``gateway serve``."""
from __future__ import annotations

import hashlib
import hmac
import os

from ..config import Settings
from ..metrics import GatewayMetrics
from ..outcomes import EndReason
from .hub import HUB_ENV, WORKER_ENV, pod_name
from .plane import ControlPlane, LocalPlane, PodPlane

# The control plane's refusals at `start`, as the call's end reason.
ADMISSION_REFUSALS = {
    "duplicate": EndReason.DUPLICATE_STREAM,
    "replayed": EndReason.TOKEN_REPLAYED_ELSEWHERE,
    "capacity": EndReason.OVER_CAPACITY,
}


def make_plane(settings: Settings, metrics: GatewayMetrics) -> ControlPlane:
    """The pod's hub if this process is a worker of ``gateway serve``, else this process alone;
    wrapped by the Redis cluster plane when ``GATEWAY_REDIS_URL`` is set."""
    worker = int(os.environ.get(WORKER_ENV, "0"))
    hub = os.environ.get(HUB_ENV, "")
    plane: ControlPlane
    if hub:
        plane = PodPlane(settings.max_calls, pod_name(settings), worker, hub)
    else:
        plane = LocalPlane(settings.max_calls, pod_name(settings), worker)
    if settings.redis_url:
        from .redis_plane import ClusterPlane

        plane = ClusterPlane(plane, settings.redis_url, settings.cluster_max_calls,
                             lambda op: metrics.count("gateway_registry_errors_total", op),
                             hmac.new(settings.token_key, b"gateway-control-plane-v1", hashlib.sha256).digest())
    return plane
