"""The experiment report: what each arm's users did, the differences against the control, what it cost.

Read from the UBI log (:class:`~twostage_search.service.ubi.records.LogStore`): one query record per
served search, and the events clients sent. A *click* is an event whose ``action_name`` is in
``click_actions`` (default ``click``); its rank is the clicked document's position in the served list
(else the event's ``position.ordinal``).

Per arm (``mode: split``): queries, users (distinct ``client_id``; a search without one counts as a
user of its own), CTR (queries with at least one click / queries), MRR (mean over queries of 1 / rank
of the first click in time, 0 without a click), abandonment (queries without a click / queries),
zero-result rate, p50/p95 of ``took_ms`` and the mean cost per query (stage milliseconds, documents
reranked, tokens, dollars). Differences against the control (the experiment's first arm) on CTR and MRR
come with a per-user cluster bootstrap (users are the unit of assignment) 95% CI and a two-sided
bootstrap p-value, Holm-corrected across the non-control arms per metric. A sample-ratio-mismatch
check compares the users per arm with the configured weights (chi-square).

For ``mode: interleave`` each query's clicks are credited to the arm that placed the clicked document
(:mod:`twostage_search.engine.interleave`); every pair of arms gets wins, ties and losses over the
queries with a click, and each arm against the control a win rate with an exact binomial sign test
(ties excluded) and its Clopper-Pearson CI, Holm-corrected across arms. Each arm's cost is its own
share (``arm_costs``); the served list cost their sum.

Nothing here imports FastAPI: ``twostage report`` and ``GET /admin/report`` both call :func:`build_report`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from twostage_search.engine.interleave import Interleaving, clicks_per_team, outcomes
from twostage_search.engine.stats import bootstrap_ratio_diff, holm, sign_test, srm_test
from twostage_search.service.experiment import ExperimentConfig
from twostage_search.service.ubi.records import EventRecord, QueryRecord

INTERLEAVED = "interleaved"
METRICS = ("ctr", "mrr")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One logged query and what came of it."""

    query_id: str
    unit: str
    arm: str
    hits: tuple[str, ...]
    first_click_rank: int | None
    clicked: frozenset[str]
    took_ms: float
    cost: Mapping[str, float]  # wall_ms, docs, tokens, usd of the served list
    teams: tuple[str, ...] | None = None
    arms: tuple[str, ...] = ()
    arm_costs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def click(self) -> bool:
        return bool(self.clicked)

    @property
    def rr(self) -> float:
        return 1.0 / self.first_click_rank if self.first_click_rank else 0.0


def outcomes_of(
    queries: Iterable[QueryRecord], events: Iterable[EventRecord], click_actions: Sequence[str] = ("click",)
) -> list[Outcome]:
    """Join query records with their clicks (by ``query_id``), in the order of ``queries``."""
    clicks: dict[str, list[EventRecord]] = defaultdict(list)
    for e in events:
        if e.action_name in click_actions:
            clicks[e.query_id].append(e)
    result = []
    for q in queries:
        a = q.query_attributes
        hits = q.query_response_hit_ids
        mine = sorted(clicks.get(q.query_id, ()), key=lambda e: e.timestamp)
        ranks = [_rank(e, hits) for e in mine]
        first = next((r for r in ranks if r is not None), None)
        costs = a.get("costs") or []
        cost = {
            "wall_ms": sum(float(c.get("wall_ms", 0)) for c in costs),
            "docs": float(a.get("rerank_depth") or 0),
            "tokens": sum(float(c.get("tokens_in", 0)) + float(c.get("tokens_out", 0)) for c in costs),
            "usd": float(a.get("usd") or 0.0),
        }
        teams = a.get("teams")
        result.append(
            Outcome(
                query_id=q.query_id,
                unit=q.client_id or f"query:{q.query_id}",
                arm=q.arm or "",
                hits=hits,
                first_click_rank=first,
                clicked=frozenset(e.object_id for e in mine if e.object_id is not None),
                took_ms=float(a.get("took_ms") or 0.0),
                cost=cost,
                teams=tuple(teams) if isinstance(teams, list) and len(teams) == len(hits) else None,
                arms=tuple(a.get("arms") or ()),
                arm_costs=a.get("arm_costs") or {},
            )
        )
    return result


def _rank(event: EventRecord, hits: Sequence[str]) -> int | None:
    if event.object_id is not None and event.object_id in hits:
        return hits.index(event.object_id) + 1
    return event.ordinal


# ------------------------------------------------------------------------------------------ records
@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    queries: int
    users: int
    ctr: float
    mrr: float
    abandonment: float
    zero_result_rate: float
    p50_ms: float
    p95_ms: float
    mean_ms: float
    mean_docs: float
    mean_tokens: float
    mean_usd: float


