"""The scheduling policy: which pending jobs start now, on which GPUs, and why the others wait.

Owns: queue order (priority, then submit order), GPU choice (fill_first packs, spread spreads),
exclusive versus memory-shared GPUs, the nodes a job may use (--nodelist, --exclude; a
submit-only node runs nothing), EASY backfill (one reservation for the first job that cannot
start, later jobs start only if they cannot delay it), the reason shown for every job that
waits, the choice of jobs to requeue for a time-slice context switch, and the check that a
request can ever be satisfied by a cluster.
Must not: do I/O, read a clock (`now` is an argument), start threads, or change a Job. It returns
decisions; the controller carries them out. Everything here is a function of its arguments.

Hot path: a pass over 10,000 pending jobs on 256 nodes must stay far below 50 ms. Nodes sit in
buckets by how many GPUs a request could use (one index for exclusive GPUs, one per --mem size
asked for), so a request for N GPUs looks at a handful of buckets, not at every node; and what
cannot start is remembered for the rest of the pass (resources only shrink while a pass walks
the queue), so most of a long queue costs one dict lookup per job. A job limited to some nodes
(--nodelist, --exclude) is remembered under its limits as well; it looks only at the few nodes
it may use, or walks the buckets skipping the few it may not, so it never scans the cluster.
bench/bench_scheduler.py measures it.
"""

from bisect import bisect_left, insort
from operator import attrgetter

from .model import Allocation, NodeState, format_duration

FILL_FIRST = "fill_first"
SPREAD = "spread"
POLICIES = (FILL_FIRST, SPREAD)

NO_NODE_UP = "Resources: no node is up"
NO_ALLOWED_NODE_UP = "Resources: none of the nodes it may use is up"

_INFINITY = float("inf")
_NO_PHANTOM = frozenset()


def queue_order_key(job):
    """Higher priority first, then earlier submission."""
    return (-job.priority, job.queue_seq)


class SchedulePass:
    """What one pass decided.

    starts: (job, Allocation) in the order decided. waiting: job id -> reason for every pending
    job that does not start. order: ids of all pending jobs given, in queue order.
    head: id of the job holding the backfill reservation (or None), shadow_time: when it will
    start at the latest (inf when it waits on jobs without a time limit), reserved: the
    (node name, GPU index) pairs set aside for it.
    """

    __slots__ = ("starts", "waiting", "order", "head", "shadow_time", "reserved")

    def __init__(self):
        self.starts = []
        self.waiting = {}
        self.order = []
        self.head = None
        self.shadow_time = None
        self.reserved = frozenset()

    def __repr__(self):
        return "SchedulePass(starts=%r, waiting=%r, head=%r)" % (
            [(job.id, alloc) for job, alloc in self.starts], self.waiting, self.head)


# ---------------------------------------------------------------------------------------------
# One node's GPUs as a pass sees them


class _NodeGpus:
    """The GPUs of one up node, by slot (slot k is the k-th lowest GPU index).

    holders counts mgpu jobs on a GPU, exclusive those without --mem; a reservation for the
    backfill head adds a "phantom" exclusive holder so that nothing else is placed there.
    The summaries (free_count, free_mask, shareable_free) are kept up to date by hold(), so
    the node search never walks the GPUs of a node it does not pick.
    """

    __slots__ = ("name", "pos", "indices", "slot_of", "cap_mb", "holders", "exclusive",
                 "shared_mb", "free_count", "free_mask", "all_mask", "shareable_free")

    def __init__(self, name, pos, gpus):
        gpus = sorted(gpus, key=attrgetter("index"))
        self.name = name
        self.pos = pos  # place among the up nodes in list order: the tie-breaker
        self.indices = tuple(gpu.index for gpu in gpus)
        self.slot_of = {index: slot for slot, index in enumerate(self.indices)}
        # What a --mem job can be given on a GPU, before mgpu's own reservations.
        self.cap_mb = [gpu.memory_mb - (gpu.external_mb or 0) for gpu in gpus]
        self.holders = [0] * len(gpus)
        self.exclusive = [0] * len(gpus)
        self.shared_mb = [0] * len(gpus)
        self.all_mask = 0
        for index in self.indices:
            self.all_mask |= 1 << index
        self.free_count = len(gpus)
        self.free_mask = self.all_mask
        # Ascending: the free MB of each GPU a --mem job may share (no exclusive holder).
        self.shareable_free = sorted(self.cap_mb)

    def copy(self):
        twin = _NodeGpus.__new__(_NodeGpus)
        for name in _NodeGpus.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.holders = list(self.holders)
        twin.exclusive = list(self.exclusive)
        twin.shared_mb = list(self.shared_mb)
        twin.shareable_free = list(self.shareable_free)
        return twin

    def hold(self, slots, mem_mb, sign=1):
        """Count a job on these slots (mem_mb None: exclusively); sign=-1 releases it."""
        holders, exclusive, shared, cap = self.holders, self.exclusive, self.shared_mb, self.cap_mb
        shareable = self.shareable_free
        if sign == 1 and mem_mb is None:
            # The common grant, kept short: an exclusive job takes GPUs (usually free ones).
            for slot in slots:
                if holders[slot] == 0:  # then nothing is shared on it either
                    del shareable[bisect_left(shareable, cap[slot])]
                    self.free_count -= 1
                    self.free_mask &= ~(1 << self.indices[slot])
                elif exclusive[slot] == 0:
                    del shareable[bisect_left(shareable, cap[slot] - shared[slot])]
                holders[slot] += 1
                exclusive[slot] += 1
            return
        if sign == 1:
            # A --mem job joins GPUs it may share (no exclusive holder but perhaps a phantom).
            for slot in slots:
                if exclusive[slot] == 0:
                    left = cap[slot] - shared[slot]
                    del shareable[bisect_left(shareable, left)]
                    insort(shareable, left - mem_mb)
                if holders[slot] == 0:
                    self.free_count -= 1
                    self.free_mask &= ~(1 << self.indices[slot])
                holders[slot] += 1
                shared[slot] += mem_mb
            return
        for slot in slots:
            if exclusive[slot] == 0:
                del shareable[bisect_left(shareable, cap[slot] - shared[slot])]
            was_free = holders[slot] == 0
            holders[slot] += sign
            if mem_mb is None:
                exclusive[slot] += sign
            else:
                shared[slot] += sign * mem_mb
            if exclusive[slot] == 0:
                insort(shareable, cap[slot] - shared[slot])
            if was_free != (holders[slot] == 0):
                bit = 1 << self.indices[slot]
                if was_free:
                    self.free_count -= 1
                    self.free_mask &= ~bit
                else:
                    self.free_count += 1
                    self.free_mask |= bit

    def usable(self, mem_mb):
        """How many GPUs a request with this memory per GPU (None: exclusive) could use."""
        if mem_mb is None:
            return self.free_count
        shareable = self.shareable_free
        return len(shareable) - bisect_left(shareable, mem_mb)

    def slot_usable(self, slot, mem_mb, phantom=_NO_PHANTOM):
        ghost = 1 if slot in phantom else 0
        if mem_mb is None:
            return self.holders[slot] == ghost
        return (self.exclusive[slot] == ghost
                and self.cap_mb[slot] - self.shared_mb[slot] >= mem_mb)

    def pick(self, count, gpu_ids, mem_mb, policy, phantom=_NO_PHANTOM):
        """The slots this request would get here under the policy, or None if it does not fit.

        phantom: slots whose reservation is ignored (a backfill job that ends before the head
        needs them may use them).
        """
        if gpu_ids is not None:
            slots = []
            for index in gpu_ids:
                slot = self.slot_of.get(index)
                if slot is None or not self.slot_usable(slot, mem_mb, phantom):
                    return None
                slots.append(slot)
            return slots
        cap, shared = self.cap_mb, self.shared_mb
        if phantom:
            slot_usable = self.slot_usable
            free = [slot for slot in range(len(self.indices))
                    if slot_usable(slot, mem_mb, phantom)]
        elif mem_mb is None:
            free = [slot for slot, holders in enumerate(self.holders) if not holders]
        else:
            free = [slot for slot, exclusive in enumerate(self.exclusive)
                    if not exclusive and cap[slot] - shared[slot] >= mem_mb]
        if len(free) < count:
            return None
        if policy == FILL_FIRST:
            if mem_mb is not None:
                # Pack onto GPUs already shared, so whole GPUs stay free for exclusive jobs.
                # A stable sort keeps lower indices first among equals.
                free.sort(key=shared.__getitem__, reverse=True)
            return free[:count]
        free.sort(key=lambda slot: cap[slot] - shared[slot], reverse=True)
        return free[:count]


