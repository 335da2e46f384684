"""sim.rbtree: the port of lib/rbtree.c keeps a valid, ordered red-black tree."""

from __future__ import annotations

import random

from sim.rbtree import (
    RbNode,
    RbRoot,
    rb_check,
    rb_erase,
    rb_insert_color,
    rb_link_node,
    rb_replace_node,
)


class Item(RbNode):
    __slots__ = ("key",)

    def __init__(self, key: int):
        super().__init__()
        self.key = key


def insert(root: RbRoot, item: Item) -> None:
    parent, left, node = None, False, root.node
    while node is not None:
        assert isinstance(node, Item)
        parent, left = node, item.key < node.key
        node = node.rb_left if left else node.rb_right
    rb_link_node(item, parent, left, root)
    rb_insert_color(item, root)


def in_order(root: RbRoot) -> list[int]:
    out: list[int] = []

    def walk(node: RbNode | None) -> None:
        if node is not None:
            assert isinstance(node, Item)
            walk(node.rb_left)
            out.append(node.key)
            walk(node.rb_right)

    walk(root.node)
    return out


def test_ascending_inserts_give_the_kernels_shape() -> None:
    # 1..7 inserted in order: rb_insert_color rotates to 2 (4 (6) ...): root 4
    root = RbRoot()
    items = {k: Item(k) for k in range(1, 8)}
    for k in range(1, 8):
        insert(root, items[k])
    assert isinstance(root.node, Item) and root.node.key == 2
    assert [n.key for n in (root.node.rb_left, root.node.rb_right)] == [1, 4]  # type: ignore[union-attr]
    assert rb_check(root) == 3


def test_random_inserts_erases_and_replacements_keep_a_valid_tree() -> None:
    rng = random.Random(16)
    for _ in range(40):
        root = RbRoot()
        live: dict[int, Item] = {}
        for _ in range(300):
            op = rng.random()
            if op < 0.55 or not live:
                key = rng.randrange(1000)
                if key not in live:
                    live[key] = Item(key)
                    insert(root, live[key])
            elif op < 0.9:
                key = rng.choice(sorted(live))
                rb_erase(live.pop(key), root)
            else:
                key = rng.choice(sorted(live))
                new = Item(key)
                rb_replace_node(live[key], new, root)
                live[key] = new
            rb_check(root)
            assert in_order(root) == sorted(live)
