"""Statistics over seeds, the generated conclusions, and the report / results.json writers."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core import ExperimentResult, atomic_write_text

__all__ = [
    "PairedDiff",
    "conclude",
    "paired_diff",
    "render_report",
    "results_dict",
    "summarize",
    "t_quantile_975",
    "write_outputs",
]

# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30; beyond that the normal 1.96 is close enough.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value). NaN if empty or non-finite."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var)


@dataclass(frozen=True)
class PairedDiff:
    """``method - baseline`` over seeds shared by both."""

    mean: float
    std: float
    ci_low: float | None  # 95% t-interval of the mean difference; None with fewer than 2 seeds
    ci_high: float | None
    wins: int  # seeds where the method is strictly better than the baseline
    n: int

    def verdict(self, higher_is_better: bool) -> str:
        """``'better'``, ``'worse'`` or ``'no measurable difference'`` (CI includes 0, or a single seed)."""
        if self.ci_low is None or self.ci_high is None or not math.isfinite(self.mean):
            return "no measurable difference"
        if self.ci_low <= 0.0 <= self.ci_high:
            return "no measurable difference"
        improved = (self.mean > 0) == higher_is_better
        return "better" if improved else "worse"


def paired_diff(method: Sequence[float], baseline: Sequence[float], higher_is_better: bool) -> PairedDiff:
    """Paired difference statistics: mean ± std of ``method[i] - baseline[i]``, 95% CI, wins / seeds."""
    if len(method) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(method)} and {len(baseline)}")
    diffs = [m - b for m, b in zip(method, baseline)]
    mean, std = summarize(diffs)
    n = len(diffs)
    lo: float | None
    hi: float | None
    if n >= 2 and math.isfinite(std):
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    else:
        lo = hi = None
    wins = sum(1 for d in diffs if (d > 0 if higher_is_better else d < 0))
    return PairedDiff(mean, std, lo, hi, wins, n)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    mag = abs(x)
    if mag >= 1000 or mag < 1e-3:
        return f"{x:.{digits}g}"
    if mag >= 100:
        return f"{x:.1f}"
    if mag >= 10:
        return f"{x:.2f}"
    return f"{x:.{digits}f}"


def _fmt_signed(x: float) -> str:
    s = _fmt(x)
    return s if s.startswith("-") or s in ("0", "n/a") else "+" + s


def _candidates(res: ExperimentResult) -> list[str]:
    return [m for m in res.methods if m != res.baseline and m not in res.reference_methods]


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def conclude(res: ExperimentResult) -> str:
    """One sentence, generated from the numbers: which methods beat the baseline, which do not."""
    if res.skipped:
        return f"Skipped: {res.skipped}."
    if res.error:
        return f"Failed: {res.error}."
    if res.conclusion:
        return res.conclusion
    n = len(res.seeds)
    if res.baseline not in res.methods:
        return "No baseline was measured, so no comparison is made."
    base = res.methods[res.baseline]
    better: list[str] = []
    worse: list[str] = []
    same: list[str] = []
    for m in _candidates(res):
        d = paired_diff(res.methods[m], base, res.higher_is_better)
        verdict = d.verdict(res.higher_is_better)
        label = f"{m} ({_fmt_signed(d.mean)}, {d.wins}/{d.n} seeds)"
        {"better": better, "worse": worse}.get(verdict, same).append(
            m if verdict not in ("better", "worse") else label
        )
    direction = "higher" if res.higher_is_better else "lower"
    if n < 2:
        return (
            f"With a single seed there is no confidence interval, so no difference from {res.baseline} is "
            f"claimed ({res.metric}, {direction} is better)."
        )
    parts = []
    if better:
        parts.append(
            f"{_join(better)} improve{'s' if len(better) == 1 else ''} {res.metric} over {res.baseline}"
        )
    if worse:
        parts.append(f"{_join(worse)} {'is' if len(worse) == 1 else 'are'} worse than {res.baseline}")
    if same:
        parts.append(
            f"{_join(same)} show{'s' if len(same) == 1 else ''} no measurable difference from {res.baseline} "
            f"(95% CI of the paired difference includes 0)"
        )
    if not parts:
        return f"Only {res.baseline} was measured."
    text = "; ".join(parts)
    return f"Over {n} seeds ({res.metric}, {direction} is better, paired by seed): {text}."


def _method_block(values: Sequence[float]) -> dict[str, Any]:
    mean, std = summarize(values)
    return {"mean": float(mean), "std": float(std), "per_seed": [float(v) for v in values]}


def results_dict(results: Sequence[ExperimentResult], config: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` document: ``{"experiments": {...}, "config": {...}}``."""
    experiments: dict[str, Any] = {}
    for res in results:
        entry: dict[str, Any] = {
            "metric": res.metric,
            "higher_is_better": bool(res.higher_is_better),
            "methods": {m: _method_block(v) for m, v in res.methods.items()},
            "baseline": res.baseline,
            "seeds": list(res.seeds),
            "conclusion": conclude(res),
            "seconds": round(res.seconds, 2),
        }
        if res.baseline in res.methods and len(res.methods) > 1:
            base = res.methods[res.baseline]
            entry["paired_differences"] = {
                m: _paired_block(paired_diff(v, base, res.higher_is_better), res.higher_is_better)
                for m, v in res.methods.items()
                if m != res.baseline and len(v) == len(base)
            }
        if res.secondary:
            entry["secondary_metrics"] = {
                name: {
                    "higher_is_better": bool(hib),
                    "methods": {m: _method_block(v) for m, v in per_method.items()},
                }
                for name, (hib, per_method) in res.secondary.items()
            }
        if res.reference_methods:
            entry["reference_methods"] = list(res.reference_methods)
        if res.figures:
            entry["figures"] = [f.path for f in res.figures]
        if res.extra:
            entry["extra"] = res.extra
        if res.skipped:
            entry["skipped"] = res.skipped
        if res.error:
            entry["error"] = res.error
        experiments[res.name] = entry
    return {"experiments": experiments, "config": dict(config)}


