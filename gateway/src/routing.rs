//! The choice among a model's ready owners for one request: consistent
//! hashing with bounded loads. The request's affinity key (its user or
//! session, else the start of its prompt) ranks the owners by rendezvous
//! hash; the first owner whose load leaves room under
//! `max(ceil((1+ε)·(total+1)/n), floor)` takes it, so the same key keeps
//! going to the same node (and finds its prefix cached there) until that
//! node is busier than its fair share allows, and once loads are past the
//! floor no node takes more than (1+ε)× the mean. A pure function: two gateways with the same owners and
//! loads choose alike.

use realizar_shared::control::Affinity;
use realizar_shared::openai::Conversation;

use crate::hash;

/// An owner as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// Its id's hash (`hash::of(id)`), computed once per membership.
    pub id_hash: u64,
    /// Sequences running and waiting on it for this model, plus the
    /// requests this gateway sent since its last report.
    pub load: u64,
    /// Among the owners sampled for the request's key (`table::SAMPLE`;
    /// every owner of a model with few): the load bound, the ranking
    /// passes and the least-loaded fallback look at these; an owner not
    /// sampled is here because it holds one of the request's keys.
    pub sampled: bool,
    /// It served the conversation's previous turn, whose prompt this one
    /// extends, and reports that prompt still cached; or this very prompt.
    pub history_cached: bool,
    /// It reports the request's user (or session) as cached.
    pub cached: bool,
    /// It reports the prompt's start (a tenant's system prompt, say) as
    /// cached: another request with the same start was there.
    pub prefix_cached: bool,
    /// How many keys it reports cached for the model: its share of the
    /// model's cached prompts.
    pub keys: u64,
    /// It reports its cache losing prompt starts still in use
    /// (`losing_starts`).
    pub losing_starts: bool,
}

/// Whether a node's cache is losing prompt starts still in use: of the
/// latest requests whose start it had held (`ModelInfo::starts_returned`,
/// at least 16), a sixteenth or more found it evicted. Low, because the
/// slack itself brings the losses down (issue 17's experiment: 1–14 of 64
/// per node with it, 26–45 without), and a gate that turned off there
/// would let the spills that cause them back in.
pub fn losing_starts(returned: u32, lost: u32) -> bool {
    returned >= 16 && lost * 16 >= returned
}

/// Why a request went where it went (sent as `x-realizar-route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The owner that has the conversation's previous turn (or this very
    /// prompt) cached.
    History,
    /// An owner that has the request's user or prompt start cached, or the
    /// key's first-ranked owner.
    Affinity,
    /// A later-ranked owner: the ones before it were over the bound.
    Spill,
    /// No ranking applied: the least loaded owner (the least-loaded
    /// policy; under affinity only when no owner is under the bound, which
    /// loads counted as here never give).
    LeastLoaded,
    /// The round-robin policy's turn.
    RoundRobin,
}

/// How a gateway chooses among a model's ready owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Rendezvous rank by the affinity key, bounded load (`choose`).
    #[default]
    Affinity,
    /// The least loaded owner.
    LeastLoaded,
    /// Each owner in turn: the baseline prefix affinity is measured
    /// against.
    RoundRobin,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "affinity" => Ok(Policy::Affinity),
            "least-loaded" => Ok(Policy::LeastLoaded),
            "round-robin" => Ok(Policy::RoundRobin),
            _ => Err(format!(
                "`{s}`: expected affinity, least-loaded or round-robin"
            )),
        }
    }
}

/// The choice under `policy`; `turn` counts requests (round-robin's
/// position).
pub fn choose_by(
    policy: Policy,
    key: u64,
    prefix: bool,
    turn: u64,
    owners: &[Candidate],
    b: Bound,
) -> Option<(usize, Reason)> {
    match policy {
        Policy::Affinity => choose(key, prefix, owners, b),
        Policy::LeastLoaded => least_loaded(owners).map(|i| (i, Reason::LeastLoaded)),
        Policy::RoundRobin if owners.is_empty() => None,
        Policy::RoundRobin => {
            // In id order, so the turn means the same whatever order the
            // owners come in.
            let mut order: Vec<usize> = (0..owners.len()).collect();
            order.sort_by(|&a, &b| owners[a].id.cmp(owners[b].id));
            Some((
                order[(turn % owners.len() as u64) as usize],
                Reason::RoundRobin,
            ))
        }
    }
}

