//! The eval-callback trampoline: llama.cpp's scheduler calls it twice per node,
//! once with `ask = true` ("do you want this node?") and, for the nodes we
//! wanted, once with `ask = false` after the node ran.
//!
//! [`InstalledHook`] owns what the two C callbacks point to: the observer with
//! the first error (`cb_eval`'s data) and a stop flag (`abort_callback`'s
//! data, read from compute threads). Both are owned through raw pointers, so
//! the pointers llama.cpp keeps stay valid however the owner moves (a moved
//! `Box` asserts it is the only pointer, which invalidates those handed out).
//!
//! The scheduler may call `cb_eval` from several threads (llama.cpp's calls it
//! from the thread that runs `llama_decode`; a fork's multi-GPU split mode
//! calls it from one thread per backend), so the hook sits in a `Mutex`:
//! concurrent calls take turns, each with the only reference to the observer.
//! Uncontended, that is one atomic exchange per call.
//!
//! No panic crosses into C: the observer runs inside `catch_unwind`. The first
//! error or panic is recorded and stops the computation:
//! - the failing `ask = false` call returns true, so the scheduler finishes the
//!   split it is in normally (breaking out of it would leave later splits to
//!   compute on inputs that were never written);
//! - from then on `ask = true` returns false (no node is wanted, so no more
//!   stops between nodes) and `ask = false` returns true without observing;
//! - the abort callback returns true, so the CPU backend aborts at its next
//!   node (GPU backends never consult it and run to the end).
//!
//! [`super::llama::Context::decode`] then reports the recorded error whatever
//! status `llama_decode` returned, and [`InstalledHook::take_error`] re-arms
//! the hook for the next decode.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, Result};

use super::sys;
use super::tensor::Node;

