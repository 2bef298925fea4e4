//! Work split over threads inside the eval callback: on the OpenMP team that
//! ggml's CPU backend computes with, when the process has one.
//!
//! While the callback runs, OpenMP's workers spin between the graph's splits
//! on the cores a copy would use: a thread of our own shares its core with a
//! spinning worker, and both copies slow down (measured: one copy thread
//! 6.9 GB/s, two threads of our own 3.7 GB/s together, GPT-2, every node of
//! 781 tokens, 2 cores). The spinning workers themselves take a parallel
//! region at once: `GOMP_parallel` (libgomp's entry point for `#pragma omp
//! parallel`, which LLVM's libomp exports too), looked up, not linked: in the
//! process's global scope, else in each loaded backend module's own (a
//! `GGML_BACKEND_DL` build loads `libggml-cpu.so` with `RTLD_LOCAL`, so its
//! libgomp is not global). A ggml built without OpenMP (its own threadpool)
//! copies on the callback's thread by default, on scoped threads with
//! `--copy-threads N`; the log says which at the first copy.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);

/// The OpenMP runtime's `GOMP_parallel`, if one is loaded in the process:
/// looked up again until found (a backend loaded later brings it).
fn gomp_parallel() -> Option<GompParallel> {
    static FOUND: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
    let mut symbol = FOUND.load(Ordering::Relaxed);
    if symbol.is_null() {
        symbol = lookup();
        FOUND.store(symbol, Ordering::Relaxed);
    }
    // SAFETY: a non-null `symbol` is libgomp's GOMP_parallel (or libomp's,
    // which keeps its ABI), of the signature above.
    (!symbol.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, GompParallel>(symbol) })
}

/// `GOMP_parallel` in the global scope, else in a backend module's scope
/// (dlsym on a module's handle searches its dependencies, libgomp among them).
fn lookup() -> *mut c_void {
    let name = c"GOMP_parallel";
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks it up.
    let global = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if !global.is_null() {
        return global;
    }
    for file in super::backend::backend_module_files() {
        // SAFETY: RTLD_NOLOAD only returns a handle to a module already loaded
        // (one more reference, dropped by dlclose: ggml keeps it loaded).
        let handle = unsafe { libc::dlopen(file.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
        if handle.is_null() {
            continue;
        }
        // SAFETY: a live handle and a NUL-terminated name.
        let symbol = unsafe { libc::dlsym(handle, name.as_ptr()) };
        unsafe { libc::dlclose(handle) };
        if !symbol.is_null() {
            log::debug!("OpenMP found through {}", file.to_string_lossy());
            return symbol;
        }
    }
    std::ptr::null_mut()
}

/// Whether copies run on ggml's OpenMP team (else on threads of their own).
pub fn on_openmp() -> bool {
    gomp_parallel().is_some()
}

/// A task list shared by the team's threads: each takes the next index.
struct Tasks<'f> {
    next: AtomicUsize,
    count: usize,
    run: &'f (dyn Fn(usize) + Sync),
    panicked: AtomicBool,
}

impl Tasks<'_> {
    fn work(&self) {
        loop {
            let task = self.next.fetch_add(1, Ordering::Relaxed);
            if task >= self.count {
                return;
            }
            // No panic may unwind into the OpenMP runtime: it is noted and
            // raised again on the calling thread.
            if catch_unwind(AssertUnwindSafe(|| (self.run)(task))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
        }
    }
}

extern "C" fn team_member(data: *mut c_void) {
    // SAFETY: `data` is the `Tasks` that `for_each_task` lent to
    // GOMP_parallel, alive until GOMP_parallel returns (after every member).
    let tasks = unsafe { &*data.cast::<Tasks<'_>>() };
    tasks.work();
}

/// Runs `run(0..count)`, each index once, on up to `threads` threads: the
/// OpenMP team where there is one, else scoped threads (the caller's among them).
pub fn for_each_task(threads: usize, count: usize, run: &(dyn Fn(usize) + Sync)) {
    for_each_task_on(gomp_parallel(), threads, count, run)
}

fn for_each_task_on(
    openmp: Option<GompParallel>,
    threads: usize,
    count: usize,
    run: &(dyn Fn(usize) + Sync),
) {
    let threads = threads.clamp(1, count.max(1));
    let tasks = Tasks {
        next: AtomicUsize::new(0),
        count,
        run,
        panicked: AtomicBool::new(false),
    };
    match openmp {
        _ if threads == 1 => tasks.work(),
        Some(parallel) => {
            let data = std::ptr::from_ref(&tasks).cast_mut().cast();
            // SAFETY: `team_member` only reads `tasks` through a shared
            // reference (its fields are atomics and a Sync closure), and
            // GOMP_parallel returns after every member has finished.
            unsafe { parallel(team_member, data, threads as u32, 0) };
        }
        None => std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(|| tasks.work());
            }
            tasks.work();
        }),
    }
    assert!(
        !tasks.panicked.load(Ordering::Relaxed),
        "a copy task panicked"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_number_of_threads_with_openmp_or_without() {
        // The OpenMP runtime is in this process where ggml was built with it.
        for openmp in [gomp_parallel(), None] {
            for threads in [1, 2, 5] {
                let seen: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
                for_each_task_on(openmp, threads, seen.len(), &|i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                });
                let once = seen.iter().all(|n| n.load(Ordering::Relaxed) == 1);
                assert!(once, "{threads} threads, OpenMP {}", openmp.is_some());
            }
        }
    }

    #[test]
    fn a_panicking_task_is_raised_on_the_caller() {
        for openmp in [gomp_parallel(), None] {
            let caught = catch_unwind(|| for_each_task_on(openmp, 2, 4, &|i| assert_ne!(i, 3)));
            assert!(caught.is_err());
        }
    }
}
