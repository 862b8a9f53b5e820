"""The training/held-out split: deterministic, by point, stratified.

Points are grouped into strata (block, guest CPUs, mode, loops, object size), sorted inside a
stratum by the parameters that vary there (N, refill delay, guest memory), and taken in
consecutive pairs; a hash of the pair's point ids sends one to each half. So every point is
wholly in one half, both halves cover every stratum and the low, middle and high end of N and of
memory, and the split does not change when points of other strata are added. A stratum with an
odd number of points leaves one point alone; its own hash decides its half.
"""

from __future__ import annotations

import hashlib

from ._data import Point

SPLIT_SALT = "rcutune-split-v1"


def _bit(*point_ids: str) -> int:
    digest = hashlib.sha256("|".join((SPLIT_SALT, *point_ids)).encode()).digest()
    return digest[0] & 1


def split_points(points: list[Point]) -> tuple[list[Point], list[Point]]:
    """Split points into (training, held_out), both sorted by point id.

    The same points always split the same way, on any machine and in any input order.
    """
    strata: dict[tuple, list[Point]] = {}
    for p in points:
        strata.setdefault(p.stratum, []).append(p)
    training: list[Point] = []
    held_out: list[Point] = []
    for members in strata.values():
        members = sorted(members, key=lambda p: p.order_key)
        for i in range(0, len(members) - 1, 2):
            a, b = members[i], members[i + 1]
            if _bit(a.point_id, b.point_id):
                a, b = b, a
            training.append(a)
            held_out.append(b)
        if len(members) % 2:
            last = members[-1]
            (held_out if _bit(last.point_id) else training).append(last)
    return sorted(training, key=lambda p: p.point_id), sorted(held_out, key=lambda p: p.point_id)