# ---------------------------------------------------------------------------------------------
# The cluster as a pass sees it


class _ByUsable:
    """The up nodes in buckets by how many GPUs a request of one memory size could use now.

    buckets[c] holds the positions (ascending) of the nodes with exactly c usable GPUs, so a
    request for N GPUs finds its node by looking at no more buckets than a node has GPUs.
    """

    __slots__ = ("mem_mb", "usable", "buckets", "most", "synced")

    def __init__(self, mem_mb, nodes, max_gpus, synced=0):
        self.mem_mb = mem_mb
        self.synced = synced  # how much of the cluster's grant log this index has seen
        self.usable = [node_gpus.usable(mem_mb) for node_gpus in nodes]
        self.buckets = [[] for _ in range(max_gpus + 1)]
        for pos, usable in enumerate(self.usable):
            self.buckets[usable].append(pos)
        self.most = max_gpus
        self._lower_most()

    def _lower_most(self):
        while self.most > 0 and not self.buckets[self.most]:
            self.most -= 1

    def move(self, pos, before, after):
        """The node at pos now has `after` usable GPUs instead of `before`."""
        self.usable[pos] = after
        bucket = self.buckets[before]
        del bucket[bisect_left(bucket, pos)]
        insort(self.buckets[after], pos)
        if after > self.most:
            self.most = after
        elif before == self.most:
            self._lower_most()

    def find(self, count, fill_first):
        """Position of the node a request for `count` GPUs gets, or None."""
        most = self.most
        if count > most:
            return None
        buckets = self.buckets
        if fill_first:
            # Best fit: the fewest usable GPUs that still fit, so big holes stay big.
            for usable in range(count, most):
                if buckets[usable]:
                    return buckets[usable][0]
        return buckets[most][0]

    def find_among(self, count, fill_first, allowed):
        """Like find, for a job that may use only the node positions in `allowed`.

        Meant for jobs that may use most nodes (an --exclude of a few): the walk stops at the
        first bucket entry it may use, so it skips no more than the nodes it may not use.
        """
        most = self.most
        if count > most:
            return None
        buckets = self.buckets
        for usable in range(count, most + 1) if fill_first else range(most, count - 1, -1):
            for pos in buckets[usable]:
                if pos in allowed:
                    return pos
        return None


# Beyond this many distinct --mem sizes in one pass, further sizes scan the nodes instead of
# keeping an index each (every grant updates every index).
_MAX_MEM_INDEXES = 24

# A job that may use at most this many nodes looks at each of them; one that may use more walks
# the cluster's buckets and skips the nodes it may not use.
_FEW_ALLOWED = 8


