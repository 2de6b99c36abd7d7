"""Cost–accuracy frontiers and RouterBench's AIQ (average improvement in quality).

AIQ as defined for metallm: take the points (cost ÷ the dearest single arm's cost,
accuracy), clip cost to [0, 1], take their upper convex hull made non-decreasing, extend
it flat to cost 1, and integrate from its cheapest point to 1 (nothing counts left of it).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def upper_hull(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper convex hull of (x, y) points, left to right, made non-decreasing in y."""
    pts = sorted(set(points))
    hull: list[tuple[float, float]] = []
    for x, y in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or below the chord to the new point.
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:
                hull.pop()
            else:
                break
        if hull and hull[-1][0] == x:
            hull.pop()
        hull.append((x, y))
    best = -np.inf
    out = []
    for x, y in hull:
        best = max(best, y)
        out.append((x, best))
    return out


def aiq(points: Iterable[tuple[float, float]], dearest_cost: float) -> float:
    """AIQ of a set of (cost, accuracy) points; cost in any unit, ``dearest_cost`` in the
    same unit (the dearest single arm's)."""
    scaled = [(min(max(c / dearest_cost, 0.0), 1.0), a) for c, a in points]
    if not scaled:
        return 0.0
    hull = upper_hull(scaled)
    if hull[-1][0] < 1.0:
        hull.append((1.0, hull[-1][1]))
    xs = np.array([x for x, _ in hull])
    ys = np.array([y for _, y in hull])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))
