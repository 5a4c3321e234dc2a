"""SGLang router's approximate multi-tenant radix tree on raw characters (reimplemented).

One tree for all workers ("tenants"). Edges carry text; every node records which tenants were
sent text through it and when (core time). ``char_count[t]`` is the number of characters the
tree attributes to tenant t — the "tree size" the policy compares and the eviction bounds.

* :meth:`insert` adds text under a tenant, splitting edges where texts diverge.
* :meth:`match` walks the longest common prefix and returns its length and the deepest node
  reached, so the caller can pick a tenant there.
* :meth:`evict` trims each tenant above ``max_chars`` by removing its least recently used
  leaves (a leaf for t: a node t is on whose children t is not on), as SGLang's
  ``evict_tenant_by_size`` does.
"""

from __future__ import annotations

import heapq
import itertools


def shared_prefix_len(a: str, b: str) -> int:
    """Length of the common prefix (slice comparisons run in C; binary search on length)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Node:
    __slots__ = ("children", "parent", "tenants", "text")

    def __init__(self, text: str, parent: Node | None) -> None:
        self.text = text
        self.parent = parent
        self.children: dict[str, Node] = {}
        self.tenants: dict[str, float] = {}  # tenant -> last access (core time)


class RadixTree:
    def __init__(self) -> None:
        self.root = Node("", None)
        self.char_count: dict[str, int] = {}

    def _attach(self, node: Node, tenant: str, now: float) -> None:
        if tenant not in node.tenants:
            self.char_count[tenant] = self.char_count.get(tenant, 0) + len(node.text)
        node.tenants[tenant] = now

    def insert(self, text: str, tenant: str, now: float) -> None:
        node, i = self.root, 0
        self._attach(node, tenant, now)
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                child = Node(text[i:], node)
                node.children[text[i]] = child
                self._attach(child, tenant, now)
                return
            shared = shared_prefix_len(child.text, text[i : i + len(child.text)])
            if shared < len(child.text):  # split: node -> mid -> child
                mid = Node(child.text[:shared], node)
                mid.tenants = dict(child.tenants)
                child.text = child.text[shared:]
                child.parent = mid
                mid.children[child.text[0]] = child
                node.children[text[i]] = mid
                child = mid
            self._attach(child, tenant, now)
            node, i = child, i + shared

    def match(self, text: str) -> tuple[list[tuple[Node, int]], int]:
        """The path walked (node, characters matched when reaching it) and the total matched."""
        path: list[tuple[Node, int]] = [(self.root, 0)]
        node, i = self.root, 0
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                break
            shared = shared_prefix_len(child.text, text[i : i + len(child.text)])
            i += shared
            path.append((child, i))
            if shared < len(child.text):
                break
            node = child
        return path, i

    def evict(self, max_chars: int) -> None:
        over = {t for t, n in self.char_count.items() if n > max_chars}
        if not over:
            return
        tie = itertools.count()
        heap: list[tuple[float, int, str, Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            for t in self._leaf_tenants(node) & over:
                heapq.heappush(heap, (node.tenants[t], next(tie), t, node))
        while heap:
            _, _, t, node = heapq.heappop(heap)
            if self.char_count.get(t, 0) <= max_chars or t not in node.tenants:
                continue
            self._detach(node, t)
            parent = node.parent
            if parent is not None and t in self._leaf_tenants(parent):
                heapq.heappush(heap, (parent.tenants[t], next(tie), t, parent))

    def remove_tenant(self, tenant: str) -> None:
        nodes, stack = [], [self.root]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(c for c in node.children.values() if tenant in c.tenants)
        for node in reversed(nodes):  # children before parents, so emptied nodes get pruned
            if tenant in node.tenants:
                self._detach(node, tenant)
        self.char_count.pop(tenant, None)

    @staticmethod
    def _leaf_tenants(node: Node) -> set[str]:
        below: set[str] = set()
        for child in node.children.values():
            below.update(child.tenants)
        return set(node.tenants) - below

    def _detach(self, node: Node, tenant: str) -> None:
        del node.tenants[tenant]
        self.char_count[tenant] = self.char_count.get(tenant, 0) - len(node.text)
        if node.parent is not None and not node.tenants and not node.children:
            del node.parent.children[node.text[0]]
