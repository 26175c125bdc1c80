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


def compare_systems(a: Mapping[str, Any], b: Mapping[str, Any], metrics: Sequence[str] | None = None,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Per metric: ``{"metric", "a", "b", "diff", "ci_low", "ci_high", "p"}`` (fractions)."""
    pa, pb = a.get("per_query"), b.get("per_query")
    if not pa or not pb:
        raise ValueError("the reports hold no per-query values (written by an older dpr eval?); re-run dpr eval")
    names = [m for m in (metrics or pa) if m in pa and m in pb]
    if not names:
        raise ValueError(f"no metric in both reports (A: {sorted(pa)}, B: {sorted(pb)})")
    rows = []
    for name in names:
        if set(pa[name]) != set(pb[name]):
            raise ValueError(f"{name}: the reports are not over the same queries "
                             f"({len(set(pa[name]) ^ set(pb[name]))} differ): a paired test needs the same ones")
        diff, low, high = paired_bootstrap_diff(pa[name], pb[name], n_resamples=n_resamples, seed=seed)
        p = paired_randomization_test(pa[name], pb[name], n_resamples=max(n_resamples, 10_000), seed=seed)
        mean_a = sum(pa[name].values()) / len(pa[name])
        mean_b = sum(pb[name].values()) / len(pb[name])
        rows.append({"metric": name, "a": mean_a, "b": mean_b, "diff": diff, "ci_low": low, "ci_high": high,
                     "p": p, "n": len(pa[name])})
    return rows


def format_comparison(rows: Sequence[Mapping[str, Any]], name_a: str, name_b: str) -> str:
    lines = [f"| metric | A: {name_a} | B: {name_b} | A - B (95% CI) | p |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " *" if r["p"] < 0.05 else ""
        lines.append(f"| {r['metric']} | {100 * r['a']:.1f} | {100 * r['b']:.1f} | {100 * r['diff']:+.1f} "
                     f"({100 * r['ci_low']:+.1f} to {100 * r['ci_high']:+.1f}) | {r['p']:.4f}{mark} |")
    return "\n".join(lines) + "\n\nvalues in %; p: paired randomisation test, two-sided; * p < 0.05\n"