class _Allowed:
    """The up nodes one job limited by --nodelist or --exclude may use in this pass.

    `pos in allowed` says whether it may use the node at that position. Kept as the positions
    listed (a nodelist: few) or as those barred (an --exclude alone: the rest of the cluster),
    so neither costs a walk of every node. nodes: the nodes themselves in list order (the
    tie-breaker), listed only when first asked for.
    """

    __slots__ = ("size", "listed", "barred", "_cluster_nodes", "_nodes")

    def __init__(self, cluster_nodes, listed=None, barred=frozenset()):
        self.listed = listed
        self.barred = barred
        self.size = len(listed) if listed is not None else len(cluster_nodes) - len(barred)
        self._cluster_nodes = cluster_nodes
        self._nodes = None

    def __contains__(self, pos):
        listed = self.listed
        return pos in listed if listed is not None else pos not in self.barred

    @property
    def nodes(self):
        if self._nodes is None:
            self._nodes = tuple(self.each())
        return self._nodes

    def each(self):
        """The nodes in list order, one by one, for a search that may stop at the first."""
        if self._nodes is not None:
            return iter(self._nodes)
        cluster_nodes = self._cluster_nodes
        if self.listed is not None:
            return (cluster_nodes[pos] for pos in sorted(self.listed))
        barred = self.barred
        return (n for n in cluster_nodes if n.pos not in barred)


