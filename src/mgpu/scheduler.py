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

Jobs on several hosts (gangs): a job with nnodes > 1 needs that many distinct up hosts at once,
each with `gpus` usable GPUs, or exactly its node_gpu_ids; it starts only when every host fits
in the same pass, so it never holds some hosts while it waits for others. Hosts are chosen by
the policy per host (fill_first: best fit, spread: most usable first) from the same buckets.
As the backfill head its reservation covers all its hosts, so small jobs cannot keep taking
the GPUs it waits for. A running gang holds GPUs on every host of its `parts`. Gangs are a
minority: what cannot start is remembered under the whole request, as for one host.
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

    starts: in the order decided, (job, Allocation) for a job on one host, and for a job on
    several hosts (job.multi_host) (job, allocations): a tuple of Allocation, one per host in
    rank order (rank 0 first: for fill_first the best-fit host, for node_gpu_ids the order
    given). waiting: job id -> reason for every pending job that does not start. order: ids
    of all pending jobs given, in queue order.
    head: id of the job holding the backfill reservation (or None), shadow_time: when it will
    start at the latest (inf when it waits on jobs without a time limit), reserved: the
    (node name, GPU index) pairs set aside for it, on every host it will use.
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

    def walk(self, count, fill_first):
        """The positions of the nodes with at least `count` usable GPUs, in the order the
        policy prefers them (fill_first: fewest usable first; spread: most), ties by list
        order. For a job on several hosts, which takes the first few; nothing may be granted
        while it walks."""
        buckets = self.buckets
        most = self.most
        for usable in range(count, most + 1) if fill_first else range(most, count - 1, -1):
            yield from buckets[usable]


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
        # What the backfill simulation releases: (end or None, start, places, mem_mb) for every
        # running job, then for every job this pass starts before the head; places holds
        # (node position, slots) for each of its hosts, which it frees together.
        self.releases = []
        for job in running:
            places = []
            # A job on several hosts holds GPUs on every host of its parts.
            for name, alloc in job.parts or ((job.node, job.alloc),):
                node_gpus = by_name.get(name)
                if node_gpus is None:
                    continue  # on a node that is down: its GPUs are not usable anyway
                slot_of = node_gpus.slot_of
                slots = [slot_of[i] for i in alloc if i in slot_of]
                node_gpus.hold(slots, job.mem_mb)
                places.append((node_gpus.pos, slots))
            if places:
                start = job.start_time
                end = start + job.time_limit if start is not None and job.time_limit else None
                self.releases.append((end, start, tuple(places), job.mem_mb))
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
        self._gang_scopes = {}  # (hosts, exact host names, nodelist, exclude) -> _GangScope

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

    # -- jobs on several hosts ----------------------------------------------------------------

    def gang_scope(self, gang):
        """Where a job on several hosts may go in this pass (see _GangScope), once per limits."""
        names = None if gang.exact is None else tuple(name for name, _ in gang.exact)
        key = (gang.hosts, names, gang.nodelist, gang.exclude)
        scope = self._gang_scopes.get(key)
        if scope is not None:
            return scope
        scope = self._gang_scopes[key] = _GangScope()
        listed = _listed_hosts(gang.nodelist, gang.exclude)
        if names is not None:
            scope.conflict = _exact_hosts_conflict(names, gang.nodelist, gang.exclude)
            required = names
        elif listed is not None and (len(listed) >= gang.hosts or not listed):
            scope.allowed = self.allowed(gang.nodelist, gang.exclude)
            required = ()
        else:
            # A --nodelist naming fewer hosts than it needs: all of them, and the rest elsewhere.
            required = listed or ()
            barred = tuple(sorted(frozenset(gang.exclude or ()) | frozenset(required)))
            scope.allowed = self.allowed(None, barred) if barred else None
        by_name = self.by_name
        scope.required = tuple(by_name[name].pos for name in required if name in by_name)
        scope.down = tuple(name for name in required if name not in by_name)
        return scope

    def place_gang(self, gang, scope, phantoms=None):
        """Where a job on several hosts starts now: [(node, slots), ...] in rank order, one per
        host, or None when they do not all fit (then nothing is taken).

        phantoms: {node position: slots} of the head's reservation that this job may use (it
        ends before the head starts).
        """
        if scope.conflict is not None or scope.down:
            return None
        phantoms = phantoms or {}
        nodes, policy, mem_mb = self.nodes, self.policy, gang.mem_mb
        if gang.exact is not None:
            places = []
            for pos, (_, ids) in zip(scope.required, gang.exact):
                node_gpus = nodes[pos]
                slots = node_gpus.pick(len(ids), ids, mem_mb, policy,
                                       phantoms.get(pos, _NO_PHANTOM))
                if slots is None:
                    return None
                places.append((node_gpus, slots))
            return places
        ranked = []
        for pos in scope.required:
            rank = self._gang_rank(nodes[pos], gang, phantoms.get(pos, _NO_PHANTOM))
            if rank is None:
                return None
            ranked.append(rank)
        others = self._best_hosts(gang, gang.hosts - len(ranked), scope.allowed, phantoms)
        if others is None:
            return None
        ranked.extend(others)
        ranked.sort()
        return [(nodes[pos], nodes[pos].pick(gang.count, gang.gpu_ids, mem_mb, policy,
                                             phantoms.get(pos, _NO_PHANTOM)))
                for _, pos in ranked]

    def _gang_rank(self, node_gpus, gang, phantom):
        """(policy key, position) of a host that has room for one part of the job now, or None.

        Sorting these puts the host the policy prefers first: fill_first the fewest usable
        GPUs (best fit), spread the most; exact GPU ids go by list order.
        """
        count, mem_mb = gang.count, gang.mem_mb
        if gang.gpu_ids is not None:
            if node_gpus.pick(count, gang.gpu_ids, mem_mb, self.policy, phantom) is None:
                return None
            return (0, node_gpus.pos)
        if phantom:
            slot_usable = node_gpus.slot_usable
            usable = sum(1 for slot in range(len(node_gpus.indices))
                         if slot_usable(slot, mem_mb, phantom))
        else:
            usable = node_gpus.usable(mem_mb)
        if usable < count:
            return None
        return (usable if self.fill_first else -usable, node_gpus.pos)

    def _best_hosts(self, gang, need, allowed, phantoms):
        """The ranks of the `need` hosts the policy prefers for the job's parts (among those
        it may use), or None if fewer have room now.

        Walks the buckets of usable GPUs in the policy's order and stops after `need` hosts,
        so a job on a few hosts looks at a few; the head's reserved hosts are judged apart.
        """
        if need <= 0:
            return []
        found = []
        index = None
        if gang.gpu_ids is None and (allowed is None or allowed.size > _FEW_ALLOWED):
            index = self._index_for(gang.mem_mb)
        if index is not None:
            fill_first = self.fill_first
            usable = index.usable
            for pos in index.walk(gang.count, fill_first):
                if pos in phantoms or (allowed is not None and pos not in allowed):
                    continue
                found.append((usable[pos] if fill_first else -usable[pos], pos))
                if len(found) == need:
                    break
            for pos, phantom in phantoms.items():
                if allowed is None or pos in allowed:
                    rank = self._gang_rank(self.nodes[pos], gang, phantom)
                    if rank is not None:
                        found.append(rank)
        else:
            for node_gpus in self.nodes if allowed is None else allowed.each():
                rank = self._gang_rank(node_gpus, gang, phantoms.get(node_gpus.pos, _NO_PHANTOM))
                if rank is not None:
                    found.append(rank)
        if len(found) < need:
            return None
        found.sort()
        return found[:need]

    def _index_for(self, mem_mb):
        """The up-to-date bucket index for this memory size (None: exclusive), or None when
        the pass keeps no more indexes."""
        if mem_mb is None:
            return self.exclusive_index
        index = self.indexes.get(mem_mb)
        if index is None:
            if len(self.indexes) >= _MAX_MEM_INDEXES:
                return None
            index = self.indexes[mem_mb] = _ByUsable(mem_mb, self.nodes, self.max_gpus,
                                                     len(self.granted))
        elif index.synced < len(self.granted):
            self._sync(index)
        return index

    def _fits_part_when_empty(self, node_gpus, gang, ids=None):
        """Whether one part of the job (exact `ids` for node_gpu_ids) fits this host empty."""
        if ids is not None:
            return self._node_with_ids(ids, gang.mem_mb, (node_gpus,)) is not None
        if gang.gpu_ids is not None:
            return self._node_with_ids(gang.gpu_ids, gang.mem_mb, (node_gpus,)) is not None
        return _fits_when_empty(node_gpus, gang.count, gang.mem_mb)

    def gang_ever_fits(self, gang, scope):
        """Whether the job fits the up hosts (those it may use) once every mgpu job has ended."""
        if scope.conflict is not None or scope.down:
            return False
        nodes = self.nodes
        if gang.exact is not None:
            return all(self._fits_part_when_empty(nodes[pos], gang, ids)
                       for pos, (_, ids) in zip(scope.required, gang.exact))
        if not all(self._fits_part_when_empty(nodes[pos], gang) for pos in scope.required):
            return False
        need = gang.hosts - len(scope.required)
        if need <= 0:
            return True
        for node_gpus in nodes if scope.allowed is None else scope.allowed.each():
            if self._fits_part_when_empty(node_gpus, gang):
                need -= 1
                if not need:
                    return True
        return False

    def gang_unfit_reason(self, gang, scope):
        """Why a job on several hosts cannot run on the up hosts even when they are empty."""
        nodes = self.nodes
        if gang.exact is not None:
            problems = [scope.conflict] if scope.conflict is not None else []
            problems.extend("%s is not up" % name for name in scope.down)
            if not problems:
                for pos, (name, ids) in zip(scope.required, gang.exact):
                    problems.extend(_part_problems(nodes[pos], name, ids, gang.mem_mb))
            return "Resources: needs %s (%s)" % (_exact_words(gang.exact, gang.mem_mb),
                                                 ", ".join(problems))
        if scope.down:
            if len(scope.down) == 1:
                return "Resources: needs host %s, which is not up" % scope.down[0]
            return "Resources: needs hosts %s, which are not up" % ", ".join(scope.down)
        for pos in scope.required:
            if not self._fits_part_when_empty(nodes[pos], gang):
                return "Resources: host %s never has %s" % (nodes[pos].name,
                                                             _part_words(gang, free=True))
        if scope.allowed is not None and not scope.allowed.size and not scope.required:
            return NO_ALLOWED_NODE_UP
        need = gang.hosts - len(scope.required)
        if scope.required:
            which = " it may use besides %s" % ", ".join(nodes[pos].name for pos in scope.required)
        elif scope.allowed is not None:
            which = " it may use"
        else:
            which = ""
        if gang.count == 0 and gang.gpu_ids is None:
            if need == 1:
                return "Resources: no host%s is up" % which
            return "Resources: fewer than %d hosts%s are up" % (need, which)
        if need == 1:
            return "Resources: no host%s has %s" % (which or " that is up", _part_words(gang))
        return "Resources: no %d hosts%s have %s each" % (need, which or " that are up",
                                                          _part_words(gang))

    # -- the backfill reservation -------------------------------------------------------------

    def reserve(self, count, gpu_ids, mem_mb, now, allowed=None):
        """When and where the head job would start as running jobs end: (shadow, node, slots).

        Running jobs end at their end estimate; those without a time limit end "never", one
        after another in start order, so the head still gets a place (with shadow = inf) and
        keeps it from being taken by jobs that would never give it back. A head limited to
        some nodes looks only at what ends on those.
        """
        releases = self._releases_on(allowed)
        twins = {}
        for key, changed in self._release_steps(releases, twins):
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
                return _shadow_of(key, now), self.nodes[best[0].pos], best[1]
        return None

    def reserve_gang(self, gang, scope, now):
        """When and where a job on several hosts would start as running jobs end:
        (shadow, [(node, slots), ...] in rank order), or None.

        The same simulation as reserve, but the job needs all its hosts at once: the hosts
        that fit already count, and it ends at the first moment enough of them fit together.
        Only what ends on hosts it may use is looked at.
        """
        nodes = self.nodes
        required = scope.required
        if gang.exact is not None:
            wanted = frozenset(required)
        elif scope.allowed is None:
            wanted = None
        else:
            wanted = frozenset(required) | frozenset(n.pos for n in scope.allowed.each())
        if gang.exact is not None:
            ids_at = {pos: ids for pos, (_, ids) in zip(required, gang.exact)}
            policy, mem_mb = self.policy, gang.mem_mb

            def rank_of(node_gpus):
                ids = ids_at[node_gpus.pos]
                fits = node_gpus.pick(len(ids), ids, mem_mb, policy) is not None
                return (0, node_gpus.pos) if fits else None
        else:
            def rank_of(node_gpus):
                return self._gang_rank(node_gpus, gang, _NO_PHANTOM)
        required_set = frozenset(required)
        need = gang.hosts - len(required)
        # Which hosts fit in the simulated cluster, kept up to date as jobs end.
        ranks = {}
        for node_gpus in nodes if wanted is None else (nodes[pos] for pos in sorted(wanted)):
            rank = rank_of(node_gpus)
            if rank is not None:
                ranks[node_gpus.pos] = rank
        required_short = sum(1 for pos in required_set if pos not in ranks)
        others = len(ranks) - (len(required_set) - required_short)
        twins = {}
        steps = self._release_steps(self._releases_on(wanted), twins)
        key = None
        while required_short or others < need:
            step = next(steps, None)
            if step is None:
                return None
            key, changed = step
            for pos in changed:
                was = pos in ranks
                rank = rank_of(twins[pos])
                if rank is None:
                    ranks.pop(pos, None)
                else:
                    ranks[pos] = rank
                if was != (rank is not None):
                    if pos in required_set:
                        required_short += -1 if rank is not None else 1
                    else:
                        others += 1 if rank is not None else -1
        shadow = now if key is None else _shadow_of(key, now)
        if gang.exact is not None:
            chosen = list(required)
        else:
            rest = sorted(rank for pos, rank in ranks.items() if pos not in required_set)
            chosen = [pos for _, pos in sorted([ranks[pos] for pos in required] + rest[:need])]
        places = []
        for pos in chosen:
            twin = twins.get(pos, nodes[pos])
            if gang.exact is not None:
                ids = ids_at[pos]
                slots = twin.pick(len(ids), ids, gang.mem_mb, self.policy)
            else:
                slots = twin.pick(gang.count, gang.gpu_ids, gang.mem_mb, self.policy)
            places.append((nodes[pos], slots))
        return shadow, places

    def _releases_on(self, wanted=None):
        """What running jobs (and those started before the head) free on the node positions
        in `wanted` (None: on every node), one entry per host, in the order the simulation
        frees them: (release key, position, slots, mem_mb)."""
        releases = []
        for seq, (end, start, places, job_mem) in enumerate(self.releases):
            key = None
            for pos, slots in places:
                if wanted is None or pos in wanted:
                    if key is None:
                        key = _release_key(end, start, seq)
                    releases.append((key, pos, slots, job_mem))
        releases.sort()
        return releases

    def _release_steps(self, releases, twins):
        """Free `releases` step by step on twins of the nodes (kept in `twins` by position);
        after each step yield (its release key, the positions it changed).

        Jobs ending at the same moment free their GPUs together; "never" ones one by one, each
        on all its hosts at once.
        """
        at = 0
        while at < len(releases):
            key = releases[at][0]
            changed = set()
            while at < len(releases) and (releases[at][0][:2] == key[:2] if key[0] == 0
                                          else releases[at][0] == key):
                _, pos, slots, job_mem = releases[at]
                twin = twins.get(pos)
                if twin is None:
                    twin = twins[pos] = self.nodes[pos].copy()
                twin.hold(slots, job_mem, -1)
                changed.add(pos)
                at += 1
            yield key, changed