/// The owner with the least load (ties: the smaller id).
pub fn least_loaded(owners: &[Candidate]) -> Option<usize> {
    owners
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.load.cmp(&b.load).then_with(|| a.id.cmp(b.id)))
        .map(|(i, _)| i)
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::History => "history",
            Reason::Affinity => "affinity",
            Reason::Spill => "spill",
            Reason::LeastLoaded => "least-loaded",
            Reason::RoundRobin => "round-robin",
        }
    }
}

/// Prompts this long (as sent) have a start worth caching: balancing cache
/// shares applies to them. Shorter ones would never be reported cached, and
/// balancing them by cache share would send every one to the node that
/// caches least.
pub const PREFIX_BYTES: usize = 256;

/// A request's keys, as routing and the nodes' cache reports use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// What owners are ranked by: the user or session; else the request's
    /// conversation (so the requests of one tenant, sharing a system
    /// prompt, spread over the owners that cache it instead of piling onto
    /// one); else the prompt's start.
    pub rank: u64,
    pub user: Option<u64>,
    /// The prompt's first `prefix` bytes.
    pub prompt: u64,
    /// The whole prompt, and the previous turn's (`Conversation`).
    pub own: Option<u64>,
    pub previous: Option<u64>,
}

impl Keys {
    pub fn new(
        user: Option<&str>,
        prompt_head: &[u8],
        prefix: usize,
        conversation: Option<Conversation>,
    ) -> Keys {
        let prompt = affinity_key(None, prompt_head, prefix);
        let user = user
            .filter(|u| !u.is_empty())
            .map(|u| affinity_key(Some(u), &[], prefix));
        let own = conversation.map(|c| c.own);
        Keys {
            rank: user
                .or(own.map(|o| hash::mix(o ^ 0x434f_4e56)))
                .unwrap_or(prompt),
            user,
            prompt,
            own,
            previous: conversation.and_then(|c| c.previous),
        }
    }

    /// What the node is told to report on: the user's and the prompt
    /// start's keys, and the conversation's.
    pub fn affinity(&self) -> Affinity {
        Affinity {
            start: self.user.into_iter().chain([self.prompt]).collect(),
            conversation: self.own,
        }
    }
}

/// The affinity key of a request: its user or session when it has one,
/// else its prompt's first `prefix` bytes (as sent).
pub fn affinity_key(user: Option<&str>, prompt_head: &[u8], prefix: usize) -> u64 {
    match user {
        Some(u) if !u.is_empty() => hash::mix(hash::fnv1a(u.as_bytes()) ^ 0x5553_4552),
        _ => hash::of_bytes(&prompt_head[..prompt_head.len().min(prefix)]),
    }
}

/// When an owner counts as too busy to take a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// Over `ceil((1+ε)·(total+1)/n)`...
    pub epsilon: f64,
    /// ...and at least this many sequences: below it a node is never too
    /// busy, since its batch absorbs them at little cost. Without a floor,
    /// one sequence in flight makes its node "over" a bound of 1 at light
    /// load, and keys would bounce between owners for no gain (and two
    /// gateways, each seeing its own traffic, would disagree).
    pub floor: u64,
    /// The slack for a request whose key the owner has cached: loads count
    /// sequences, and one that finds its prompt cached costs its node a
    /// fraction of one that does not, so moving it off its cache for a
    /// small imbalance costs more than it saves (a prefill elsewhere, and
    /// an eviction there).
    pub cached_epsilon: f64,
}

impl Default for Bound {
    fn default() -> Self {
        Bound {
            epsilon: 0.25,
            floor: 4,
            cached_epsilon: 1.0,
        }
    }
}

impl Bound {
    /// The load an owner must stay under to take a request.
    pub fn limit(&self, total: u64, n: usize) -> u64 {
        Self::with(self.epsilon, total, n).max(self.floor)
    }

    /// The same for a request it has cached.
    pub fn cached_limit(&self, total: u64, n: usize) -> u64 {
        Self::with(self.cached_epsilon.max(self.epsilon), total, n).max(self.floor)
    }

    fn with(epsilon: f64, total: u64, n: usize) -> u64 {
        ((1.0 + epsilon) * (total + 1) as f64 / n as f64).ceil() as u64
    }
}

