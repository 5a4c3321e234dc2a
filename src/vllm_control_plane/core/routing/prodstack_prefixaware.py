"""``prodstack_prefixaware`` (baseline): vLLM production-stack's ``prefixaware`` router.

Production-stack (``PrefixAwareRouter`` + ``prefix/hashtrie.py``) keeps one trie for all
endpoints: the prompt (completions ``prompt``, or the chat messages' text contents joined by
newlines) is cut into 128-character chunks, each chunk hashed (xxhash64) as one trie edge, and
every node records the endpoints that were sent a prompt through it. A lookup walks the chunks
while the next node still holds one of the endpoints left, narrowing the set as it goes; the
router then picks uniformly at random among the endpoints of the longest match (all endpoints
when nothing matches) and inserts the prompt under the pick. There is no eviction and no load
signal at all.

Here the prompt is ``RouteRequest.prompt_text``; the chunk hash is Python's (only equality
matters); the random pick draws from the context's rng over the matched set in candidate order.
Scores: matched characters / prompt characters.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_control_plane.core.interfaces import (
    RouteChoice,
    RouteRequest,
    RoutingContext,
    RoutingStrategy,
)
from vllm_control_plane.types import ExecutionInstance

CHUNK_CHARS = 128  # HashTrie(chunk_size=128)


class _Node:
    __slots__ = ("children", "endpoints")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.endpoints: set[str] = set()


def _chunks(text: str) -> list[int]:
    # The trailing partial chunk counts too, as in the original.
    return [hash(text[i : i + CHUNK_CHARS]) for i in range(0, len(text), CHUNK_CHARS)]


class ProdstackPrefixAware(RoutingStrategy):
    name = "prodstack_prefixaware"

    def __init__(self, context: RoutingContext | None = None) -> None:
        super().__init__(context)
        self._root = _Node()

    def _longest_match(self, chunks: list[int], allowed: set[str]) -> tuple[int, set[str]]:
        node, matched, selected = self._root, 0, allowed
        for h in chunks:
            child = node.children.get(h)
            if child is None:
                break
            narrowed = child.endpoints & selected
            if not narrowed:
                break
            node, matched, selected = child, matched + 1, narrowed
        return matched, selected

    def select(self, req: RouteRequest, candidates: Sequence[ExecutionInstance]) -> RouteChoice:
        chunks = _chunks(req.prompt_text)
        matched, selected = self._longest_match(chunks, {c.instance_id for c in candidates})
        pool = [c.instance_id for c in candidates if c.instance_id in selected]
        pick = pool[self.context.rng.randrange(len(pool))]
        chars = min(len(req.prompt_text), matched * CHUNK_CHARS)
        share = chars / len(req.prompt_text) if req.prompt_text else 0.0
        scores = {c.instance_id: (share if c.instance_id in selected else 0.0) for c in candidates}
        if matched == 0:
            scores = dict.fromkeys(scores, 0.0)
        reason = f"longest prefix {chars} chars ({matched} chunks), random among {len(pool)}"
        return RouteChoice(pick, reason, scores)

    def on_dispatch(self, req: RouteRequest, instance_id: str) -> None:
        node = self._root
        node.endpoints.add(instance_id)
        for h in _chunks(req.prompt_text):
            node = node.children.setdefault(h, _Node())
            node.endpoints.add(instance_id)

    def on_instance_removed(self, instance_id: str) -> None:
        # The original never forgets; we must, or a re-registered id would inherit ghosts.
        stack = [self._root]
        while stack:
            node = stack.pop()
            node.endpoints.discard(instance_id)
            for h, child in list(node.children.items()):
                if instance_id in child.endpoints and child.endpoints == {instance_id}:
                    del node.children[h]  # only this instance went this way: prune
                else:
                    stack.append(child)
