"""Prometheus metrics of this process (the API adds cluster-wide gauges read from Redis at scrape time)."""

from prometheus_client import Counter, Gauge, Histogram

ENTRIES = Counter("routing_stage_entries_total", "Entries a stage finished, by outcome", ["stage", "outcome"])
BATCH_SIZE = Histogram(
    "routing_stage_batch_size", "Entries per batch", ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_SECONDS = Histogram(
    "routing_stage_batch_seconds", "Time to process and commit one batch", ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
END_TO_END = Histogram(
    "routing_ingest_to_routed_seconds", "Ticket latency from ingest to routed",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Where a batch's time goes. Every stage: read (XREADGROUP that returned entries), decode, process, commit (the
# MULTI/EXEC with its Lua scripts). Inside enrich's process: embed, lgbm, linear, lexical, calibrate, top
# (per-ticket Prediction objects), ood, breaker (its Redis round trip), urgency, trail (building the outcomes).
STEP_SECONDS = Histogram(
    "routing_stage_step_seconds", "Time one batch spent in one step of a stage", ["stage", "step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RECLAIMED = Counter("routing_stage_reclaimed_total", "Entries reclaimed from idle consumers", ["stage"])
LANE_ENTRIES = Counter("routing_stage_lane_entries_total",
                       "Entries a stage read from its urgent lane (priority loop)", ["stage"])
LANE_HANDED = Counter("routing_stage_lane_handed_total",
                      "Urgent-lane entries the stage's triage handed to its main loop (a storm's members)", ["stage"])
LANE_WAITING = Gauge("routing_stage_lane_waiting",
                     "Urgent-lane entries read and waiting behind the lane's next batch (a burst before its incident)",
                     ["stage"])
HTTP_TICKETS = Counter("routing_http_tickets_total", "Tickets over HTTP, by result", ["result"])
ALERTS = Counter("routing_alerts_total", "Outbound alerts, by result", ["result"])
MODEL_INFO = Gauge("routing_model_info", "Loaded classifier version", ["version"])
# 0 while a stage sets up (loads its models: the fallback's ~5 s on 2 cores) and after it stopped. Its consumer is
# registered in Redis before setup, so "joined the group" does not mean "reads"; a readiness probe reads this.
STAGE_READY = Gauge("routing_stage_ready", "1 once a stage has set up and reads its input, else 0",
                    ["stage", "consumer"])
CONSUMERS_DELETED = Counter("routing_consumers_deleted_total",
                            "Dead consumers (idle, nothing pending) deleted by housekeeping")
INDEX_PRUNED = Counter("routing_index_entries_pruned_total",
                       "Status/all index members of expired ticket records removed")


def observe_steps(stage: str, seconds: dict[str, float]) -> None:
    """One batch's per-step times (seconds) into routing_stage_step_seconds."""
    for step, value in seconds.items():
        STEP_SECONDS.labels(stage, step).observe(value)
