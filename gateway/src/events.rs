//! The coordinator's event log: what it asked of which node and what came
//! of it (loads, unloads, nodes up and down, drains, catalog changes),
//! the latest `CAPACITY` kept and shown in `/admin/cluster`, so an operator
//! (or a test) can see how long a re-placement took and in what order a
//! move happened.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the gateway started.
    pub t: f64,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug)]
pub struct Events {
    started: Instant,
    log: VecDeque<Event>,
}

impl Events {
    pub fn new(started: Instant) -> Self {
        Events {
            started,
            log: VecDeque::new(),
        }
    }

    pub fn push(&mut self, kind: &'static str, node: &str, model: &str, detail: impl Into<String>) {
        if self.log.len() == CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(Event {
            t: self.started.elapsed().as_secs_f64(),
            kind,
            node: node.to_owned(),
            model: model.to_owned(),
            detail: detail.into(),
        });
    }

    pub fn all(&self) -> impl Iterator<Item = &Event> {
        self.log.iter()
    }
}