/// What the extraction logic implements; it never sees a raw pointer. Send:
/// the scheduler may call it from a thread other than its owner's.
pub trait Observer: Send {
    /// `ask = true`: does this node interest us? Called for every node of every
    /// pass, so it must be a cheap lookup that allocates nothing.
    fn wants(&mut self, node: &Node<'_>) -> bool;
    /// `ask = false`: the node has been computed; read it. An error stops the computation.
    fn observe(&mut self, node: &Node<'_>) -> Result<()>;
}

/// The flag guards no other data, so relaxed accesses suffice: a compute
/// thread that saw it late would only compute one more node.
const FLAG: Ordering = Ordering::Relaxed;

/// What `cb_eval`'s data points to (in a `Mutex`); only the eval trampoline
/// and [`InstalledHook`]'s accessors make references to it.
struct EvalHook<O> {
    observer: O,
    /// The first error of this decode; later ones are its consequences.
    error: Option<anyhow::Error>,
    /// Also held by the abort callback, which never sees the rest of the hook.
    stop: Arc<AtomicBool>,
}

impl<O: Observer> EvalHook<O> {
    /// The safe body of the trampoline.
    fn call(&mut self, node: &Node<'_>, ask: bool) -> bool {
        if !self.stop.load(FLAG) {
            let observer = &mut self.observer;
            let result = catch_unwind(AssertUnwindSafe(|| {
                if ask {
                    Ok(observer.wants(node))
                } else {
                    observer.observe(node).map(|()| true)
                }
            }));
            match result {
                Ok(Ok(answer)) => return answer,
                Ok(Err(err)) => self.fail(err),
                Err(panic) => self.fail(panic_error(node, panic.as_ref())),
            }
        }
        // Stopped: want no more nodes, and let the split in progress finish.
        !ask
    }

    fn fail(&mut self, err: anyhow::Error) {
        self.error.get_or_insert(err);
        self.stop.store(true, FLAG);
    }
}

fn panic_error(node: &Node<'_>, panic: &(dyn Any + Send)) -> anyhow::Error {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into());
    let name = String::from_utf8_lossy(node.name()).into_owned();
    anyhow!("the eval callback panicked on node `{name}`: {what}")
}

/// An observer installed for llama.cpp's two callbacks.
///
/// [`InstalledHook::user_data`] goes with [`eval_trampoline`] of the same `O`,
/// [`InstalledHook::abort_data`] with [`abort_trampoline`]. Whoever registers
/// them must unregister them (free the llama.cpp context) before dropping
/// this, and must make the C calls that run `cb_eval` only while no reference
/// returned by the accessors is alive: [`super::llama::Context`] calls
/// `llama_decode` from `&mut self`, which rules out any borrow of its hook.
pub struct InstalledHook<O> {
    /// From `Box::into_raw`; freed in `Drop`.
    hook: *mut Mutex<EvalHook<O>>,
    /// From `Arc::into_raw` of the hook's `stop`; released in `Drop`.
    stop: *const AtomicBool,
}

impl<O: Observer> InstalledHook<O> {
    pub fn new(observer: O) -> InstalledHook<O> {
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::into_raw(Arc::clone(&stop));
        let hook = Box::into_raw(Box::new(Mutex::new(EvalHook {
            observer,
            error: None,
            stop,
        })));
        InstalledHook { hook, stop: abort }
    }

    /// `cb_eval_user_data` for [`eval_trampoline::<O>`].
    pub fn user_data(&self) -> *mut c_void {
        self.hook.cast()
    }

    /// `abort_callback_data` for [`abort_trampoline`].
    pub fn abort_data(&self) -> *mut c_void {
        self.stop.cast_mut().cast()
    }

    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.hook_mut().observer
    }

    /// The first error of the last computation, if any; re-arms the hook.
    pub fn take_error(&mut self) -> Option<anyhow::Error> {
        let hook = self.hook_mut();
        hook.stop.store(false, FLAG);
        hook.error.take()
    }

    fn hook_mut(&mut self) -> &mut EvalHook<O> {
        // SAFETY: the pointer is live until Drop. No trampoline call is in
        // flight while `self` is borrowed (the contract of the type), and
        // `&mut self` makes this the only reference.
        let hook = unsafe { &mut *self.hook };
        // A poisoned lock cannot happen (the observer runs in catch_unwind)
        // and would hold nothing half-written: the hook's fields stay valid.
        hook.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<O> Drop for InstalledHook<O> {
    fn drop(&mut self) {
        // SAFETY: both pointers come from `into_raw` in `new` and are
        // reclaimed only here; the owner unregistered them from C first, so
        // no callback can use them any more.
        unsafe {
            drop(Box::from_raw(self.hook));
            drop(Arc::from_raw(self.stop));
        }
    }
}

/// Registered as `cb_eval`.
///
/// # Safety
/// `user_data` must be [`InstalledHook::user_data`] of a live
/// `InstalledHook<O>` of this very `O`, with no reference from its accessors
/// alive; `t` must point to a tensor valid for the call. Other calls on the
/// same hook may run at the same time, from other threads.
pub unsafe extern "C" fn eval_trampoline<O: Observer>(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user_data: *mut c_void,
) -> bool {
    if t.is_null() || user_data.is_null() {
        return false;
    }
    // SAFETY: by the contract above the hook is live and no accessor holds a
    // reference to it, so shared references from any number of threads may
    // coexist (the Mutex is Sync, O being Send); the tensor is valid for the call.
    let hook = unsafe { &*user_data.cast::<Mutex<EvalHook<O>>>() };
    let node = unsafe { Node::from_raw(&*t) };
    // Poisoning: see `InstalledHook::hook_mut`.
    let mut hook = hook.lock().unwrap_or_else(PoisonError::into_inner);
    hook.call(&node, ask)
}

/// Registered as the abort callback: true once extraction failed, which stops
/// the CPU backend between nodes. Compute threads call it concurrently with
/// each other and with [`eval_trampoline`].
///
/// # Safety
/// `data` must be [`InstalledHook::abort_data`] of a live `InstalledHook`.
pub unsafe extern "C" fn abort_trampoline(data: *mut c_void) -> bool {
    if data.is_null() {
        return false;
    }
    // SAFETY: `data` is the hook's Arc'd flag, alive as long as the hook; a
    // shared reference to an atomic may coexist with any other access to it,
    // and no reference to the rest of the hook is made here.
    let stop = unsafe { &*data.cast::<AtomicBool>() };
    stop.load(FLAG)
}

/// These run under Miri (`cargo +nightly miri test --lib ffi::eval`), so they
/// call no C: fake nodes, and only `Node::name` of the node API.
#[cfg(test)]
mod tests {
    use super::*;

    /// A fake graph node: only name and shape, no buffer (the observer here never reads data).
    fn node(name: &str) -> sys::ggml_tensor {
        let mut t = sys::ggml_tensor::default();
        for (dst, src) in t.name.iter_mut().zip(name.bytes()) {
            *dst = src as std::ffi::c_char;
        }
        t.ne = [768, 2, 1, 1];
        t
    }

    /// Wants `keep-*`, `bad-*` and `boom`; `bad-*` fails to observe, `boom`
    /// panics there, `wants-boom` panics when asked.
    #[derive(Default)]
    struct Scripted {
        seen: Vec<String>,
    }
    impl Observer for Scripted {
        fn wants(&mut self, node: &Node<'_>) -> bool {
            let name = node.name();
            if name == b"wants-boom" {
                panic!("injected in wants");
            }
            name.starts_with(b"keep-") || name.starts_with(b"bad-") || name == b"boom"
        }
        fn observe(&mut self, node: &Node<'_>) -> Result<()> {
            let name = String::from_utf8_lossy(node.name()).into_owned();
            self.seen.push(name.clone());
            match name.as_str() {
                "boom" => panic!("injected"),
                bad if bad.starts_with("bad-") => Err(anyhow!("cannot read {bad}")),
                _ => Ok(()),
            }
        }
    }

    /// As the scheduler calls it during `llama_decode`.
    fn eval(hook: &InstalledHook<Scripted>, name: &str, ask: bool) -> bool {
        let mut t = node(name);
        // SAFETY: user_data of a live hook of this O; no accessor reference is
        // alive (`&InstalledHook` makes none); the tensor outlives the call.
        unsafe { eval_trampoline::<Scripted>(&mut t, ask, hook.user_data()) }
    }

    fn abort(hook: &InstalledHook<Scripted>) -> bool {
        // SAFETY: abort_data of a live hook.
        unsafe { abort_trampoline(hook.abort_data()) }
    }

    /// A callback's data moved to other threads, as the scheduler's threads get it.
    #[derive(Clone, Copy)]
    struct Shared(*mut c_void);
    // SAFETY: it points to an AtomicBool, which any thread may read, or to the
    // hook's Mutex, which serializes the calls made through it.
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    impl Shared {
        /// A method, so that a closure captures the whole `Shared`, not its
        /// field (a raw pointer, which is neither Send nor Sync).
        fn get(self) -> *mut c_void {
            self.0
        }
    }

    /// Runs `scheduler` while another thread polls the abort callback until it
    /// fires or `scheduler` is done; returns its result and whether it fired.
    fn with_compute_thread<R>(
        hook: &InstalledHook<Scripted>,
        scheduler: impl FnOnce() -> R,
    ) -> (R, bool) {
        let data = Shared(hook.abort_data());
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let poller = s.spawn(|| {
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    // SAFETY: abort_data of a hook that outlives the scope.
                    if unsafe { abort_trampoline(data.get()) } || finished {
                        return unsafe { abort_trampoline(data.get()) };
                    }
                    std::thread::yield_now();
                }
            });
            let result = scheduler();
            done.store(true, Ordering::SeqCst);
            (result, poller.join().unwrap())
        })
    }