def _shadow_of(key, now):
    """When the head starts at the latest, from the release key of the step that lets it fit."""
    return max(key[1], now) if key[0] == 0 else _INFINITY


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
# Jobs on several hosts


def _holds_several_hosts(job):
    return bool(job.parts and len(job.parts) > 1) or job.multi_host


class _Gang:
    """What a job on several hosts asks for: `hosts` distinct hosts with `count` GPUs each
    (exactly `gpu_ids` on each, when given), or exactly `exact`: ((host name, GPU ids), ...) in
    rank order; `mem_mb` per GPU on every host (None: exclusive GPUs); `nodelist` and `exclude`
    as given.

    Built from a Job, or from a request that carries nnodes and node_gpu_ids like one.
    """

    __slots__ = ("hosts", "count", "gpu_ids", "mem_mb", "exact", "nodelist", "exclude")

    def __init__(self, request):
        exact = getattr(request, "node_gpu_ids", None)
        self.exact = tuple((name, tuple(ids)) for name, ids in exact) if exact else None
        self.gpu_ids = tuple(request.gpu_ids) if request.gpu_ids and not exact else None
        self.count = len(self.gpu_ids) if self.gpu_ids else (request.gpus or 0)
        self.hosts = len(self.exact) if exact else (getattr(request, "nnodes", None) or 1)
        self.mem_mb = request.mem_mb
        self.nodelist = tuple(request.nodelist) if request.nodelist else None
        self.exclude = tuple(request.exclude) if request.exclude else None


