//! Who is in the cluster and who is up. Nodes enter from a static list,
//! from DNS (a name re-resolved periodically: docker-compose services and
//! Kubernetes headless services), or by joining; each is polled for its
//! load report, and one that has not answered for `down_after` (2 s by
//! default: four polls and two heartbeats missed) is down until it answers
//! again. This is the state and its rules, apart
//! from the tasks that poll and resolve (which feed it events), so the
//! rules are tested with a made-up clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use realizar_shared::control::LoadReport;

/// The default silence after which a node is down: short enough that a
/// node cut off is down (and its requests routed elsewhere) within 3 s of
/// the cut, long enough that a node busy on every core still answers one
/// of four polls.
pub const DOWN_AFTER: Duration = Duration::from_secs(2);

/// How a node came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `--node URL` or the config file.
    Static,
    /// An address a DNS name resolved to.
    Dns,
    /// It called `POST /admin/nodes/join`.
    Joined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Known, never answered yet.
    Unknown,
    Up,
    Down,
}

/// One node: keyed by the URL the gateway reaches it at.
#[derive(Debug, Clone)]
pub struct Member {
    pub url: String,
    pub sources: Vec<Source>,
    pub health: Health,
    /// When it was first known, and when it last answered.
    pub since: Instant,
    pub last_ok: Option<Instant>,
    pub consecutive_failures: u32,
    pub report: Option<LoadReport>,
}

impl Member {
    /// Its identity for placement: the id it reports (stable across
    /// restarts), else its URL.
    pub fn id(&self) -> &str {
        self.report.as_ref().map_or(&self.url, |r| &r.node_id)
    }
}

/// A change worth telling the rest of the gateway about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Up(String),
    Down(String),
    Gone(String),
}

pub struct Membership {
    members: BTreeMap<String, Member>,
    down_after: Duration,
}

impl Membership {
    pub fn new(down_after: Duration) -> Self {
        Membership {
            members: BTreeMap::new(),
            down_after,
        }
    }

    pub fn get(&self, url: &str) -> Option<&Member> {
        self.members.get(url)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Nodes that are up, with their last report.
    pub fn live(&self) -> impl Iterator<Item = (&Member, &LoadReport)> {
        self.members
            .values()
            .filter(|m| m.health == Health::Up)
            .filter_map(|m| m.report.as_ref().map(|r| (m, r)))
    }

    /// A node named by `source` (again).
    pub fn add(&mut self, url: &str, source: Source, now: Instant) {
        let m = self
            .members
            .entry(url.to_owned())
            .or_insert_with(|| Member {
                url: url.to_owned(),
                sources: Vec::new(),
                health: Health::Unknown,
                since: now,
                last_ok: None,
                consecutive_failures: 0,
                report: None,
            });
        if !m.sources.contains(&source) {
            m.sources.push(source);
            m.sources.sort();
        }
    }

    /// The addresses a DNS name resolves to now: new ones are added, and
    /// ones it no longer gives lose that source (and go when they have no
    /// other).
    pub fn set_dns(&mut self, urls: &[String], now: Instant) -> Vec<Change> {
        for u in urls {
            self.add(u, Source::Dns, now);
        }
        let stale: Vec<String> = self
            .members
            .values()
            .filter(|m| m.sources.contains(&Source::Dns) && !urls.contains(&m.url))
            .map(|m| m.url.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|u| self.remove_source(&u, Source::Dns))
            .collect()
    }

    fn remove_source(&mut self, url: &str, source: Source) -> Option<Change> {
        let m = self.members.get_mut(url)?;
        m.sources.retain(|s| *s != source);
        if m.sources.is_empty() {
            self.members.remove(url);
            return Some(Change::Gone(url.to_owned()));
        }
        None
    }

    /// A poll (or a heartbeat) brought a report.
    pub fn on_report(&mut self, url: &str, report: LoadReport, now: Instant) -> Option<Change> {
        let m = self.members.get_mut(url)?;
        m.report = Some(report);
        // A poll's answer may be stamped before a heartbeat already seen.
        m.last_ok = Some(m.last_ok.map_or(now, |t| t.max(now)));
        m.consecutive_failures = 0;
        let was = std::mem::replace(&mut m.health, Health::Up);
        (was != Health::Up).then(|| Change::Up(url.to_owned()))
    }

    /// A poll failed (refused, timed out, an error status).
    pub fn on_failure(&mut self, url: &str, now: Instant) -> Option<Change> {
        let m = self.members.get_mut(url)?;
        m.consecutive_failures += 1;
        self.check(url, now)
    }

    /// Mark down every node silent for `down_after`.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let urls: Vec<String> = self.members.keys().cloned().collect();
        urls.iter().filter_map(|u| self.check(u, now)).collect()
    }

