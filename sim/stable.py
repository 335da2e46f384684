"""The stable tree: KSM pages, their stable nodes, chains and dups (ksm-model.md §6).

The stable tree is the kernel's red-black tree (:mod:`sim.rbtree`, ``stable_root``) of
regular nodes and chains, ordered by memcmp of their contents' page bytes
(:meth:`KsmState.content_less`); ``stable`` indexes the same nodes by content. A search or
an insert descends from the root and looks at every node on its path, as
``stable_tree_search`` / ``stable_tree_insert`` do: looking at a regular node checks its
frame is alive (``ksm_get_folio``); looking at a chain walks its dups (``stable_node_dup``),
removes dead ones, chooses one, and may collapse the chain (``rb_replace_node``) or free it.
A removal (``rb_erase``) restarts the walk from the root, as the kernel's ``goto again``.

A search asks chains to prune; a chain prunes when ``stable_node_chains_prune_millisecs``
have passed on the clock (``clock_ms``) since its creation or last prune (its own
``chain_prune_time``; always with the knob at 0). While no chain and no dead node is in the
tree, a walk has no side effect, and a search is a look-up of its content. A chain
remembers its last look-up (``memo``) while ``tree_gen`` shows that no dup, item or frame
changed since: a look-up that changed nothing gives the same answer again.
"""

from __future__ import annotations

from typing import cast

from .mm import ITEM_NONE, ITEM_STABLE, ITEM_UNSTABLE, Vma
from .rbtree import rb_erase, rb_insert_color, rb_link_node, rb_replace_node
from .state import NO_ITEMS, KsmState, StableNode, add_items, remove_item


