//! The container deployment, for real: the image built here without
//! pulling anything (deploy/image/build.sh, packaging the suite's own
//! binary), deploy/compose/ brought up (a gateway and three nodes on a
//! private network, the checkout's models/ as their volume), then: the
//! official `openai` package through the published port (models list,
//! chat, streamed chat); one node container `docker kill`ed under load (200
//! requests, 8 at a time, half streamed) with none failed; another cut off
//! with `docker network disconnect`, marked down and its models served by
//! the rest, then connected again and back up; with smollm2 raised to three
//! replicas, every node's TTFT histogram on the gateway's `/metrics/fleet`;
//! the observability profile's Prometheus (deploy/prometheus/, Debian's
//! package) scraping it, with every node's TTFT series and every query of
//! the Grafana dashboard (deploy/grafana/realizar.json) answered; a second
//! gateway finding the nodes by DNS (a name with three addresses) sees all
//! three and the same placement. Skipped, saying so, where no Docker
//! daemon answers.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{free_port, load, wait, Gateway};
use serde_json::json;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Why this machine cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    match Command::new("docker").args(["info"]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Some(format!(
                "no Docker daemon answers (`docker info`: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("no docker command ({e})")),
    }
    match Command::new("docker-compose").arg("version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("a Docker daemon answers but docker-compose is missing".into()),
    }
}

/// A compose project of the checkout's deploy/compose/, torn down (and
/// its image removed) when dropped.
struct Compose {
    project: String,
    image: String,
    prometheus_image: String,
    port: u16,
    prometheus_port: u16,
}

impl Compose {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(common::root().join("deploy/compose/docker-compose.yml"))
            .args(args)
            .env("REALIZAR_IMAGE", &self.image)
            .env("REALIZAR_PORT", self.port.to_string())
            .env("REALIZAR_PROMETHEUS_IMAGE", &self.prometheus_image)
            .env("REALIZAR_PROMETHEUS_PORT", self.prometheus_port.to_string())
            .stdin(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The container of a service.
    fn container(&self, service: &str) -> String {
        self.ok(&["ps", "-q", service])
    }

    fn network(&self) -> String {
        format!("{}_default", self.project)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(o) = self.command(&["logs", "--tail", "40"]).output() {
                eprintln!("{}", String::from_utf8_lossy(&o.stdout));
            }
        }
        // The extra gateway run beside the project, if it is still there.
        let _ = run("docker", &["rm", "-f", &format!("{}-dns", self.project)]);
        let _ = self
            .command(&["--profile", "observability", "down", "-v", "-t", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = run(
            "docker",
            &["rmi", "-f", &self.image, &self.prometheus_image],
        );
    }
}

/// One completion through the gateway, streamed or not: (status, whole);
/// a stream that did not end with `[DONE]` is an error showing it.
fn completion(gw: SocketAddr, i: usize, stream: bool) -> Result<(u16, bool), String> {
    let b = json!({"model": "smollm2", "prompt": format!("Request {i}: the weather today is"),
        "max_tokens": 8, "temperature": 0, "stream": stream});
    let r = common::raw_http(gw, "POST", "/v1/completions", &[], b.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    if stream && r.status == 200 && !r.body.trim_end().ends_with("data: [DONE]") {
        return Err(format!("a broken stream: {}", r.body));
    }
    Ok((r.status, true))
}

#[test]
fn compose_cluster_serves_the_openai_client_and_absorbs_a_killed_and_a_cut_off_node() {
    if let Some(why) = unavailable() {
        println!("skipped: {why}");
        return;
    }
    let t_all = Instant::now();
    let id = std::process::id();
    let compose = Compose {
        project: format!("realizartest{id}"),
        image: format!("realizar:test-{id}"),
        prometheus_image: format!("realizar-prometheus:test-{id}"),
        port: free_port(),
        prometheus_port: free_port(),
    };
    let build = Command::new("sh")
        .arg(common::root().join("deploy/image/build.sh"))
        .arg(&compose.image)
        .env("REALIZAR_BINARY", env!("CARGO_BIN_EXE_realizar"))
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "deploy/image/build.sh: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let size: u64 = ok(
        "docker",
        &["image", "inspect", &compose.image, "--format", "{{.Size}}"],
    )
    .parse()
    .unwrap();
    println!(
        "image {} built in {:?}: {size} bytes",
        compose.image,
        t_all.elapsed()
    );

    let prometheus = common::root().join("deploy/prometheus/build.sh");
    ok(
        "sh",
        &[prometheus.to_str().unwrap(), &compose.prometheus_image],
    );

    compose.ok(&["--profile", "observability", "up", "-d"]);
    let gw = Gateway {
        addr: format!("127.0.0.1:{}", compose.port).parse().unwrap(),
        admin: Vec::new(),
    };
    let placed = || gw.ready("smollm2").len() == 2 && gw.ready("gemma3").len() == 1;
    let up = wait(Duration::from_secs(180), placed);
    assert!(up.is_some(), "{}", gw.cluster());
    println!("compose up → both models ready in {:?}", up.unwrap());
    // Every container healthy by its image's own check.
    let healthy = wait(Duration::from_secs(60), || {
        ["gateway", "node-1", "node-2", "node-3"].iter().all(|s| {
            let c = compose.container(s);
            run("docker", &["inspect", "-f", "{{.State.Health.Status}}", &c])
                .stdout
                .starts_with(b"healthy")
        })
    });
    assert!(healthy.is_some(), "containers not all healthy");

    // The official client through the published port.
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="none")
ids = sorted(m.id for m in c.models.list())
assert ids == ["gemma3", "smollm2"], ids
r = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, temperature=0)
assert r.choices[0].message.content and r.usage.completion_tokens > 0, r
parts, finish = [], None
for ch in c.chat.completions.create(model="gemma3", messages=[{"role": "user", "content": "Count to five"}], max_tokens=8, stream=True):
    if ch.choices:
        parts.append(ch.choices[0].delta.content or "")
        finish = ch.choices[0].finish_reason or finish
assert "".join(parts) and finish in ("stop", "length"), (parts, finish)
print("openai client: models", ids, "| chat:", repr(r.choices[0].message.content), "| streamed:", repr("".join(parts)))
"#;
    let out = run(
        &common::python(),
        &["-c", script, &format!("http://{}/v1", gw.addr)],
    );
    assert!(
        out.status.success(),
        "openai client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));

    // 200 requests, 8 at a time; an owner of smollm2 killed after 40.
    let victim = gw.ready("smollm2")[0].clone();
    let done = load(
        200,
        8,
        |i| completion(gw.addr, i, i % 2 == 1),
        40,
        Duration::from_secs(120),
        || {
            ok("docker", &["kill", &compose.container(&victim)]);
        },
    );
    assert_eq!(done.len(), 200);
    common::fleet::assert_all_served(&done);
    println!("200 requests (half streamed) at concurrency 8, {victim} killed after 40: 0 failed");
    // Started again (a killed container stays down), it rejoins as itself.
    let t_start = Instant::now();
    compose.ok(&["start", &victim]);
    let rejoined = wait(Duration::from_secs(60), || gw.node_state(&victim) == "up");
    assert!(
        rejoined.is_some(),
        "{victim} did not rejoin: {}",
        gw.cluster()
    );
    println!(
        "{victim} started again: up under its id {:?} later",
        t_start.elapsed()
    );

    // Another node cut off from the network: down, and its models served
    // by the rest; connected again: up.
    let placed = wait(Duration::from_secs(120), placed);
    assert!(placed.is_some(), "{}", gw.cluster());
    let cut = gw.ready("gemma3")[0].clone();
    let container = compose.container(&cut);
    let t_cut = Instant::now();
    ok(
        "docker",
        &["network", "disconnect", &compose.network(), &container],
    );
    let down = wait(Duration::from_secs(15), || gw.node_state(&cut) == "down");
    assert!(down.is_some(), "{cut} not marked down: {}", gw.cluster());
    println!(
        "{cut} cut off: marked down {:?} after the disconnect",
        t_cut.elapsed()
    );
    for (model, n) in [("gemma3", 4), ("smollm2", 4)] {
        for i in 0..n {
            let b = json!({"model": model, "prompt": format!("Cut {i}: once upon a time"), "max_tokens": 4});
            let r = common::raw_http(
                gw.addr,
                "POST",
                "/v1/completions",
                &[],
                b.to_string().as_bytes(),
            )
            .unwrap();
            assert_eq!(r.status, 200, "{model}: {}", r.body);
            assert_ne!(r.header("x-realizar-node"), Some(cut.as_str()));
        }
    }
    let t_back = Instant::now();
    ok(
        "docker",
        &[
            "network",
            "connect",
            "--alias",
            &cut,
            "--alias",
            "nodes",
            &compose.network(),
            &container,
        ],
    );
    let back = wait(Duration::from_secs(30), || gw.node_state(&cut) == "up");
    assert!(back.is_some(), "{cut} did not come back: {}", gw.cluster());
    println!("{cut} connected again: up {:?} later", t_back.elapsed());

    // The fleet's metrics: every node's TTFT histogram, labelled by node,
    // once every node serves (smollm2 on all three, requests until each
    // has answered one).
    let r = gw.request(
        "PATCH",
        "/admin/models/smollm2",
        Some(&json!({"replicas": 3})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let everywhere = wait(Duration::from_secs(60), || gw.ready("smollm2").len() == 3);
    assert!(everywhere.is_some(), "{}", gw.cluster());
    let ttft_of = |n: &str| {
        let label = format!("node=\"{n}\"");
        common::http(gw.addr, "GET", "/metrics/fleet", None)
            .body
            .lines()
            .any(|l| l.starts_with("realizar_time_to_first_token_seconds") && l.contains(&label))
    };
    let mut i = 0;
    let all = wait(Duration::from_secs(60), || {
        i += 1;
        let b = json!({"model": "smollm2", "prompt": format!("Metrics {i}: a short story"), "max_tokens": 2});
        let r = common::http(gw.addr, "POST", "/v1/completions", Some(&b));
        assert_eq!(r.status, 200, "{}", r.body);
        ["node-1", "node-2", "node-3"].iter().all(|n| ttft_of(n))
    });
    assert!(
        all.is_some(),
        "not every node's TTFT histogram on /metrics/fleet after {i} requests"
    );
    println!("/metrics/fleet: every node's TTFT histogram after {i} requests");

    // Prometheus (the observability profile) scrapes the fleet view: every
    // node's TTFT series is there, and every query of the Grafana
    // dashboard runs without error, the core ones with data.
    let prom: SocketAddr = format!("127.0.0.1:{}", compose.prometheus_port)
        .parse()
        .unwrap();
    let query = |q: &str| -> serde_json::Value {
        let r = common::http(
            prom,
            "GET",
            &format!("/api/v1/query?query={}", encode(q)),
            None,
        );
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{q}: {e}: {}", r.body))
    };
    let mut nodes = Vec::new();
    let scraped = wait(Duration::from_secs(30), || {
        let v = query("count by (node) (realizar_time_to_first_token_seconds_count)");
        nodes = v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["metric"]["node"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        nodes == ["node-1", "node-2", "node-3"]
    });
    assert!(scraped.is_some(), "Prometheus has TTFT series of {nodes:?}");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("deploy/grafana/realizar.json")).unwrap(),
    )
    .unwrap();
    // Series that the traffic above need not have made.
    let may_be_empty = ["unloads", "breaker", "resumed", "retries"];
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let v = query(expr);
            assert_eq!(v["status"], "success", "{expr}: {v}");
            let legend = t["legendFormat"].as_str().unwrap_or("");
            if !may_be_empty.iter().any(|m| legend.contains(m)) {
                assert!(
                    v["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty()),
                    "no data for {expr} ({})",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    println!("Prometheus: TTFT series of {nodes:?}; {checked} dashboard queries answered");

    // A second gateway that finds the nodes by DNS: `nodes` resolves to all
    // three. It sees them all, agrees on the placement, and serves.
    let dns_port = free_port();
    let config = common::root().join("configs/cluster.toml");
    let dns_gateway = ok(
        "docker",
        &[
            "run",
            "-d",
            "--rm",
            "--name",
            &format!("{}-dns", compose.project),
            "--network",
            &compose.network(),
            "-p",
            &format!("127.0.0.1:{dns_port}:8080"),
            "-v",
            &format!("{}:/etc/realizar/cluster.toml:ro", config.display()),
            &compose.image,
            "gateway",
            "--config",
            "/etc/realizar/cluster.toml",
            "--host",
            "0.0.0.0",
            "--discover-dns",
            "nodes:8080",
        ],
    );
    let gw2 = Gateway {
        addr: format!("127.0.0.1:{dns_port}").parse().unwrap(),
        admin: Vec::new(),
    };
    let found = wait(Duration::from_secs(30), || {
        let c = gw2.cluster();
        let mut up: Vec<String> = c["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["state"] == "up")
            .map(|n| n["id"].as_str().unwrap_or("").to_owned())
            .collect();
        up.sort();
        up == ["node-1", "node-2", "node-3"] && gw2.ready("gemma3") == gw.ready("gemma3")
    });
    let seen = gw2.cluster();
    let _ = run("docker", &["rm", "-f", &dns_gateway]);
    assert!(found.is_some(), "the DNS gateway saw {seen}");
    assert_eq!(
        seen["nodes"].as_array().unwrap().len(),
        3,
        "one member per address of `nodes`: {seen}"
    );
    println!("a gateway finding nodes by DNS (`nodes`: 3 addresses) saw all three up and the same placement");
    println!("whole test (image, cluster, checks) {:?}", t_all.elapsed());
}

/// `q` percent-encoded for a URL's query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