@dataclass(frozen=True, slots=True)
class Difference:
    arm: str
    metric: str
    delta: float
    low: float
    high: float
    p_value: float
    p_holm: float


@dataclass(frozen=True, slots=True)
class PairResult:
    """Interleaving: ``arm`` against ``other`` over the queries with a click (ties: equal credit)."""

    arm: str
    other: str
    wins: int
    ties: int
    losses: int
    win_rate: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    p_holm: float | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """The effect of ``arm`` against the control after the first ``queries`` queries (the plot's data)."""

    queries: int
    arm: str
    metric: str  # "ctr" (difference in CTR) or "win_rate" (interleaving)
    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Report:
    experiment: str
    mode: str
    control: str
    arms: list[ArmSummary]
    differences: list[Difference]
    pairs: list[PairResult]
    srm_p: float | None
    srm_counts: dict[str, int]
    ignored: int
    progress: list[Point] = field(default_factory=list)
    bootstrap: str = "per-user cluster bootstrap, 2000 resamples, percentile 95% CI"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def arm(self, name: str) -> ArmSummary:
        return next(a for a in self.arms if a.arm == name)


# ------------------------------------------------------------------------------------------ building
def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else 0.0


def summarise(arm: str, rows: Sequence[Outcome], *, team: str | None = None) -> ArmSummary:
    """An arm's row; with ``team`` (interleaving), clicks count only on that arm's documents and cost is its own."""
    n = len(rows)

    def clicked(o: Outcome) -> bool:
        return o.click if team is None else any(d in o.clicked for d in _team_docs(o, team))

    def rr(o: Outcome) -> float:
        if team is None:
            return o.rr
        ranks = [
            i + 1 for i, (d, t) in enumerate(zip(o.hits, o.teams or (), strict=False)) if t == team and d in o.clicked
        ]
        return 1.0 / min(ranks) if ranks else 0.0

    def cost(o: Outcome, key: str) -> float:
        return float(o.arm_costs.get(team, {}).get(key, 0.0)) if team is not None else o.cost[key]

    def mean(values: Iterable[float]) -> float:
        return math.fsum(values) / n if n else 0.0

    return ArmSummary(
        arm=arm,
        queries=n,
        users=len({o.unit for o in rows}),
        ctr=mean(1.0 if clicked(o) else 0.0 for o in rows),
        mrr=mean(rr(o) for o in rows),
        abandonment=mean(0.0 if o.click else 1.0 for o in rows),
        zero_result_rate=mean(1.0 if not o.hits else 0.0 for o in rows),
        p50_ms=percentile([o.took_ms for o in rows], 50),
        p95_ms=percentile([o.took_ms for o in rows], 95),
        mean_ms=mean(cost(o, "wall_ms") for o in rows),
        mean_docs=mean(cost(o, "docs") for o in rows),
        mean_tokens=mean(cost(o, "tokens") for o in rows),
        mean_usd=mean(cost(o, "usd") for o in rows),
    )


def _team_docs(o: Outcome, team: str) -> list[str]:
    return [d for d, t in zip(o.hits, o.teams or (), strict=False) if t == team]


def per_unit(rows: Sequence[Outcome], metric: str) -> tuple[list[float], list[float]]:
    """Per user: (sum of the metric over their queries, their queries)."""
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for o in rows:
        num[o.unit] += (1.0 if o.click else 0.0) if metric == "ctr" else o.rr
        den[o.unit] += 1.0
    return list(num.values()), list(den.values())


def ab_differences(by_arm: Mapping[str, Sequence[Outcome]], control: str, *, seed: int = 0) -> list[Difference]:
    """Each other arm minus the control on CTR and MRR; Holm across arms within each metric."""
    others = [a for a in by_arm if a != control and by_arm[a]]
    result: list[Difference] = []
    if not by_arm.get(control):
        return result
    for metric in METRICS:
        raw = [
            bootstrap_ratio_diff(per_unit(by_arm[a], metric), per_unit(by_arm[control], metric), seed=seed)
            for a in others
        ]
        adjusted = holm([d.p_value for d in raw])
        for a, d, p in zip(others, raw, adjusted, strict=True):
            assert p is not None
            result.append(Difference(a, metric, d.delta, d.low, d.high, d.p_value, p))
    return result


def credit(o: Outcome, arms: Sequence[str]) -> list[int]:
    """Clicked documents per arm of one interleaved query."""
    assert o.teams is not None
    index = {a: i for i, a in enumerate(arms)}
    placed = Interleaving(o.hits, tuple(index.get(t, -1) for t in o.teams))
    counts = clicks_per_team(placed, o.clicked, len(arms) + 1)  # team -1 (an unknown arm) lands last
    return counts[: len(arms)]


