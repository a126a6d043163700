//! Metric names and label keys, written once: the node records them, the
//! gateway reads them from node reports and re-exports fleet totals, and the
//! dashboards and tests query them. Prometheus conventions: `_total` for
//! counters, `_seconds` for durations.

/// Label: the model id.
pub const MODEL: &str = "model";
/// Label: the matched route.
pub const ENDPOINT: &str = "endpoint";
/// Label: the HTTP status code.
pub const STATUS: &str = "status";

pub const HTTP_REQUESTS: &str = "realizar_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "realizar_http_request_duration_seconds";
pub const TIME_TO_FIRST_TOKEN: &str = "realizar_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY: &str = "realizar_inter_token_latency_seconds";
pub const E2E_REQUEST_LATENCY: &str = "realizar_e2e_request_latency_seconds";
pub const REQUEST_QUEUE_SECONDS: &str = "realizar_request_queue_seconds";
pub const BATCH_SIZE: &str = "realizar_batch_size";
pub const MODEL_LOAD_SECONDS: &str = "realizar_model_load_seconds";
pub const PROMPT_TOKENS: &str = "realizar_prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "realizar_generation_tokens_total";
/// Speculative decoding: draft tokens verified, those accepted, and tokens
/// a verifying step produced (accepted plus the one sampled after them).
pub const SPEC_DRAFT_TOKENS: &str = "realizar_spec_draft_tokens_total";
pub const SPEC_ACCEPTED_TOKENS: &str = "realizar_spec_accepted_tokens_total";
pub const SPEC_TOKENS_PER_STEP: &str = "realizar_spec_tokens_per_step";
pub const RUNNING_SEQUENCES: &str = "realizar_running_sequences";
pub const WAITING_SEQUENCES: &str = "realizar_waiting_sequences";
pub const KV_BLOCKS_USED: &str = "realizar_kv_blocks_used";
pub const KV_BLOCKS_CAPACITY: &str = "realizar_kv_blocks_capacity";
/// Prompt tokens found in the prefix cache.
pub const PREFIX_CACHE_HITS: &str = "realizar_prefix_cache_hits_total";
/// Prompt tokens looked up in the prefix cache.
pub const PREFIX_CACHE_QUERIES: &str = "realizar_prefix_cache_queries_total";
pub const PREEMPTIONS: &str = "realizar_preemptions_total";
pub const CANCELLED_REQUESTS: &str = "realizar_cancelled_requests_total";
pub const STALLED_STREAMS: &str = "realizar_stalled_streams_total";
pub const REJECTED_REQUESTS: &str = "realizar_rejected_requests_total";
pub const LOADED_MODELS: &str = "realizar_loaded_models";
pub const MODEL_EVICTIONS: &str = "realizar_model_evictions_total";
pub const MODEL_ACTOR_RESTARTS: &str = "realizar_model_actor_restarts_total";
pub const EXECUTOR_RESTARTS: &str = "realizar_executor_restarts_total";

/// Histogram buckets for latencies, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Histogram buckets for batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Label: the node a gateway sent a request to.
pub const NODE: &str = "node";
/// Label: why the gateway chose that node (affinity, spill, retry).
pub const ROUTE: &str = "route";

pub const GATEWAY_REQUESTS: &str = "realizar_gateway_requests_total";
/// Time from sending a request to a node to its response head.
pub const GATEWAY_UPSTREAM_HEAD_SECONDS: &str = "realizar_gateway_upstream_head_seconds";
pub const GATEWAY_RETRIES: &str = "realizar_gateway_retries_total";
/// Streams continued on another owner after theirs broke.
pub const GATEWAY_RESUMES: &str = "realizar_gateway_stream_resumes_total";
pub const GATEWAY_ROUTING_SECONDS: &str = "realizar_gateway_routing_decision_seconds";
pub const GATEWAY_NODES_UP: &str = "realizar_gateway_nodes_up";
pub const GATEWAY_NODES_KNOWN: &str = "realizar_gateway_nodes_known";
pub const GATEWAY_REPLICA_LOADS: &str = "realizar_gateway_replica_loads_total";
pub const GATEWAY_REPLICA_UNLOADS: &str = "realizar_gateway_replica_unloads_total";
/// Replicas whose owner changed between two placements.
pub const GATEWAY_PLACEMENT_MOVES: &str = "realizar_gateway_placement_moves_total";
/// 1 while a node's circuit breaker is open (or half-open), else 0.
pub const GATEWAY_BREAKER_OPEN: &str = "realizar_gateway_breaker_open";

/// The gateway's histograms (routing decisions take microseconds) get
/// finer buckets than the node's.
pub const GATEWAY_PREFIX: &str = "realizar_gateway_";
pub const GATEWAY_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The process's one Prometheus recorder, installed on first use. Node and
/// gateway share it, as `realizar serve` runs both in one process; each
/// describes its own metrics.
pub fn recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(SPEC_TOKENS_PER_STEP.into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Prefix(GATEWAY_PREFIX.into()),
                        GATEWAY_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| format!("metrics: {e}"))
        })
        .clone()
}
