"""Ingest's de-duplication window in fixed memory: event ids as 128-bit integers in numpy arrays.

A ring of ``max_ids`` slots holds the committed ids (two ``uint64`` halves) and the time each was
seen, oldest first; an open-addressing hash table (linear probing, ``int32`` slot numbers, at most
half full) finds an id's slot. Both are allocated once: forgetting an id only moves the ring's head,
and a table entry whose slot was forgotten or reused is skipped (its slot no longer holds that id
in the window) until the table is next rebuilt from the live ids. The ids of the running handler
call and of the kept calls wait in a pending area after the ring (grown only by a batch larger
than any before) and are found through the same table.

For the default 500,000 ids that is 28 MiB, allocated at construction (the string window held
about 210 bytes an id, and its tables grew in steps). ``seen_many`` checks a batch in a few numpy
passes, several times cheaper per id than the string window was; ``seen``, one id at a time, costs
a fifth to a half more than it did. The table is rebuilt after some three times ``max_ids`` new
ids, in about 45 ms for the default window.

UUID text is read as its 128-bit value, so one id in upper and in lower case hex is one id (the
string window counted it twice). Ids are expected as UUID text, which ingest checks first.

Example::

    dedupe = Dedupe(max_ids=500_000, window_ms=3_600_000)
    duplicates = dedupe.seen_many(event_ids, now_ms)  # True: in the window, or earlier here
    dedupe.keep()                                      # the handler call returned
    dedupe.commit()                                    # its batch was delivered
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["Dedupe"]

Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]
_M64 = (1 << 64) - 1
_PENDING = 8192  # staged ids that fit before the pending area grows (ingest's batches are smaller)
_DASHES = [8, 13, 18, 23]


def _parse(event_ids: Sequence[str]) -> tuple[Words, Words]:
    """The high and low 64 bits of each UUID text, in one pass over the joined text."""
    raw = "".join(event_ids).encode("ascii")
    digits = raw.translate(None, b"-")
    if (len(raw) != 36 * len(event_ids) or len(digits) != 32 * len(event_ids)
            or (np.frombuffer(raw, np.uint8).reshape(-1, 36)[:, _DASHES] != 45).any()):
        raise ValueError("event ids must be UUID text")
    words = np.frombuffer(binascii.unhexlify(digits), dtype=">u8").reshape(-1, 2)
    return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)


class Dedupe:
    """Event ids seen within a bounded window (count and age); the oldest are forgotten first.

    Staged (see ``tidegate.outputs.Staged``): an id checked by ``seen`` counts for later calls
    only once the stage ``keep``s the handler call and ``commit``s the delivered batch.
    ``seen_many`` is ``seen`` on each id in order, vectorised.
    """

    def __init__(self, *, max_ids: int = 500_000, window_ms: int = 3_600_000) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        self._cap, self._window = max_ids, window_ms
        self._head = self._count = 0  # the window: ring slots head, head+1, ... (mod max_ids)
        self._pending = self._kept = 0  # staged ids: slots max_ids, max_ids+1, ...; kept first
        # odd multipliers of the hash, drawn per instance so that no one can choose colliding ids
        self._k1, self._k2 = (int.from_bytes(os.urandom(8)) | 1 for _ in range(2))
        pending = min(max_ids, _PENDING)
        self._hi = np.zeros(max_ids + pending, dtype=np.uint64)
        self._lo = np.zeros_like(self._hi)
        self._ms = np.zeros(max_ids + pending, dtype=np.int64)
        self._where = np.zeros(pending, dtype=np.int64)  # each staged id's table position
        self._views()
        self._new_table(max_ids + pending)

    def _views(self) -> None:
        self._staging = self._where.size  # the pending area's size
        self._hi_v, self._lo_v, self._ms_v, self._where_v = (
            a.data for a in (self._hi, self._lo, self._ms, self._where))

    def _new_table(self, ids: int) -> None:
        """An empty table of eight positions or more per id (``int32``: four bytes each)."""
        bits = max(10, (8 * ids - 1).bit_length())
        self._table = np.full(1 << bits, -1, dtype=np.int32)
        self._table_v, self._mask, self._shift = self._table.data, (1 << bits) - 1, 64 - bits
        self._writable = 1 << (bits - 1)  # writes left before a rebuild: at most half written

    @property
    def nbytes(self) -> int:
        """The bytes of all the storage: fixed after construction unless the pending area grows."""
        return sum(a.nbytes for a in (self._hi, self._lo, self._ms, self._where, self._table))

    def __len__(self) -> int:
        return self._count

    def _home(self, hi: Words, lo: Words) -> tuple[Words, Ints]:
        """Each id's hash, ``hi * k1 + lo * k2`` modulo 2**64, and its top bits: where its probe
        starts (``seen`` computes the same on Python integers)."""
        mixed = hi * np.uint64(self._k1) + lo * np.uint64(self._k2)
        return mixed, (mixed >> np.uint64(self._shift)).astype(np.int64)

    def _probe(self, hi: int, lo: int, position: int) -> int:
        """-1 if the id is in the window or staged, else the free position where its probe ends."""
        table, his, los, mask, cap = self._table_v, self._hi_v, self._lo_v, self._mask, self._cap
        while (slot := table[position]) >= 0:
            if los[slot] == lo and his[slot] == hi and (
                    (slot - self._head) % cap < self._count if slot < cap
                    else slot - cap < self._pending):
                return -1
            position = (position + 1) & mask
        return position

    def seen(self, event_id: str, now_ms: int) -> bool:
        """True if ``event_id`` was seen in the window or earlier in this batch; else stages it.

        Of the text only the length and the number of dashes are checked (ingest checked more).
        """
        horizon, times = now_ms - self._window, self._ms_v
        while self._count and times[self._head] < horizon:
            self._head, self._count = (self._head + 1) % self._cap, self._count - 1
        if len(event_id) != 36 or event_id.count("-") != 4:
            raise ValueError("event ids must be UUID text")
        value = int(event_id.replace("-", ""), 16)
        hi, lo = value >> 64, value & _M64
        if self._pending == self._staging or not self._writable:
            self._room(1)
        position = self._probe(hi, lo, (hi * self._k1 + lo * self._k2 & _M64) >> self._shift)
        if position < 0:
            return True
        staged = self._pending
        slot = self._cap + staged
        self._hi_v[slot], self._lo_v[slot], self._ms_v[slot] = hi, lo, now_ms  # views renewed
        self._where_v[staged], self._table_v[position] = position, slot
        self._pending, self._writable = staged + 1, self._writable - 1
        return False

    def seen_many(self, event_ids: Sequence[str], now_ms: int) -> list[bool]:
        """``[self.seen(event_id, now_ms) for event_id in event_ids]``, in one pass: a few times
        cheaper per id than ``seen``. Raises ValueError (before staging any) if one is not UUID
        text."""
        if not event_ids:
            return []
        self._expire(now_ms - self._window)
        hi, lo = _parse(event_ids)
        self._room(hi.size)
        mixed, positions = self._home(hi, lo)
        found, positions = self._find(hi, lo, positions)
        new = np.flatnonzero(~found)
        ordered = np.sort(mixed[new])  # equal ids, equal hashes
        if (ordered[1:] == ordered[:-1]).any():  # perhaps an id twice: the later ones are seen
            order = new[np.lexsort((lo[new], hi[new]))]  # stable: the first of equals first
            again = (hi[order[1:]] == hi[order[:-1]]) & (lo[order[1:]] == lo[order[:-1]])
            found[order[1:][again]] = True
            new = np.flatnonzero(~found)
        slots = self._cap + self._pending + np.arange(new.size)
        self._hi[slots], self._lo[slots], self._ms[slots] = hi[new], lo[new], now_ms
        self._where[self._pending:self._pending + new.size] = self._insert(positions[new], slots)
        self._pending, self._writable = self._pending + new.size, self._writable - new.size
        found[new] = False
        result: list[bool] = found.tolist()
        return result

    def _expire(self, horizon: int) -> None:
        """Forget the ids seen before ``horizon``, oldest first, up to the first younger one."""
        step = 256
        while self._count:
            run = self._ms[self._head:min(self._head + self._count, self._cap, self._head + step)]
            young = run >= horizon
            old = int(young.argmax()) if young.any() else run.size
            self._head, self._count = (self._head + old) % self._cap, self._count - old
            if old < run.size:
                return
            step *= 2

    def _find(self, hi: Words, lo: Words, positions: Ints) -> tuple[npt.NDArray[np.bool_], Ints]:
        """Which ids are in the window or staged; where each other one's probe ends (free)."""
        found = np.zeros(hi.size, dtype=bool)
        todo = np.arange(hi.size)
        while todo.size > 16:  # the last few long probes one by one
            slots = self._table[positions[todo]].astype(np.int64)
            occupied = slots >= 0
            ring = (slots - self._head) % self._cap < self._count
            live = np.where(slots < self._cap, ring, slots - self._cap < self._pending)
            hit = occupied & live & (self._lo[slots] == lo[todo]) & (self._hi[slots] == hi[todo])
            found[todo[hit]] = True
            todo = todo[occupied & ~hit]
            positions[todo] = (positions[todo] + 1) & self._mask
        for i in todo.tolist():
            position = self._probe(int(hi[i]), int(lo[i]), int(positions[i]))
            found[i], positions[i] = position < 0, position
        return found, positions

    def _room(self, count: int) -> None:
        """Room for ``count`` more staged ids: a larger pending area, a rebuilt table."""
        if (more := self._pending + count - self._staging) > 0:  # a batch larger than any
            more = max(more, self._staging)
            self._hi, self._lo, self._ms, self._where = (
                np.concatenate([a, np.zeros(more, a.dtype)])
                for a in (self._hi, self._lo, self._ms, self._where))
            self._views()
        if count > self._writable:
            self._rebuild(count)

    def _insert(self, positions: Ints, slots: Ints) -> Ints:
        """Write ``slots`` into the table, each at the first free position from its own."""
        positions, todo = positions.copy(), np.arange(slots.size)
        while todo.size:
            at = positions[todo]
            free = self._table[at] < 0
            self._table[at[free]] = slots[todo[free]]  # of equal positions, one wins
            free[free] = self._table[at[free]] == slots[todo[free]]
            todo = todo[~free]
            positions[todo] = (positions[todo] + 1) & self._mask
        return positions

    def _rebuild(self, extra: int) -> None:
        """A table of the live ids alone with room for ``extra`` more, by chunks (little memory)."""
        live = self._count + self._pending
        if 3 * (live + extra) > self._table.size:
            self._new_table(live + extra)
        self._table.fill(-1)
        for start in range(0, live, 1 << 16):
            order = np.arange(start, min(start + (1 << 16), live))
            staged = order >= self._count
            slots = np.where(staged, order + (self._cap - self._count),
                             (self._head + order) % self._cap)
            positions = self._insert(self._home(self._hi[slots], self._lo[slots])[1], slots)
            self._where[order[staged] - self._count] = positions[staged]
        self._writable = self._table.size // 2 - live

    def keep(self) -> None:
        self._kept = self._pending

    def drop(self) -> None:
        self._pending = self._kept

    def commit(self) -> None:
        """The staged ids join the window in the order seen; beyond ``max_ids`` the oldest go."""
        staged, cap = self._pending, self._cap
        last = np.arange(max(0, staged - cap), staged)  # the staged ids that stay
        tail = (self._head + self._count) % cap
        ring = (tail + last) % cap
        for array in (self._hi, self._lo, self._ms):
            array[ring] = array[cap + last]
        self._table[self._where[last]] = ring
        self._count = min(self._count + staged, cap)
        self._head = (tail + staged - self._count) % cap
        self._pending = self._kept = 0