class _GangScope:
    """Where a job on several hosts may go in one pass.

    required: positions of the up hosts it must use (a --nodelist naming fewer hosts than it
    needs; for node_gpu_ids, its hosts in rank order). allowed: the hosts it may choose the
    rest among (None: any up host). down: names of hosts it must use that are not up.
    conflict: why its exact hosts contradict its own --nodelist/--exclude, or None.
    """

    __slots__ = ("required", "allowed", "down", "conflict")

    def __init__(self):
        self.required = ()
        self.allowed = None
        self.down = ()
        self.conflict = None


def _listed_hosts(nodelist, exclude):
    """The distinct --nodelist names not excluded, in the order given, or None without one."""
    if nodelist is None:
        return None
    excluded = frozenset(exclude or ())
    listed = []
    for name in nodelist:
        if name not in excluded and name not in listed:
            listed.append(name)
    return tuple(listed)


def _exact_hosts_conflict(names, nodelist, exclude):
    """Why the hosts of node_gpu_ids can never satisfy the job's own limits, or None.

    The same rule as for a count of hosts: a --nodelist naming at least as many hosts must
    contain them all; one naming fewer must be among them; --exclude may name none of them.
    """
    seen = set()
    for name in names:
        if name in seen:
            return "host %s is named twice" % name
        seen.add(name)
    excluded = frozenset(exclude or ())
    for name in names:
        if name in excluded:
            return "host %s is excluded" % name
    listed = _listed_hosts(nodelist, exclude)
    if listed:
        if len(listed) >= len(names):
            for name in names:
                if name not in listed:
                    return "host %s is not in its --nodelist" % name
        else:
            for name in listed:
                if name not in seen:
                    return "its --nodelist names %s, which it asks no GPUs on" % name
    return None


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


