//! The Kubernetes manifests (deploy/k8s/) as shipped: every resource valid
//! against the Kubernetes schemas (`kubernetes-validate --strict`, offline,
//! from PyPI — and a manifest with a misspelt field is refused, so the
//! check can fail); the gateway's configuration in the ConfigMap is one
//! our gateway accepts; the arguments the node and gateway containers are
//! started with are ones our binary accepts. And the configuration
//! containers are given through their environment: `REALIZAR_GATEWAY_<KEY>`
//! and `REALIZAR_NODE_<KEY>` set keys, and one that names no key stops the
//! process with an error naming the variable.

mod common;

use std::process::Command;

use realizar_gateway::config::GatewayConfig;

fn validator() -> String {
    let py = common::python();
    let bin = std::path::Path::new(&py).with_file_name("kubernetes-validate");
    assert!(
        bin.exists(),
        "{} missing: run scripts/test.sh (it installs kubernetes-validate into target/pyenv)",
        bin.display()
    );
    bin.display().to_string()
}

fn manifests() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(common::root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "{v:?}");
    v
}

#[test]
fn manifests_pass_the_kubernetes_schemas_and_a_misspelt_one_does_not() {
    let files = manifests();
    let out = Command::new(validator())
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for kind in [
        "statefulset",
        "deployment",
        "service",
        "poddisruptionbudget",
        "configmap",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "{kind}: {report}"
        );
    }
    println!("{report}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("nodes.yaml");
    let text = std::fs::read_to_string(common::root().join("deploy/k8s/nodes.yaml")).unwrap();
    std::fs::write(&bad, text.replacen("  replicas: 3", "  replica: 3", 1)).unwrap();
    let out = Command::new(validator())
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed");
}

/// A value from the manifests, read by Python's YAML parser (which the
/// validator brings).
fn yaml(file: &str, expr: &str) -> String {
    let script = format!(
        "import sys, yaml, json\ndocs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\nv = {expr}\nprint(v if isinstance(v, str) else json.dumps(v))"
    );
    let out = Command::new(common::python())
        .args(["-c", &script])
        .arg(common::root().join("deploy/k8s").join(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_configmap_and_the_container_arguments_are_ones_realizar_accepts() {
    let toml = yaml("configmap.yaml", "docs[0]['data']['cluster.toml']");
    let c = GatewayConfig::from_toml(&toml, "deploy/k8s/configmap.yaml").unwrap();
    assert_eq!(c.discover_dns, ["realizar-node:8080"]);
    assert_eq!(c.host, "0.0.0.0");

    for (file, kind) in [
        ("nodes.yaml", "StatefulSet"),
        ("gateway.yaml", "Deployment"),
    ] {
        let args = yaml(
            file,
            &format!("[d for d in docs if d['kind'] == '{kind}'][0]['spec']['template']['spec']['containers'][0]['args']"),
        );
        let args: Vec<String> = serde_json::from_str::<Vec<String>>(&args)
            .unwrap()
            .into_iter()
            .map(|a| a.replace("$(POD_NAME)", "realizar-node-0"))
            .collect();
        // clap reads every argument before it acts on --help: an unknown
        // flag or a bad value fails here.
        let out = common::realizar()
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: realizar {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn configuration_keys_come_from_the_environment_and_unknown_ones_are_refused() {
    // A key set by a variable: the gateway listens where it says.
    let port = common::fleet::free_port();
    let mut gw = common::realizar()
        .arg("gateway")
        .env("REALIZAR_GATEWAY_PORT", port.to_string())
        .env("REALIZAR_GATEWAY_EPSILON", "0.5")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = common::fleet::wait(std::time::Duration::from_secs(30), || {
        common::try_http(addr, "GET", "/admin/cluster", None).is_ok_and(|r| r.status == 200)
    });
    let _ = gw.kill();
    let _ = gw.wait();
    assert!(
        up.is_some(),
        "the gateway did not listen on REALIZAR_GATEWAY_PORT={port}"
    );

    // A variable naming no key, for each: refused at start, named.
    for (cmd, var) in [
        ("gateway", "REALIZAR_GATEWAY_EPSILONN"),
        ("node", "REALIZAR_NODE_MAX_QUEUEE"),
    ] {
        let out = common::realizar().arg(cmd).env(var, "1").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} started with {var}");
        assert!(
            err.contains(&format!("{var}: names no configuration key")),
            "{cmd}: {err}"
        );
    }
    // A value of the wrong type names the key and the variable.
    let out = common::realizar()
        .arg("node")
        .env("REALIZAR_NODE_MAX_QUEUE", "many")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("max_queue") && err.contains("REALIZAR_NODE_MAX_QUEUE"),
        "{err}"
    );
}
