"""Scheduling decisions as pure functions: no I/O, no shared memory, no processes.

Everything here takes plain numbers and returns plain numbers, so it is tested by feeding it
values (see ``tests/scheduler/test_policy.py``).
"""

from __future__ import annotations

import random

__all__ = ["victim_order", "steal_batch", "max_spinners"]


def victim_order(sizes: list[int], me: int, rng: random.Random) -> list[int]:
    """Slots worth stealing from, in the order to try them: the non-empty deques other than
    ``me``, starting from a random one (random victim selection, Blumofe & Leiserson,
    JACM 1999) and wrapping around."""
    n = len(sizes)
    if n == 0:
        return []
    start = rng.randrange(n)
    return [j for j in ((start + k) % n for k in range(n)) if j != me and sizes[j] > 0]


def steal_batch(victim_size: int, workers: int, cap: int = 64) -> int:
    """How many records to take from a victim holding ``victim_size``: half of them
    (steal-half, Hendler & Shavit 2002) but no more than an even share among ``workers``
    and ``cap``, and at least one."""
    share = -(-victim_size // max(workers, 1))
    return max(1, min(victim_size // 2, share, cap))


def max_spinners(cores: int) -> int:
    """Idle processes allowed to spin at once: one core is left to whoever has the work."""
    return max(1, cores - 1)