class _Cluster:
    """The up nodes that run jobs, with every running job counted, plus indexes for a fast
    node search. Submit-only nodes are left out: they never run a job."""

    def __init__(self, nodes, running, policy):
        self.policy = policy
        self.fill_first = policy == FILL_FIRST
        self.nodes = []
        by_name = {}
        for node in nodes:
            if node.state == NodeState.UP and not node.submit_only and node.name not in by_name:
                node_gpus = _NodeGpus(node.name, len(self.nodes), node.gpus)
                self.nodes.append(node_gpus)
                by_name[node.name] = node_gpus
        self.by_name = by_name
        self.max_gpus = max((len(n.indices) for n in self.nodes), default=0)
        # What the backfill simulation releases: (end or None, start, node position, slots,
        # mem_mb) for every running job, then for every job this pass starts before the head.
        self.releases = []
        for job in running:
            node_gpus = by_name.get(job.node)
            if node_gpus is None:
                continue  # on a node that is down: its GPUs are not usable anyway
            slot_of = node_gpus.slot_of
            slots = [slot_of[i] for i in job.alloc if i in slot_of]
            node_gpus.hold(slots, job.mem_mb)
            start = job.start_time
            end = start + job.time_limit if start is not None and job.time_limit else None
            self.releases.append((end, start, node_gpus.pos, slots, job.mem_mb))
        # One index per memory size asked for in this pass; None: exclusive GPUs.
        self.exclusive_index = _ByUsable(None, self.nodes, self.max_gpus)
        # --mem requests are a minority: their indexes catch up on the nodes granted since
        # they were last asked, instead of every grant updating every index.
        self.indexes = {}
        self.granted = []  # positions of the nodes granted, in order
        # Failures remembered for the pass: resources only shrink while it walks the queue.
        self.shared_fail_mb = [_INFINITY] * (self.max_gpus + 1)
        self.first_usable = {}  # (GPU index, mem_mb) -> first node position worth a look
        self._ever_fits = {}
        self._best_cap_mb = None
        self._allowed = {}  # (nodelist, exclude) -> _Allowed

    @property
    def most_free(self):
        """The most GPUs free of mgpu jobs on one node."""
        return self.exclusive_index.most

    # -- finding a place now ------------------------------------------------------------------

    def find(self, count, gpu_ids, mem_mb):
        """The node a request gets now under the policy, or None."""
        if gpu_ids is not None:
            return self._find_ids(gpu_ids, mem_mb)
        if mem_mb is None:
            index = self.exclusive_index
        else:
            index = self.indexes.get(mem_mb)
            if index is None:
                if count > self.max_gpus or self.shared_fail_mb[count] <= mem_mb:
                    return None
                if len(self.indexes) >= _MAX_MEM_INDEXES:
                    return self._scan_shared(count, mem_mb)
                index = self.indexes[mem_mb] = _ByUsable(mem_mb, self.nodes, self.max_gpus,
                                                         len(self.granted))
            elif index.synced < len(self.granted):
                self._sync(index)
        pos = index.find(count, self.fill_first)
        return None if pos is None else self.nodes[pos]

    def _scan_shared(self, count, mem_mb):
        best = None
        best_usable = 0
        fill_first = self.fill_first
        for node_gpus in self.nodes:
            shareable = node_gpus.shareable_free
            size = len(shareable)
            # The count-th largest free memory decides the fit without a search.
            if size < count or shareable[-count] < mem_mb:
                continue
            if fill_first:
                usable = size - bisect_left(shareable, mem_mb)
                if best is None or usable < best_usable:
                    best, best_usable = node_gpus, usable
                    if usable == count:
                        break  # no node can fit tighter; later ones lose the tie
            elif size > best_usable:
                usable = size - bisect_left(shareable, mem_mb)
                if usable > best_usable:
                    best, best_usable = node_gpus, usable
        if best is None:
            fail = self.shared_fail_mb
            for k in range(count, self.max_gpus + 1):
                if mem_mb < fail[k]:
                    fail[k] = mem_mb
        return best

    def _find_ids(self, gpu_ids, mem_mb, start=0):
        """The first node in list order (from position start) on which all these GPUs are
        usable, or None."""
        nodes = self.nodes
        first_usable = self._first_usable
        wanted = len(gpu_ids)
        pos = start
        agreeing = 0  # how many GPUs in a row were found usable at pos
        turn = 0
        # Move to the first node where the next GPU is usable, until all agree on one node.
        while agreeing < wanted and pos < len(nodes):
            found = first_usable(gpu_ids[turn % wanted], mem_mb, pos)
            agreeing = agreeing + 1 if found == pos else 1
            pos = found
            turn += 1
        return nodes[pos] if pos < len(nodes) else None

    def _first_usable(self, index, mem_mb, pos):
        """The lowest position >= pos of a node where GPU `index` is usable for mem_mb.

        Resources only shrink during a pass, so the answer for pos 0 only moves down the list:
        it is remembered per (GPU index, mem_mb), and each search resumes where the last
        stopped.
        """
        request = (index, mem_mb)
        known = self.first_usable.get(request, 0)
        at = known if known > pos else pos
        nodes = self.nodes
        end = len(nodes)
        if mem_mb is None:
            bit = 1 << index
            while at < end and not nodes[at].free_mask & bit:
                at += 1
        else:
            while at < end:
                node_gpus = nodes[at]
                slot = node_gpus.slot_of.get(index)
                if (slot is not None and not node_gpus.exclusive[slot]
                        and node_gpus.cap_mb[slot] - node_gpus.shared_mb[slot] >= mem_mb):
                    break
                at += 1
        if pos <= known:
            self.first_usable[request] = at
        return at

    def node_without_gpus(self, allowed=None):
        """Where a job that needs no GPU goes: the first node, or the one with most free GPUs
        (ties by list order); among the nodes it may use when it is limited to some."""
        if allowed is not None:
            if self.fill_first:
                return next(allowed.each())
            return max(allowed.each(), key=attrgetter("free_count"))
        if self.fill_first:
            return self.nodes[0]
        index = self.exclusive_index
        return self.nodes[index.buckets[index.most][0]]

    # -- jobs limited to some nodes -----------------------------------------------------------

    def allowed(self, nodelist, exclude):
        """The up nodes a job limited to `nodelist` (None: any) and not `exclude` may use."""
        key = (nodelist, exclude)
        known = self._allowed.get(key)
        if known is None:
            by_name = self.by_name
            if nodelist is None:
                barred = frozenset(by_name[name].pos for name in exclude if name in by_name)
                known = _Allowed(self.nodes, barred=barred)
            else:
                excluded = exclude or ()
                listed = frozenset(by_name[name].pos for name in nodelist
                                   if name in by_name and name not in excluded)
                known = _Allowed(self.nodes, listed=listed)
            self._allowed[key] = known
        return known

    def find_allowed(self, allowed, count, gpu_ids, mem_mb):
        """The node a request gets now among the nodes it may use, under the policy, or None.

        The same choice find makes, restricted: best fit (fill_first) or most usable GPUs
        (spread), ties by list order; exact GPU ids take the first node where they are usable.
        """
        if allowed.size <= _FEW_ALLOWED:
            return self._scan_allowed(allowed.nodes, count, gpu_ids, mem_mb)
        if gpu_ids is not None:
            start = 0
            while True:
                node_gpus = self._find_ids(gpu_ids, mem_mb, start)
                if node_gpus is None or node_gpus.pos in allowed:
                    return node_gpus
                start = node_gpus.pos + 1
        if mem_mb is None:
            index = self.exclusive_index
        else:
            index = self.indexes.get(mem_mb)
            if index is None:
                if len(self.indexes) >= _MAX_MEM_INDEXES:
                    return self._scan_allowed(allowed.nodes, count, gpu_ids, mem_mb)
                index = self.indexes[mem_mb] = _ByUsable(mem_mb, self.nodes, self.max_gpus,
                                                         len(self.granted))
            elif index.synced < len(self.granted):
                self._sync(index)
        pos = index.find_among(count, self.fill_first, allowed)
        return None if pos is None else self.nodes[pos]

    def _scan_allowed(self, nodes, count, gpu_ids, mem_mb):
        """find_allowed's choice made by looking at each of these nodes (a few)."""
        best = None
        best_usable = 0
        fill_first = self.fill_first
        for node_gpus in nodes:
            if gpu_ids is not None:
                if node_gpus.pick(count, gpu_ids, mem_mb, self.policy) is not None:
                    return node_gpus
                continue
            usable = node_gpus.usable(mem_mb)
            if usable < count:
                continue
            if best is None or (usable < best_usable if fill_first else usable > best_usable):
                best, best_usable = node_gpus, usable
        return best

    def grant(self, node_gpus, slots, mem_mb):
        node_gpus.hold(slots, mem_mb)
        pos = node_gpus.pos
        index = self.exclusive_index
        before = index.usable[pos]
        if node_gpus.free_count != before:
            index.move(pos, before, node_gpus.free_count)
        self.granted.append(pos)

    def _sync(self, index):
        """Bring a --mem index up to date with the nodes granted since it was last asked."""
        granted = self.granted
        mem_mb = index.mem_mb
        usable, buckets = index.usable, index.buckets
        nodes = self.nodes
        most = index.most
        fresh = granted[index.synced:]
        for pos in (fresh if len(fresh) == 1 else set(fresh)):
            shareable = nodes[pos].shareable_free
            after = len(shareable) - bisect_left(shareable, mem_mb)
            before = usable[pos]
            if after != before:
                usable[pos] = after
                bucket = buckets[before]
                del bucket[bisect_left(bucket, pos)]
                insort(buckets[after], pos)
                if after > most:
                    most = after
        while most > 0 and not buckets[most]:
            most -= 1
        index.most = most
        index.synced = len(granted)

    # -- could it ever fit --------------------------------------------------------------------

    def ever_fits(self, count, gpu_ids, mem_mb, allowed=None):
        """Whether the request fits some up node (one it may use, when it is limited to some)
        once every mgpu job there has ended."""
        key = (count, gpu_ids, mem_mb)
        known = self._ever_fits.get(key)
        if known is None:
            known = self._ever_fits[key] = self._ever_fits_uncached(count, gpu_ids, mem_mb)
        if allowed is None or not known:
            return known
        if gpu_ids is not None:
            return self._node_with_ids(gpu_ids, mem_mb, allowed.each()) is not None
        return any(_fits_when_empty(node_gpus, count, mem_mb) for node_gpus in allowed.each())

    def _ever_fits_uncached(self, count, gpu_ids, mem_mb):
        if not self.nodes:
            return False
        if gpu_ids is not None:
            return self._node_with_ids(gpu_ids, mem_mb) is not None
        if count > self.max_gpus:
            return False
        if mem_mb is None or count == 0:
            return True
        if self._best_cap_mb is None:
            # Largest capacity of the k-th best GPU on one node, k = 1..max_gpus.
            best = self._best_cap_mb = [0] * (self.max_gpus + 1)
            for node_gpus in self.nodes:
                for k, cap in enumerate(sorted(node_gpus.cap_mb, reverse=True), 1):
                    if cap > best[k]:
                        best[k] = cap
        return self._best_cap_mb[count] >= mem_mb

    def _node_with_ids(self, gpu_ids, mem_mb, nodes=None):
        """The first up node (of `nodes`, default all) that has all these GPUs, each with
        capacity for mem_mb."""
        want = 0
        for index in gpu_ids:
            want |= 1 << index
        for node_gpus in self.nodes if nodes is None else nodes:
            if node_gpus.all_mask & want != want:
                continue
            if mem_mb is None or all(node_gpus.cap_mb[node_gpus.slot_of[i]] >= mem_mb
                                     for i in gpu_ids):
                return node_gpus
        return None

    def unfit_reason(self, count, gpu_ids, mem_mb, allowed=None):
        """Why a request cannot run on the up nodes (those it may use, when it is limited to
        some) even when they are empty."""
        if allowed is None:
            if not self.nodes:
                return NO_NODE_UP
            where, nodes, largest = "no node that is up", None, self.max_gpus
        else:
            if not allowed.size:
                return NO_ALLOWED_NODE_UP
            nodes = allowed.nodes
            where, largest = "no node it may use", max(len(n.indices) for n in nodes)
        if gpu_ids is not None:
            wanted = _gpu_word(gpu_ids)
            if mem_mb is not None and self._node_with_ids(gpu_ids, None, nodes) is not None:
                return "Resources: %s has %s with %d MB free%s" % (
                    where, wanted, mem_mb, " each" if len(gpu_ids) > 1 else "")
            return "Resources: %s has %s" % (where, wanted)
        if count > largest or mem_mb is None:
            return "Resources: %s has %s" % (where, _count_word(count))
        return "Resources: %s has %s with %d MB free%s" % (
            where, _count_word(count), mem_mb, " each" if count > 1 else "")

    # -- the backfill reservation -------------------------------------------------------------

    def reserve(self, count, gpu_ids, mem_mb, now, allowed=None):
        """When and where the head job would start as running jobs end: (shadow, node, slots).

        Running jobs end at their end estimate; those without a time limit end "never", one
        after another in start order, so the head still gets a place (with shadow = inf) and
        keeps it from being taken by jobs that would never give it back. A head limited to
        some nodes looks only at what ends on those.
        """
        releases = sorted((_release_key(end, start, seq), pos, slots, job_mem)
                          for seq, (end, start, pos, slots, job_mem) in enumerate(self.releases)
                          if allowed is None or pos in allowed)
        twins = {}
        at = 0
        while at < len(releases):
            key = releases[at][0]
            changed = set()
            # Jobs ending at the same moment free their GPUs together; "never" ones one by one.
            while at < len(releases) and (releases[at][0][:2] == key[:2] if key[0] == 0
                                          else not changed):
                _, pos, slots, job_mem = releases[at]
                twin = twins.get(pos)
                if twin is None:
                    twin = twins[pos] = self.nodes[pos].copy()
                twin.hold(slots, job_mem, -1)
                changed.add(pos)
                at += 1
            best = None
            for pos in sorted(changed):
                twin = twins[pos]
                slots = twin.pick(count, gpu_ids, mem_mb, self.policy)
                if slots is None:
                    continue
                if gpu_ids is not None:
                    best = (twin, slots)
                    break
                usable = twin.usable(mem_mb)
                if (best is None or (usable < best[2] if self.policy == FILL_FIRST
                                     else usable > best[2])):
                    best = (twin, slots, usable)
            if best is not None:
                shadow = max(key[1], now) if key[0] == 0 else _INFINITY
                return shadow, self.nodes[best[0].pos], best[1]
        return None