def interleaving_pairs(rows: Sequence[Outcome], arms: Sequence[str], control: str) -> list[PairResult]:
    """Wins/ties/losses for every pair of arms; sign test and win rate for each arm against the control."""
    tally: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for o in rows:
        if o.teams is None or not o.click:
            continue
        for pair, result in outcomes(credit(o, arms)).items():
            tally[pair][("win", "tie", "loss").index(result)] += 1
    c = arms.index(control)
    pairs: list[PairResult] = []
    for i in range(len(arms)):
        for j in range(i + 1, len(arms)):
            w, t, lo = tally[(i, j)]  # i against j
            if i == c:  # always "arm against control"
                pairs.append(PairResult(arms[j], arms[i], lo, t, w))
            else:
                pairs.append(PairResult(arms[i], arms[j], w, t, lo))
    tested = [k for k, p in enumerate(pairs) if p.other == control]
    tests = [sign_test(pairs[k].wins, pairs[k].losses) for k in tested]
    adjusted = holm([s.p_value if s is not None else None for s in tests])
    for k, s, p in zip(tested, tests, adjusted, strict=True):
        if s is not None:
            pairs[k] = replace(pairs[k], win_rate=s.rate, low=s.low, high=s.high, p_value=s.p_value, p_holm=p)
    return pairs


def build_report(
    queries: Iterable[QueryRecord],
    events: Iterable[EventRecord],
    *,
    experiment: str,
    config: ExperimentConfig | None = None,
    click_actions: Sequence[str] = ("click",),
    seed: int = 0,
) -> Report:
    """The report of ``experiment`` from its logged queries and events.

    ``config`` (the experiment as configured) names the control (its first arm), the weights for the
    sample-ratio check and the mode; without it the arms are taken from the log in order of first
    appearance, the first is the control, and the ratio is not checked.
    """
    rows = outcomes_of(queries, events, click_actions)
    interleaved = [o for o in rows if o.arm == INTERLEAVED and o.teams is not None]
    mode = config.mode if config is not None else ("interleave" if interleaved else "split")
    if config is not None:
        arms = [a.name for a in config.arms]
    elif mode == "interleave":
        arms = list(dict.fromkeys(a for o in interleaved for a in o.arms))
    else:
        arms = list(dict.fromkeys(o.arm for o in rows if o.arm != INTERLEAVED))
    control = arms[0] if arms else ""
    if mode == "interleave":
        summaries = [summarise(INTERLEAVED, interleaved)] + [summarise(a, interleaved, team=a) for a in arms]
        pairs = interleaving_pairs(interleaved, arms, control) if arms else []
        return Report(
            experiment,
            mode,
            control,
            summaries,
            [],
            pairs,
            None,
            {},
            len(rows) - len(interleaved),
            progress(interleaved, arms, control, mode, seed=seed),
        )
    by_arm: dict[str, list[Outcome]] = {a: [] for a in arms}
    ignored = 0
    for o in rows:
        if o.arm in by_arm:
            by_arm[o.arm].append(o)
        else:
            ignored += 1
    counts = {a: len({o.unit for o in by_arm[a]}) for a in arms}
    srm_p = None
    if config is not None:
        weighted = [a for a in config.arms if a.weight > 0]
        if len(weighted) >= 2:
            srm_p = srm_test([counts[a.name] for a in weighted], [a.weight for a in weighted])
    kept = [o for o in rows if o.arm in by_arm]
    return Report(
        experiment,
        mode,
        control,
        [summarise(a, by_arm[a]) for a in arms],
        ab_differences(by_arm, control, seed=seed),
        [],
        srm_p,
        counts,
        ignored,
        progress(kept, arms, control, mode, seed=seed),
    )


def progress(
    rows: Sequence[Outcome], arms: Sequence[str], control: str, mode: str, *, checkpoints: int = 20, seed: int = 0
) -> list[Point]:
    """Each arm's effect against the control on the first n queries, at ``checkpoints`` values of n.

    Split: the CTR difference with its bootstrap CI (the table's resamples and seed, so the last point is
    the table's interval); interleave: the win rate with its exact CI. Checkpoints where an arm has no
    data yet are left out.
    """
    points: list[Point] = []
    steps = min(checkpoints, len(rows))
    for step in range(1, steps + 1):
        n = round(len(rows) * step / steps)
        head = rows[:n]
        if mode == "interleave":
            for p in interleaving_pairs(head, arms, control):
                if p.other == control and p.win_rate is not None:
                    assert p.low is not None and p.high is not None
                    points.append(Point(n, p.arm, "win_rate", p.win_rate, p.low, p.high))
            continue
        base = [o for o in head if o.arm == control]
        for arm in arms:
            mine = [o for o in head if o.arm == arm]
            if arm == control or not mine or not base:
                continue
            d = bootstrap_ratio_diff(per_unit(mine, "ctr"), per_unit(base, "ctr"), seed=seed)
            points.append(Point(n, arm, "ctr", d.delta, d.low, d.high))
    return points