def _part_words(gang, free=False):
    """What one part of a job on several hosts needs: `4 GPUs`, `GPUs 0,1`, with `free` or
    the memory per GPU."""
    words = _gpu_word(gang.gpu_ids) if gang.gpu_ids is not None else _count_word(gang.count)
    if gang.mem_mb is not None:
        return "%s with %d MB free" % (words, gang.mem_mb)
    return words + " free" if free else words


def _exact_words(exact, mem_mb):
    """`GPUs 0,1 on n1 and GPU 0 on n2`, with the memory per GPU when it shares."""
    parts = ["%s on %s" % (_gpu_word(ids), name) if ids else "host %s" % name
             for name, ids in exact]
    words = parts[0] if len(parts) == 1 else "%s and %s" % (", ".join(parts[:-1]), parts[-1])
    if mem_mb is not None:
        many = sum(len(ids) for _, ids in exact) > 1
        words += " with %d MB free%s" % (mem_mb, " each" if many else "")
    return words


def _part_problems(node_gpus, name, ids, mem_mb):
    """Why exact GPUs on an up host can never be given: missing GPUs, or too little memory."""
    missing = [i for i in ids if i not in node_gpus.slot_of]
    if missing:
        return ["%s has no %s" % (name, _gpu_word(missing))]
    if mem_mb is None:
        return []
    small = [i for i in ids if node_gpus.cap_mb[node_gpus.slot_of[i]] < mem_mb]
    if small:
        return ["%s never has %d MB free on %s" % (name, mem_mb, _gpu_word(small))]
    return []


