//! `/metrics/fleet`: every live node's metrics with a `node` label, and the
//! gateway's own, in one Prometheus text exposition — what an operator
//! points one scrape at. Families are merged by name (one `# HELP` and
//! `# TYPE` each, samples together), as the text format requires.
//!
//! Node and gateway may share one process (`realizar serve`) and so one
//! recorder: a node's exposition then holds the gateway's series too. So
//! the nodes' expositions give everything but `realizar_gateway_*`, and
//! the gateway's own only those.

use std::collections::BTreeMap;

use realizar_shared::metrics::GATEWAY_PREFIX;

/// One metric family: its help, its type, and its sample lines.
#[derive(Debug, Default, Clone)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merge expositions; each one's samples get `node="<id>"` (when given).
pub fn merge<'a>(sources: impl IntoIterator<Item = (Option<&'a str>, &'a str)>) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (node, text) in sources {
        // Sample names map to their family through the TYPE lines seen so
        // far in this exposition (a histogram's `_bucket`, `_sum`, `_count`).
        let mut kinds: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                if let Some((name, help)) = rest.split_once(' ') {
                    families
                        .entry(name.to_owned())
                        .or_default()
                        .help
                        .get_or_insert_with(|| help.to_owned());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    kinds.insert(name.to_owned(), kind.to_owned());
                    families
                        .entry(name.to_owned())
                        .or_default()
                        .kind
                        .get_or_insert_with(|| kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let family = family_of(name, &kinds);
            if family.starts_with(GATEWAY_PREFIX) != node.is_none() {
                continue;
            }
            let sample = match node {
                Some(n) => with_label(line, name_end, n),
                None => line.to_owned(),
            };
            families.entry(family).or_default().samples.push(sample);
        }
    }
    let mut out = String::new();
    for (name, f) in families {
        if f.samples.is_empty() {
            continue;
        }
        if let Some(h) = f.help {
            out.push_str(&format!("# HELP {name} {h}\n"));
        }
        if let Some(k) = f.kind {
            out.push_str(&format!("# TYPE {name} {k}\n"));
        }
        for s in f.samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

fn family_of(sample: &str, kinds: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if kinds
                .get(base)
                .is_some_and(|k| k == "histogram" || k == "summary")
            {
                return base.to_owned();
            }
        }
    }
    sample.to_owned()
}

/// The sample line with `node="<n>"` as its first label.
fn with_label(line: &str, name_end: usize, node: &str) -> String {
    let escaped = node
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let (name, rest) = line.split_at(name_end);
    if let Some(labels) = rest.strip_prefix('{') {
        if labels.starts_with('}') {
            format!("{name}{{node=\"{escaped}\"{labels}")
        } else {
            format!("{name}{{node=\"{escaped}\",{labels}")
        }
    } else {
        format!("{name}{{node=\"{escaped}\"}}{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_merge_with_a_node_label() {
        let a = "# HELP x_total things\n# TYPE x_total counter\nx_total{model=\"m\"} 3\n\
                 # TYPE lat histogram\nlat_bucket{le=\"0.1\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 0.3\nlat_count 2\n";
        let b = "# HELP x_total things\n# TYPE x_total counter\nx_total{model=\"m\"} 5\nup 1\n";
        // The gateway's series in a node's text (one process) are left out
        // there; anything but the gateway's in the gateway's text likewise.
        let b = format!("{b}realizar_gateway_nodes_up 9\n");
        let gw = "# TYPE realizar_gateway_requests_total counter\nrealizar_gateway_requests_total 7\nx_total{model=\"m\"} 11\n";
        let m = merge([(Some("n1"), a), (Some("n\"2"), b.as_str()), (None, gw)]);
        assert_eq!(m.matches("# TYPE x_total counter").count(), 1);
        assert!(
            m.contains(
                "x_total{node=\"n1\",model=\"m\"} 3\nx_total{node=\"n\\\"2\",model=\"m\"} 5\n"
            ),
            "{m}"
        );
        assert!(
            m.contains("# TYPE lat histogram\nlat_bucket{node=\"n1\",le=\"0.1\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("lat_sum{node=\"n1\"} 0.3\nlat_count{node=\"n1\"} 2\n"),
            "{m}"
        );
        assert!(m.contains("up{node=\"n\\\"2\"} 1\n"), "{m}");
        assert!(m.contains("\nrealizar_gateway_requests_total 7\n"), "{m}");
        assert!(!m.contains("realizar_gateway_nodes_up"), "{m}");
        assert!(!m.contains(" 11\n"), "{m}");
    }
}
