"""Linux's red-black tree (lib/rbtree.c): insertion and erase rebalancing, node replacement.

A port of ``rb_insert_color``, ``rb_erase`` and ``rb_replace_node`` (non-augmented), case
for case, so that a tree built by the same sequence of insertions, erasures and
replacements has exactly the kernel's shape: the same root and the same path to every node.
The stable tree (:mod:`sim.stable`) is such a tree, ordered by memcmp of page contents.

Nodes are intrusive: a node class derives from :class:`RbNode` and the tree is an
:class:`RbRoot`. Inserting is the caller's walk (``rb_link_node``: set the parent and the
child link) followed by :func:`rb_insert_color`.
"""

from __future__ import annotations


class RbNode:
    """``struct rb_node``: parent, children and colour (``rb_red``; a new node is red)."""

    __slots__ = ("rb_parent", "rb_left", "rb_right", "rb_red")

    def __init__(self) -> None:
        self.rb_parent: RbNode | None = None
        self.rb_left: RbNode | None = None
        self.rb_right: RbNode | None = None
        self.rb_red = True


class RbRoot:
    """``struct rb_root``."""

    __slots__ = ("node",)

    def __init__(self) -> None:
        self.node: RbNode | None = None


def _change_child(old: RbNode, new: RbNode | None, parent: RbNode | None, root: RbRoot) -> None:
    """__rb_change_child."""
    if parent is not None:
        if parent.rb_left is old:
            parent.rb_left = new
        else:
            parent.rb_right = new
    else:
        root.node = new


def _rotate_set_parents(old: RbNode, new: RbNode, root: RbRoot, red: bool) -> None:
    """__rb_rotate_set_parents: ``new`` takes ``old``'s parent and colour."""
    parent = old.rb_parent
    new.rb_parent = parent
    new.rb_red = old.rb_red
    old.rb_parent = new
    old.rb_red = red
    _change_child(old, new, parent, root)


def rb_link_node(node: RbNode, parent: RbNode | None, left: bool, root: RbRoot) -> None:
    """rb_link_node: hang a new (red, childless) node under ``parent`` (None: as the root)."""
    node.rb_parent = parent
    node.rb_left = node.rb_right = None
    node.rb_red = True
    if parent is None:
        root.node = node
    elif left:
        parent.rb_left = node
    else:
        parent.rb_right = node


def rb_insert_color(node: RbNode, root: RbRoot) -> None:
    """rb_insert_color (__rb_insert): rebalance after :func:`rb_link_node`."""
    parent = node.rb_parent
    while True:
        if parent is None:
            node.rb_red = False
            break
        if not parent.rb_red:
            break
        gparent = parent.rb_parent
        assert gparent is not None  # a red node is never the root
        tmp = gparent.rb_right
        if parent is not tmp:  # parent == gparent.rb_left
            if tmp is not None and tmp.rb_red:
                # Case 1: uncle red, colour flips
                tmp.rb_red = False
                parent.rb_red = False
                node = gparent
                parent = node.rb_parent
                node.rb_red = True
                continue
            tmp = parent.rb_right
            if node is tmp:
                # Case 2: left rotate at parent
                tmp = node.rb_left
                parent.rb_right = tmp
                node.rb_left = parent
                if tmp is not None:
                    tmp.rb_parent = parent
                    tmp.rb_red = False
                parent.rb_parent = node
                parent.rb_red = True
                parent = node
                tmp = node.rb_right
            # Case 3: right rotate at gparent
            gparent.rb_left = tmp
            parent.rb_right = gparent
            if tmp is not None:
                tmp.rb_parent = gparent
                tmp.rb_red = False
            _rotate_set_parents(gparent, parent, root, True)
            break
        else:
            tmp = gparent.rb_left
            if tmp is not None and tmp.rb_red:
                # Case 1: colour flips
                tmp.rb_red = False
                parent.rb_red = False
                node = gparent
                parent = node.rb_parent
                node.rb_red = True
                continue
            tmp = parent.rb_left
            if node is tmp:
                # Case 2: right rotate at parent
                tmp = node.rb_right
                parent.rb_left = tmp
                node.rb_right = parent
                if tmp is not None:
                    tmp.rb_parent = parent
                    tmp.rb_red = False
                parent.rb_parent = node
                parent.rb_red = True
                parent = node
                tmp = node.rb_left
            # Case 3: left rotate at gparent
            gparent.rb_right = tmp
            parent.rb_left = gparent
            if tmp is not None:
                tmp.rb_parent = gparent
                tmp.rb_red = False
            _rotate_set_parents(gparent, parent, root, True)
            break


