//! The only place with `unsafe`: the generated bindings and a thin safe layer.

#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
pub mod sys {
    include!("bindings.rs");
}

use std::ffi::CStr;

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