def _gang_head_reason(cluster, gang, scope, shadow, now):
    """What a head on several hosts waits for: the hosts still busy, or how many have room."""
    nodes = cluster.nodes
    if gang.exact is not None:
        busy = [name for pos, (name, ids) in zip(scope.required, gang.exact)
                if nodes[pos].pick(len(ids), ids, gang.mem_mb, cluster.policy) is None]
        reason = "Resources: needs %s (%s busy)" % (_exact_words(gang.exact, gang.mem_mb),
                                                    ", ".join(busy))
    else:
        which = " it may use" if scope.allowed is not None and not scope.required else ""
        reason = "Resources: needs %d hosts%s with %s each" % (gang.hosts, which,
                                                              _part_words(gang, free=True))
        busy = [nodes[pos].name for pos in scope.required
                if cluster._gang_rank(nodes[pos], gang, _NO_PHANTOM) is None]
        if scope.required:
            reason += ", including %s" % ", ".join(nodes[pos].name for pos in scope.required)
        if busy:
            reason += " (%s busy)" % ", ".join(busy)
        else:
            room = len(scope.required) + sum(
                1 for node_gpus in (nodes if scope.allowed is None else scope.allowed.each())
                if cluster._gang_rank(node_gpus, gang, _NO_PHANTOM) is not None)
            reason += ", none has" if not room else ", 1 has" if room == 1 else ", %d have" % room
    if shadow is not None and shadow != _INFINITY:
        reason += "; expected within %s" % format_duration(shadow - now)
    return reason


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


