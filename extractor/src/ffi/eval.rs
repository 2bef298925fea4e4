//! The eval-callback trampoline: llama.cpp's scheduler calls it twice per node,
//! once with `ask = true` ("do you want this node?") and, for the nodes we
//! wanted, once with `ask = false` after the node ran.
//!
//! The trampoline is generic over the [`Observer`] it serves, and `user_data`
//! is always a `Box<EvalHook<O>>` of that same `O`, created by
//! [`super::llama::Context::new`] together with the function pointer, so the
//! type can never mismatch. No panic crosses into C: the body runs inside
//! `catch_unwind`, a panic or an error becomes the hook's stored error, and the
//! computation is stopped (the callback returns false and the abort callback
//! fires from then on).

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, Result};

use super::sys;
use super::tensor::Node;

/// What the extraction logic implements; it never sees a raw pointer.
pub trait Observer {
    /// `ask = true`: does this node interest us? Called for every node of every
    /// pass, so it must be a cheap lookup that allocates nothing.
    fn wants(&mut self, node: &Node<'_>) -> bool;
    /// `ask = false`: the node has been computed; read it. An error stops the computation.
    fn observe(&mut self, node: &Node<'_>) -> Result<()>;
}

pub struct EvalHook<O> {
    observer: O,
    error: Option<anyhow::Error>,
    /// Read by the abort callback from compute threads, hence atomic.
    stopped: AtomicBool,
}

impl<O: Observer> EvalHook<O> {
    pub fn new(observer: O) -> EvalHook<O> {
        EvalHook {
            observer,
            error: None,
            stopped: AtomicBool::new(false),
        }
    }

    pub fn observer(&self) -> &O {
        &self.observer
    }

    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }

    /// The error that stopped the last computation, if any; clears the stop.
    pub fn take_error(&mut self) -> Option<anyhow::Error> {
        self.stopped.store(false, Ordering::SeqCst);
        self.error.take()
    }

    fn fail(&mut self, err: anyhow::Error) {
        if self.error.is_none() {
            self.error = Some(err);
        }
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// The safe body of the trampoline.
    fn call(&mut self, node: &Node<'_>, ask: bool) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            // Stopping: want every node, so that the scheduler reaches an
            // `ask = false` call soon and we can refuse it.
            return ask;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            if ask {
                Ok(self.observer.wants(node))
            } else {
                self.observer.observe(node).map(|()| true)
            }
        }));
        match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                self.fail(err);
                ask
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic".into());
                let name = String::from_utf8_lossy(node.name()).into_owned();
                self.fail(anyhow!(
                    "the eval callback panicked on node `{name}`: {what}"
                ));
                ask
            }
        }
    }
}

/// Registered as `cb_eval`; `user_data` is the `EvalHook<O>` owned by the context.
///
/// # Safety
/// `user_data` must point to a live `EvalHook<O>` of this very `O` that nothing
/// else borrows during the call, and `t` to a tensor valid for the call.
pub unsafe extern "C" fn eval_trampoline<O: Observer>(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user_data: *mut c_void,
) -> bool {
    if t.is_null() || user_data.is_null() {
        return false;
    }
    // SAFETY: user_data is the boxed EvalHook<O> installed with this very
    // instantiation; the scheduler calls us from one thread, between node
    // computations, so no other reference to the hook is live. `t` is valid
    // for the duration of the call.
    let hook = unsafe { &mut *user_data.cast::<EvalHook<O>>() };
    let node = unsafe { Node::from_raw(&*t) };
    hook.call(&node, ask)
}

/// Registered as the abort callback: true once extraction failed, which stops
/// the CPU backend between nodes.
///
/// # Safety
/// `user_data` must point to a live `EvalHook<O>` of this very `O`.
pub unsafe extern "C" fn abort_trampoline<O: Observer>(user_data: *mut c_void) -> bool {
    if user_data.is_null() {
        return false;
    }
    // SAFETY: same hook as above; only the atomic flag is read, through a shared reference.
    let hook = unsafe { &*user_data.cast::<EvalHook<O>>() };
    hook.stopped.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake graph node: only name and shape, no buffer (the observers here never read data).
    fn node(name: &str) -> sys::ggml_tensor {
        let mut t = sys::ggml_tensor::default();
        for (dst, src) in t.name.iter_mut().zip(name.bytes()) {
            *dst = src as std::ffi::c_char;
        }
        t.ne = [768, 2, 1, 1];
        t
    }

    struct Panicky {
        seen: Vec<String>,
    }
    impl Observer for Panicky {
        fn wants(&mut self, node: &Node<'_>) -> bool {
            node.name() == b"attn_norm-0" || node.name() == b"boom"
        }
        fn observe(&mut self, node: &Node<'_>) -> Result<()> {
            if node.name() == b"boom" {
                panic!("injected");
            }
            self.seen
                .push(String::from_utf8_lossy(node.name()).into_owned());
            Ok(())
        }
    }

    fn call(hook: &mut Box<EvalHook<Panicky>>, t: &mut sys::ggml_tensor, ask: bool) -> bool {
        let user = (&mut **hook as *mut EvalHook<Panicky>).cast::<c_void>();
        unsafe { eval_trampoline::<Panicky>(t, ask, user) }
    }

    #[test]
    fn asks_and_observes_through_the_trampoline() {
        let mut hook = Box::new(EvalHook::new(Panicky { seen: vec![] }));
        let (mut wanted, mut other) = (node("attn_norm-0"), node("norm-0"));
        assert!(call(&mut hook, &mut wanted, true));
        assert!(!call(&mut hook, &mut other, true));
        assert!(
            call(&mut hook, &mut wanted, false),
            "a successful observe lets the compute go on"
        );
        assert_eq!(hook.observer().seen, ["attn_norm-0"]);
        assert!(hook.take_error().is_none());
    }

    #[test]
    fn a_panic_becomes_an_error_and_stops_the_compute() {
        let mut hook = Box::new(EvalHook::new(Panicky { seen: vec![] }));
        let user = (&mut *hook as *mut EvalHook<Panicky>).cast::<c_void>();
        let mut boom = node("boom");
        assert!(call(&mut hook, &mut boom, true));
        assert!(
            !call(&mut hook, &mut boom, false),
            "observe must return false to stop the scheduler"
        );
        assert!(
            unsafe { abort_trampoline::<Panicky>(user) },
            "the abort callback fires from now on"
        );
        // After the failure, every node is wanted and every observe refused.
        let mut later = node("ffn_out-0");
        assert!(call(&mut hook, &mut later, true));
        assert!(!call(&mut hook, &mut later, false));
        let err = hook.take_error().expect("the panic is recorded");
        assert!(
            format!("{err}").contains("panicked on node `boom`: injected"),
            "{err}"
        );
        assert!(
            !unsafe { abort_trampoline::<Panicky>(user) },
            "taking the error re-arms the hook"
        );
    }
}