def _paired_block(d: PairedDiff, higher_is_better: bool) -> dict[str, Any]:
    return {
        "mean": float(d.mean),
        "std": float(d.std),
        "ci95": None if d.ci_low is None else [float(d.ci_low), float(d.ci_high)],  # type: ignore[arg-type]
        "wins": d.wins,
        "n": d.n,
        "verdict": d.verdict(higher_is_better),
    }


def _pm(values: Sequence[float]) -> str:
    """``mean ± std`` with the decimals the spread supports (two significant digits of the std)."""
    mean, std = summarize(values)
    return _pm_pair(mean, std)


def _pm_pair(mean: float, std: float) -> str:
    if not (math.isfinite(mean) and math.isfinite(std)):
        return f"{_fmt(mean)} ± {_fmt(std)}"
    if abs(mean) >= 1e5 or (0 < abs(mean) < 1e-3 and std < 1e-3):
        return f"{mean:.3g} ± {std:.2g}"
    if std > 0:
        decimals = min(max(1 - math.floor(math.log10(std)), 0), 5)
    else:
        decimals = 0 if abs(mean) >= 100 else 2 if abs(mean) >= 1 else 4
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _experiment_table(res: ExperimentResult) -> list[str]:
    base = res.methods.get(res.baseline)
    sec_names = list(res.secondary)
    head = ["method", f"{res.metric} ({'↑' if res.higher_is_better else '↓'})"]
    head += [f"Δ vs {res.baseline}", "95% CI of Δ", "wins/seeds"]
    head += [f"{s} ({'↑' if res.secondary[s][0] else '↓'})" for s in sec_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, vals in res.methods.items():
        row = [f"**{m}**" if m == res.baseline else m, _pm(vals)]
        if m == res.baseline:
            row += ["baseline", "", ""]
        elif base is not None and len(base) == len(vals):
            d = paired_diff(vals, base, res.higher_is_better)
            ci = "n/a" if d.ci_low is None else f"[{_fmt(d.ci_low)}, {_fmt(d.ci_high)}]"
            pm = _pm_pair(d.mean, d.std)
            row += [pm if pm.startswith("-") else "+" + pm, ci, f"{d.wins}/{d.n}"]
        else:
            row += ["", "", ""]
        if m in res.reference_methods:
            row[0] += " (reference)"
        for s in sec_names:
            v = res.secondary[s][1].get(m)
            row.append(_pm(v) if v else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _best(res: ExperimentResult) -> str | None:
    cands = [m for m in res.methods if m not in res.reference_methods]
    if not cands:
        return None
    key = (
        (lambda m: summarize(res.methods[m])[0])
        if res.higher_is_better
        else (lambda m: -summarize(res.methods[m])[0])
    )
    return max(cands, key=key)


def summary_table(results: Sequence[ExperimentResult]) -> list[str]:
    lines = [
        "| experiment | metric | baseline | best method, or no measurable difference "
        "| best − baseline (paired, 95% CI) | wins/seeds |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        if res.skipped or res.error:
            status = f"skipped: {res.skipped}" if res.skipped else f"failed: {res.error}"
            lines.append(f"| {res.name} | {res.metric} | {res.baseline} | {status} | | |")
            continue
        best = _best(res)
        base = res.methods.get(res.baseline)
        arrow = "↑" if res.higher_is_better else "↓"
        base_txt = f"{res.baseline} {_pm(base)}" if base else res.baseline
        if best is None or base is None or best == res.baseline:
            lines.append(
                f"| {res.name} | {res.metric} {arrow} | {base_txt} | {best or ''} (the baseline) | | |"
            )
            continue
        d = paired_diff(res.methods[best], base, res.higher_is_better)
        ci = "" if d.ci_low is None else f" [{_fmt(d.ci_low)}, {_fmt(d.ci_high)}]"
        best_txt = f"{best} {_pm(res.methods[best])}"
        if d.verdict(res.higher_is_better) != "better":  # the interval includes 0 (or a single seed)
            extreme = "highest" if res.higher_is_better else "lowest"
            best_txt = f"no measurable difference ({extreme} mean: {best_txt})"
        lines.append(
            f"| {res.name} | {res.metric} {arrow} | {base_txt} | {best_txt} | "
            f"{_fmt_signed(d.mean)}{ci} | {d.wins}/{d.n} |"
        )
    return lines


def render_report(results: Sequence[ExperimentResult], config: dict[str, Any]) -> str:
    """The Markdown report."""
    out: list[str] = ["# losskit lab report", ""]
    seeds = config.get("seeds", [])
    out.append(
        f"Command: `{config.get('command', 'losskit lab')}` — mode `{config.get('mode')}`, "
        f"{len(seeds)} seed(s) {seeds}, {config.get('threads')} thread(s), torch {config.get('torch')}, "
        f"Python {config.get('python')}, CPU, float32; total {config.get('seconds', 0):.0f} s."
    )
    out.append("")
    out.append(
        "Each number is the mean ± sample std over seeds. Methods of one seed share the data split, the "
        "corruption/generation, the initial weights and the batch order, so the Δ columns are paired "
        "differences (method − baseline, mean ± std over seeds); the 95% CI is a t-interval of that mean, "
        "and *wins* counts seeds where the method is strictly better. A CI that includes 0 is reported as "
        "no measurable difference. These are small models on small bundled data sets: read effect sizes, "
        "not leaderboards."
    )
    out += ["", "## Summary", ""]
    out += summary_table(results)
    for i, res in enumerate(results, 1):
        out += ["", f"## {i}. `{res.name}` — {res.title}", ""]
        if res.setup:
            out += [res.setup, ""]
        if res.skipped:
            out += [f"**Skipped: {res.skipped}.** No numbers are reported for this experiment.", ""]
            continue
        if res.error:
            out += [f"**Failed: {res.error}.**", ""]
            continue
        out += _experiment_table(res)
        out += ["", f"**Conclusion.** {conclude(res)}", ""]
        for note in res.notes:
            out += [f"- {note}"]
        if res.notes:
            out.append("")
        for fig in res.figures:
            out += [f"![{fig.caption}]({fig.path})", "", f"*{fig.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def _finite_or_null(obj: Any) -> Any:
    """Non-finite floats become ``null`` so the document is strict JSON (a diverged run shows as null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def write_outputs(out_dir: Path, results: Sequence[ExperimentResult], config: dict[str, Any]) -> None:
    """Write ``results.json`` then ``report.md`` into ``out_dir``, each atomically (temp file + ``os.replace``).

    Both documents are fully rendered in memory before anything is written, so an error while rendering
    leaves the previous files untouched.
    """
    out_dir = Path(out_dir)
    doc = json.dumps(_finite_or_null(results_dict(results, config)), indent=2, allow_nan=False) + "\n"
    report = render_report(results, config)
    atomic_write_text(out_dir / "results.json", doc)
    atomic_write_text(out_dir / "report.md", report)
