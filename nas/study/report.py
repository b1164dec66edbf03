"""report.md (+ PNGs, + study.json) of a study, from the table of what has finished so far.

Written after every phase and refreshed while runs go on, so a long study can be read before it ends;
rows still running show as "running". The statistics are those of nas.study.stats.
"""
from __future__ import annotations

import itertools
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from nas.study import figures, stats
from nas.genotype import load
from nas.study.runner import genotype_agreement
from nas.utils.io import atomic_write_text


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "running"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _machine() -> str:
    import os
    return (f"{platform.machine()} {os.cpu_count()} logical cores, {platform.system()}, "
            f"python {platform.python_version()}, torch {torch.__version__}")


def write(study: Any, table: dict[str, Any], study_dir: Path, commands: list[str], bootstrap: dict[str, Any],
          elapsed_s: float, finished: bool) -> Path:
    """Write report.md and its figures into `study_dir`; returns the report's path."""
    if table["kind"] == "search_vs_random":
        body = _search_vs_random(study, table, study_dir, bootstrap)
    else:
        body = _proxy_fidelity(study, table, study_dir)
    state = "finished" if finished else "in progress (refreshed as runs finish)"
    run_s = sum(_run_seconds(table))
    lines = [f"# Study `{study.name}` ({table['kind']}): {state}", "",
             f"Study directory: `{study_dir}`, on {_machine()}. Its runs' epochs took {run_s / 60:.1f} min in all "
             f"(startup and evaluation outside epochs not counted); this invocation's wall time "
             f"{elapsed_s / 60:.1f} min (a resumed study counts only its own).",
             f"Metric: retrained {table['metric']} of the {table['selection']} epoch "
             f"({'best validation epoch, as published numbers are' if table['selection'] == 'best' else 'final epoch, no model selection'}).",
             "", *body, "", "## Commands", "", "The study started these multiruns (each run is an ordinary run "
             "directory under search/ or retrain/):", "", "```", *commands, "```", ""]
    path = study_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _run_seconds(table: dict[str, Any]) -> list[float]:
    """The logged epoch times of every run the table knows (searches and retrains)."""
    rows = table["rows"]
    if table["kind"] == "search_vs_random":
        return [r["search_s"] or 0.0 for r in rows] + [s for r in rows for s in r["retrain_s"]]
    return [s or 0.0 for s in table["search_s"].values()] + [r["retrain_s"] or 0.0 for r in rows]


