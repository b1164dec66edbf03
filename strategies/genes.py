"""Mutation and crossover of genotypes, for evolutionary search over any space.

A genotype's genes are the leaves of its `genotype` tree (an op name, a kernel size, an input
index...). A mutation replaces each gene, with probability `prob`, by the gene at the same place in
a fresh random member of the space; a crossover takes each gene from one of two parents. Children
are validated by the space and redrawn when invalid. A space whose genes are not plain leaves (the temporal
space: a cycle length that changes how many frames there are, a key network that is not searched) defines
its own `mutate(parent, rng, prob)` / `crossover(a, b, rng)` giving a genotype tree, used here in their place.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Iterator

from nas.genotype import Genotype, GenotypeError

Path = tuple[Any, ...]


def leaves(tree: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, value) of every leaf of nested dicts and lists."""
    if isinstance(tree, dict):
        for key in tree:
            yield from leaves(tree[key], path + (key,))
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            yield from leaves(item, path + (i,))
    else:
        yield path, tree


def get_leaf(tree: Any, path: Path) -> Any:
    """The value at `path`; KeyError/IndexError when the tree has no such place."""
    for key in path:
        tree = tree[key]
    return tree


def set_leaf(tree: Any, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _valid(space: Any, genotype: Genotype) -> bool:
    try:
        space.validate(genotype)
    except GenotypeError:
        return False
    return True


def mutate(space: Any, parent: Genotype, rng: random.Random, prob: float, tries: int = 20) -> Genotype:
    """A valid child differing from `parent` in at least one gene (the parent itself if none is found)."""
    if hasattr(space, "mutate"):
        return _own(space, parent, lambda: space.mutate(parent, rng, prob).genotype, tries, changed=True)
    genes = list(leaves(parent.genotype))
    for _ in range(tries):
        donor = space.sample(rng).genotype
        child = copy.deepcopy(parent.genotype)
        chosen = [p for p, _ in genes if rng.random() < prob] or [rng.choice(genes)[0]]
        for path in chosen:
            try:
                set_leaf(child, path, get_leaf(donor, path))
            except (KeyError, IndexError):  # the donor has another shape there (e.g. fewer blocks)
                continue
        candidate = Genotype.from_dict({**parent.to_dict(), "genotype": child})
        if child != parent.genotype and _valid(space, candidate):
            return candidate
    return parent


def crossover(space: Any, a: Genotype, b: Genotype, rng: random.Random, tries: int = 20) -> Genotype:
    """A valid child taking each gene from `a` or `b` at random (`a` itself if none is found)."""
    if hasattr(space, "crossover"):
        return _own(space, a, lambda: space.crossover(a, b, rng).genotype, tries, changed=False)
    for _ in range(tries):
        child = copy.deepcopy(a.genotype)
        for path, _ in leaves(a.genotype):
            if rng.random() < 0.5:
                try:
                    set_leaf(child, path, copy.deepcopy(get_leaf(b.genotype, path)))
                except (KeyError, IndexError):
                    continue
        candidate = Genotype.from_dict({**a.to_dict(), "genotype": child})
        if _valid(space, candidate):
            return candidate
    return a


def _own(space: Any, parent: Genotype, make: Any, tries: int, changed: bool) -> Genotype:
    """A child from the space's own operator, in the parent's envelope (space name, sizes), validated."""
    for _ in range(tries):
        child = make()
        candidate = Genotype.from_dict({**parent.to_dict(), "genotype": child})
        if (child != parent.genotype or not changed) and _valid(space, candidate):
            return candidate
    return parent
