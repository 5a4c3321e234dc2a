"""A consistent-hash ring with virtual nodes, walked clockwise over an allowed subset.

Each node owns ``vnodes`` points at ``md5(f"{node}-{i}")`` (the layout of uhashring's default
ring, which vLLM production-stack's session router uses: md5, 160 points per node). A key maps to
the first point at or after ``md5(key)`` (wrapping around). :meth:`walk` yields distinct nodes in
that clockwise order; a caller that needs the ring of a *subset* of nodes skips the others, which
gives exactly the answer a ring rebuilt from the subset would, without rebuilding it per request.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator


def md5_int(key: str) -> int:
    """The 128-bit md5 of ``key`` as an integer (uhashring's default hash)."""
    return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest(), "big")


class HashRing:
    """Nodes are added lazily as they are first seen and removed explicitly."""

    def __init__(self, vnodes: int = 160) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._nodes: set[str] = set()

    def __contains__(self, node: str) -> bool:
        return node in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def ensure(self, nodes: Iterable[str]) -> None:
        """Add the nodes not on the ring yet (one re-sort per batch of new nodes)."""
        new = [n for n in nodes if n not in self._nodes]
        if not new:
            return
        pairs = list(zip(self._points, self._owners, strict=True))
        for node in dict.fromkeys(new):
            self._nodes.add(node)
            pairs.extend((md5_int(f"{node}-{i}"), node) for i in range(self.vnodes))
        pairs.sort()
        self._points = [p for p, _ in pairs]
        self._owners = [o for _, o in pairs]

    def remove(self, node: str) -> None:
        if node not in self._nodes:
            return
        self._nodes.discard(node)
        keep = [(p, o) for p, o in zip(self._points, self._owners, strict=True) if o != node]
        self._points = [p for p, _ in keep]
        self._owners = [o for _, o in keep]

    def walk(self, key: str) -> Iterator[str]:
        """Distinct nodes clockwise from ``key``'s position (its owner first)."""
        n = len(self._points)
        if n == 0:
            return
        start = bisect.bisect(self._points, md5_int(key)) % n
        seen: set[str] = set()
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self._nodes):
                    return