def _search_vs_random(study: Any, table: dict[str, Any], study_dir: Path, boot: dict[str, Any]) -> list[str]:
    rows, metric = table["rows"], table["metric"]
    out = [f"Strategy under test: `nas.search {' '.join(study.search) or '(defaults)'}`; "
           f"{study.random_per_seed} random genotypes per seed from the same space, within "
           f"{study.tolerance:.0%} of the searched genotype's GFLOPs; every genotype retrained with "
           f"`nas.retrain G.json {' '.join(study.retrain)} seed={study.retrain_seed}`.", "",
           f"| seed | searched {metric} | random {metric} (mean ± std, n) | searched − random mean | "
           f"searched GFLOPs | random GFLOPs | arch gap (median best−2nd) | search min | retrain min (each) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = None if r["searched"] is None or r["random_mean"] is None else r["searched"] - r["random_mean"]
        rand = "running" if r["random_mean"] is None else \
            f"{r['random_mean']:.3f} ± {r['random_std']:.3f} ({len(r['random'])})"
        rg = r.get("random_GFLOPs") or []
        rg_text = f"{min(rg):.4f}-{max(rg):.4f}" if rg else "-"
        retrain = ", ".join(f"{s / 60:.1f}" for s in r["retrain_s"]) or "-"
        search = "-" if r["search_s"] is None else f"{r['search_s'] / 60:.1f}"
        out.append(f"| {r['seed']} | {_f(r['searched'])} | {rand} | {_f(diff, 3)} | "
                   f"{_f(r.get('searched_GFLOPs'), 4)} | {rg_text} | {_f(r['arch_gap'], 4) if r['arch_gap'] is not None else '-'} | "
                   f"{search} | {retrain} |")
    done = [r for r in rows if r["searched"] is not None and r["random"]]
    out.append("")
    if done:
        searched = [r["searched"] for r in done]
        randoms = [r["random"] for r in done]
        diff = stats.paired_difference(searched, randoms)
        wins = sum(r["searched"] > max(r["random"]) for r in done)
        if len(done) > 1:
            low, high = stats.paired_bootstrap_ci(searched, randoms, level=boot["level"],
                                                  resamples=boot["resamples"], seed=boot["seed"])
            interval = (f"{boot['level']:.0%} bootstrap interval [{low:+.3f}, {high:+.3f}] (hierarchical: seeds, "
                        f"then each seed's random genotypes, {boot['resamples']} resamples). The interval "
                        f"{'excludes' if low > 0 or high < 0 else 'includes'} zero.")
        else:  # resampling one seed says nothing about another seed
            interval = "no interval yet: it resamples seeds, and one seed has finished."
        out += [f"**Pooled over {len(done)} seed(s)**: searched {metric} {statistics.fmean(searched):.3f}, "
                f"random {statistics.fmean(x for r in randoms for x in r):.3f}; paired difference "
                f"(searched − that seed's random mean) **{diff:+.3f}**, {interval} The searched genotype beats "
                f"every random one of its seed in {wins} of {len(done)} seed(s).", ""]
        figures.plot_search_vs_random(rows, study_dir / "search_vs_random.png")
        out += ["![searched vs random](search_vs_random.png)", ""]
    genos = [(r["seed"], r["genotype"]) for r in rows if r.get("genotype") is not None]
    if len(genos) > 1:
        pairs = [f"seeds {a}/{b}: {genotype_agreement(ga, gb):.0%}" for (a, ga), (b, gb) in itertools.combinations(genos, 2)]
        randoms = [load(p).genotype for r in rows for p in study.genotype_files(study_dir, r["seed"])[1:] if p.is_file()]
        chance = [genotype_agreement(a, b) for a, b in itertools.combinations(randoms, 2)]
        level = f" For reference, two of the study's random genotypes agree on {statistics.fmean(chance):.0%} " \
                f"on average ({len(chance)} pair{'s' if len(chance) != 1 else ''}): the level of chance." if chance else ""
        out += ["Genotype agreement across seeds (share of ops and inputs equal, position by position): "
                + "; ".join(pairs) + "." + level, ""]
    return out


def _proxy_fidelity(study: Any, table: dict[str, Any], study_dir: Path) -> list[str]:
    out = _fidelity_table(study, table, study_dir, "score", "search-time score")
    for key in study.also_scores:
        out += ["", f"The same candidates ranked by their search-time `{key}` instead:", ""]
        out += _fidelity_table(study, table, study_dir, key, key, plot=False)[2:]
    return out


def _fidelity_table(study: Any, table: dict[str, Any], study_dir: Path, key: str, label: str,
                    plot: bool = True) -> list[str]:
    """The rank statistics per seed of search-time `key` ("score": the one the search ranked by)."""
    rows, metric = table["rows"], table["metric"]
    rows = [{**r, "score": r["score"] if key == "score" else r.get("other_scores", {}).get(key)} for r in rows]
    out = [f"One-shot run: `nas.search {' '.join(study.search) or '(defaults)'}`; per seed {study.candidates} of "
           "its scored candidates, evenly spread over the ranking by search-time score (shared weights), "
           f"retrained with `nas.retrain G.json {' '.join(study.retrain)} seed={study.retrain_seed}`.", "",
           f"| seed | n | Kendall tau | Spearman | sparse Kendall tau (retrained {metric} in bins of {study.sparse_threshold}) | "
           f"precision@{study.precision_k} | search min |", "|---|---|---|---|---|---|---|"]
    taus = []
    for seed in sorted({r["seed"] for r in rows}):
        pts = [r for r in rows if r["seed"] == seed and r["final"] is not None and r["score"] is not None]
        search_min = table["search_s"].get(seed)
        search_text = "-" if search_min is None else f"{search_min / 60:.1f}"
        if len(pts) < 2:
            out.append(f"| {seed} | {len(pts)} | running | | | | {search_text} |")
            continue
        score, final = [p["score"] for p in pts], [p["final"] for p in pts]
        tau = stats.kendall_tau(score, final)
        taus.append(tau)
        k = min(study.precision_k, len(pts))
        out.append(f"| {seed} | {len(pts)} | {_f(tau)} | {_f(stats.spearman(score, final))} | "
                   f"{_f(stats.sparse_kendall_tau(score, final, study.sparse_threshold, bin_x=False))} | "
                   f"{_f(stats.precision_at_k(score, final, k))} | {search_text} |")
    out.append("")
    if taus:
        out += [f"Mean Kendall tau over {len(taus)} seed(s): **{statistics.fmean(taus):.3f}** "
                f"(per seed: {', '.join(f'{t:.3f}' for t in taus)}).", ""]
    pts = [{"score": r["score"], "final": r["final"], "seed": r["seed"]} for r in rows
           if r["final"] is not None and r["score"] is not None]
    if pts and plot:
        title = "supernet score vs retrained " + metric + (f" (mean tau {statistics.fmean(taus):.2f})" if taus else "")
        figures.plot_proxy_fidelity(pts, study_dir / "proxy_fidelity.png", title)
        out += ["![proxy fidelity](proxy_fidelity.png)", ""]
    if plot:
        out += [f"| seed | candidate | {label} | retrained " + metric + " | GFLOPs |", "|---|---|---|---|---|"]
        out += [f"| {r['seed']} | {r['candidate']} | {_f(r['score'], 4)} | {_f(r['final'])} | {_f(r['GFLOPs'], 4)} |"
                for r in rows]
    return out