class _Hold:
    """The one backfill reservation of a pass: when the head job starts at the latest
    (shadow), the reason of every job that waits behind it, and hosts: (node, slots) on each
    host it will use, every slot held by a phantom exclusive holder so that nothing else is
    placed there."""

    __slots__ = ("shadow", "behind", "hosts")

    def __init__(self, job, shadow, hosts):
        self.shadow = shadow
        self.behind = "Priority: behind job %s" % job.id
        self.hosts = tuple((node_gpus, frozenset(slots)) for node_gpus, slots in hosts if slots)

    def admits(self, job, now):
        """Whether a job ends before the head must start, so it may use the head's GPUs."""
        time_limit = job.time_limit
        return bool(time_limit) and now + time_limit <= self.shadow

    def touches(self, allowed):
        """Whether a job limited to the nodes `allowed` could use a reserved GPU."""
        for node_gpus, _ in self.hosts:
            if node_gpus.pos in allowed:
                return True
        return False

    def pick(self, count, gpu_ids, mem_mb, policy, allowed):
        """(node, slots) for a one-host job that may use the reserved GPUs, or (None, None)."""
        for node_gpus, phantom in self.hosts:
            if allowed is not None and node_gpus.pos not in allowed:
                continue
            slots = node_gpus.pick(count, gpu_ids, mem_mb, policy, phantom)
            if slots is not None:
                return node_gpus, slots
        return None, None

    def phantoms(self):
        """{node position: reserved slots}, for a job on several hosts that may use them."""
        return {node_gpus.pos: phantom for node_gpus, phantom in self.hosts}


def _take_head(cluster, decided, job, shadow, hosts, reason):
    """Make `job` the head: record its reservation and reason, and set its GPUs aside."""
    hold = _Hold(job, shadow, hosts)
    decided.head = job.id
    decided.shadow_time = shadow
    decided.reserved = frozenset((node_gpus.name, node_gpus.indices[slot])
                                 for node_gpus, slots in hold.hosts for slot in slots)
    decided.waiting[job.id] = reason
    for node_gpus, slots in hosts:
        if slots:
            # A phantom exclusive holder keeps every later job off the head's GPUs.
            cluster.grant(node_gpus, slots, None)
    return hold


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
    hold = None  # the backfill reservation, once a job waits as the head
    # Requests that cannot start for the rest of the pass (resources only shrink while it
    # walks the queue) -> their reason: most of a long queue is settled by one lookup here.
    # A request limited to some nodes is its own key: 1 GPU on node a is not 1 GPU anywhere.
    settled = {}
    # Requests that cannot start without the reserved GPUs: only short jobs try those.
    need_reserved = set()

    for job in jobs:
        nnodes = job.nnodes
        if nnodes is not None and (nnodes > 1 or job.node_gpu_ids):
            hold = _schedule_gang(job, cluster, decided, hold, settled, need_reserved, now)
            continue
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
            if not time_limit or now + time_limit > hold.shadow:
                waiting[job.id] = hold.behind
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
            elif hold is None:
                reservation = cluster.reserve(count, gpu_ids, mem_mb, now, allowed)
                if reservation is not None:
                    shadow, reserved_node, slots = reservation
                    hosts = ((reserved_node, slots),)
                else:
                    shadow, hosts = _INFINITY, ()
                hold = _take_head(cluster, decided, job, shadow, hosts,
                                  _head_reason(cluster, count, gpu_ids, mem_mb, shadow, now,
                                               allowed))
                if not hold.hosts:
                    settled[request] = hold.behind
                continue
            elif not hold.hosts or (allowed is not None and not hold.touches(allowed)):
                waiting[job.id] = settled[request] = hold.behind
                continue
            else:
                need_reserved.add(request)
                time_limit = job.time_limit
                if not time_limit or now + time_limit > hold.shadow:
                    waiting[job.id] = hold.behind
                    continue
        if node_gpus is None:
            node_gpus, slots = hold.pick(count, gpu_ids, mem_mb, policy, allowed)
            if node_gpus is None:
                waiting[job.id] = settled[request] = hold.behind
                continue
        cluster.grant(node_gpus, slots, mem_mb)
        slots.sort()  # slots follow GPU index order, so the granted indices come out sorted
        indices = node_gpus.indices
        starts.append((job, Allocation(node_gpus.name, tuple([indices[s] for s in slots]),
                                       mem_mb)))
        if hold is None:
            releases.append((now + job.time_limit if job.time_limit else None, now,
                             ((node_gpus.pos, slots),), mem_mb))
    return decided


