"""How many tokens a simulated request generates, and why it stops.

How it works: the engine has no model to emit EOS, so the length is decided at admission:

* ``ignore_eos``: exactly ``max_tokens`` (finish ``"length"``);
* a replay hint (a trace's true output length): ``min(hint, cap)``;
* otherwise a natural length drawn from a geometric distribution with mean
  ``mean_output_tokens`` — the length of a sequence that emits EOS with a constant per-token
  probability. The draw is seeded from ``(seed, request_id)`` only, so it does not depend on
  arrival order or on which engine serves the request.

``min_tokens`` raises the natural length, and the cap is ``max_tokens`` and the context limit.
Like vLLM's ``check_stop`` (length is checked before EOS), hitting the cap reports
``"length"`` even if the natural end would have coincided with it.
"""

from __future__ import annotations

import math
import random

from vllm_control_plane.sim.types import EngineRequest, FinishReason


def natural_length(seed: int, request_id: str, mean: float) -> int:
    """A geometric draw (support 1, 2, ...) with the given mean, seeded per request."""
    if mean <= 1.0:
        return 1
    u = random.Random(f"{seed}/{request_id}").random()
    p = 1.0 / mean  # P(EOS) per token
    return 1 + int(math.log1p(-u) / math.log1p(-p))


def target_length(
    req: EngineRequest, *, seed: int, mean: float, max_model_len: int
) -> tuple[int, FinishReason]:
    """``(tokens to generate, finish reason)`` for a request."""
    cap = max(1, min(req.max_tokens, max_model_len - req.prompt_tokens))
    if req.ignore_eos:
        return cap, "length"
    if req.output_tokens_hint is not None:
        natural = max(1, req.output_tokens_hint)
    else:
        natural = natural_length(seed, req.request_id, mean)
    natural = max(natural, req.min_tokens)
    if natural >= cap:
        return cap, "length"
    return natural, "stop"
