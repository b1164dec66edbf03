"""The two studies: does a search beat random (`SearchVsRandom`), and does a supernet rank its members
as training them would (`ProxyFidelity`).

Each study's config node (conf/study/*.yaml) names its class as `_target_`; the keys are the class's
keyword arguments, so a wrong key or type is refused before any work (nas.config.check_config).
`run()` launches the runs (nas.study.runner), `table()` reads back whatever has finished, so the report
can be refreshed while runs are still going and written again at the end.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from nas.errors import UserError
from nas.genotype import Genotype, load
from nas.study import runner
from nas.study.runner import Launch


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class SearchVsRandom:
    """Per seed: search with the strategy under test, draw `random_per_seed` random genotypes of the same
    space within `flops_tolerance` of the searched one's GFLOPs, retrain all of them under one config
    (`retrain`, the same seed `retrain_seed` for every genotype), and compare their `metric`."""

    kind = "search_vs_random"

    def __init__(self, search: list[str] | None = None, retrain: list[str] | None = None,
                 random_per_seed: int = 3, flops_tolerance: float = 0.1, max_draws: int = 5000,
                 retrain_seed: int = 0, metric: str = "AP", selection: str = "best", name: str = "search_vs_random",
                 search_from: str | None = None):
        if random_per_seed < 1:
            raise UserError(f"study.random_per_seed must be >= 1, got {random_per_seed}")
        if not flops_tolerance > 0:
            raise UserError(f"study.flops_tolerance is a relative tolerance (0.1: within 10%), got {flops_tolerance}")
        if selection not in ("best", "last"):
            raise UserError(f"study.selection must be best or last, got {selection!r}")
        self.search, self.retrain = list(search or []), list(retrain or [])
        self.random_per_seed, self.tolerance, self.max_draws = random_per_seed, flops_tolerance, max_draws
        self.retrain_seed, self.metric, self.selection, self.name = retrain_seed, metric, selection, name
        self.search_from = search_from  # another study's directory whose searches (same overrides) to reuse

    def genotype_files(self, study_dir: Path, seed: int) -> list[Path]:
        files = [study_dir / "genotypes" / f"seed{seed}_searched.json"]
        return files + [study_dir / "genotypes" / f"seed{seed}_random{j}.json" for j in range(self.random_per_seed)]

    def run(self, study_dir: Path, seeds: list[int], launch: Launch) -> None:
        searches = runner.run_searches(launch, study_dir, seeds, self.search, self.search_from)
        files: list[Path] = []
        for seed in seeds:
            searched_path, *random_paths = self.genotype_files(study_dir, seed)
            searched = load(searches[seed] / runner.SEARCH_DONE)
            runner.write_once(searched, searched_path)
            if not all(p.is_file() for p in random_paths):
                drawn = runner.matched_random(searched, self.random_per_seed, self.tolerance, self.max_draws,
                                              seed=1000 + seed)
                for (g, _), path in zip(drawn, random_paths):
                    runner.write_once(g, path)
            files += [searched_path, *random_paths]
        runner.run_retrains(launch, study_dir, files, [*self.retrain, f"seed={self.retrain_seed}"])

    def table(self, study_dir: Path, seeds: list[int]) -> dict[str, Any]:
        rows = []
        for seed in seeds:
            searched_path, *random_paths = self.genotype_files(study_dir, seed)
            search_dir = study_dir / "search" / f"seed{seed}"
            row: dict[str, Any] = {"seed": seed, "searched": None, "random": [], "metric": self.metric,
                                   "search_s": runner.wall_seconds(search_dir), "arch_gap": runner.arch_gap(search_dir)}
            if searched_path.is_file():
                g = load(searched_path)
                row["genotype"] = g.genotype
                row["searched_GFLOPs"] = runner.gflops(g)
                row["searched"] = runner.retrained_metric(study_dir / "retrain" / searched_path.stem,
                                                          self.metric, self.selection)
                row["random_GFLOPs"] = [load(p).provenance.get("GFLOPs") for p in random_paths if p.is_file()]
            values = [runner.retrained_metric(study_dir / "retrain" / p.stem, self.metric, self.selection)
                      for p in random_paths]
            row["random"] = [v for v in values if v is not None]
            row["random_mean"], row["random_std"] = _mean_std(row["random"])
            retrain_s = [runner.wall_seconds(study_dir / "retrain" / p.stem) for p in [searched_path, *random_paths]]
            row["retrain_s"] = [s for s in retrain_s if s is not None]
            rows.append(row)
        return {"kind": self.kind, "metric": self.metric, "selection": self.selection, "rows": rows}


class ProxyFidelity:
    """Per seed: a one-shot search (its supernet scores candidates in shared weights); `candidates` of
    the scored members, spread evenly over the score ranking (best and worst included), are retrained
    under one config, and the search-time scores are compared with the retrained metric by rank."""

    kind = "proxy_fidelity"

    def __init__(self, search: list[str] | None = None, retrain: list[str] | None = None, candidates: int = 10,
                 retrain_seed: int = 0, metric: str = "AP", selection: str = "best",
                 sparse_threshold: float = 0.01, precision_k: int = 3, name: str = "proxy_fidelity",
                 also_scores: list[str] | None = None, search_from: str | None = None):
        if candidates < 2:
            raise UserError(f"study.candidates must be >= 2 (a rank correlation needs two), got {candidates}")
        if not 1 <= precision_k <= candidates:
            raise UserError(f"study.precision_k must be between 1 and study.candidates={candidates}, got {precision_k}")
        if sparse_threshold <= 0:
            raise UserError(f"study.sparse_threshold must be positive, got {sparse_threshold}")
        if selection not in ("best", "last"):
            raise UserError(f"study.selection must be best or last, got {selection!r}")
        self.search, self.retrain, self.candidates = list(search or []), list(retrain or []), candidates
        self.retrain_seed, self.metric, self.selection = retrain_seed, metric, selection
        self.sparse_threshold, self.precision_k, self.name = sparse_threshold, precision_k, name
        self.also_scores = list(also_scores or [])  # other recorded search-time scores to correlate too
        self.search_from = search_from

    def genotype_files(self, study_dir: Path, seed: int) -> list[Path]:
        return [study_dir / "genotypes" / f"seed{seed}_candidate{j}.json" for j in range(self.candidates)]

    def run(self, study_dir: Path, seeds: list[int], launch: Launch) -> None:
        searches = runner.run_searches(launch, study_dir, seeds, self.search, self.search_from)
        files: list[Path] = []
        for seed in seeds:
            paths = self.genotype_files(study_dir, seed)
            if not all(p.is_file() for p in paths):
                for g, path in zip(self._pick(searches[seed]), paths):
                    runner.write_once(g, path)
            files += paths
        runner.run_retrains(launch, study_dir, files, [*self.retrain, f"seed={self.retrain_seed}"])

    def _pick(self, search_dir: Path) -> list[Genotype]:
        """The scored candidates of a one-shot run (pareto.json's `evaluated`), evenly spread over the
        score ranking, each in the envelope of the run's genotype.json with its score in provenance."""
        pareto = search_dir / "pareto.json"
        if not pareto.is_file():
            raise UserError(f"{pareto} is missing: study.search must run a one-shot strategy that scores "
                            "candidates in shared weights (strategy=evolution)")
        report = runner.read_json(pareto)
        score_key = report.get("score", self.metric)
        scored = [e for e in report["evaluated"] if not e.get("violations") and e.get(score_key) is not None]
        if len(scored) < self.candidates:
            raise UserError(f"{pareto} holds {len(scored)} scored candidates, fewer than study.candidates="
                            f"{self.candidates}; enlarge the search's population or lower study.candidates")
        scored.sort(key=lambda e: -e[score_key])
        n, k = len(scored), self.candidates
        picks = [scored[round(i * (n - 1) / (k - 1))] for i in range(k)]  # ranks 0 .. n-1, evenly
        envelope = load(search_dir / runner.SEARCH_DONE)
        return [Genotype(space=envelope.space, genotype=e["genotype"], space_args=envelope.space_args,
                         input_size=envelope.input_size, heatmap_size=envelope.heatmap_size,
                         provenance={"search_score": {score_key: e[score_key]},
                                     "other_scores": {k: e.get(k) for k in self.also_scores},
                                     "search_run": str(search_dir),
                                     "GFLOPs": e.get("GFLOPs"), "params_M": e.get("params_M")})
                for e in picks]

    def table(self, study_dir: Path, seeds: list[int]) -> dict[str, Any]:
        rows = []
        for seed in seeds:
            for j, path in enumerate(self.genotype_files(study_dir, seed)):
                if not path.is_file():
                    continue
                g = load(path)
                score = next(iter(g.provenance.get("search_score", {}).values()), None)
                final = runner.retrained_metric(study_dir / "retrain" / path.stem, self.metric, self.selection)
                rows.append({"seed": seed, "candidate": j, "score": score, "final": final,
                             "other_scores": g.provenance.get("other_scores", {}),
                             "GFLOPs": g.provenance.get("GFLOPs"),
                             "retrain_s": runner.wall_seconds(study_dir / "retrain" / path.stem)})
        searches = {seed: runner.wall_seconds(study_dir / "search" / f"seed{seed}") for seed in seeds}
        return {"kind": self.kind, "metric": self.metric, "selection": self.selection, "rows": rows,
                "search_s": searches}


STUDIES = {cls.kind: cls for cls in (SearchVsRandom, ProxyFidelity)}


def dumps(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=1) + "\n"
