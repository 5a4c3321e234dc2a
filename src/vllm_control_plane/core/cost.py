"""GPU prices and exact cost sharing among the requests an instance runs at once.

How it works: an instance costs ``price_per_gpu_hour × gpu_count`` per hour while it serves our
requests. Requests sharing a batch split that rate equally, so a request's cost is

    cost = ∫ over its time on the instance of  rate / n(t) dt

where ``n(t)`` is the number of our requests on the instance (dispatched, not finished) at
time ``t``. :class:`CostMeter` keeps, per instance, the running integral ``A(t) = ∫ rate/n dt``
(a "virtual time" as in fair queueing): a request records ``A`` when it is dispatched and pays
``A(end) − A(start)``. Every change of ``n`` is O(1), and the costs of all requests on an
instance add up exactly to ``rate × busy time`` — the accounting identity the tests check.

Default prices are round figures of public on-demand list prices per GPU-hour (2024-25 cloud
catalogues); they are placeholders for a configuration, set ``cost_per_gpu_hour`` for yours.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_control_plane.types import ExecutionInstance

DEFAULT_GPU_PRICES: dict[str, float] = {
    "H200": 3.80,
    "H100": 3.00,
    "A100-80G": 1.80,
    "A100-40G": 1.30,
    "L4": 0.80,
    "CPU": 0.10,
}
FALLBACK_GPU_PRICE = 2.00  # an unknown accelerator: between an A100 and an H100


def gpu_price(instance: ExecutionInstance, gpu_name: str) -> float:
    """USD per GPU-hour: the instance's own price, else the default of its resolved GPU."""
    if instance.cost_per_gpu_hour is not None:
        return instance.cost_per_gpu_hour
    return DEFAULT_GPU_PRICES.get(gpu_name, FALLBACK_GPU_PRICE)


def hourly_rate(instance: ExecutionInstance, gpu_name: str) -> float:
    """USD per hour for the whole instance."""
    return gpu_price(instance, gpu_name) * instance.gpu_count


@dataclass(slots=True)
class _Meter:
    rate_per_s: float
    integral: float = 0.0  # A(t): USD one request would have paid since the meter started
    last_t: float | None = None
    n: int = 0  # our requests on the instance now
    busy_cost: float = 0.0  # rate × busy time (the total the requests' costs must add up to)


class CostMeter:
    """Per-instance cost integrals; ``start``/``stop`` bracket one request's stay."""

    def __init__(self) -> None:
        self._meters: dict[str, _Meter] = {}

    def add_instance(self, instance_id: str, usd_per_hour: float) -> None:
        self._meters[instance_id] = _Meter(rate_per_s=usd_per_hour / 3600.0)

    def remove_instance(self, instance_id: str) -> None:
        self._meters.pop(instance_id, None)

    def start(self, instance_id: str, now: float) -> float:
        """A request joins the instance; returns the mark to hand back to :meth:`stop`."""
        meter = self._advance(instance_id, now)
        meter.n += 1
        return meter.integral

    def stop(self, instance_id: str, now: float, mark: float) -> float:
        """A request leaves the instance; returns its cost in USD."""
        meter = self._meters.get(instance_id)
        if meter is None:  # instance already forgotten: nothing more to charge
            return 0.0
        self._advance(instance_id, now)
        meter.n = max(0, meter.n - 1)
        return max(0.0, meter.integral - mark)

    def busy_cost(self, instance_id: str, now: float) -> float:
        """rate × time with at least one request, up to ``now``."""
        return self._advance(instance_id, now).busy_cost

    def _advance(self, instance_id: str, now: float) -> _Meter:
        meter = self._meters[instance_id]
        if meter.last_t is not None and meter.n > 0 and now > meter.last_t:
            spent = meter.rate_per_s * (now - meter.last_t)
            meter.integral += spent / meter.n
            meter.busy_cost += spent
        if meter.last_t is None or now > meter.last_t:
            meter.last_t = now
        return meter