def _schedule_gang(job, cluster, decided, hold, settled, need_reserved, now):
    """Decide one pending job on several hosts (or on exact named hosts): start it on all its
    hosts at once, make it the head, or give it its reason. Returns the pass's reservation,
    new if this job became the head.

    The same steps as for a one-host job, on the whole request: what cannot start is settled
    for the pass; the head reserves GPUs on every host it will use; a later job on several
    hosts may use reserved GPUs only if it ends before the head must start.
    """
    waiting = decided.waiting
    # The whole request, read straight from the job: most of a long queue stops here.
    key = ("hosts", job.nnodes, job.gpus, job.gpu_ids, job.mem_mb, job.node_gpu_ids,
           job.nodelist, job.exclude)
    reason = settled.get(key)
    if reason is not None:
        waiting[job.id] = reason
        return hold
    if key in need_reserved and not hold.admits(job, now):
        waiting[job.id] = hold.behind
        return hold
    gang = _Gang(job)
    scope = cluster.gang_scope(gang)
    places = None
    if key not in need_reserved:
        places = cluster.place_gang(gang, scope)
        if places is None:
            if not cluster.gang_ever_fits(gang, scope):
                waiting[job.id] = settled[key] = cluster.gang_unfit_reason(gang, scope)
                return hold
            if hold is None:
                reservation = cluster.reserve_gang(gang, scope, now)
                shadow, hosts = reservation if reservation is not None else (_INFINITY, ())
                hold = _take_head(cluster, decided, job, shadow, hosts,
                                  _gang_head_reason(cluster, gang, scope, shadow, now))
                if not hold.hosts:
                    settled[key] = hold.behind
                return hold
            if not hold.hosts:
                waiting[job.id] = settled[key] = hold.behind
                return hold
            need_reserved.add(key)
            if not hold.admits(job, now):
                waiting[job.id] = hold.behind
                return hold
    if places is None:
        places = cluster.place_gang(gang, scope, hold.phantoms())
        if places is None:
            waiting[job.id] = settled[key] = hold.behind
            return hold
    mem_mb = gang.mem_mb
    allocations = []
    for node_gpus, slots in places:
        cluster.grant(node_gpus, slots, mem_mb)
        slots.sort()
        indices = node_gpus.indices
        allocations.append(Allocation(node_gpus.name, tuple([indices[s] for s in slots]),
                                      mem_mb))
    decided.starts.append((job, tuple(allocations) if gang.hosts > 1 else allocations[0]))
    if hold is None:
        cluster.releases.append((now + job.time_limit if job.time_limit else None, now,
                                 tuple((node_gpus.pos, slots) for node_gpus, slots in places),
                                 mem_mb))
    return hold


# ---------------------------------------------------------------------------------------------
# Time slicing


def time_slice_victims(pending, nodes, running, over_slice, now):
    """Ids of the over-slice jobs to requeue so the first waiting job that could use them fits.

    The first pending job (queue order) that does not fit now but would fit once every
    over-slice job let go of its GPUs decides: on the node where the fewest over-slice jobs
    must stop for it (ties by list order), the longest-running ones are chosen first, and any
    that turn out not to be needed are spared. A job limited to some nodes gains only from
    jobs stopped on those. [] when no waiting job would gain.

    Jobs on several hosts take no part in the switch: a pending one is passed over (it gains
    no victims; it waits for its hosts as the backfill head or behind it), and a running one
    holds its GPUs on every host but is never chosen, since stopping it would free GPUs on
    hosts the waiting job does not use.
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
        if _holds_several_hosts(job):
            continue
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
        nnodes = job.nnodes
        if nnodes is not None and (nnodes > 1 or job.node_gpu_ids):
            continue
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

    A request on several hosts (nnodes > 1, or node_gpu_ids) is refused when no cluster state
    could run it: fewer hosts that run jobs (and that it may use) than it needs, too few of
    them with `gpus` GPUs (of mem_mb each), a host of its node_gpu_ids that does not exist or
    lacks those GPUs.
    """
    # model.ResourceRequest has no nnodes or node_gpu_ids yet: the controller passes a
    # Job-like request for a job on several hosts, so they are read when present.
    nnodes = getattr(request, "nnodes", None)
    if getattr(request, "node_gpu_ids", None) or (nnodes is not None and nnodes > 1):
        return _unsatisfiable_gang(_Gang(request), list(nodes))
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