/// Index of the chosen candidate and why. `None` when there is none.
///
/// In order, "best-ranked" meaning first in the rendezvous ranking by `key`:
/// - the best-ranked owner with the conversation's previous turn (or this
///   very prompt) cached (`history_cached`), under the cached load bound: a
///   later turn finds its whole history there;
/// - the best-ranked with the user cached, under the load bound: a user's
///   new conversation finds its start there, worth no more than the next
///   pass's;
/// - for a prompt long enough to cache (`prefix`: at least `PREFIX_BYTES`),
///   the best-ranked with the prompt's start cached, under the load bound:
///   a tenant's new conversations go where its system prompt is, spread
///   over the owners that have it rather than piled on one. Under the
///   cached bound when a sampled owner reports `losing_starts`: where
///   caches hold only some of the tenants, a request moved off its start
///   costs a prefill and leaves a second copy that evicts another tenant's
///   (issue 17's experiment: hit ratio 0.44–0.48 under the plain bound,
///   0.73 under the cached one), while where they hold them all the copy
///   is cheap and the slack only unbalances the loads (the simulator's
///   busiest/mean 1.09 against 1.28 at 10 nodes);
/// - the best-ranked under the load bound whose share of cached keys is
///   under `ceil((keys+1)/n)` (when the request has a `prefix` worth
///   caching: a prompt at least `PREFIX_BYTES` long) — so a prompt start
///   new to the cluster goes where it ranks unless that node already caches
///   more than its share, and the tenants of a model spread evenly over its
///   owners' caches (equal-sized: every owner loads the model with the same
///   options, and a cache holding more tenants than fit keeps none of them
///   long);
/// - the best-ranked under the load bound;
/// - the least loaded.
///
/// The last three passes, and the bound, look only at the `sampled`
/// owners; the first three at every owner given.
pub fn choose(key: u64, prefix: bool, owners: &[Candidate], b: Bound) -> Option<(usize, Reason)> {
    // The bound is over the sampled owners (all of them, for a model with
    // few): their mean load and key share stand for the model's.
    let (mut n, mut total, mut all_keys, mut losing) = (0usize, 0u64, 0u64, false);
    for c in owners.iter().filter(|c| c.sampled) {
        n += 1;
        total += c.load;
        all_keys += c.keys;
        losing |= c.losing_starts;
    }
    if n == 0 {
        return None;
    }
    let bound = b.limit(total, n);
    let cached_bound = b.cached_limit(total, n);
    let start_bound = if losing { cached_bound } else { bound };
    let key_bound = (all_keys + 1).div_ceil(n as u64);
    // The best-ranked owner passing a test is a maximum over the owners:
    // no sort, so a model with hundreds of owners costs a few hashes each.
    // Higher score ranks first; equal scores, the smaller id.
    let scores: Vec<u64> = owners.iter().map(|c| hash::pair(key, c.id_hash)).collect();
    let best = |pass: &dyn Fn(&Candidate) -> bool| -> Option<usize> {
        let mut top: Option<usize> = None;
        for (i, c) in owners.iter().enumerate() {
            if !pass(c) {
                continue;
            }
            let above = top.is_none_or(|t| {
                scores[i] > scores[t] || (scores[i] == scores[t] && c.id < owners[t].id)
            });
            if above {
                top = Some(i);
            }
        }
        top
    };
    if let Some(i) = best(&|c| c.history_cached && c.load < cached_bound) {
        return Some((i, Reason::History));
    }
    if let Some(i) = best(&|c| c.cached && c.load < bound) {
        return Some((i, Reason::Affinity));
    }
    if prefix {
        if let Some(i) = best(&|c| c.prefix_cached && c.load < start_bound) {
            return Some((i, Reason::Affinity));
        }
    }
    let first = best(&|c| c.sampled);
    let why = |i: usize| {
        if Some(i) == first {
            Reason::Affinity
        } else {
            Reason::Spill
        }
    };
    if prefix {
        if let Some(i) = best(&|c| c.sampled && c.load < bound && c.keys < key_bound) {
            return Some((i, why(i)));
        }
    }
    if let Some(i) = best(&|c| c.sampled && c.load < bound) {
        return Some((i, why(i)));
    }
    let least = owners
        .iter()
        .enumerate()
        .filter(|(_, c)| c.sampled)
        .min_by(|(_, a), (_, b)| a.load.cmp(&b.load).then_with(|| a.id.cmp(b.id)))?;
    Some((least.0, Reason::LeastLoaded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strict(epsilon: f64) -> Bound {
        Bound {
            epsilon,
            floor: 0,
            cached_epsilon: epsilon,
        }
    }

    fn owners(ids: &[&'static str], loads: &[u64]) -> Vec<Candidate<'static>> {
        ids.iter()
            .zip(loads)
            .map(|(id, &load)| Candidate {
                id,
                id_hash: hash::of(id),
                load,
                sampled: true,
                history_cached: false,
                cached: false,
                prefix_cached: false,
                keys: 0,
                losing_starts: false,
            })
            .collect()
    }

    #[test]
    fn at_rest_a_key_always_goes_to_its_first_ranked_owner() {
        let o = owners(&["a", "b", "c"], &[0, 0, 0]);
        let mut counts = [0; 3];
        for k in 0..3000u64 {
            let key = hash::mix(k);
            let (i, why) = choose(key, true, &o, strict(0.25)).unwrap();
            assert_eq!(why, Reason::Affinity);
            // The same key, the owners in another order: the same node.
            let mut rev = o.clone();
            rev.reverse();
            let (j, _) = choose(key, true, &rev, strict(0.25)).unwrap();
            assert_eq!(o[i].id, rev[j].id);
            counts[i] += 1;
        }
        // Keys spread over the owners.
        assert!(counts.iter().all(|&c| c > 900), "{counts:?}");
    }

    #[test]
    fn a_busy_first_choice_spills_to_the_next_ranked() {
        let key = hash::mix(7);
        let idle = owners(&["a", "b", "c"], &[0, 0, 0]);
        let (first, _) = choose(key, true, &idle, strict(0.25)).unwrap();
        let mut loads = [1, 1, 1];
        loads[first] = 10; // bound: ceil(1.25·13/3) = 6
        let busy = owners(&["a", "b", "c"], &loads);
        let (i, why) = choose(key, true, &busy, strict(0.25)).unwrap();
        assert_ne!(i, first);
        assert_eq!(why, Reason::Spill);
    }

    #[test]
    fn a_cached_key_goes_where_it_is_cached_and_new_keys_even_out_the_caches() {
        let key = hash::mix(11);
        let mut o = owners(&["a", "b", "c"], &[0, 0, 0]);
        let (first, _) = choose(key, true, &o, Bound::default()).unwrap();
        // Cached on another owner: there, though it ranks lower.
        let other = (first + 1) % 3;
        o[other].cached = true;
        assert_eq!(
            choose(key, true, &o, Bound::default()),
            Some((other, Reason::Affinity))
        );
        // ...unless that owner is over the load bound.
        o[other].load = 10;
        assert_eq!(choose(key, true, &o, Bound::default()).unwrap().0, first);
        // Over the bound for a new key or a cached user (6 of 12:
        // ceil(1.25·13/3) = 6) but not for a conversation whose history it
        // has cached (ceil(2·13/3) = 9).
        o[other].load = 6;
        o[first].load = 3;
        o[(first + 2) % 3].load = 3;
        assert_ne!(choose(key, true, &o, Bound::default()).unwrap().0, other);
        o[other].history_cached = true;
        assert_eq!(
            choose(key, true, &o, Bound::default()),
            Some((other, Reason::History))
        );
        // A new key whose first choice caches more than its share of keys
        // (bound: ceil((12+1)/3) = 5) goes to the next-ranked...
        let mut o = owners(&["a", "b", "c"], &[0, 0, 0]);
        o[first].keys = 8;
        o[(first + 1) % 3].keys = 2;
        o[(first + 2) % 3].keys = 2;
        let (i, why) = choose(key, true, &o, Bound::default()).unwrap();
        assert_ne!(i, first);
        assert_eq!(why, Reason::Spill);
        // ...unless its prompt is too short to be cached.
        assert_eq!(
            choose(key, false, &o, Bound::default()),
            Some((first, Reason::Affinity))
        );
        // Within its share (bound: ceil((7+1)/3) = 3): where it ranks.
        o[first].keys = 2;
        o[(first + 1) % 3].keys = 3;
        assert_eq!(
            choose(key, true, &o, Bound::default()),
            Some((first, Reason::Affinity))
        );
    }

    #[test]
    fn under_the_floor_nobody_spills() {
        let key = hash::mix(7);
        let idle = owners(&["a", "b", "c"], &[0, 0, 0]);
        let (first, _) = choose(key, true, &idle, Bound::default()).unwrap();
        // 3 in flight, all on the key's owner: a strict bound (2) spills,
        // the floor (4) keeps the key where its prefix is.
        let mut loads = [0, 0, 0];
        loads[first] = 3;
        let o = owners(&["a", "b", "c"], &loads);
        assert_eq!(
            choose(key, true, &o, strict(0.25)).unwrap().1,
            Reason::Spill
        );
        assert_eq!(
            choose(key, true, &o, Bound::default()),
            Some((first, Reason::Affinity))
        );
        loads[first] = 4;
        let o = owners(&["a", "b", "c"], &loads);
        assert_eq!(
            choose(key, true, &o, Bound::default()).unwrap().1,
            Reason::Spill
        );
    }

    #[test]
    fn a_conversation_follows_its_history_and_a_tenant_its_system_prompt() {
        let b = Bound::default();
        let key = hash::mix(21);
        let mut o = owners(&["a", "b", "c", "d"], &[2, 2, 2, 2]);
        let (first, _) = choose(key, true, &o, b).unwrap();
        let (h, p) = ((first + 1) % 4, (first + 2) % 4);
        // The start cached elsewhere: there, though it ranks lower.
        o[p].prefix_cached = true;
        assert_eq!(choose(key, true, &o, b), Some((p, Reason::Affinity)));
        // The previous turn cached on another: there, ahead of the start.
        o[h].history_cached = true;
        assert_eq!(choose(key, true, &o, b), Some((h, Reason::History)));
        // A history is worth the cached slack, 2× the mean (loads 6,2,2,2:
        // ceil(2·13/4) = 7, against ceil(1.25·13/4) = 5 for the rest)...
        o[h].load = 6;
        assert_eq!(choose(key, true, &o, b), Some((h, Reason::History)));
        // ...and no more (7,2,2,2: ceil(2·14/4) = 7): then the start.
        o[h].load = 7;
        assert_eq!(choose(key, true, &o, b), Some((p, Reason::Affinity)));
        // A start gets the plain bound (14,9,2,2: ceil(1.25·28/4) = 9)...
        o[h].load = 14;
        o[p].load = 9;
        assert_ne!(choose(key, true, &o, b).unwrap().0, p);
        // ...unless an owner's cache is losing starts: then the same slack
        // (ceil(2·28/4) = 14)...
        o[first].losing_starts = true;
        assert_eq!(choose(key, true, &o, b), Some((p, Reason::Affinity)));
        // ...and no more: with no history, the start's node at 7 of 13
        // (ceil(2·14/4) = 7) is passed over.
        o[h].history_cached = false;
        o[h].load = 2;
        o[p].load = 7;
        let (i, _) = choose(key, true, &o, b).unwrap();
        assert_ne!(i, p);
        // An owner not sampled does not speak for the model's caches.
        o[first].losing_starts = false;
        o[p].load = 6;
        o[h].sampled = false;
        o[h].losing_starts = true;
        assert_ne!(choose(key, true, &o, b).unwrap().0, p);
        o[h].sampled = true;
        assert_eq!(choose(key, true, &o, b), Some((p, Reason::Affinity)));
        // A start too short to cache counts for nothing: where it ranks.
        let mut o = owners(&["a", "b", "c", "d"], &[0, 0, 0, 0]);
        o[p].prefix_cached = true;
        assert_eq!(choose(key, true, &o, b), Some((p, Reason::Affinity)));
        assert_eq!(choose(key, false, &o, b), Some((first, Reason::Affinity)));
        // The user (or the very prompt) cached comes before the start.
        let mut o = owners(&["a", "b", "c", "d"], &[0, 0, 0, 0]);
        o[p].prefix_cached = true;
        o[h].cached = true;
        assert_eq!(choose(key, true, &o, b), Some((h, Reason::Affinity)));
    }

    #[test]
    fn a_cache_loses_starts_when_a_sixteenth_of_its_returns_find_them_gone() {
        assert!(!losing_starts(0, 0));
        assert!(!losing_starts(15, 15), "too few to tell");
        assert!(losing_starts(16, 1));
        assert!(!losing_starts(64, 3));
        assert!(losing_starts(64, 4));
    }

    #[test]
    fn keys_rank_by_user_then_conversation_then_prompt() {
        let conv = Some(Conversation {
            own: 5,
            previous: Some(4),
        });
        let head = b"system prompt";
        let with_user = Keys::new(Some("alice"), head, 256, conv);
        assert_eq!(with_user.rank, with_user.user.unwrap());
        assert_eq!(
            with_user.affinity().start,
            [with_user.user.unwrap(), with_user.prompt]
        );
        assert_eq!(with_user.affinity().conversation, Some(5));
        let without = Keys::new(None, head, 256, conv);
        assert_eq!(without.user, None);
        assert_eq!(without.prompt, with_user.prompt);
        // Two turns of one tenant's conversations rank apart...
        let other = Keys::new(
            None,
            head,
            256,
            Some(Conversation {
                own: 6,
                previous: None,
            }),
        );
        assert_ne!(without.rank, other.rank);
        // ...and share the start they are sent to.
        assert_eq!(without.affinity().start, [without.prompt]);
        // No prompt at all: the start's key ranks.
        let bare = Keys::new(Some(""), head, 256, None);
        assert_eq!(bare.rank, bare.prompt);
    }

    #[test]
    fn affinity_keys_prefer_the_user_then_the_prompt() {
        let a = affinity_key(Some("alice"), b"same prompt", 256);
        let b = affinity_key(Some("bob"), b"same prompt", 256);
        assert_ne!(a, b);
        assert_eq!(a, affinity_key(Some("alice"), b"other prompt", 256));
        let p = affinity_key(None, b"system prompt ... question 1", 14);
        assert_eq!(
            p,
            affinity_key(Some(""), b"system prompt ... question 2", 14)
        );
    }

    #[test]
    fn the_baseline_policies() {
        let o = owners(&["b", "a", "c"], &[3, 5, 1]);
        let turns: Vec<&str> = (0..6)
            .map(|t| {
                o[choose_by(Policy::RoundRobin, 0, true, t, &o, Bound::default())
                    .unwrap()
                    .0]
                    .id
            })
            .collect();
        assert_eq!(turns, ["a", "b", "c", "a", "b", "c"]);
        assert_eq!(
            choose_by(Policy::LeastLoaded, 0, true, 0, &o, Bound::default()),
            Some((2, Reason::LeastLoaded))
        );
        assert_eq!(
            choose_by(Policy::RoundRobin, 0, true, 0, &[], Bound::default()),
            None
        );
        assert_eq!("round-robin".parse(), Ok(Policy::RoundRobin));
        assert!("random".parse::<Policy>().is_err());
    }

    proptest! {
        /// Whatever the loads, the chosen owner is under the bound, so no
        /// owner takes more than (1+ε)× the mean (plus one).
        #[test]
        fn the_choice_respects_the_bound(
            loads in prop::collection::vec(0u64..50, 1..8),
            key in any::<u64>(),
            eps in 0.05f64..1.0,
        ) {
            let ids: Vec<&'static str> = ["a", "b", "c", "d", "e", "f", "g", "h"][..loads.len()].to_vec();
            let o = owners(&ids, &loads);
            let (i, why) = choose(key, true, &o, strict(eps)).unwrap();
            let total: u64 = loads.iter().sum();
            let bound = ((1.0 + eps) * (total + 1) as f64 / loads.len() as f64).ceil() as u64;
            prop_assert!(loads[i] < bound);
            prop_assert_ne!(why, Reason::LeastLoaded);
        }

        /// Simulated arrivals with unit loads: the busiest owner stays
        /// within (1+ε)× the mean plus one.
        #[test]
        fn simulated_load_stays_bounded(keys in prop::collection::vec(0u64..20, 50..400), eps in 0.1f64..0.5) {
            let ids = ["a", "b", "c"];
            let mut loads = [0u64; 3];
            for k in keys {
                let o = owners(&ids, &loads);
                let (i, _) = choose(hash::mix(k), true, &o, strict(eps)).unwrap();
                loads[i] += 1;
                let total: u64 = loads.iter().sum();
                let max = *loads.iter().max().unwrap() as f64;
                prop_assert!(max <= (1.0 + eps) * total as f64 / 3.0 + 1.0, "{loads:?}");
            }
        }
    }
}