def _fits_when_empty(node_gpus, count, mem_mb):
    """Whether a request for `count` GPUs (mem_mb each, None: exclusive) fits this node empty."""
    if len(node_gpus.indices) < count:
        return False
    if mem_mb is None or count == 0:
        return True
    return sorted(node_gpus.cap_mb, reverse=True)[count - 1] >= mem_mb


def _release_key(end, start, seq):
    # Finite ends first by time; jobs without a limit after them, in start (then list) order.
    if end is not None:
        return (0, end, seq)
    return (1, start if start is not None else _INFINITY, seq)


# ---------------------------------------------------------------------------------------------
# Words for reasons


def _count_word(count):
    return "1 GPU" if count == 1 else "%d GPUs" % count


def _gpu_word(gpu_ids):
    if len(gpu_ids) == 1:
        return "GPU %d" % gpu_ids[0]
    return "GPUs %s" % ",".join(str(i) for i in gpu_ids)


def _index_ranges(indices):
    """`0-3,6` from 0,1,2,3,6."""
    parts = []
    indices = sorted(set(indices))
    start = prev = None
    for index in indices + [None]:
        if start is not None and (index is None or index != prev + 1):
            parts.append(str(start) if start == prev else "%d-%d" % (start, prev))
            start = None
        if start is None:
            start = index
        prev = index
    return ",".join(parts)


