"""One typed settings object, read from environment variables with defaults that work."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


def _cast_of(f) -> type:
    """How a setting's text is read: by the type of its default (int, float, bool; anything else stays a str)."""
    return {int: int, float: float, bool: bool}.get(type(f.default), str)


def _parse(raw: str, cast):
    if cast is bool:
        word = str(raw).strip().lower()
        if word not in _TRUE + _FALSE:  # a typo must not turn a feature off unsaid
            raise ValueError(raw)
        return word in _TRUE
    return cast(raw)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env(name: str, default, cast):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return _parse(raw, cast)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; anything else (0.0.0.0, '', a LAN address, a name) is reachable by others."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Every knob, with its env var in the metadata. `Settings.from_env()` is the only reader."""

    redis_url: str | None = field(default=None, metadata={"env": "REDIS_URL", "help": "Redis to use; unset = start an embedded one"})
    prefix: str = field(default="re", metadata={"env": "ROUTING_PREFIX", "help": "key prefix (hash tag) for every stream and key"})
    state_dir: str = field(default="state", metadata={"env": "ROUTING_STATE_DIR", "help": "embedded Redis data + models live here"})
    models_dir: str = field(default="", metadata={"env": "ROUTING_MODELS_DIR", "help": "model artifacts (default <state_dir>/models)"})
    train_data: str = field(default="", metadata={"env": "ROUTING_TRAIN_DATA", "help": "CSV/JSONL used by `train`/first start"})
    team_map: str = field(default="", metadata={"env": "ROUTING_TEAM_MAP", "help": "YAML mapping labels to teams"})
    agents_file: str = field(default="", metadata={"env": "ROUTING_AGENTS_FILE", "help": "YAML of agents loaded at start"})
    host: str = field(default="127.0.0.1", metadata={"env": "ROUTING_HOST", "help": "API bind address"})
    port: int = field(default=8080, metadata={"env": "ROUTING_PORT", "help": "API port"})
    batch_size: int = field(default=512, metadata={"env": "ROUTING_BATCH_SIZE", "help": "most entries a stage reads per XREADGROUP (a batch); under a backlog larger batches cost less per ticket (the fallback stage keeps 64)"})
    batch_deadline_ms: float = field(default=5.0, metadata={"env": "ROUTING_BATCH_DEADLINE_MS", "help": "enrich: a batch read short of ROUTING_BATCH_SIZE waits up to this long for more (0 = off; never with an urgent ticket in it)"})
    block_ms: int = field(default=200, metadata={"env": "ROUTING_BLOCK_MS", "help": "XREADGROUP BLOCK; also the shutdown latency"})
    claim_idle_ms: int = field(default=30_000, metadata={"env": "ROUTING_CLAIM_IDLE_MS", "help": "reclaim entries idle this long (dead consumer)"})
    claim_every_ms: int = field(default=5_000, metadata={"env": "ROUTING_CLAIM_EVERY_MS", "help": "how often a worker runs XAUTOCLAIM"})
    max_deliveries: int = field(default=5, metadata={"env": "ROUTING_MAX_DELIVERIES", "help": "failures before an entry is dead-lettered"})
    stream_maxlen: int = field(default=1_000_000, metadata={"env": "ROUTING_STREAM_MAXLEN", "help": "approximate cap of the history streams (routed, dead); grouped streams are trimmed only once acked"})
    max_ingest_lag: int = field(default=50_000, metadata={"env": "ROUTING_MAX_INGEST_LAG", "help": "ingest backlog (unread + pending) above which the webhook answers 429"})
    ack_after_fsync: bool = field(default=False, metadata={"env": "ROUTING_ACK_AFTER_FSYNC", "help": "answer 202 only once the ticket is in the AOF on disk (WAITAOF; Redis 7.2+)"})
    fsync_timeout_ms: int = field(default=2000, metadata={"env": "ROUTING_FSYNC_TIMEOUT_MS", "help": "WAITAOF wait before answering 503 (with ROUTING_ACK_AFTER_FSYNC)"})
    embedded_maxmemory: str = field(default="1gb", metadata={"env": "ROUTING_EMBEDDED_MAXMEMORY", "help": "embedded Redis maxmemory (noeviction: writes wait, nothing accepted is evicted)"})
    ticket_ttl_s: int = field(default=7 * 86400, metadata={"env": "ROUTING_TICKET_TTL_S", "help": "how long ticket records are kept"})
    consumer_idle_delete_s: int = field(default=3600, metadata={"env": "ROUTING_CONSUMER_IDLE_DELETE_S", "help": "a stage consumer with nothing pending, idle this long, is deleted (XGROUP DELCONSUMER)"})
    housekeeping_s: float = field(default=60.0, metadata={"env": "ROUTING_HOUSEKEEPING_S", "help": "how often dead consumers are deleted and index entries of expired tickets pruned (by whichever API or worker process holds the lease)"})
    max_body_bytes: int = field(default=64 * 1024, metadata={"env": "ROUTING_MAX_BODY_BYTES", "help": "largest accepted HTTP body per ticket"})
    max_text_chars: int = field(default=20_000, metadata={"env": "ROUTING_MAX_TEXT_CHARS", "help": "subject+body longer than this is rejected"})
    embedder: str = field(default="auto", metadata={"env": "ROUTING_EMBEDDER", "help": "auto | onnx-int8 | torch: MiniLM in int8 ONNX Runtime or PyTorch fp32 (auto: int8 when built, checked and faster here)"})
    enrich_runners: int = field(default=1, metadata={"env": "ROUTING_ENRICH_RUNNERS", "help": "enrich read loops in one process (consumers <name>, <name>-e2, ...), each embedding on its own thread; with ROUTING_EMBED_THREADS 0 each gets cores / runners ONNX Runtime threads. One process then embeds one batch while it classifies and commits another"})
    embed_threads: int = field(default=0, metadata={"env": "ROUTING_EMBED_THREADS", "help": "ONNX Runtime threads of the int8 embedder in one process; 0 = every core this process may use. Running one worker per core, set 1: on 2 cores two workers of one thread each did 507-528 tickets/s on a backlog against 462-482 with two threads each and 423-459 for one worker"})
    blas_threads: int = field(default=1, metadata={"env": "ROUTING_BLAS_THREADS", "help": "threads of the BLAS libraries (numpy, scipy, FAISS) in a serving process; 0 leaves their default (one per core). Their matrices here are small, and idle OpenBLAS threads spin: on 2 cores the default burned 10% of the worker's CPU for no throughput"})
    embedder_min_cosine: float = field(default=0.98, metadata={"env": "ROUTING_EMBEDDER_MIN_COSINE", "help": "mean cosine to fp32 over the probe set the int8 model must reach to be used"})
    dedup_window_s: int = field(default=300, metadata={"env": "ROUTING_DEDUP_WINDOW_S", "help": "W: near-duplicate search window"})
    dedup_window_max: int = field(default=50000, metadata={"env": "ROUTING_DEDUP_WINDOW_MAX", "help": "most tickets the near-duplicate window holds: its search is exact and costs ~0.8 ms a ticket at 90,000 on 2 cores; above this many in W the window is the last this many tickets (0 = no cap)"})
    dedup_tau: float = field(default=0.85, metadata={"env": "ROUTING_DEDUP_TAU", "help": "τ: cosine to join a neighbour's group"})
    dedup_tau_category: float = field(default=0.5, metadata={"env": "ROUTING_DEDUP_TAU_CATEGORY", "help": "cosine to join when both tickets got the same category"})
    dedup_tau_centroid: float = field(default=0.9, metadata={"env": "ROUTING_DEDUP_TAU_CENTROID", "help": "cosine to a group's centroid that joins it whatever the categories"})
    dedup_tau_centroid_category: float = field(default=0.55, metadata={"env": "ROUTING_DEDUP_TAU_CENTROID_CATEGORY", "help": "cosine to a group's centroid that joins it when its category is among the ticket's top labels"})
    dedup_tau_merge: float = field(default=0.65, metadata={"env": "ROUTING_DEDUP_TAU_MERGE", "help": "centroid-to-centroid cosine at which two groups of one category merge"})
    incident_k: int = field(default=10, metadata={"env": "ROUTING_INCIDENT_K", "help": "K: the fewest tickets a storm group needs to open a master incident"})
    storm_burst: float = field(default=4.0, metadata={"env": "ROUTING_STORM_BURST", "help": "a group is a storm (opens an incident, with K tickets) when its rate reaches this many times its baseline (the rest of the stream per cluster, its category, its own slow rate); 0 = off: K in W opens an incident"})
    storm_calm: float = field(default=2.0, metadata={"env": "ROUTING_STORM_CALM", "help": "a storm's rate under this many times its baseline counts as calm"})
    storm_quiet_s: float = field(default=60.0, metadata={"env": "ROUTING_STORM_QUIET_S", "help": "calm this long ends a group's storm state (its incident stays open)"})
    storm_tau_fringe: float = field(default=0.5, metadata={"env": "ROUTING_STORM_TAU_FRINGE", "help": "centroid cosine to an open storm's group under which a bursting group is never that storm's fringe"})
    storm_chance: float = field(default=1e-3, metadata={"env": "ROUTING_STORM_CHANCE", "help": "a burst must be this unlikely as chance (Poisson tail of the group's last seconds at its baseline) to open an incident; 0 = off"})
    storm_prior: float = field(default=4.0, metadata={"env": "ROUTING_STORM_PRIOR", "help": "while a group is in storm state its category's label counts this many times in a ticket's top labels (a label shift: the storm makes its intent likelier than the classifier's training mix); 1 = off"})
    storm_label_first: bool = field(default=True, metadata={"env": "ROUTING_STORM_LABEL_FIRST", "help": "a ticket the classifier files under a storming group's category joins that storm before a closer group of another category (keeps storm tickets from taking over, then merging in, a background group)"})
    storm_fringe_ratio: float = field(default=0.1, metadata={"env": "ROUTING_STORM_FRINGE_RATIO", "help": "a bursting group near an open storm growing at under this share of its rate is its fringe: no incident of its own (0 = off)"})
    urgent_threshold: float = field(default=0.8, metadata={"env": "ROUTING_URGENT_THRESHOLD", "help": "S above this sends an alert"})
    alert_url: str = field(default="", metadata={"env": "ROUTING_ALERT_URL", "help": "outbound webhook for alerts (unset = none)"})
    alert_timeout_s: float = field(default=2.0, metadata={"env": "ROUTING_ALERT_TIMEOUT_S", "help": "per alert attempt"})
    alert_retry_for_s: float = field(default=600.0, metadata={"env": "ROUTING_ALERT_RETRY_FOR_S", "help": "a failing alert is retried this long after it was raised, then dead-lettered"})
    alert_backoff_s: float = field(default=1.0, metadata={"env": "ROUTING_ALERT_BACKOFF_S", "help": "wait after an alert's first failed try; doubles each try (a Retry-After wins)"})
    alert_backoff_max_s: float = field(default=60.0, metadata={"env": "ROUTING_ALERT_BACKOFF_MAX_S", "help": "longest wait between an alert's tries (a Retry-After may ask longer)"})
    breaker_budget_ms: float = field(default=500.0, metadata={"env": "ROUTING_BREAKER_BUDGET_MS", "help": "a fallback batch slower than this is a failure; a queue needing longer opens the breaker"})
    breaker_failures: int = field(default=2, metadata={"env": "ROUTING_BREAKER_FAILURES", "help": "failures in a row that open the breaker"})
    breaker_cooldown_ms: int = field(default=5000, metadata={"env": "ROUTING_BREAKER_COOLDOWN_MS", "help": "open this long before a half-open probe"})
    breaker_backlog_ms: int = field(default=1000, metadata={"env": "ROUTING_BREAKER_BACKLOG_MS", "help": "an escalation waiting longer opens the breaker"})
    breaker_behind_ms: int = field(default=500, metadata={"env": "ROUTING_BREAKER_BEHIND_MS", "help": "tickets waiting for the fast path that need longer than this at its measured rate open the breaker (the fallback would take CPU from it); 0: off, for a fallback on hosts of its own"})
    target_precision: float = field(default=0.9, metadata={"env": "ROUTING_TARGET_PRECISION", "help": "train: precision the kept (not abstained) tickets must reach"})
    escalation_budget: float = field(default=0.25, metadata={"env": "ROUTING_ESCALATION_BUDGET", "help": "train: largest share of tickets sent to the fallback"})
    device: str = field(default="auto", metadata={"env": "ROUTING_DEVICE", "help": "where MiniLM and the fallback run: cpu, cuda, or auto (a CUDA GPU when torch sees one)"})
    model_reload_s: float = field(default=5.0, metadata={"env": "ROUTING_MODEL_RELOAD_S", "help": "how often workers look for a newer model"})
    escalation: bool = field(default=True, metadata={"env": "ROUTING_ESCALATION", "help": "send unsure tickets to the transformer fallback (if trained)"})
    api_token: str = field(default="", metadata={"env": "ROUTING_API_TOKEN", "help": "older name of the operate token (still accepted, same scope)"})
    operate_token: str = field(default="", metadata={"env": "ROUTING_OPERATE_TOKEN", "help": "token for everything: resolve, PUT agents, plus read and ingest"})
    read_token: str = field(default="", metadata={"env": "ROUTING_READ_TOKEN", "help": "token for GET endpoints, the SSE feed, the dashboard, /metrics, /healthz detail"})
    ingest_token: str = field(default="", metadata={"env": "ROUTING_INGEST_TOKEN", "help": "token for POST /v1/tickets and /v1/tickets/batch only"})
    webhook_secret: str = field(default="", metadata={"env": "ROUTING_WEBHOOK_SECRET", "help": "when set, ticket POSTs need X-Routing-Signature (comma list: rotation)"})
    webhook_tolerance_s: int = field(default=300, metadata={"env": "ROUTING_WEBHOOK_TOLERANCE_S", "help": "largest clock gap accepted on a signature's timestamp"})
    trust_proxy: bool = field(default=False, metadata={"env": "ROUTING_TRUST_PROXY", "help": "trust X-Forwarded-Proto/-For from a proxy in front"})
    sse_heartbeat_s: float = field(default=15.0, metadata={"env": "ROUTING_SSE_HEARTBEAT_S", "help": "SSE heartbeat comment interval"})
    sse_client_buffer: int = field(default=1000, metadata={"env": "ROUTING_SSE_CLIENT_BUFFER", "help": "events buffered per SSE client before it is dropped"})
    log_format: str = field(default="auto", metadata={"env": "ROUTING_LOG_FORMAT", "help": "json | console | auto (console on a TTY)"})
    log_level: str = field(default="info", metadata={"env": "ROUTING_LOG_LEVEL", "help": "debug | info | warning"})

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Every setting from its environment variable, else its default; `overrides` (not None) win. A value of the
        wrong type, or out of its range, raises ValueError naming the variable."""
        values = {}
        for f in fields(cls):
            cast = _cast_of(f)
            if f.name == "redis_url":
                values[f.name] = os.environ.get("REDIS_URL") or None
                continue
            try:
                values[f.name] = _env(f.metadata["env"], f.default, cast)
            except ValueError:
                raise ValueError(f"{f.metadata['env']}={os.environ.get(f.metadata['env'])!r}: expected "
                                 f"{cast.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        for name, low in _AT_LEAST.items():
            value = getattr(self, name)
            if value < low:
                env = next(f.metadata["env"] for f in fields(self) if f.name == name)
                raise ValueError(f"{env}={value!r}: must be at least {low}")

    def overridden(self, assignments: dict[str, str]) -> Settings:
        """A copy with env-style assignments applied ({"ROUTING_DEDUP_TAU": "0.8"}): what `replay --set` changes.
        Unknown names and values of the wrong type or range raise ValueError naming them."""
        by_env = {f.metadata["env"]: f for f in fields(Settings)}
        values = {}
        for name, raw in assignments.items():
            f = by_env.get(name)
            if f is None:
                raise ValueError(f"unknown setting {name!r}; `routing-engine --help` lists them")
            cast = _cast_of(f)
            try:
                values[f.name] = _parse(raw, cast)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected {cast.__name__}") from None
        return replace(self, **values)

    @property
    def tokens_configured(self) -> bool:
        return any((self.api_token, self.operate_token, self.read_token, self.ingest_token))

    def bind_refusal(self, host: str | None = None) -> str | None:
        """Why serving on `host` must not start, or None: with no token, only loopback (a laptop) stays open."""
        host = self.host if host is None else host
        if self.tokens_configured or is_loopback(host):
            return None
        return (f"refusing to serve on {host or 'every address'} with no token configured: anyone reaching the port "
                "could read tickets and change agents. Set ROUTING_OPERATE_TOKEN (and ROUTING_READ_TOKEN / "
                "ROUTING_INGEST_TOKEN as needed), or bind to 127.0.0.1")

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir) if self.models_dir else Path(self.state_dir) / "models"

    @staticmethod
    def describe() -> str:
        """Env var table for --help and the README."""
        rows = [f"  {f.metadata['env']:<26} {f.metadata['help']} (default: {f.default!r})" for f in fields(Settings)]
        return "\n".join(rows)


# settings a value below which cannot work (a thread count of -1, no enrich loop, an empty batch)
_AT_LEAST = {"batch_size": 1, "enrich_runners": 1, "embed_threads": 0, "blas_threads": 0, "storm_prior": 0.0}