    #[test]
    fn asks_and_observes_through_the_installed_hook() {
        let mut hook = InstalledHook::new(Scripted::default());
        let (answers, fired) = with_compute_thread(&hook, || {
            [
                eval(&hook, "keep-0", true),
                eval(&hook, "norm-0", true),
                eval(&hook, "keep-0", false),
            ]
        });
        assert_eq!(answers, [true, false, true]);
        assert!(!fired, "no abort without an error");
        assert_eq!(hook.observer_mut().seen, ["keep-0"]);
        assert!(hook.take_error().is_none());
        // The accessors between two decodes, as the extraction uses them.
        hook.observer_mut().seen.clear();
        assert!(eval(&hook, "keep-1", true) && eval(&hook, "keep-1", false));
        assert_eq!(hook.observer_mut().seen, ["keep-1"]);
    }

    #[test]
    fn a_failed_observe_finishes_the_split_then_stops_everything() {
        let mut hook = InstalledHook::new(Scripted::default());
        let (answers, fired) = with_compute_thread(&hook, || {
            [
                eval(&hook, "keep-0", true),
                eval(&hook, "keep-0", false),
                eval(&hook, "bad-1", true),
                eval(&hook, "bad-1", false),
                eval(&hook, "keep-1", true),
                eval(&hook, "bad-2", true),
                eval(&hook, "bad-2", false),
            ]
        });
        assert_eq!(
            answers,
            [true, true, true, true, false, false, true],
            "the failing observe finishes its split; then no node is wanted"
        );
        assert!(fired, "the compute thread sees the abort");
        assert!(abort(&hook), "and keeps seeing it until the error is taken");
        assert_eq!(
            hook.observer_mut().seen,
            ["keep-0", "bad-1"],
            "nothing is observed after the failure"
        );
        let err = hook.take_error().expect("the error is recorded");
        assert_eq!(
            format!("{err}"),
            "cannot read bad-1",
            "the first error is kept"
        );
        assert!(!abort(&hook), "taking the error re-arms the hook");
        assert!(eval(&hook, "keep-2", true) && eval(&hook, "keep-2", false));
        assert!(hook.take_error().is_none());
    }

