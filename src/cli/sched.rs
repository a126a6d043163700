//! A short scheduler slice for the threads that move requests and tokens
//! (the async runtimes' workers), so that on a box whose cores the compute
//! threads keep busy a waking I/O thread runs at once instead of at the
//! next tick.
//!
//! Linux's EEVDF scheduler (6.12 and later) lets a task ask for a shorter
//! slice through `sched_setattr`'s `sched_runtime` (100 µs – 100 ms); a
//! woken task with a shorter slice than the running one preempts it
//! (`PREEMPT_SHORT`). Without it a gateway or a node's HTTP thread that
//! wakes for a token while both cores decode waited up to a tick (~4 ms
//! here, `perf sched timehist`): BENCHMARKS.md, "Prompts new to the node,
//! targets interleaved, and a short slice for I/O threads", which also
//! gives its cost in CPU when I/O alone saturates the cores. The request
//! is per thread; `SCHED_FLAG_RESET_ON_FORK` keeps
//! it from threads these threads spawn (the compute pool), which keep the
//! default slice. Older kernels ignore the field; other systems have no
//! such call and nothing is done.

/// The slice the I/O threads ask for unless told otherwise.
pub const DEFAULT_IO_SLICE_US: u64 = 100;

/// `REALIZAR_IO_SLICE_US`: the slice the I/O threads ask for, in µs
/// ([`DEFAULT_IO_SLICE_US`] when unset or unreadable; 0 leaves the
/// kernel's default). It cuts the gateway's added TTFT (+1.45 / +1.85 →
/// +0.61 / +0.80 ms on the Intel VM) for 6–20% more gateway CPU per proxied
/// request when I/O alone saturates the cores (BENCHMARKS.md).
pub fn io_slice_us() -> u64 {
    std::env::var("REALIZAR_IO_SLICE_US")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_IO_SLICE_US)
}

/// Ask for a `us`-microsecond slice for the calling thread (0: nothing).
/// Best effort: the error, if any, is returned for a debug log and the
/// thread runs on with the default.
pub fn short_slice(us: u64) -> std::io::Result<()> {
    if us == 0 {
        return Ok(());
    }
    imp::set(us.saturating_mul(1000))
}

#[cfg(target_os = "linux")]
mod imp {
    /// `struct sched_attr` as of Linux 4.13 (`SCHED_ATTR_SIZE_VER1`).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }

    const SCHED_OTHER: u32 = 0;
    /// Children start with the default slice (and, where the parent's
    /// nice value is negative, nice 0).
    const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

    pub fn set(slice_ns: u64) -> std::io::Result<()> {
        // The call sets the nice value too: pass the thread's own on.
        // SAFETY: getpriority takes no pointers.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: SCHED_OTHER,
            flags: SCHED_FLAG_RESET_ON_FORK,
            nice,
            priority: 0,
            runtime: slice_ns,
            deadline: 0,
            period: 0,
            util_min: 0,
            util_max: 0,
        };
        // SAFETY: `attr` is a live, initialised sched_attr whose `size`
        // field names its length; pid 0 is the calling thread; the kernel
        // only reads it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                0 as libc::pid_t,
                &attr as *const SchedAttr,
                0u32,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn set(_slice_ns: u64) -> std::io::Result<()> {
        Ok(())
    }
}