class StableTreeMixin(KsmState):
    #: defer the rb-tree linking of inserts nothing can observe (see _stable_tree_insert);
    #: tests turn it off to compare the tree shapes
    defer_links = True

    # ------------------------------------------------------------- helpers
    def _is_candidate(self, node: StableNode) -> bool:
        """is_page_sharing_candidate: 0 < rmap_hlist_len < max_page_sharing."""
        limit: int = self.knobs["max_page_sharing"]
        return 0 < len(node.items) < limit

    def _new_node(
        self, kind: str, content: int, pfn: int = -1, *, linked: bool = True
    ) -> StableNode:
        """A new node; its ``order`` is set now if it is ``linked`` into the tree now, else
        by :meth:`_link_pending` (the content's bytes are not read before they are needed:
        a large session's are no longer in the cache)."""
        node = StableNode(self.next_nid, kind, content, pfn)
        if linked:
            node.order = self.content_order(content)
        self.next_nid += 1
        self.nodes[node.nid] = node
        return node

    # ----------------------------------------------------- item <-> tree
    def _remove_rmap_item_from_tree(self, vma: Vma, idx: int) -> None:
        """remove_rmap_item_from_tree: detach an item from the stable or unstable tree."""
        state = vma.it_state[idx]
        if state == ITEM_STABLE:
            node = self.nodes[vma.it_node[idx]]
            if node.dead:
                # ksm_get_folio finds the frame gone: the whole node goes
                self._remove_node_from_stable_tree(node)
                return
            remove_item(node, (vma.uid << 32) | idx)
            if node.chain is not None:
                self.tree_gen += 1
            if node.items:
                self.pages_sharing -= 1
            else:
                self.pages_shared -= 1
            vma.mm.ksm_merging_pages -= 1
            vma.it_state[idx] = ITEM_NONE
            vma.it_node[idx] = -1
        elif state == ITEM_UNSTABLE:
            key = (vma.uid << 32) | idx
            csum = vma.it_sum[idx]
            if self.unstable.get(csum) == key:
                del self.unstable[csum]
            self.pages_unshared -= 1
            vma.it_state[idx] = ITEM_NONE

    def _stable_tree_append(self, vma: Vma, idx: int, node: StableNode) -> None:
        """stable_tree_append: the item joins the node's rmap list (at its head)."""
        key = (vma.uid << 32) | idx
        if node.items:
            self.pages_sharing += 1
        else:
            self.pages_shared += 1
        add_items(node, key)
        if node.chain is not None:
            self.tree_gen += 1
        vma.it_state[idx] = ITEM_STABLE
        vma.it_node[idx] = node.nid
        vma.mm.ksm_merging_pages += 1

    def _remove_node_from_stable_tree(self, node: StableNode) -> None:
        """remove_node_from_stable_tree: drop a stale node and all its items."""
        if node.items:
            self.pages_shared -= 1
            self.pages_sharing -= len(node.items) - 1
        for key in node.items:
            v, i = self.vma_of(key)
            v.it_state[i] = ITEM_NONE
            v.it_node[i] = -1
            v.mm.ksm_merging_pages -= 1
            if self.log is not None:
                self.log.pages.add(key)
        node.items = NO_ITEMS
        self.tree_gen += 1
        if node.dead:
            self.dead_nodes -= 1
        if node.kind == StableNode.DUP:
            chain = node.chain
            assert chain is not None
            chain.dups.remove(node)
            self.stable_node_dups -= 1
        else:
            rb_erase(node, self.stable_root)
            self._stable_unindex(node.content)
        if node.pfn >= 0 and self.f_node[node.pfn] == node.nid:
            self.f_node[node.pfn] = -1
        del self.nodes[node.nid]
        self._event("node_removed")

    def _free_chain(self, chain: StableNode) -> None:
        """free_stable_node_chain."""
        assert not chain.dups
        self.tree_gen += 1
        rb_erase(chain, self.stable_root)
        self._stable_unindex(chain.content)
        del self.nodes[chain.nid]
        self.stable_node_chains -= 1
        self._event("chain_freed")

    # ------------------------------------------------------------- chains
    def _stable_node_dup(self, chain: StableNode, prune: bool) -> StableNode | None:
        """stable_node_dup: walk a chain's dups, drop dead ones, choose one.

        ``prune``: the walk asks to prune (a search); the chain prunes only when its timer
        allows it. Returns the chosen dup (None if the chain had no live dup: it is then
        freed; on 6.5 also when no dup is a sharing candidate).
        """
        if prune:
            # time_before(jiffies, chain_prune_time + msecs_to_jiffies(T)): no prune
            now = self.clock_ms
            if now < chain.prune_time + self.knobs["stable_node_chains_prune_millisecs"]:
                prune = False
            else:
                chain.prune_time = now
        return self._chain_choose(chain, prune)

    def _chain_choose(self, chain: StableNode, prune: bool) -> StableNode | None:
        """The body of stable_node_dup once the prune timer has decided ``prune``."""
        gen = self.tree_gen
        memo = chain.memo_prune if prune else chain.memo
        if memo is not None and memo[0] == gen:
            return memo[1]  # nothing changed since the last look-up, which changed nothing
        new_rules = self.profile.new_dup_choice
        limit: int = self.knobs["max_page_sharing"]
        found: StableNode | None = None
        found_len = 0
        found_cand = False
        nr = 0
        for dup in list(chain.dups):
            if dup.dead:
                self._remove_node_from_stable_tree(dup)
                continue
            nr += 1
            n = len(dup.items)
            cand = 0 < n < limit
            if new_rules:
                # the first live dup even if full; then a candidate, the fullest first
                if found is None or (cand and (not found_cand or n > found_len)):
                    found, found_len, found_cand = dup, n, cand
                    if not prune and cand:
                        break
            elif cand and (found is None or n > found_len):
                # 6.5: only candidates can be chosen
                found, found_len, found_cand = dup, n, cand
                if not prune:
                    break
        if found is not None:
            collapse = len(chain.dups) == 1 if new_rules else (prune and nr == 1)
            if collapse:
                # the single dup replaces the chain as a regular node
                self.tree_gen += 1
                rb_replace_node(chain, found, self.stable_root)
                self.stable[chain.content] = found
                found.kind = StableNode.REGULAR
                found.chain = None
                chain.dups.clear()
                del self.nodes[chain.nid]
                self.stable_node_chains -= 1
                self.stable_node_dups -= 1
                self._event("chain_collapsed")
            elif (
                chain.dups[0] is not found and len(found.items) + 1 < self.knobs["max_page_sharing"]
            ):
                self.tree_gen += 1
                chain.dups.remove(found)
                chain.dups.insert(0, found)
        elif not chain.dups:
            self._free_chain(chain)
        if self.tree_gen == gen:
            if prune:
                chain.memo_prune = (gen, found)
            else:
                chain.memo = (gen, found)
        return found

    def _look_at(self, node: StableNode, prune: bool) -> tuple[bool, StableNode | None]:
        """What a tree walk does with a node on its path: (restart?, chosen node or dup)."""
        if node.kind == StableNode.CHAIN:
            chosen = self._stable_node_dup(node, prune)
            if chosen is None and not node.dups:
                return True, None  # chain freed: goto again
            return False, chosen
        if node.dead:
            self._remove_node_from_stable_tree(node)
            return True, None
        if self.profile.new_dup_choice or self._is_candidate(node):
            return False, node
        return False, None

    def _stable_walk(
        self, content: int, prune: bool
    ) -> tuple[StableNode | None, StableNode | None, StableNode | None, bool]:
        """A stable-tree walk for ``content`` from the root, looking at every node on the path.

        Returns (the node of that content, the chosen dup, None, False) on a match, else
        (None, None, parent, left): where a new node of that content is linked.
        """
        key = self.content_order(content)
        stable = self.stable
        regular = StableNode.REGULAR
        chain_kind = StableNode.CHAIN
        plain = self.profile.new_dup_choice
        interval: int = self.knobs["stable_node_chains_prune_millisecs"]
        now = self.clock_ms
        while True:  # again:
            node = cast("StableNode | None", self.stable_root.node)
            parent: StableNode | None = None
            left = False
            while node is not None:
                here = node.content
                kind = node.kind
                if kind is regular and not node.dead and plain:
                    chosen: StableNode | None = node
                elif kind is chain_kind:
                    # stable_node_dup: the prune timer, then the look-up (or its memo)
                    pruning = prune and now >= node.prune_time + interval
                    if pruning:
                        node.prune_time = now
                    memo = node.memo_prune if pruning else node.memo
                    if memo is not None and memo[0] == self.tree_gen:
                        chosen = memo[1]
                    else:
                        chosen = self._chain_choose(node, pruning)
                        if chosen is None and not node.dups:
                            break  # chain freed: goto again
                        node = stable[here]  # a collapsed chain's dup took its place
                else:
                    restart, chosen = self._look_at(node, prune)
                    if restart:
                        break
                if here == content:
                    return node, chosen, None, False
                nkey = node.order
                parent = node
                left = key < nkey if key != nkey else self.content_less(content, here)
                node = cast("StableNode | None", node.rb_left if left else node.rb_right)
            else:
                return None, None, parent, left

    def _stable_tree_search(self, content: int) -> StableNode | None:
        """stable_tree_search for an ordinary page: the node to merge into, or None."""
        if not self.stable_node_chains and not self.dead_nodes:
            # no walk can change anything: the search is a look-up
            node = self.stable.get(content)
            return node if node is not None and self._is_candidate(node) else None
        _, chosen, _, _ = self._stable_walk(content, True)
        if chosen is None or not self._is_candidate(chosen):
            return None
        return chosen

    def _stable_tree_insert(self, content: int, pfn: int) -> StableNode:
        """stable_tree_insert: a new KSM frame gets a regular node, or a dup in a chain.

        While no chain and no dead node is in the tree, the walk has no side effect and the
        content has no node: the new node waits in ``stable_pending`` to be linked when
        the tree is next read (:attr:`KsmState.stable_root`), as if linked now.
        """
        if (
            self.defer_links
            and not self.stable_node_chains
            and not self.dead_nodes
            and content not in self.stable
        ):
            self.tree_gen += 1
            node = self._new_node(StableNode.REGULAR, content, pfn, linked=False)
            self.stable_pending.append(node)
            self._stable_index(content, node)
            self.f_node[pfn] = node.nid
            return node
        top, _, parent, left = self._stable_walk(content, prune=False)
        self.tree_gen += 1
        if top is None:
            node = self._new_node(StableNode.REGULAR, content, pfn)
            rb_link_node(node, parent, left, self.stable_root)
            rb_insert_color(node, self.stable_root)
            self._stable_index(content, node)
        else:
            if top.kind != StableNode.CHAIN:
                # alloc_stable_node_chain: the chain takes the node's place in the tree
                chain = self._new_node(StableNode.CHAIN, content)
                chain.prune_time = self.clock_ms
                rb_replace_node(top, chain, self.stable_root)
                top.kind = StableNode.DUP
                top.chain = chain
                chain.dups.append(top)
                self.stable[content] = chain
                self.stable_node_chains += 1
                self.stable_node_dups += 1
                self._event("chain_created")
                top = chain
            node = self._new_node(StableNode.DUP, content, pfn)
            node.chain = top
            top.dups.insert(0, node)
            self.stable_node_dups += 1
        self.f_node[pfn] = node.nid
        return node

    def _remove_stable_node(self, node: StableNode) -> bool:
        """remove_stable_node: True if busy (its frame is still mapped)."""
        if node.dead:
            self._remove_node_from_stable_tree(node)
            return False
        return True

    def _remove_all_stable_nodes(self) -> bool:
        """remove_all_stable_nodes: True (EBUSY) if a node's frame is still mapped.

        Removes the root, again and again, until the tree is empty or the root is busy.
        """
        root = self.stable_root
        while root.node is not None:
            top = root.node
            assert isinstance(top, StableNode)
            if top.kind == StableNode.CHAIN:
                for dup in list(top.dups):
                    if self._remove_stable_node(dup):
                        return True
                self._free_chain(top)
            elif self._remove_stable_node(top):
                return True
        return False
