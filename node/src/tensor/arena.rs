//! A model's packed weights in one mapping, backed by huge pages once the
//! node has a moment to spare.
//!
//! A decode step streams every packed matrix once, most of them under
//! 2 MiB. On 4 KiB pages SmolLM2 Q4_1's 94 MiB cross ~24,000 pages a step,
//! each a TLB miss (a two-level walk in a VM) and a place where the
//! hardware prefetchers stop; one matrix per mapping could never use a
//! 2 MiB page. Side by side in one mapping on huge pages, a node's
//! single-stream decode ran 4–14% faster on a Zen 4 VM whose weights come
//! from DRAM (BENCHMARKS.md, "Packed weights on huge pages").
//!
//! Packing writes into 4 KiB pages as before; once the model is warm, a
//! background thread asks the kernel to collapse them ([`collapse_packed`],
//! `MADV_COLLAPSE`, Linux 6.1+). Huge pages taken at the first write
//! instead made Gemma 3's load 0.3–0.5 s slower on that VM: fresh 2 MiB
//! pages are zeroed on the loading thread, and a VM's host backs them
//! page by page at that moment. `REALIZAR_HUGE_PAGES=off` leaves the
//! mapping on 4 KiB pages.

use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use super::matmul::Matrix;
use super::pack::{pack_into, packed_size, Packed};

/// Repack the matrices `ws` (those whose formats have a packed form) into
/// one mapping, side by side, across `threads`; `None` for the others.
pub fn pack_all(ws: &[Matrix], threads: usize) -> Vec<Option<Packed>> {
    // Each copy starts on a page of its own, as a mapping of its own did.
    let sizes: Vec<Option<usize>> = ws.iter().map(packed_size).collect();
    let total: usize = sizes
        .iter()
        .flatten()
        .map(|s| s.next_multiple_of(4096))
        .sum();
    // Zero pages, mapped as they are first written. Without them (nothing
    // to pack, or no memory) the model runs on the row kernels.
    let Some(mut buf) = (total > 0)
        .then(|| memmap2::MmapMut::map_anon(total).ok())
        .flatten()
    else {
        return ws.iter().map(|_| None).collect();
    };
    let mut parts: Vec<Option<(Range<usize>, &mut [u8])>> = Vec::with_capacity(ws.len());
    let (mut rest, mut at) = (&mut buf[..], 0);
    for s in &sizes {
        parts.push(s.map(|s| {
            let step = s.next_multiple_of(4096);
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(step);
            rest = tail;
            at += step;
            (at - step..at - step + s, &mut mine[..s])
        }));
    }
    let per = ws.len().div_ceil(threads.max(1));
    std::thread::scope(|sc| {
        for (wc, pc) in ws.chunks(per).zip(parts.chunks_mut(per)) {
            sc.spawn(move || {
                for (w, part) in wc.iter().zip(pc.iter_mut()) {
                    if let Some((_, bytes)) = part {
                        pack_into(w, bytes);
                    }
                }
            });
        }
    });
    let ranges: Vec<Option<Range<usize>>> = parts.into_iter().map(|p| Some(p?.0)).collect();
    let buf = Arc::new(buf);
    if std::env::var("REALIZAR_HUGE_PAGES").as_deref() != Ok("off") {
        collapse_later(&buf);
    }
    ws.iter()
        .zip(ranges)
        .map(|(w, at)| Packed::part_of(w, buf.clone(), at?))
        .collect()
}

/// Mappings packed since the last [`collapse_packed`], waiting for it.
static PENDING: Mutex<Vec<Weak<memmap2::MmapMut>>> = Mutex::new(Vec::new());

fn collapse_later(buf: &Arc<memmap2::MmapMut>) {
    // Advice alone lets the kernel's khugepaged collapse the mapping some
    // time later, where MADV_COLLAPSE is missing (before Linux 6.1).
    let _ = buf.advise(memmap2::Advice::HugePage);
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    // Mappings dropped unwarmed (a one-shot run, a test) leave nothing.
    pending.retain(|w| w.strong_count() > 0);
    pending.push(Arc::downgrade(buf));
}

/// Move the packed mappings made since the last call onto huge pages, on a
/// thread of its own, 2 MiB at a time, a second after the call and only
/// while a core is idle: the model loader calls it once a model is warm,
/// so the collapse's locks and copies do not slow the load (a collapse
/// started while the model warmed made Gemma 3's load ~60 ms longer).
/// Best effort: an older kernel, THP switched off or no huge page free
/// leaves the 4 KiB pages, which serve as before. The thread holds the
/// mappings, so an unloaded model's lives until it is done.
pub fn collapse_packed() {
    // Past a new node's first requests: with the collapse beside them, even
    // at idle priority, Gemma 3's process start → first token took
    // 0.1–0.17 s longer on a 2-core VM (each 2 MiB copy holds the
    // mapping's locks, and the VM's host backs the new page meanwhile).
    const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
    let bufs: Vec<Arc<memmap2::MmapMut>> =
        std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()))
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
    if bufs.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("realizar-hugepages".into())
        .spawn(move || {
            std::thread::sleep(SETTLE);
            idle_priority();
            for buf in bufs {
                if let Err(e) = collapse(&buf) {
                    tracing::debug!("packed weights stay on 4 KiB pages: {e}");
                }
            }
        });
}

/// Run the calling thread only when a core would otherwise idle
/// (`SCHED_IDLE`): at normal priority a collapse beside a model's first
/// requests made Gemma 3's process start → first token 0.25 s longer on a
/// 2-core VM, and under steady load it can wait.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: the calling thread's own policy (pid 0), from a valid
        // `sched_param` that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
        if rc != 0 {
            tracing::debug!(
                "collapse thread at normal priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Collapse the whole 2 MiB ranges of `p`'s mapping now, on this thread:
/// how many went onto huge pages, or why none could (tests; the node
/// calls [`collapse_packed`]).
pub fn collapse_now(p: &Packed) -> std::io::Result<usize> {
    collapse(p.mapping())
}

#[cfg(target_os = "linux")]
fn collapse(buf: &memmap2::MmapMut) -> std::io::Result<usize> {
    // Linux's value on every architecture (uapi mman-common.h); the libc
    // crate names it for glibc targets only.
    const MADV_COLLAPSE: libc::c_int = 25;
    const HUGE: usize = 2 << 20;
    let (start, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
    // Only whole 2 MiB ranges can be collapsed; one at a time, so each
    // holds the mapping's locks briefly and compute threads that touch it
    // wait at most for one copy.
    let (mut at, mut done, mut last) = (start.next_multiple_of(HUGE), 0, None);
    while at + HUGE <= end {
        // SAFETY: advice on a range inside `buf`, which the caller keeps
        // mapped. A collapse copies the range to a huge page and remaps it
        // under the kernel's locks, contents unchanged, while other
        // threads read it.
        let rc = unsafe { libc::madvise(at as *mut libc::c_void, HUGE, MADV_COLLAPSE) };
        if rc == 0 {
            done += 1;
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Err(e); // no MADV_COLLAPSE in this kernel
            }
            last = Some(e); // this range: no huge page free, say
        }
        at += HUGE;
        std::thread::yield_now();
    }
    match last {
        Some(e) if done == 0 => Err(e),
        _ => Ok(done),
    }
}

#[cfg(not(target_os = "linux"))]
fn collapse(_: &memmap2::MmapMut) -> std::io::Result<usize> {
    Err(std::io::ErrorKind::Unsupported.into())
}
