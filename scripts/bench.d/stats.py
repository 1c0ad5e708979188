"""Pure statistics of the bench: median with its spread over runs, percentiles by nearest
rank, the least-squares slope of a curve, and the rows of several runs folded into one.

No I/O and no clock: scripts/bench.d/test_stats.py covers every function.
"""
import statistics


def pct(values, p):
    """The p-th percentile by nearest rank (rounded)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(p / 100 * len(s))) - 1))]


def median_spread(values):
    """(median, min, max) of the numbers in `values` (None ignored); (None,)*3 if none."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None, None
    return statistics.median(v), min(v), max(v)


def slope(xs, ys):
    """Least-squares slope of ys over xs (None with fewer than two distinct xs)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
            / sum((x - mx) ** 2 for x in xs))


def fold_runs(runs):
    """Rows of several runs (each a list of (figure, unit, better, hedge, alt, alt name))
    as one list of (figure, unit, better, hedge, alt, alt name, hedge spread, alt spread):
    the median of each figure over the runs, its spread (min, max); figures in the order
    of the first run (a figure some runs lack counts over the runs that have it)."""
    order, by = [], {}
    for rows in runs:
        for f, u, bt, h, a, w in rows:
            if f not in by:
                order.append(f)
                by[f] = (u, bt, w, [], [])
            by[f][3].append(h)
            by[f][4].append(a)
    out = []
    for f in order:
        u, bt, w, hs, als = by[f]
        hm, hlo, hhi = median_spread(hs)
        am, alo, ahi = median_spread(als)
        out.append((f, u, bt, hm, am, w, (hlo, hhi), (alo, ahi)))
    return out