def _erase_color(parent: RbNode, root: RbRoot) -> None:
    """__rb_erase_color: restore the black heights after erasing a black node."""
    node: RbNode | None = None
    while True:
        sibling = parent.rb_right
        if node is not sibling:  # node == parent.rb_left
            assert sibling is not None
            if sibling.rb_red:
                # Case 1: left rotate at parent
                tmp1 = sibling.rb_left
                assert tmp1 is not None
                parent.rb_right = tmp1
                sibling.rb_left = parent
                tmp1.rb_parent = parent
                tmp1.rb_red = False
                _rotate_set_parents(parent, sibling, root, True)
                sibling = tmp1
            tmp1 = sibling.rb_right
            if tmp1 is None or not tmp1.rb_red:
                tmp2 = sibling.rb_left
                if tmp2 is None or not tmp2.rb_red:
                    # Case 2: sibling colour flip
                    sibling.rb_parent = parent
                    sibling.rb_red = True
                    if parent.rb_red:
                        parent.rb_red = False
                    else:
                        node = parent
                        up = node.rb_parent
                        if up is not None:
                            parent = up
                            continue
                    break
                # Case 3: right rotate at sibling
                tmp1 = tmp2.rb_right
                sibling.rb_left = tmp1
                tmp2.rb_right = sibling
                parent.rb_right = tmp2
                if tmp1 is not None:
                    tmp1.rb_parent = sibling
                    tmp1.rb_red = False
                tmp1 = sibling
                sibling = tmp2
            # Case 4: left rotate at parent + colour flips
            tmp2 = sibling.rb_left
            parent.rb_right = tmp2
            sibling.rb_left = parent
            tmp1.rb_parent = sibling
            tmp1.rb_red = False
            if tmp2 is not None:
                tmp2.rb_parent = parent
            _rotate_set_parents(parent, sibling, root, False)
            break
        else:
            sibling = parent.rb_left
            assert sibling is not None
            if sibling.rb_red:
                # Case 1: right rotate at parent
                tmp1 = sibling.rb_right
                assert tmp1 is not None
                parent.rb_left = tmp1
                sibling.rb_right = parent
                tmp1.rb_parent = parent
                tmp1.rb_red = False
                _rotate_set_parents(parent, sibling, root, True)
                sibling = tmp1
            tmp1 = sibling.rb_left
            if tmp1 is None or not tmp1.rb_red:
                tmp2 = sibling.rb_right
                if tmp2 is None or not tmp2.rb_red:
                    # Case 2: sibling colour flip
                    sibling.rb_parent = parent
                    sibling.rb_red = True
                    if parent.rb_red:
                        parent.rb_red = False
                    else:
                        node = parent
                        up = node.rb_parent
                        if up is not None:
                            parent = up
                            continue
                    break
                # Case 3: left rotate at sibling
                tmp1 = tmp2.rb_left
                sibling.rb_right = tmp1
                tmp2.rb_left = sibling
                parent.rb_left = tmp2
                if tmp1 is not None:
                    tmp1.rb_parent = sibling
                    tmp1.rb_red = False
                tmp1 = sibling
                sibling = tmp2
            # Case 4: right rotate at parent + colour flips
            tmp2 = sibling.rb_right
            parent.rb_left = tmp2
            sibling.rb_right = parent
            tmp1.rb_parent = sibling
            tmp1.rb_red = False
            if tmp2 is not None:
                tmp2.rb_parent = parent
            _rotate_set_parents(parent, sibling, root, False)
            break


def rb_erase(node: RbNode, root: RbRoot) -> None:
    """rb_erase (__rb_erase): unlink ``node`` and rebalance."""
    child = node.rb_right
    tmp = node.rb_left
    rebalance: RbNode | None
    if tmp is None:
        # Case 1: at most one child (the right one)
        parent = node.rb_parent
        _change_child(node, child, parent, root)
        if child is not None:
            child.rb_parent = parent
            child.rb_red = node.rb_red
            rebalance = None
        else:
            rebalance = parent if not node.rb_red else None
    elif child is None:
        # still case 1, the child is the left one
        parent = node.rb_parent
        tmp.rb_parent = parent
        tmp.rb_red = node.rb_red
        _change_child(node, tmp, parent, root)
        rebalance = None
    else:
        successor = child
        tmp = child.rb_left
        if tmp is None:
            # Case 2: the successor is the right child
            parent = successor
            child2 = successor.rb_right
        else:
            # Case 3: the successor is leftmost under the right child
            while True:
                parent = successor
                successor = tmp
                tmp = tmp.rb_left
                if tmp is None:
                    break
            child2 = successor.rb_right
            parent.rb_left = child2
            successor.rb_right = child
            child.rb_parent = successor
        left = node.rb_left
        assert left is not None
        successor.rb_left = left
        left.rb_parent = successor
        up = node.rb_parent
        _change_child(node, successor, up, root)
        if child2 is not None:
            successor.rb_parent = up
            successor.rb_red = node.rb_red
            child2.rb_parent = parent
            child2.rb_red = False
            rebalance = None
        else:
            was_red = successor.rb_red
            successor.rb_parent = up
            successor.rb_red = node.rb_red
            rebalance = parent if not was_red else None
    if rebalance is not None:
        _erase_color(rebalance, root)
    node.rb_parent = node.rb_left = node.rb_right = None


def rb_replace_node(victim: RbNode, new: RbNode, root: RbRoot) -> None:
    """rb_replace_node: ``new`` takes ``victim``'s place, links and colour."""
    parent = victim.rb_parent
    _change_child(victim, new, parent, root)
    if victim.rb_left is not None:
        victim.rb_left.rb_parent = new
    if victim.rb_right is not None:
        victim.rb_right.rb_parent = new
    new.rb_parent = parent
    new.rb_left = victim.rb_left
    new.rb_right = victim.rb_right
    new.rb_red = victim.rb_red
    victim.rb_parent = victim.rb_left = victim.rb_right = None


def rb_check(root: RbRoot) -> int:
    """Check the red-black properties and the parent links; return the black height."""

    def walk(node: RbNode | None, parent: RbNode | None) -> int:
        if node is None:
            return 1
        if node.rb_parent is not parent:
            raise AssertionError("rbtree: bad parent link")
        if node.rb_red and parent is not None and parent.rb_red:
            raise AssertionError("rbtree: red node with a red parent")
        left = walk(node.rb_left, node)
        if left != walk(node.rb_right, node):
            raise AssertionError("rbtree: black heights differ")
        return left + (0 if node.rb_red else 1)

    if root.node is not None and root.node.rb_red:
        raise AssertionError("rbtree: red root")
    return walk(root.node, None)
