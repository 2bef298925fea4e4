//! The only place with `unsafe`: the generated bindings and a thin safe layer.
//!
//! - [`backend`]: llama.cpp's backends initialised, its log routed, the build described.
//! - [`llama`]: model, vocabulary, context, decode, logits.
//! - [`tensor`]: a borrowed view of a graph node inside the eval callback,
//!   copied out to f32 respecting strides and type.
//! - [`team`]: the copy's work split over ggml's OpenMP team (or threads of its own).
//! - [`eval`]: the panic-safe eval-callback trampoline.
//! - [`gguf`]: GGUF files through ggml's gguf API: the model writer and a header reader.
//! - [`rpc`]: ggml's RPC backend (servers, and registering them).
//! - [`process`]: ggml's abort hook, and leaving the process from a signal handler.
//! - `compat`: every call that differs between the llama.cpp versions supported.
//!
//! Everything outside this module is safe Rust.

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unused_imports,
    clippy::all
)]
pub mod sys {
    // The pin's committed bindings, or those build.rs made from another tree's headers.
    #[cfg(not(llorch_tree_bindings))]
    include!("bindings.rs");
    #[cfg(llorch_tree_bindings)]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

mod compat;

pub mod backend;
pub mod eval;
pub mod gguf;
pub mod llama;
pub mod process;
pub mod rpc;
pub mod team;
pub mod tensor;

pub use backend::{
    backend_name, devices, ggml_version, init, system_info, type_name, BACKEND_DIR_ENV,
};
