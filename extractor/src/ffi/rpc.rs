//! ggml's RPC backend: layers computed by `rpc-server`s on other hosts, and
//! the server itself. Reached through the backend registry's proc addresses
//! (as llama.cpp's own tools do), so the same binary runs on a build with or
//! without the backend, loadable-module builds included; their signatures
//! are checked against the headers' generated bindings at compile time.
//!
//! ggml aborts the process when a server cannot be reached or stops answering
//! mid-run; [`super::process::on_ggml_abort`] turns that into a cleanup and
//! exit code 1.

use std::ffi::{c_char, CString};

use anyhow::{bail, Context, Result};

use super::sys;

type AddServer = unsafe extern "C" fn(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
type StartServer = unsafe extern "C" fn(
    endpoint: *const c_char,
    cache_dir: *const c_char,
    n_threads: usize,
    n_devices: usize,
    devices: *mut sys::ggml_backend_dev_t,
);

/// The two types above are the bindings' (the tree's ggml-rpc.h): checked
/// at compile time by a constant that nothing reads, so no code refers to
/// the functions and they stay unlinked (the RPC backend may be a module
/// loaded at run time).
const _: (AddServer, StartServer) = (
    sys::ggml_backend_rpc_add_server,
    sys::ggml_backend_rpc_start_server,
);

/// The RPC registry's function `name`, or why there is none.
fn proc_address(name: &str) -> Result<*mut std::ffi::c_void> {
    super::backend::init();
    let reg_name = CString::new("RPC").expect("no NUL");
    let c_name = CString::new(name).expect("no NUL");
    // SAFETY: registry lookups by name; both strings outlive the calls.
    let reg = unsafe { sys::ggml_backend_reg_by_name(reg_name.as_ptr()) };
    if reg.is_null() {
        bail!("this llama.cpp build has no RPC backend (GGML_RPC): rebuild it with `cargo xtask build`");
    }
    // SAFETY: as above; a missing function is a null pointer.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, c_name.as_ptr()) };
    if f.is_null() {
        bail!("the RPC backend of this build has no {name}");
    }
    Ok(f)
}

/// Registers the server at `endpoint` (`host:port`): its devices join the
/// device list llama.cpp offloads layers to. The caller checks first that the
/// server answers (ggml aborts the process otherwise).
pub fn add_server(endpoint: &str) -> Result<()> {
    let f = proc_address("ggml_backend_rpc_add_server")?;
    let c = CString::new(endpoint).context("endpoint contains a NUL byte")?;
    // SAFETY: the registry hands out this function with exactly this signature
    // (ggml-rpc.h); the endpoint outlives the call.
    let reg = unsafe { std::mem::transmute::<*mut std::ffi::c_void, AddServer>(f)(c.as_ptr()) };
    if reg.is_null() {
        bail!("ggml could not register the RPC server {endpoint}");
    }
    super::compat::register_backend(reg)
}

/// Serves `device` (a name from `devices()`, e.g. `CPU`) at `endpoint` with
/// `threads` threads; returns only if the server cannot start.
pub fn serve(endpoint: &str, device: &str, threads: usize) -> Result<()> {
    let f = proc_address("ggml_backend_rpc_start_server")?;
    let c_device = CString::new(device).context("device name contains a NUL byte")?;
    // SAFETY: lookup by name of a registered device; null when unknown.
    let mut dev = unsafe { sys::ggml_backend_dev_by_name(c_device.as_ptr()) };
    if dev.is_null() {
        let known: Vec<String> = super::backend::devices()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        bail!(
            "no device `{device}` in this build; known: {}",
            known.join(", ")
        );
    }
    let c = CString::new(endpoint).context("endpoint contains a NUL byte")?;
    // SAFETY: the signature of ggml-rpc.h; one device, valid for the server's life.
    unsafe {
        std::mem::transmute::<*mut std::ffi::c_void, StartServer>(f)(
            c.as_ptr(),
            std::ptr::null(),
            threads,
            1,
            &mut dev,
        )
    };
    bail!("the RPC server at {endpoint} stopped")
}
