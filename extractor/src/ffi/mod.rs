//! The only place with `unsafe`: the generated bindings and a thin safe layer.
//!
//! - [`llama`]: model, vocabulary, context, decode, logits.
//! - [`tensor`]: a borrowed view of a graph node inside the eval callback,
//!   copied out to f32 respecting strides and type.
//! - [`eval`]: the panic-safe eval-callback trampoline.
//! - [`gguf`]: GGUF files through ggml's gguf API: the model writer and a header reader.
//!
//! Everything outside this module is safe Rust.

#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, unused_imports, clippy::all)]
pub mod sys {
    include!("bindings.rs");
}

pub mod eval;
pub mod gguf;
pub mod llama;
pub mod tensor;

use std::ffi::{c_char, c_void, CStr};
use std::sync::Once;

/// Initialises llama.cpp's backends once per process and routes its log into `log`.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: plain initialisation calls; the log trampoline is a 'static fn
        // that never unwinds (see `log_trampoline`).
        unsafe {
            sys::llama_log_set(Some(log_trampoline), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

/// llama.cpp logs line fragments; they go to the `llama.cpp` log target
/// (shown with `-v`). Never unwinds into C: logging cannot panic here, and if
/// it did, `catch_unwind` swallows it.
unsafe extern "C" fn log_trampoline(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let _ = std::panic::catch_unwind(|| {
        let text = text.trim_end();
        if text.is_empty() || text == "." {
            return;
        }
        let level = match level {
            sys::ggml_log_level::GGML_LOG_LEVEL_ERROR => log::Level::Error,
            sys::ggml_log_level::GGML_LOG_LEVEL_WARN => log::Level::Warn,
            sys::ggml_log_level::GGML_LOG_LEVEL_INFO => log::Level::Info,
            _ => log::Level::Debug,
        };
        log::log!(target: "llama.cpp", level, "{text}");
    });
}

/// llama.cpp's description of the CPU features and backends it was built with.
pub fn system_info() -> String {
    // SAFETY: returns a pointer to a static, NUL-terminated buffer owned by llama.cpp.
    unsafe { CStr::from_ptr(sys::llama_print_system_info()) }.to_string_lossy().into_owned()
}

/// ggml's version string (e.g. "0.26.0") and the commit it was built from, if known.
pub fn ggml_version() -> (String, String) {
    // SAFETY: both return static NUL-terminated strings.
    unsafe {
        (
            CStr::from_ptr(sys::ggml_version()).to_string_lossy().into_owned(),
            CStr::from_ptr(sys::ggml_commit()).to_string_lossy().into_owned(),
        )
    }
}

/// The name ggml gives a tensor type ("f32", "f16", "q8_0", ...).
pub fn type_name(ty: sys::ggml_type) -> &'static str {
    // SAFETY: ggml_type_name returns a static string for every valid type.
    let name = unsafe { sys::ggml_type_name(ty) };
    if name.is_null() {
        return "unknown";
    }
    // SAFETY: checked non-null; static lifetime per ggml.
    unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("unknown")
}
