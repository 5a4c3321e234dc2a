"""``pow2_inflight`` (baseline): power of two choices on the in-flight request count.

The textbook P2C that Envoy's ``LEAST_REQUEST`` balancer runs by default (``choice_count`` 2:
"the host with the fewest active requests" of two random healthy hosts) and that SGLang's router
offers as ``power_of_two``: two distinct random candidates, the one with fewer requests in
flight wins, the first sampled on ties. Same sampling as ``power_of_two``; only the load measure
differs (a raw count, blind to request size and instance capacity).
"""

from __future__ import annotations

from vllm_control_plane.core.interfaces import RouteRequest
from vllm_control_plane.core.routing._common import active
from vllm_control_plane.core.routing.power_of_two import PowerOfTwo
from vllm_control_plane.types import ExecutionInstance


class Pow2Inflight(PowerOfTwo):
    name = "pow2_inflight"
    load_label = "in flight"

    def load(self, inst: ExecutionInstance, req: RouteRequest) -> float:
        return float(active(inst, self._inflight))