def _head_reason(cluster, count, gpu_ids, mem_mb, shadow, now, allowed=None):
    """What the head job waits for; built once per pass, so it may look at every node."""
    if allowed is not None:
        reason = _restricted_head_reason(cluster, count, gpu_ids, mem_mb, allowed)
    elif gpu_ids is not None:
        wanted, busy = _ids_wanted_and_busy(cluster._node_with_ids(gpu_ids, mem_mb), gpu_ids, mem_mb)
        if len(gpu_ids) == 1:
            reason = "Resources: needs %s (busy)" % wanted
        else:
            reason = "Resources: needs %s (%s busy)" % (wanted, ",".join(str(i) for i in busy))
    elif mem_mb is None:
        free = cluster.most_free
        if len(cluster.nodes) == 1:
            reason = "Resources: needs %s, %d free" % (_count_word(count), free)
        else:
            reason = "Resources: needs %s on one node, at most %d free on any" % (
                _count_word(count), free)
    else:
        reason = "Resources: needs %s with %d MB free%s" % (
            _count_word(count), mem_mb, " each" if count > 1 else "")
    if shadow is not None and shadow != _INFINITY:
        reason += "; expected within %s" % format_duration(shadow - now)
    return reason


def _ids_wanted_and_busy(node_gpus, gpu_ids, mem_mb):
    """For a head asking for exact GPUs: the words for what it wants, and which of them are
    busy on the node that has them."""
    busy = [i for i in gpu_ids if not node_gpus.slot_usable(node_gpus.slot_of[i], mem_mb)]
    if mem_mb is None:
        return _gpu_word(gpu_ids), busy
    return "%s with %d MB free%s" % (_gpu_word(gpu_ids), mem_mb, " each" if len(gpu_ids) > 1 else ""), busy


def _restricted_head_reason(cluster, count, gpu_ids, mem_mb, allowed):
    """What a head limited to some nodes waits for, said of those nodes only."""
    nodes = allowed.nodes
    single = nodes[0].name if len(nodes) == 1 else None
    where = " on node %s" % single if single else " on one of the nodes it may use"
    if gpu_ids is not None:
        wanted, busy = _ids_wanted_and_busy(cluster._node_with_ids(gpu_ids, mem_mb, nodes), gpu_ids, mem_mb)
        if len(gpu_ids) == 1:
            return "Resources: needs %s%s (busy)" % (wanted, where)
        return "Resources: needs %s%s (%s busy)" % (wanted, where, ",".join(map(str, busy)))
    if mem_mb is None:
        free = max(node_gpus.free_count for node_gpus in nodes)
        if single:
            return "Resources: needs %s%s, %d free" % (_count_word(count), where, free)
        return "Resources: needs %s%s, at most %d free there" % (_count_word(count), where, free)
    return "Resources: needs %s with %d MB free%s%s" % (
        _count_word(count), mem_mb, " each" if count > 1 else "", where)


# ---------------------------------------------------------------------------------------------
# The pass


def _request_of(job):
    gpu_ids = tuple(job.gpu_ids) if job.gpu_ids else None
    count = len(gpu_ids) if gpu_ids else (job.gpus or 0)
    return count, gpu_ids, job.mem_mb


def _queue_order(pending):
    # Two stable sorts on plain attributes are several times cheaper than a tuple key per job.
    jobs = sorted(pending, key=attrgetter("queue_seq"))
    jobs.sort(key=attrgetter("priority"), reverse=True)
    return jobs


def schedule(pending, nodes, running, now, policy=FILL_FIRST):
    """Decide which pending jobs start now and where; give every other one a reason."""
    if policy not in POLICIES:
        raise ValueError("unknown policy %r (use %s)" % (policy, " or ".join(POLICIES)))
    decided = SchedulePass()
    jobs = _queue_order(pending)
    decided.order = [job.id for job in jobs]
    waiting = decided.waiting
    cluster = _Cluster(nodes, running, policy)
    if not cluster.nodes:
        for job in jobs:
            waiting[job.id] = NO_NODE_UP
        return decided

    starts = decided.starts
    fill_first = policy == FILL_FIRST
    exclusive_index = cluster.exclusive_index
    all_nodes = cluster.nodes
    releases = cluster.releases
    head = None           # the job holding the reservation
    behind = None         # the reason of every job that waits behind it
    shadow = None
    reserved_node = None  # the reservation is on one node: the head needs a single node
    phantom = _NO_PHANTOM  # its slots there
    # Requests that cannot start for the rest of the pass (resources only shrink while it
    # walks the queue) -> their reason: most of a long queue is settled by one lookup here.
    # A request limited to some nodes is its own key: 1 GPU on node a is not 1 GPU anywhere.
    settled = {}
    # Requests that cannot start without the reserved GPUs: only short jobs try those.
    need_reserved = set()

    for job in jobs:
        restricted = job.nodelist is not None or job.exclude is not None
        if restricted:
            request = (job.gpus, job.gpu_ids, job.mem_mb, job.nodelist, job.exclude)
        else:
            request = (job.gpus, job.gpu_ids, job.mem_mb)
        reason = settled.get(request)
        if reason is not None:
            waiting[job.id] = reason
            continue
        if request in need_reserved:
            # It fits nowhere without the head's GPUs: only a job that ends before the head
            # must start may use them.
            time_limit = job.time_limit
            if not time_limit or now + time_limit > shadow:
                waiting[job.id] = behind
                continue
        gpu_ids = job.gpu_ids or None
        count = len(gpu_ids) if gpu_ids else (job.gpus or 0)
        mem_mb = job.mem_mb
        allowed = None
        if restricted:
            allowed = cluster.allowed(job.nodelist, job.exclude)
            if not allowed.size:
                waiting[job.id] = settled[request] = NO_ALLOWED_NODE_UP
                continue
        if count == 0:
            node_gpus = cluster.node_without_gpus(allowed)
            starts.append((job, Allocation(node_gpus.name, (), mem_mb)))
            continue
        node_gpus = None
        if request not in need_reserved:
            if allowed is not None:
                node_gpus = cluster.find_allowed(allowed, count, gpu_ids, mem_mb)
            elif gpu_ids is None and mem_mb is None:
                pos = exclusive_index.find(count, fill_first)
                if pos is not None:
                    node_gpus = all_nodes[pos]
            else:
                node_gpus = cluster.find(count, gpu_ids, mem_mb)
            if node_gpus is not None:
                slots = node_gpus.pick(count, gpu_ids, mem_mb, policy)
            elif not cluster.ever_fits(count, gpu_ids, mem_mb, allowed):
                waiting[job.id] = settled[request] = cluster.unfit_reason(count, gpu_ids, mem_mb,
                                                                          allowed)
                continue
            elif head is None:
                head = job
                reservation = cluster.reserve(count, gpu_ids, mem_mb, now, allowed)
                if reservation is not None:
                    shadow, reserved_node, slots = reservation
                    phantom = frozenset(slots)
                    decided.reserved = frozenset((reserved_node.name, reserved_node.indices[s])
                                                 for s in slots)
                else:
                    shadow = _INFINITY
                decided.head = job.id
                decided.shadow_time = shadow
                waiting[job.id] = _head_reason(cluster, count, gpu_ids, mem_mb, shadow, now,
                                               allowed)
                behind = "Priority: behind job %s" % job.id
                if reserved_node is not None:
                    # A phantom exclusive holder keeps every later job off the head's GPUs.
                    cluster.grant(reserved_node, slots, None)
                else:
                    settled[request] = behind
                continue
            elif reserved_node is None or (allowed is not None
                                           and reserved_node.pos not in allowed):
                waiting[job.id] = settled[request] = behind
                continue
            else:
                need_reserved.add(request)
                time_limit = job.time_limit
                if not time_limit or now + time_limit > shadow:
                    waiting[job.id] = behind
                    continue
        if node_gpus is None:
            slots = reserved_node.pick(count, gpu_ids, mem_mb, policy, phantom)
            if slots is None:
                waiting[job.id] = settled[request] = behind
                continue
            node_gpus = reserved_node
        cluster.grant(node_gpus, slots, mem_mb)
        slots.sort()  # slots follow GPU index order, so the granted indices come out sorted
        indices = node_gpus.indices
        starts.append((job, Allocation(node_gpus.name, tuple([indices[s] for s in slots]),
                                       mem_mb)))
        if head is None:
            releases.append((now + job.time_limit if job.time_limit else None, now,
                             node_gpus.pos, slots, mem_mb))
    return decided


