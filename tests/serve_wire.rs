//! The node speaks the shared wire layer: every response, stream chunk and
//! control answer reads back into realizar_shared's types (what the gateway
//! and the bench read them with), and the load report shows a node's
//! identity, its models' states and their load.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use realizar_shared::control::{LoadReport, ModelList as AdminModelList, ModelState};
use realizar_shared::openai::{
    AnyChunk, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion,
    CompletionRequest, GenParams, Message, ModelList, Prompt, StreamOptions,
};
use realizar_shared::sse::{SseEvent, SseReader};

fn post<T: serde::Serialize>(s: &Server, path: &str, body: &T) -> common::Response {
    s.post(path, &serde_json::to_value(body).unwrap())
}

#[test]
fn responses_chunks_and_reports_read_back_into_the_shared_types() {
    // A model directory holding a file that is not a model.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.gguf"), b"GGUF\x03\0\0\0 not really").unwrap();
    let model_dir = dir.path().to_str().unwrap().to_owned();
    let models = common::root().join("models");
    let s = Server::start(&[
        "node",
        "--model-dir",
        &model_dir,
        "--model-dir",
        models.to_str().unwrap(),
        "--model",
        "smollm2",
        "--id",
        "node-a",
        "--advertise",
        "http://127.0.0.1:1/",
        "--threads",
        "2",
        "--memory-budget-mib",
        "2048",
    ]);
    s.wait_ready(Duration::from_secs(120));

    let models: ModelList = serde_json::from_str(&s.get("/v1/models").body).unwrap();
    assert_eq!(models.data.len(), 1);
    assert_eq!(models.data[0].id, "smollm2");
    assert_eq!(models.data[0].meta.as_ref().unwrap().architecture, "llama");

    let chat = ChatCompletionRequest {
        model: Some("smollm2".into()),
        messages: vec![Message::new("user", "What is the capital of France?")],
        logprobs: true,
        top_logprobs: Some(2),
        params: GenParams {
            temperature: Some(0.0),
            max_tokens: Some(6),
            ..Default::default()
        },
    };
    let r = post(&s, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    let c: ChatCompletion = serde_json::from_str(&r.body).unwrap();
    assert_eq!(c.object, "chat.completion");
    assert_eq!(c.choices[0].message.role, "assistant");
    assert!(!c.choices[0].message.content.is_empty(), "{}", r.body);
    assert_eq!(c.usage.completion_tokens, 6);
    let lp = c.choices[0].logprobs.as_ref().unwrap();
    assert_eq!(lp.content.len(), c.usage.completion_tokens);
    assert!(lp.content.iter().all(|t| t.top_logprobs.len() == 2));

    // The same request streamed: the chunks' text is the response's text.
    let mut streamed = chat.clone();
    streamed.logprobs = false;
    streamed.top_logprobs = None;
    streamed.params.stream = true;
    streamed.params.stream_options = Some(StreamOptions {
        include_usage: true,
    });
    let r = post(&s, "/v1/chat/completions", &streamed);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut reader = SseReader::default();
    let events = reader.push(r.body.as_bytes()).unwrap();
    assert_eq!(events.last(), Some(&SseEvent::Done));
    let mut text = String::new();
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let SseEvent::Data(d) = e else {
            panic!("{e:?}")
        };
        let chunk: ChatCompletionChunk = serde_json::from_str(d).unwrap();
        let any: AnyChunk = serde_json::from_str(d).unwrap();
        assert_eq!(any.choices.len(), chunk.choices.len());
        for ch in &chunk.choices {
            text.push_str(ch.delta.content.as_deref().unwrap_or(""));
        }
        if let Some(Some(u)) = chunk.usage {
            usage = Some(u);
        }
    }
    assert_eq!(text, c.choices[0].message.content);
    assert_eq!(usage.unwrap().completion_tokens, c.usage.completion_tokens);

    // A completion with token ids; the same prompt twice reuses its blocks.
    let prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let req = CompletionRequest {
        model: Some("smollm2".into()),
        prompt: Prompt::Ids(prompt),
        logprobs: Some(1),
        params: GenParams {
            max_tokens: Some(2),
            temperature: Some(0.0),
            ..Default::default()
        },
    };
    let mut cached = Vec::new();
    for _ in 0..2 {
        let r = post(&s, "/v1/completions", &req);
        assert_eq!(r.status, 200, "{}", r.body);
        let c: Completion = serde_json::from_str(&r.body).unwrap();
        let u = c.usage.flatten().unwrap();
        assert_eq!(u.prompt_tokens, 40);
        cached.push(u.prompt_tokens_details.cached_tokens);
        assert_eq!(c.choices[0].logprobs.as_ref().unwrap().tokens.len(), 2);
    }
    assert_eq!(cached, [0, 32], "two full blocks of 16 come from the cache");

    // The load report: identity, budget, the model ready with its figures.
    let report: LoadReport = serde_json::from_str(&s.get("/admin/report").body).unwrap();
    assert_eq!(report.node_id, "node-a");
    assert_eq!(report.url, "http://127.0.0.1:1/");
    assert_eq!(report.memory_budget_bytes, 2048 << 20);
    assert!(!report.draining);
    let m = report.model("smollm2").unwrap();
    assert_eq!(m.state, ModelState::Ready);
    assert!(m.pinned);
    assert_eq!(report.memory_used_bytes, m.bytes);
    assert_eq!((m.block_size, m.running, m.waiting), (16, 0, 0));
    assert!(m.kv_blocks_capacity > 0);
    assert!(m.prefix_hashes.len() >= 2, "{:?}", m.prefix_hashes);

    // A load in progress is reported as loading, then ready.
    let addr = s.addr;
    let loader = std::thread::spawn(move || {
        common::http(
            addr,
            "POST",
            "/admin/models",
            Some(
                &serde_json::json!({"id": "g", "path": "gemma3", "options": {"kv_memory_mib": 32}}),
            ),
        )
    });
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        // Once the load has answered, one last look.
        let answered = loader.is_finished();
        let l: AdminModelList = serde_json::from_str(&s.get("/admin/models").body).unwrap();
        if let Some(g) = l.models.iter().find(|m| m.id == "g") {
            if seen.last() != Some(&g.state) {
                seen.push(g.state);
            }
        }
        if answered || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = loader.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(seen, [ModelState::Loading, ModelState::Ready]);

    // A file that is not a model is the request's fault: 400 naming the
    // file, and nothing changes on the node.
    let r = s.post(
        "/admin/models",
        &serde_json::json!({"id": "broken", "path": "broken.gguf"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let e: realizar_shared::error::ErrorBody = serde_json::from_str(&r.body).unwrap();
    assert_eq!(e.error.code.as_deref(), Some("load_failed"));
    assert_eq!(e.error.param.as_deref(), Some("path"));
    assert!(
        e.error.message.contains("broken.gguf"),
        "{}",
        e.error.message
    );
    let l: AdminModelList = serde_json::from_str(&s.get("/admin/models").body).unwrap();
    assert!(l.models.iter().all(|m| m.id != "broken"), "{l:?}");
}
