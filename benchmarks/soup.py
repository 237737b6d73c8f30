"""Model soups: the uniform average of the trained tensors of fine-tuning runs that differ only in their seed.

All runs start from the same base model and differ only in batch order and dropout, so their weights stay close
enough to average: the soup is one model, served at one model's cost. :func:`uniform_soup` averages checkpoints
in :meth:`~twostage_search.benchmarks.finetune.UpperModel.state` form (the trained layers, pooler, classifier and
grade head); :func:`seed_groups` finds, in a study's dev rows, the runs of one setting at one epoch that differ
only in seed; :func:`soup_rows` builds, saves and scores the soups; :func:`soup_table` sets each seed's dev κ beside
the soup's; :func:`rival` names what a chosen run or soup is compared with on test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.finetune import UpperModel
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)

SETTING_KEYS = ("data", "lr", "loss")


def uniform_soup(checkpoints: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The elementwise mean of checkpoints (``{"model": {name: tensor}, "affine": tensor, "head": tensor}``).

    Floating tensors are averaged in float64 and cast back to their dtype; any other tensor must be equal in
    every checkpoint. The checkpoints must hold the same tensor names and shapes.
    """
    torch = require("torch", "train")
    if not checkpoints:
        raise ValueError("a soup needs at least one checkpoint")
    names = set(checkpoints[0]["model"])
    for c in checkpoints[1:]:
        if set(c["model"]) != names:
            raise ValueError(f"checkpoints hold different tensors: {sorted(names ^ set(c['model']))[:3]}")

    def mean(tensors: Sequence[Any], name: str) -> Any:
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(f"tensor {name!r}: shapes differ between checkpoints")
        if not tensors[0].is_floating_point():
            if any(not torch.equal(t, tensors[0]) for t in tensors):
                raise ValueError(f"tensor {name!r}: not floating point and not equal in every checkpoint")
            return tensors[0].clone()
        return torch.stack([t.to(torch.float64) for t in tensors]).mean(dim=0).to(tensors[0].dtype)

    soup: dict[str, Any] = {"model": {n: mean([c["model"][n] for c in checkpoints], n) for n in sorted(names)}}
    for key in ("affine", "head"):
        if all(key in c for c in checkpoints):
            soup[key] = mean([c[key] for c in checkpoints], key)
    return soup


def soup_tag(tag: str, seeds: Sequence[int]) -> str:
    """The tag of a soup of one setting's runs: the setting's tag without its seed, plus the seeds averaged."""
    base = tag.rsplit("-seed", 1)[0]
    return f"{base}-soup{'+'.join(str(s) for s in sorted(seeds))}"


def seed_groups(trials: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[str]]:
    """``(soup tag, epoch) → member tags``: trained epochs (≥ 1) of one setting (data, lr, loss) run with two or
    more seeds, members in seed order. Rows that are soups already are skipped."""
    runs: dict[tuple[Any, ...], dict[int, str]] = {}
    for t in trials:
        if t.get("epoch", 0) >= 1 and "soup_of" not in t:
            key = (*(t[k] for k in SETTING_KEYS), t["epoch"])
            runs.setdefault(key, {})[int(t["seed"])] = t["tag"]
    groups: dict[tuple[str, int], list[str]] = {}
    for key, by_seed in runs.items():
        if len(by_seed) >= 2:
            seeds = sorted(by_seed)
            groups[(soup_tag(by_seed[seeds[0]], seeds), int(key[-1]))] = [by_seed[s] for s in seeds]
    return groups


def soup_table(trials: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: per soup and epoch, each seed's dev κ quadratic, their mean and best, and the soup's."""
    kappa = {(t["tag"], t["epoch"]): t["dev_kappa_quadratic"] for t in trials if "dev_kappa_quadratic" in t}
    soups = [t for t in trials if "soup_of" in t]
    if not soups:
        return []
    width = max(len(t["soup_of"]) for t in soups)
    lines = [
        "| soup | epoch | " + " | ".join(f"run {i + 1}" for i in range(width)) + " | mean of runs | best run | soup |",
        "|" + " --- |" * (width + 5),
    ]
    for t in soups:
        singles = [kappa[(m, t["epoch"])] for m in t["soup_of"]]
        cells = [f"{k:.4f}" for k in singles] + [""] * (width - len(singles))
        mean = sum(singles) / len(singles)
        lines.append(
            f"| {t['tag']} | {t['epoch']} | {' | '.join(cells)} | {mean:.4f} | {max(singles):.4f} "
            f"| {t['dev_kappa_quadratic']:.4f} |"
        )
    return lines


def best_run(trials: Sequence[Mapping[str, Any]], soup: Mapping[str, Any]) -> Mapping[str, Any]:
    """The soup's member run (at any trained epoch) with the highest dev κ quadratic."""
    members = [t for t in trials if t["tag"] in soup["soup_of"] and t.get("epoch", 0) >= 1]
    return max(members, key=lambda t: t["dev_kappa_quadratic"])


def rival(trials: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """What a chosen dev row is compared with on test: its best member run when it is a soup, otherwise the best
    soup on dev (``None`` when there is no soup)."""
    if "soup_of" in chosen:
        return best_run(trials, chosen)
    soups = [t for t in trials if "soup_of" in t]
    return max(soups, key=lambda t: t["dev_kappa_quadratic"]) if soups else None


def soup_rows(
    model: Any,
    base: Mapping[str, Any],
    heads: dict[str, tuple[int, ...]],
    trials: Sequence[Mapping[str, Any]],
    var: Path,
    frozen: int,
    score: Callable[[UpperModel], tuple[float, list[float]]],
) -> list[dict[str, Any]]:
    """A dev row per setting run with several seeds and per epoch: the uniform soup of the runs' checkpoints
    (``ckpt-<tag>-e<epoch>.pt`` under ``var``), saved there as a checkpoint of its own, loaded into
    ``model`` reset to ``base`` (its layers from ``frozen`` on) and scored by ``score`` → (κ, cuts).
    ``heads`` (tag → the ordinal head's grades) gains each soup's entry."""
    torch = require("torch", "train")
    rows = []
    for (tag, epoch), members in seed_groups(trials).items():
        soup = uniform_soup([torch.load(var / f"ckpt-{m}-e{epoch}.pt") for m in members])
        torch.save(soup, var / f"ckpt-{tag}-e{epoch}.pt")
        model.load_state_dict(base)
        upper = UpperModel(model, frozen, heads[members[0]])
        upper.load(soup)
        heads[tag] = upper.grades
        kappa, cuts = score(upper)
        rows.append({"tag": tag, "epoch": epoch, "soup_of": members, "dev_kappa_quadratic": kappa, "dev_cuts": cuts})
        log.info("%s epoch %d: dev κq %.4f", tag, epoch, kappa)
    return rows