# ---------------------------------------------------------------------------------------------
# Time slicing


def time_slice_victims(pending, nodes, running, over_slice, now):
    """Ids of the over-slice jobs to requeue so the first waiting job that could use them fits.

    The first pending job (queue order) that does not fit now but would fit once every
    over-slice job let go of its GPUs decides: on the node where the fewest over-slice jobs
    must stop for it (ties by list order), the longest-running ones are chosen first, and any
    that turn out not to be needed are spared. A job limited to some nodes gains only from
    jobs stopped on those. [] when no waiting job would gain.
    """
    running = list(running)
    known = {job.id for job in running}
    running.extend(job for job in over_slice if job.id not in known)
    cluster = _Cluster(nodes, running, FILL_FIRST)
    if not cluster.nodes:
        return []
    # Over-slice jobs per node position, longest-running first.
    victims_on = {}
    for seq, job in enumerate(over_slice):
        node_gpus = cluster.by_name.get(job.node)
        if node_gpus is None:
            continue
        slots = [node_gpus.slot_of[i] for i in job.alloc if i in node_gpus.slot_of]
        victims_on.setdefault(node_gpus.pos, []).append(
            (job.start_time if job.start_time is not None else _INFINITY, seq, job, slots))
    if not victims_on:
        return []
    for candidates in victims_on.values():
        candidates.sort(key=lambda c: (c[0], c[1]))

    # Nothing changes while this looks, so a request that gains nothing never will.
    tried = set()
    for job in _queue_order(pending):
        request = _request_of(job)
        limited = job.nodelist is not None or job.exclude is not None
        key = request + (job.nodelist, job.exclude) if limited else request
        if key in tried:
            continue
        tried.add(key)
        count, gpu_ids, mem_mb = request
        if count == 0:
            continue
        if not limited:
            allowed = None
            if cluster.find(count, gpu_ids, mem_mb) is not None:
                continue
        else:
            allowed = cluster.allowed(job.nodelist, job.exclude)
            if (not allowed.size
                    or cluster.find_allowed(allowed, count, gpu_ids, mem_mb) is not None):
                continue
        if not cluster.ever_fits(count, gpu_ids, mem_mb, allowed):
            continue
        best = None
        for pos in sorted(victims_on):
            if allowed is not None and pos not in allowed:
                continue
            chosen = _victims_on_node(cluster.nodes[pos], victims_on[pos], count, gpu_ids, mem_mb)
            if chosen is not None and (best is None or len(chosen) < len(best)):
                best = chosen
        if best is not None:
            return [candidate[2].id for candidate in best]
    return []


def _victims_on_node(node_gpus, candidates, count, gpu_ids, mem_mb):
    """The fewest candidates (oldest first) whose release lets the request fit here, or None."""

    def fits_without(stopped):
        twin = node_gpus.copy()
        for _, _, job, slots in stopped:
            twin.hold(slots, job.mem_mb, -1)
        return twin.pick(count, gpu_ids, mem_mb, FILL_FIRST) is not None

    chosen = []
    for candidate in candidates:
        chosen.append(candidate)
        if fits_without(chosen):
            break
    else:
        return None
    # An older job released on the way may not be needed after all: spare it, newest first so
    # that the longest-running ones remain the ones stopped.
    for candidate in reversed(chosen[:-1]):
        rest = [c for c in chosen if c is not candidate]
        if fits_without(rest):
            chosen = rest
    return chosen


