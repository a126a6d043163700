//! The node's Prometheus recorder: one per process (realizar_shared::metrics::recorder),
//! every node metric described (names from realizar_shared::metrics).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusHandle;
use realizar_shared::metrics as m;

enum Kind {
    Counter,
    Gauge,
    Seconds,
    Histogram,
}

const DESCRIBED: &[(&str, Kind, &str)] = &[
    (
        m::HTTP_REQUESTS,
        Kind::Counter,
        "HTTP requests by endpoint and status",
    ),
    (
        m::HTTP_REQUEST_DURATION,
        Kind::Seconds,
        "HTTP request handling time (until the response head)",
    ),
    (
        m::TIME_TO_FIRST_TOKEN,
        Kind::Seconds,
        "Arrival to first generated token",
    ),
    (
        m::INTER_TOKEN_LATENCY,
        Kind::Seconds,
        "Time between consecutive generated tokens of a sequence",
    ),
    (
        m::E2E_REQUEST_LATENCY,
        Kind::Seconds,
        "Arrival to last generated token",
    ),
    (
        m::REQUEST_QUEUE_SECONDS,
        Kind::Seconds,
        "Arrival to admission into the running batch",
    ),
    (m::BATCH_SIZE, Kind::Histogram, "Sequences per forward step"),
    (
        m::MODEL_LOAD_SECONDS,
        Kind::Seconds,
        "Time to open, build and warm a model",
    ),
    (
        m::PROMPT_TOKENS,
        Kind::Counter,
        "Prompt tokens of finished requests",
    ),
    (
        m::GENERATION_TOKENS,
        Kind::Counter,
        "Generated tokens of finished requests",
    ),
    (
        m::SPEC_DRAFT_TOKENS,
        Kind::Counter,
        "Prompt-lookup draft tokens verified (speculative decoding)",
    ),
    (
        m::SPEC_ACCEPTED_TOKENS,
        Kind::Counter,
        "Draft tokens that sampling chose (accepted / draft: the acceptance rate)",
    ),
    (
        m::SPEC_TOKENS_PER_STEP,
        Kind::Histogram,
        "Tokens a step that verified a draft produced for its sequence",
    ),
    (
        m::RUNNING_SEQUENCES,
        Kind::Gauge,
        "Sequences in the running batch",
    ),
    (
        m::WAITING_SEQUENCES,
        Kind::Gauge,
        "Sequences waiting for admission",
    ),
    (
        m::KV_BLOCKS_USED,
        Kind::Gauge,
        "KV blocks held by sequences",
    ),
    (m::KV_BLOCKS_CAPACITY, Kind::Gauge, "KV blocks in the pool"),
    (
        m::PREFIX_CACHE_HITS,
        Kind::Counter,
        "Prompt tokens found in the prefix cache",
    ),
    (
        m::PREFIX_CACHE_QUERIES,
        Kind::Counter,
        "Prompt tokens looked up in the prefix cache",
    ),
    (
        m::PREEMPTIONS,
        Kind::Counter,
        "Sequences preempted for lack of KV blocks",
    ),
    (
        m::CANCELLED_REQUESTS,
        Kind::Counter,
        "Sequences dropped because their client went away",
    ),
    (
        m::STALLED_STREAMS,
        Kind::Counter,
        "Streams cancelled because their client stopped reading",
    ),
    (
        m::REJECTED_REQUESTS,
        Kind::Counter,
        "Requests refused because the queue was full",
    ),
    (
        m::EXECUTOR_RESTARTS,
        Kind::Counter,
        "Executor restarts after a panic",
    ),
    (
        m::MODEL_ACTOR_RESTARTS,
        Kind::Counter,
        "Model actor restarts after a failure",
    ),
    (
        m::MODEL_EVICTIONS,
        Kind::Counter,
        "Models evicted to fit the memory budget",
    ),
    (m::LOADED_MODELS, Kind::Gauge, "Models loaded"),
];

/// Install the Prometheus recorder (once per process) and describe the metrics.
pub fn install() -> Result<PrometheusHandle, String> {
    let h = m::recorder()?;
    for (name, kind, help) in DESCRIBED {
        match kind {
            Kind::Counter => describe_counter!(*name, *help),
            Kind::Gauge => describe_gauge!(*name, *help),
            Kind::Seconds => describe_histogram!(*name, Unit::Seconds, *help),
            Kind::Histogram => describe_histogram!(*name, *help),
        }
    }
    Ok(h)
}