    #[test]
    fn a_panic_in_observe_is_the_error_and_stops_the_compute() {
        let mut hook = InstalledHook::new(Scripted::default());
        let (answers, fired) = with_compute_thread(&hook, || {
            [
                eval(&hook, "boom", true),
                eval(&hook, "boom", false),
                eval(&hook, "bad-1", true),
                eval(&hook, "bad-1", false),
            ]
        });
        assert_eq!(answers, [true, true, false, true]);
        assert!(fired);
        assert_eq!(hook.observer_mut().seen, ["boom"]);
        let err = hook.take_error().expect("the panic is recorded");
        assert_eq!(
            format!("{err}"),
            "the eval callback panicked on node `boom`: injected"
        );
        assert!(!abort(&hook));
    }

    #[test]
    fn a_panic_in_wants_is_the_error_and_stops_the_compute() {
        let mut hook = InstalledHook::new(Scripted::default());
        let (answers, fired) = with_compute_thread(&hook, || {
            [
                eval(&hook, "wants-boom", true),
                eval(&hook, "keep-0", true),
                eval(&hook, "keep-0", false),
            ]
        });
        assert_eq!(answers, [false, false, true]);
        assert!(fired);
        assert!(hook.observer_mut().seen.is_empty());
        let err = hook.take_error().expect("the panic is recorded");
        assert_eq!(
            format!("{err}"),
            "the eval callback panicked on node `wants-boom`: injected in wants"
        );
    }

    /// A scheduler that calls from several threads at once (a fork's
    /// multi-GPU split mode): every call is served, none is lost or torn.
    #[test]
    fn calls_from_several_threads_at_once_are_all_served() {
        const THREADS: usize = 4;
        const NODES: usize = 25;
        let mut hook = InstalledHook::new(Scripted::default());
        let data = Shared(hook.user_data());
        let answers: Vec<bool> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS)
                .map(|thread| {
                    s.spawn(move || {
                        let mut answers = Vec::new();
                        for i in 0..NODES {
                            for (name, ask) in [("keep", true), ("keep", false), ("norm", true)] {
                                let mut t = node(&format!("{name}-{thread}-{i}"));
                                // SAFETY: user_data of a hook that outlives the
                                // scope; no accessor reference is alive during it.
                                answers.push(unsafe {
                                    eval_trampoline::<Scripted>(&mut t, ask, data.get())
                                });
                            }
                        }
                        answers
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        let wanted = answers
            .chunks(3)
            .filter(|a| *a == [true, true, false])
            .count();
        assert_eq!(
            wanted,
            THREADS * NODES,
            "every node answered as when called from one thread"
        );
        let seen = &mut hook.observer_mut().seen;
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            THREADS * NODES,
            "every observed node recorded once"
        );
        assert!(hook.take_error().is_none());
    }
}
