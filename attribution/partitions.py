"""Attributors that share the work: advertisers' notices in partitions, each with one writer.

The sink and imports put an advertiser's notices on the stream of its partition
(``records.notice_partition``: CRC-32 of the advertiser id modulo
``CLICKTRAIL_ATTRIBUTION_PARTITIONS``). Each partition has a lease in Redis, so it has one writer
at a time and its revisions stay ordered, and a feed watermark of its own that only its writer
moves (every write of one advertiser is stamped in its partition's sequence, and the feed reads
the watermark of the advertiser's partition).

Each live attributor renews an entry in ``keys.ATTRIBUTORS`` (expiring after the lease time).
With the live ones sorted by name, the one of rank ``r`` out of ``k`` works on the partitions
``n`` with ``n % k == r``: between ticks it gives back the leases of partitions it should no
longer hold, and takes those it should that are free. A newcomer thus gets its share as soon as
the others finish their tick; a dead one's share is taken once its entry and leases lapse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from clicktrail import keys, scripting

log = logging.getLogger("clicktrail.attributor")

_JOIN_LUA = scripting.source("attributors_join")
_LEASE_LUA = scripting.source("lease_take")
_RELEASE_LUA = scripting.source("lease_release")
_RAISE_LUA = scripting.source("watermark_raise")


@dataclass
class Partition:
    """One partition's keys, and the last stamp its writer (this process) gave."""

    index: int
    stream: str
    lease: str
    watermark: str
    #: Time stamp of the partition's last writes here; 0: read the published watermark first.
    written_ms: int = 0

    @classmethod
    def of(cls, index: int) -> Partition:
        return cls(index, keys.attribution_stream(index), keys.attributor_lease(index), keys.feed_watermark(index))


def share(index: int, rank: int, live: int) -> bool:
    """Whether partition ``index`` belongs to the attributor of ``rank`` among ``live`` ones."""
    return live > 0 and index % live == rank


class Membership:
    """This attributor's entry among the live ones, and its leases."""

    def __init__(self, r: redis.Redis, name: str, partitions: int, lease_ms: int) -> None:
        self.redis = r
        self.name = name
        self.count = partitions
        self.lease_ms = lease_ms
        self._join = r.register_script(_JOIN_LUA)
        self._take = r.register_script(_LEASE_LUA)
        self._release = r.register_script(_RELEASE_LUA)
        self._raise = r.register_script(_RAISE_LUA)
        self.blocked = False  # another live attributor counts partitions differently

    def wanted(self) -> set[int]:
        """Renew our entry; the partitions we should hold now (none while blocked)."""
        live = [name.decode() for name in self._join(keys=[keys.ATTRIBUTORS],
                                                     args=[self.name, self.lease_ms, self.count])]
        blocked = not live
        if blocked and not self.blocked:
            log.error("attributor %s waits: a live attributor uses another CLICKTRAIL_ATTRIBUTION_PARTITIONS "
                      "than %d (stop those of the other count)", self.name, self.count)
        self.blocked = blocked
        if blocked:
            return set()
        rank = live.index(self.name)
        return {n for n in range(self.count) if share(n, rank, len(live))}

    def hold(self, partition: Partition) -> bool:
        """Take or renew a partition's lease; False while another attributor holds it."""
        return bool(self._take(keys=[partition.lease], args=[self.name, self.lease_ms]))

    def give_back(self, partition: Partition) -> None:
        self._release(keys=[partition.lease], args=[self.name])

    def leave(self) -> None:
        """Drop our entry, so the others take our share at once rather than after our lease."""
        self.redis.hdel(keys.ATTRIBUTORS, self.name)

    def publish(self, partition: Partition, stamp_ms: int, client=None) -> None:
        """Raise the partition's watermark to ``stamp_ms`` (in ``client``, a pipeline, if given)."""
        self._raise(keys=[partition.watermark], args=[stamp_ms], client=client)
