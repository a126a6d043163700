//! A fixed pool of compute threads owned by its creator (the executor).
//!
//! `run(n_tasks, f)` calls `f(i)` for every task index across the pool's
//! workers and the calling thread, and returns when all have finished.
//! Workers spin briefly between jobs (a decode step issues a few hundred
//! short jobs back to back) and then sleep on a condition variable. A panic
//! in a task is caught on the worker and re-raised on the caller once the
//! job has drained, so the pool itself survives and the owner decides.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped (under `lock`) to publish a job.
    generation: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    n_tasks: AtomicUsize,
    next_task: AtomicUsize,
    /// Workers that have not yet finished the current generation.
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers about to sleep or asleep: `run` takes the lock and notifies
    /// only when this is non-zero, so back-to-back jobs cost no syscall.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller of `run` before it publishes
// a new generation (Release) and read by workers after they observe it
// (Acquire); `run` does not return, and so the closure it points to is not
// dropped, until every worker has reported it is done with that generation.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    caller: Mutex<()>,
    /// Jobs spread over the threads, their wall time and the caller's wait
    /// at their barriers, in nanoseconds ([`PoolStats`]).
    dispatches: AtomicU64,
    busy_ns: AtomicU64,
    wait_ns: AtomicU64,
}

/// What a pool's jobs have cost since it was made: the synchronisation
/// figures `realizar run` prints per decode step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolStats {
    /// Jobs spread over the threads, each ending in a barrier (jobs of one
    /// task run inline and are not counted).
    pub dispatches: u64,
    /// Wall time inside those jobs; a forward step's time outside them is
    /// serial work, with the workers idle.
    pub busy: Duration,
    /// Of `busy`, the caller's wait at the barriers once its own share of
    /// the tasks ran out.
    pub barrier_wait: Duration,
}

impl std::ops::Sub for PoolStats {
    type Output = PoolStats;
    fn sub(self, o: PoolStats) -> PoolStats {
        PoolStats {
            dispatches: self.dispatches - o.dispatches,
            busy: self.busy.saturating_sub(o.busy),
            barrier_wait: self.barrier_wait.saturating_sub(o.barrier_wait),
        }
    }
}

const SPIN_ROUNDS: usize = 20_000;

impl ThreadPool {
    /// A pool that computes on `n_threads` threads in all: the caller plus
    /// `n_threads - 1` workers.
    pub fn new(n_threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("realizar-compute-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawn compute thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            caller: Mutex::new(()),
            dispatches: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)),
            barrier_wait: Duration::from_nanos(self.wait_ns.load(Ordering::Relaxed)),
        }
    }

    /// Threads that compute, the caller included.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(0..n_tasks)` across the pool; returns when all calls are done.
    /// Re-raises a panic from any task.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _serial = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        let s = &*self.shared;
        // SAFETY: erase the closure's lifetime; see `Shared`'s safety note:
        // this function waits for `pending == 0` before returning.
        let job: Job = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f as *const _)
        };
        // SAFETY: no worker reads `job` while pending == 0 (previous job
        // drained); they read it only after seeing the generation bump below.
        unsafe { *s.job.get() = Some(job) };
        s.n_tasks.store(n_tasks, Ordering::Relaxed);
        s.next_task.store(0, Ordering::Relaxed);
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::SeqCst);
        // A worker registers as a sleeper before it re-checks the generation
        // (both SeqCst), so either it sees the bump or we see it here.
        if s.sleepers.load(Ordering::SeqCst) != 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| drain(s, f)));
        let t1 = Instant::now();
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        let t2 = Instant::now();
        self.dispatches.fetch_add(1, Ordering::Relaxed);
        let ns = |d: Duration| d.as_nanos() as u64;
        self.busy_ns.fetch_add(ns(t2 - t0), Ordering::Relaxed);
        self.wait_ns.fetch_add(ns(t2 - t1), Ordering::Relaxed);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a compute task panicked on a pool worker");
        }
    }
}

fn drain(s: &Shared, f: &(dyn Fn(usize) + Sync)) {
    let n = s.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next_task.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        // Spin, then sleep, until a new generation (or shutdown) appears.
        let mut spins = 0;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if spins < SPIN_ROUNDS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen
                    && !s.shutdown.load(Ordering::Acquire)
                {
                    drop(s.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                } else {
                    drop(g);
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        // SAFETY: published before the generation bump we just observed; the
        // caller keeps the closure alive until `pending` reaches zero.
        let job = unsafe { (*s.job.get()).expect("job published with generation") };
        let f = unsafe { &*job };
        if catch_unwind(AssertUnwindSafe(|| drain(s, f))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for n in [1usize, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
        }
    }

    #[test]
    fn many_back_to_back_jobs() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..5000 {
            pool.run(4, &|i| {
                total.fetch_add(i, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 5000 * 6);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(64, &|i| assert!(i != 37, "task 37 fails"))
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(10, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