# ---------------------------------------------------------------------------------------------
# Admission


def unsatisfiable_reason(request, nodes):
    """None if some node (in any state) could run the request when empty, else one line why.

    Judged on total GPU memory: memory used outside mgpu comes and goes. Submit-only nodes run
    no job, so they count for nothing. A request limited by --nodelist or --exclude is judged
    on the nodes it may use; a name that is not among `nodes` is simply not there (the
    controller refuses unknown names before asking).
    """
    gpu_ids = tuple(request.gpu_ids) if request.gpu_ids else None
    count = len(gpu_ids) if gpu_ids else (request.gpus or 0)
    mem_mb = request.mem_mb
    if request.nodelist is None and request.exclude is None:
        if count == 0:
            return None
        runnable = [node for node in nodes if not node.submit_only]
        return _unsatisfiable_on(runnable, count, gpu_ids, mem_mb, limited=False)
    allowed, refusal = _nodes_allowed(list(nodes), request.nodelist, request.exclude)
    if refusal is not None or count == 0:
        return refusal
    return _unsatisfiable_on(allowed, count, gpu_ids, mem_mb, limited=True)


# Up to this many node names appear in a message; beyond, it speaks of "the nodes it may use".
_FEW_NAMED = 4


def _nodes_allowed(nodes, nodelist, exclude):
    """(the nodes that run jobs a limited request may use, None) or ([], one line why none)."""
    excluded = frozenset(exclude or ())
    if nodelist is None:
        allowed = [n for n in nodes if not n.submit_only and n.name not in excluded]
        return allowed, None if allowed else "--exclude leaves no node to run on"
    listed = frozenset(nodelist)
    named = [n for n in nodes if n.name in listed and n.name not in excluded]
    if not named:
        if exclude is not None:
            return [], "--nodelist and --exclude leave no node to run on"
        return [], "--nodelist names no node of this cluster"
    allowed = [n for n in named if not n.submit_only]
    if allowed:
        return allowed, None
    if len(named) == 1:
        return [], "node %s is submit-only: it runs no jobs" % named[0].name
    return [], "nodes %s are submit-only: they run no jobs" % _names(named)


def _names(nodes):
    """`a, b, c` or, for many, `a, b, c, d and 12 more`."""
    names = [node.name for node in nodes]
    if len(names) <= _FEW_NAMED:
        return ", ".join(names)
    return "%s and %d more" % (", ".join(names[:_FEW_NAMED]), len(names) - _FEW_NAMED)


def _unsatisfiable_on(nodes, count, gpu_ids, mem_mb, limited):
    """Why no node of `nodes` could run the request when empty, or None.

    limited: `nodes` are those a request limited by --nodelist or --exclude may use (not the
    whole cluster), and the messages speak of them, by name when they are few.
    """
    which = those = ""
    if limited:
        which = " it may use" + (" (%s)" % _names(nodes) if len(nodes) <= _FEW_NAMED else "")
        those = "node %s" % nodes[0].name if len(nodes) == 1 else "the nodes" + which
    no_node = "no node" + which
    if not any(node.gpus for node in nodes):
        if not limited:
            return "asks for %s; this cluster has no GPUs" % _count_word(count)
        return "asks for %s; %s has GPUs" % (_count_word(count), no_node)
    if gpu_ids is not None:
        present = set()
        for node in nodes:
            present.update(gpu.index for gpu in node.gpus)
        missing = [i for i in gpu_ids if i not in present]
        if missing:
            if not limited:
                return "%s %s not exist (this cluster has GPUs %s)" % (
                    _gpu_word(missing), "does" if len(missing) == 1 else "do",
                    _index_ranges(present))
            return "asks for %s; %s %s GPUs %s" % (
                _gpu_word(gpu_ids), those, "has" if len(nodes) == 1 else "have",
                _index_ranges(present))
        holders = []
        for node in nodes:
            by_index = {gpu.index: gpu for gpu in node.gpus}
            if all(i in by_index for i in gpu_ids):
                holders.append([by_index[i] for i in gpu_ids])
        if not holders:
            return "%s are not all on one node%s" % (_gpu_word(gpu_ids), which)
        if mem_mb is None or any(all(g.memory_mb >= mem_mb for g in gpus) for gpus in holders):
            return None
        largest = max(min(g.memory_mb for g in gpus) for gpus in holders)
        return "asks for %d MB per GPU on %s; %s has that much on %s (at most %d MB)" % (
            mem_mb, _gpu_word(gpu_ids), no_node, "it" if count == 1 else "each of them",
            largest)
    largest_node = max(len(node.gpus) for node in nodes)
    if count > largest_node:
        if not limited:
            return "asks for %d GPUs; the largest node has %d" % (count, largest_node)
        return "asks for %d GPUs; %s" % (count, _largest_allowed(nodes, largest_node))
    if mem_mb is None:
        return None
    largest_gpu = max(gpu.memory_mb for node in nodes for gpu in node.gpus)
    if mem_mb > largest_gpu:
        return "asks for %d MB per GPU; the largest GPU%s has %d MB" % (
            mem_mb, " on " + those if limited else "", largest_gpu)
    most_big = max(sum(1 for gpu in node.gpus if gpu.memory_mb >= mem_mb) for node in nodes)
    if count > most_big:
        return "asks for %d GPUs with %d MB each; %s has more than %d such GPU%s" % (
            count, mem_mb, no_node, most_big, "" if most_big == 1 else "s")
    return None


def _largest_allowed(nodes, size):
    """`the largest node it may use (a) has 4`, naming the largest when they are few."""
    largest = [node for node in nodes if len(node.gpus) == size]
    named = " (%s)" % _names(largest) if len(largest) <= _FEW_NAMED else ""
    if len(largest) == 1:
        return "the largest node it may use%s has %d" % (named, size)
    return "the largest nodes it may use%s have %d" % (named, size)
