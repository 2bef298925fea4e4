//! Ending the process from places that cannot unwind: ggml's abort hook and
//! the signal handler. Both clean up first (see `crate::cleanup`), then leave
//! with `_exit`, running no destructor that could meet a compute thread's lock.

use std::ffi::{c_char, CStr};
use std::sync::OnceLock;

use super::sys;

type AbortHook = Box<dyn Fn(&str) + Send + Sync>;
static ABORT_HOOK: OnceLock<AbortHook> = OnceLock::new();

/// Runs `hook` with ggml's message when ggml aborts (an RPC server that died,
/// an assertion), then ends the process with exit code 1 instead of SIGABRT.
/// The hook cleans up what a failed run must not leave; set once per process.
pub fn on_ggml_abort(hook: impl Fn(&str) + Send + Sync + 'static) {
    if ABORT_HOOK.set(Box::new(hook)).is_ok() {
        // SAFETY: the trampoline is a 'static fn that never unwinds.
        unsafe { sys::ggml_set_abort_callback(Some(abort_trampoline)) };
    }
}

/// Called by ggml before it aborts. Never returns and never unwinds into C.
unsafe extern "C" fn abort_trampoline(message: *const c_char) {
    let text = if message.is_null() {
        String::new()
    } else {
        // SAFETY: ggml passes a NUL-terminated message valid for this call.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    };
    let _ = std::panic::catch_unwind(|| {
        if let Some(hook) = ABORT_HOOK.get() {
            hook(text.trim_end());
        }
    });
    exit_now(1)
}

/// Ends the process at once with `code`: no destructor, no atexit handler
/// (llama.cpp's compute threads may hold locks they would wait on).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no precondition and does not return.
    unsafe { libc::_exit(code) }
}
