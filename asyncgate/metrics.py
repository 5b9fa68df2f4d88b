"""Every Prometheus metric asyncgate exports, defined once, at import.

Naming follows Prometheus: the ``asyncgate_`` prefix, ``_total`` counters,
``_seconds`` histograms in base units.  Labels come from route names in the
config and from fixed vocabularies (mode, outcome, queue kind), never from raw
paths or ids, so cardinality is bounded by the config.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- gateway ---------------------------------------------------------------------------
GATEWAY_REQUESTS = Counter(
    "asyncgate_gateway_requests_total",
    "Requests answered by the gateway.",
    ["route", "mode", "status_class"],  # mode: passthrough, async, status
)
GATEWAY_REQUEST_SECONDS = Histogram(
    "asyncgate_gateway_request_duration_seconds",
    "Time from request received to response finished.",
    ["route", "mode"],
    buckets=_LATENCY,
)
GATEWAY_UPSTREAM_SECONDS = Histogram(
    "asyncgate_gateway_upstream_duration_seconds",
    "Pass-through: time until the upstream's response headers arrived.",
    buckets=_LATENCY,
)
GATEWAY_CONFIRM_SECONDS = Histogram(
    "asyncgate_gateway_broker_confirm_duration_seconds",
    "Async intake: time to publish a request's messages and get every confirm.",
    buckets=_LATENCY,
)
GATEWAY_OPERATIONS = Counter(
    "asyncgate_gateway_operations_total",
    "Operations taken in by async intake.",
    ["route", "result"],  # result: accepted, rejected (a bulk item refused on its own)
)

# --- consumer --------------------------------------------------------------------------
CONSUMER_OPERATIONS = Counter(
    "asyncgate_consumer_operations_total",
    "Replay attempts settled, by outcome.",
    ["route", "outcome"],  # success, retry_scheduled, dead_lettered, permanent_failure
)
CONSUMER_REPLAY_SECONDS = Histogram(
    "asyncgate_consumer_replay_duration_seconds",
    "Time of one upstream replay.",
    ["route"],
    buckets=_LATENCY,
)
CONSUMER_ATTEMPTS = Histogram(
    "asyncgate_consumer_attempts",
    "Attempt number of each settled replay (1 = first try).",
    ["route"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24),
)
CONSUMER_IN_FLIGHT = Gauge(
    "asyncgate_consumer_in_flight", "Deliveries being handled (up to the prefetch)."
)
CONSUMER_UPSTREAM_CONCURRENCY = Gauge(
    "asyncgate_consumer_upstream_concurrency", "Replays in flight to the upstream right now."
)
CONSUMER_UPSTREAM_CONCURRENCY_LIMIT = Gauge(
    "asyncgate_consumer_upstream_concurrency_limit", "The configured concurrency cap."
)
CONSUMER_LAST_SUCCESS = Gauge(
    "asyncgate_consumer_last_success_timestamp_seconds",
    "UNIX time of the last successful replay.",
)

# --- consumer: per-key ordering (consumer/turns.py) ------------------------------------------
ORDERING_TURN_WAIT_SECONDS = Histogram(
    "asyncgate_ordering_turn_wait_seconds",
    "Time an ordered operation waited in the consumer for its turn (granted or deferred).",
    ["route"],
    buckets=_LATENCY,
)
ORDERING_DEFERRED = Counter(
    "asyncgate_ordering_deferred_total",
    "Ordered operations sent back through a delay queue to wait for an earlier one.",
    ["route"],
)
ORDERING_WAITING = Gauge(
    "asyncgate_ordering_waiting_operations",
    "Accepted operations waiting behind an earlier unsettled one with their key (the store).",
)
ORDERING_KEYS_WAITING = Gauge(
    "asyncgate_ordering_keys_waiting", "Ordering keys with at least one operation waiting."
)
ORDERING_OLDEST_WAITING_SECONDS = Gauge(
    "asyncgate_ordering_oldest_waiting_age_seconds",
    "Age (since acceptance) of the oldest operation waiting for its turn; 0 when none.",
)

# --- broker, both roles ----------------------------------------------------------------
BROKER_CONNECTED = Gauge(
    "asyncgate_broker_connected", "1 while the broker link is up.", ["role", "link"]
)
QUEUE_READY = Gauge(
    "asyncgate_queue_messages_ready",
    "Messages ready in a queue (passive declare).",
    ["queue", "kind"],  # kind: work, delay, dead
)
QUEUE_CONSUMERS = Gauge(
    "asyncgate_queue_consumers", "Consumers attached to a queue.", ["queue", "kind"]
)
