"""Prometheus metrics of one app instance, in their own registry (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from twostage_search.engine.cost import StageCost
from twostage_search.service.experiment import Deployment

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Request latency by endpoint and arm, stage latency by arm and stage, documents reranked, cache
    hits, degraded answers, errors by kind, and the experiment being served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "twostage_requests", "HTTP requests by endpoint, arm and status", ["endpoint", "arm", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "twostage_request_duration_seconds",
            "Request latency by endpoint and arm",
            ["endpoint", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "twostage_stage_duration_seconds",
            "Pipeline stage latency by arm and stage (encode, retrieve, rerank, cache)",
            ["arm", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.docs_reranked = Counter("twostage_docs_reranked", "Documents scored by rerankers", ["arm"], registry=r)
        self.tokens_in = Counter("twostage_tokens_in", "Model input tokens processed", ["arm"], registry=r)
        self.usd = Counter("twostage_usd", "Money spent on paid backends (USD)", ["arm"], registry=r)
        self.cache_hits = Counter(
            "twostage_cache_hits", "Searches answered from an arm's result cache", ["arm"], registry=r
        )
        self.degraded = Counter(
            "twostage_degraded", "Searches whose reranking the deadline cut short", ["arm"], registry=r
        )
        self.errors = Counter("twostage_errors", "Error answers by endpoint and kind", ["endpoint", "kind"], registry=r)
        self.rejected = Counter(
            "twostage_rejected",
            "Requests refused by admission control (overloaded, expired)",
            ["arm", "reason"],
            registry=r,
        )
        self.dropped = Counter(
            "twostage_floor_dropped", "Hits removed by an arm's relevance floor", ["arm"], registry=r
        )
        self.swaps = Counter("twostage_experiment_swaps", "Experiment changes by outcome", ["outcome"], registry=r)
        self.version = Gauge("twostage_experiment_version", "Version of the experiment being served", registry=r)
        self.log_dropped = Counter(
            "twostage_log_dropped", "Log records dropped: the log writer's queue was full", ["kind"], registry=r
        )
        self.events = Counter("twostage_events", "UBI events stored, by action_name", ["action"], registry=r)
        self.weight = Gauge("twostage_arm_weight", "Traffic weight of each arm being served", ["arm"], registry=r)

    def observe_costs(self, arm: str, costs: tuple[StageCost, ...] | list[StageCost]) -> None:
        for c in costs:
            self.stage_seconds.labels(arm, c.stage).observe(c.wall_ms / 1000)
            if c.tokens_in:
                self.tokens_in.labels(arm).inc(c.tokens_in)
            if c.usd:
                self.usd.labels(arm).inc(c.usd)

    def serving(self, deployment: Deployment) -> None:
        self.version.set(deployment.version)
        self.weight.clear()
        for arm in deployment.config.arms:
            self.weight.labels(arm.name).set(arm.weight)

    def render(self) -> bytes:
        return generate_latest(self.registry)
