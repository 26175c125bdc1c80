"""``dpr eval compare A.json B.json``: is one system better than another, beyond query sampling noise?

From two ``dpr eval`` reports (their per-query values, on the same queries), for each metric: the mean
difference A - B with its 95% paired-bootstrap interval and the two-sided p-value of a paired
randomisation test. A claim that one row beats another should rest on p < 0.05, not on whether the
two rows' own intervals overlap.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_bootstrap_diff, paired_randomization_test

# The randomisation test's sign flips: never fewer than this (p is resolved to about 1e-4).
RANDOMIZATION_RESAMPLES = 10_000


def _system(report: Mapping[str, Any], name: str | None, which: str) -> Mapping[str, Any]:
    systems = report.get("systems") or []
    if not systems:
        raise ValueError(f"report {which} holds no systems")
    if name is None:
        return systems[0]
    for system in systems:
        if system["name"] == name:
            return system
    raise ValueError(f"report {which} has no system {name!r} (it has {[s['name'] for s in systems]})")


def paired_stats(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]],
                 metrics: Sequence[str] | None = None, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> dict[str, dict[str, float]]:
    """``{metric: {"diff", "low", "high", "p"}}`` of ``a - b`` from two per-query tables
    (``{metric: {qid: value}}``, as ``evaluate_run(keep_per_query=True)`` returns them), paired on the
    query ids: the mean difference, its 95% paired-bootstrap interval (``n_resamples``) and the
    two-sided p-value of the paired randomisation test (``max(n_resamples, 10 000)`` sign flips).
    ``metrics``: those to test (default: every metric of ``a``); each must be in both tables, over
    the same queries."""
    out = {}
    for name in (metrics if metrics is not None else list(a)):
        if name not in a or name not in b:
            raise ValueError(f"{name}: not in both per-query tables (A: {sorted(a)}, B: {sorted(b)})")
        if set(a[name]) != set(b[name]):
            raise ValueError(f"{name}: the two sides are not over the same queries "
                             f"({len(set(a[name]) ^ set(b[name]))} differ): a paired test needs the same ones")
        diff, low, high = paired_bootstrap_diff(a[name], b[name], n_resamples=n_resamples, seed=seed)
        p = paired_randomization_test(a[name], b[name], n_resamples=max(n_resamples, RANDOMIZATION_RESAMPLES),
                                      seed=seed)
        out[name] = {"diff": diff, "low": low, "high": high, "p": p}
    return out


def compare_systems(a: Mapping[str, Any], b: Mapping[str, Any], metrics: Sequence[str] | None = None,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Per metric: ``{"metric", "a", "b", "diff", "ci_low", "ci_high", "p"}`` (fractions)."""
    pa, pb = a.get("per_query"), b.get("per_query")
    if not pa or not pb:
        raise ValueError("the reports hold no per-query values (written by an older dpr eval?); re-run dpr eval")
    names = [m for m in (metrics or pa) if m in pa and m in pb]
    if not names:
        raise ValueError(f"no metric in both reports (A: {sorted(pa)}, B: {sorted(pb)})")
    stats = paired_stats(pa, pb, names, n_resamples=n_resamples, seed=seed)
    rows = []
    for name in names:
        mean_a = sum(pa[name].values()) / len(pa[name])
        mean_b = sum(pb[name].values()) / len(pb[name])
        s = stats[name]
        rows.append({"metric": name, "a": mean_a, "b": mean_b, "diff": s["diff"], "ci_low": s["low"],
                     "ci_high": s["high"], "p": s["p"], "n": len(pa[name])})
    return rows


def format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: float) -> str:
    """``p=0.012`` or ``p<0.001``, as a table cell writes it."""
    text = format_p(p)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def format_vs(systems: Sequence[Mapping[str, Any]], baseline: str, metrics: Sequence[str]) -> str:
    """Metrics down, one ``Δ (95% CI) | p`` pair of columns per system compared with ``baseline``
    (each system's ``vs[baseline]``, as :func:`paired_stats` gives it), in percentage points."""
    from eval.evaluate import _label

    others = [s for s in systems if baseline in (s.get("vs") or {})]
    if not others:
        return ""
    header = ["metric"] + [c for s in others for c in (f"{s['name']} - {baseline} (95% CI)", "p")]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "|".join([":---:"] * (len(header) - 1)) + "|"]
    for metric in metrics:
        cells = []
        for s in others:
            r = s["vs"][baseline].get(metric)
            cells += (["-", "-"] if r is None else
                      [f"{100 * r['diff']:+.1f} ({100 * r['low']:+.1f} to {100 * r['high']:+.1f})",
                       format_p(r["p"]) + (" *" if r["p"] < 0.05 else "")])
        lines.append(f"| {_label(metric)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparison(rows: Sequence[Mapping[str, Any]], name_a: str, name_b: str) -> str:
    lines = [f"| metric | A: {name_a} | B: {name_b} | A - B (95% CI) | p |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " *" if r["p"] < 0.05 else ""
        lines.append(f"| {r['metric']} | {100 * r['a']:.1f} | {100 * r['b']:.1f} | {100 * r['diff']:+.1f} "
                     f"({100 * r['ci_low']:+.1f} to {100 * r['ci_high']:+.1f}) | {r['p']:.4f}{mark} |")
    return "\n".join(lines) + "\n\nvalues in %; p: paired randomisation test, two-sided; * p < 0.05\n"