def _unsatisfiable_gang(gang, nodes):
    """Why no state of `nodes` could ever run a job on several hosts, or None."""
    if gang.exact is not None:
        return _unsatisfiable_exact(gang, nodes)
    asks = "asks for %d hosts" % gang.hosts
    listed = _listed_hosts(gang.nodelist, gang.exclude)
    required = []
    if listed is not None and (len(listed) >= gang.hosts or not listed):
        others, refusal = _nodes_allowed(nodes, gang.nodelist, gang.exclude)
        if refusal is not None:
            return refusal
    elif listed is None and gang.exclude is not None:
        others, refusal = _nodes_allowed(nodes, None, gang.exclude)
        if refusal is not None:
            return refusal
    else:
        by_name = {}
        for node in nodes:
            by_name.setdefault(node.name, node)
        for name in listed or ():
            node = by_name.get(name)
            if node is None:
                return "--nodelist names %s, which is not a node of this cluster" % name
            if node.submit_only:
                return "node %s is submit-only: it runs no jobs" % name
            required.append(node)
        taken = frozenset(gang.exclude or ()) | frozenset(listed or ())
        others = [node for node in nodes if not node.submit_only and node.name not in taken]
    limited = gang.nodelist is not None or gang.exclude is not None
    total = len(required) + len(others)
    if gang.hosts > total:
        if not limited:
            if not total:
                return "%s; this cluster has no node that runs jobs" % asks
            return "%s; this cluster has %d that run%s jobs" % (asks, total,
                                                                "s" if total == 1 else "")
        return "%s; it may use only %d (%s)" % (asks, total, _names(required + others))
    if gang.count == 0 and gang.gpu_ids is None:
        return None
    each = "%s each" % _asked_words(gang)
    for node in required:
        if not _could_hold(node, gang):
            return "%s with %s, including %s; node %s has %s" % (
                asks, each, ", ".join(n.name for n in required), node.name,
                _node_has(node, gang))
    need = gang.hosts - len(required)
    holding = sum(1 for node in others if _could_hold(node, gang))
    if holding >= need:
        return None
    which = ""
    if required:
        which = " besides %s" % ", ".join(n.name for n in required)
    elif limited:
        which = " it may use"
    have = _count_word(gang.count) if gang.gpu_ids is None else _gpu_word(gang.gpu_ids)
    if gang.mem_mb is not None:
        have = ("%d such GPUs" % gang.count if gang.count > 1 else "1 such GPU"
                ) if gang.gpu_ids is None else "%s with %d MB" % (have, gang.mem_mb)
    if not holding:
        return "%s with %s; no host%s has %s" % (asks, each, which, have)
    return "%s with %s; only %d host%s%s %s %s" % (
        asks, each, holding, "" if holding == 1 else "s", which,
        "has" if holding == 1 else "have", have)


def _asked_words(gang):
    """What one part of a job on several hosts asks for: `4 GPUs`, `GPUs 0,1 of 40000 MB`."""
    words = _gpu_word(gang.gpu_ids) if gang.gpu_ids is not None else _count_word(gang.count)
    return words if gang.mem_mb is None else "%s of %d MB" % (words, gang.mem_mb)


def _could_hold(node, gang):
    """Whether one part of a job on several hosts fits this node when it is empty (judged on
    total GPU memory)."""
    if gang.gpu_ids is not None:
        by_index = {gpu.index: gpu for gpu in node.gpus}
        return all(i in by_index and (gang.mem_mb is None or by_index[i].memory_mb >= gang.mem_mb)
                   for i in gang.gpu_ids)
    if gang.mem_mb is None:
        return len(node.gpus) >= gang.count
    return sum(1 for gpu in node.gpus if gpu.memory_mb >= gang.mem_mb) >= gang.count


def _node_has(node, gang):
    """What a node offers one part of a job on several hosts: `2 GPUs`, `GPUs 0-3`..."""
    if gang.gpu_ids is not None:
        indices = [gpu.index for gpu in node.gpus]
        return "GPUs %s" % _index_ranges(indices) if indices else "no GPUs"
    if gang.mem_mb is None:
        return _count_word(len(node.gpus)) if node.gpus else "no GPUs"
    big = sum(1 for gpu in node.gpus if gpu.memory_mb >= gang.mem_mb)
    return "%s with %d MB" % (_count_word(big), gang.mem_mb) if big else \
        "no GPU with %d MB" % gang.mem_mb


def _unsatisfiable_exact(gang, nodes):
    """Why exact GPUs on named hosts (node_gpu_ids) could never be given, or None."""
    wanted = _exact_words(gang.exact, None)
    conflict = _exact_hosts_conflict([name for name, _ in gang.exact], gang.nodelist,
                                     gang.exclude)
    if conflict is not None:
        return "asks for %s; %s" % (wanted, conflict)
    by_name = {}
    for node in nodes:
        by_name.setdefault(node.name, node)
    for name, ids in gang.exact:
        node = by_name.get(name)
        if node is None:
            return "asks for %s; %s is not a node of this cluster" % (wanted, name)
        if node.submit_only:
            return "node %s is submit-only: it runs no jobs" % name
        by_index = {gpu.index: gpu for gpu in node.gpus}
        if any(i not in by_index for i in ids):
            return "asks for %s on %s; node %s has %s" % (
                _gpu_word(ids), name, name,
                "GPUs %s" % _index_ranges(by_index) if by_index else "no GPUs")
        if gang.mem_mb is not None and ids:
            smallest = min(ids, key=lambda i: by_index[i].memory_mb)
            if by_index[smallest].memory_mb < gang.mem_mb:
                return "asks for %d MB per GPU on %s on %s; GPU %d there has %d MB" % (
                    gang.mem_mb, _gpu_word(ids), name, smallest, by_index[smallest].memory_mb)
    return None