    fn check(&mut self, url: &str, now: Instant) -> Option<Change> {
        let down_after = self.down_after;
        let m = self.members.get_mut(url)?;
        let silent_since = m.last_ok.unwrap_or(m.since);
        if m.health != Health::Down && now.duration_since(silent_since) >= down_after {
            let was_up = m.health == Health::Up;
            m.health = Health::Down;
            return was_up.then(|| Change::Down(url.to_owned()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str) -> LoadReport {
        LoadReport {
            node_id: id.into(),
            url: String::new(),
            version: "0".into(),
            uptime_seconds: 0.0,
            draining: false,
            leaving: false,
            evicted: Vec::new(),
            memory_budget_bytes: 1 << 30,
            memory_used_bytes: 0,
            threads: 2,
            models: Vec::new(),
        }
    }

    #[test]
    fn silent_for_three_seconds_is_down_until_it_answers() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_millis(x);
        let mut m = Membership::new(Duration::from_secs(3));
        m.add("http://a", Source::Static, t0);
        assert_eq!(m.get("http://a").unwrap().health, Health::Unknown);
        assert_eq!(
            m.on_report("http://a", report("a"), s(100)),
            Some(Change::Up("http://a".into()))
        );
        assert_eq!(m.get("http://a").unwrap().id(), "a");
        assert_eq!(m.live().count(), 1);
        // Failures within 3 s of the last answer leave it up.
        assert_eq!(m.on_failure("http://a", s(1100)), None);
        assert_eq!(m.tick(s(3000)), vec![]);
        assert_eq!(m.tick(s(3100)), vec![Change::Down("http://a".into())]);
        assert_eq!(m.live().count(), 0);
        assert_eq!(m.tick(s(9000)), vec![], "down once");
        // It answers again (a restart, same id).
        assert_eq!(
            m.on_report("http://a", report("a"), s(9500)),
            Some(Change::Up("http://a".into()))
        );
        assert_eq!(m.live().count(), 1);
    }

    #[test]
    fn a_node_that_never_answers_is_down_after_three_seconds_without_an_up() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(3));
        m.add("http://b", Source::Static, t0);
        assert_eq!(m.on_failure("http://b", t0 + Duration::from_secs(4)), None);
        assert_eq!(m.get("http://b").unwrap().health, Health::Down);
    }

    #[test]
    fn dns_adds_and_removes_only_what_it_named() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(3));
        m.add("http://s", Source::Static, t0);
        m.set_dns(
            &["http://d1".into(), "http://d2".into(), "http://s".into()],
            t0,
        );
        assert_eq!(m.members().count(), 3);
        let changes = m.set_dns(&["http://d2".into()], t0);
        assert_eq!(changes, vec![Change::Gone("http://d1".into())]);
        // The static node stays, though DNS no longer names it.
        let urls: Vec<_> = m.members().map(|x| x.url.clone()).collect();
        assert_eq!(urls, ["http://d2", "http://s"]);
        assert_eq!(m.get("http://s").unwrap().sources, [Source::Static]);
    }
}
