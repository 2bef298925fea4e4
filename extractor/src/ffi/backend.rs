//! llama.cpp's backends, initialised once per process (loadable modules
//! included), its log routed into `log`, and what the build is: version,
//! CPU features, devices, type names.

use std::ffi::{c_char, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

use super::sys;

/// Overrides where [`init`] loads ggml's backend modules from.
pub const BACKEND_DIR_ENV: &str = "LLORCH_GGML_BACKEND_DIR";

/// Initialises llama.cpp's backends once per process and routes its log into `log`.
///
/// A llama.cpp built with `GGML_BACKEND_DL=ON` (the CUDA build) registers no
/// backend by itself: its backends are modules (`libggml-cpu.so`,
/// `libggml-cuda.so`) to load at run time. Whether the libraries this process
/// runs on are such a build is decided here, at run time, by the registry
/// being empty: the same binary then works on the libraries it was linked
/// against and on a DL build of the same pin found through `LD_LIBRARY_PATH`
/// (the device bundle). The modules come from `$LLORCH_GGML_BACKEND_DIR`, or
/// else from the directory of the `libggml` that was loaded.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: plain initialisation calls; the log trampoline is a 'static fn
        // that never unwinds (see `log_trampoline`).
        unsafe {
            sys::llama_log_set(Some(log_trampoline), std::ptr::null_mut());
        }
        // SAFETY: reading the registry's size has no precondition.
        if unsafe { sys::ggml_backend_reg_count() } == 0 {
            load_backend_modules();
        }
        // SAFETY: as above.
        unsafe { sys::llama_backend_init() };
    });
}

/// Loads every backend module of a `GGML_BACKEND_DL` build; says where it looked if none loads.
fn load_backend_modules() {
    let dir = std::env::var_os(BACKEND_DIR_ENV)
        .map(PathBuf::from)
        .or_else(loaded_ggml_dir);
    let Some(dir) = dir else {
        log::error!("llama.cpp was built with GGML_BACKEND_DL, but where libggml lives is unknown: set {BACKEND_DIR_ENV}");
        return;
    };
    let Ok(c_dir) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path valid for the call.
    unsafe { sys::ggml_backend_load_all_from_path(c_dir.as_ptr()) };
    if unsafe { sys::ggml_backend_reg_count() } == 0 {
        log::error!(
            "llama.cpp was built with GGML_BACKEND_DL, but no backend module (libggml-cpu*.so, libggml-cuda.so) \
             loads from {}; set {BACKEND_DIR_ENV} to the directory that holds them",
            dir.display()
        );
    } else {
        log::debug!("loaded ggml backend modules from {}", dir.display());
    }
}

/// The directory of the `libggml` shared library this process loaded.
fn loaded_ggml_dir() -> Option<PathBuf> {
    let file = object_file(sys::ggml_backend_load_all_from_path as *const c_void)?;
    let file = std::ffi::OsStr::from_bytes(file.as_bytes());
    std::fs::canonicalize(file)
        .ok()?
        .parent()
        .map(PathBuf::from)
}

/// The file of the loaded shared object that holds `address` (code or
/// data), as the loader named it.
fn object_file(address: *const c_void) -> Option<CString> {
    // SAFETY: Dl_info is plain data (pointers); all-null is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`.
    if unsafe { libc::dladdr(address, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr's file name is a NUL-terminated string owned by the loader.
    Some(unsafe { CStr::from_ptr(info.dli_fname) }.to_owned())
}

/// The files of the backends registered in this process (`libggml-cpu.so`
/// and friends in a `GGML_BACKEND_DL` build): each registry is data inside
/// its module.
pub(super) fn backend_module_files() -> Vec<CString> {
    // SAFETY: indices below ggml_backend_reg_count are valid registries.
    (0..unsafe { sys::ggml_backend_reg_count() })
        .filter_map(|i| object_file(unsafe { sys::ggml_backend_reg_get(i) } as *const c_void))
        .collect()
}

/// The backend devices llama.cpp can use in this process, as `(name, description)`
/// (e.g. `("CPU", "AMD EPYC ...")`, `("CUDA0", "NVIDIA H100 80GB HBM3")`).
pub fn devices() -> Vec<(String, String)> {
    init();
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: indices below ggml_backend_dev_count are valid devices; their
    // names and descriptions are static strings owned by the backend.
    (0..unsafe { sys::ggml_backend_dev_count() })
        .map(|i| unsafe {
            let dev = sys::ggml_backend_dev_get(i);
            (
                text(sys::ggml_backend_dev_name(dev)),
                text(sys::ggml_backend_dev_description(dev)),
            )
        })
        .collect()
}

/// The backend this process computes on, from what registered a device at
/// run time rather than what the binary was linked against: the libraries
/// may be another build's (`LD_LIBRARY_PATH`: a Vulkan build's swapped in
/// for the CPU one's, or the device bundle's). `cpu`, or the lowercased
/// names of the other backends with a device (`vulkan`, `cuda`), RPC aside.
pub fn backend_name() -> String {
    init();
    // SAFETY: indices below ggml_backend_reg_count are valid registries;
    // their names are static strings owned by the backend.
    let names: Vec<String> = (0..unsafe { sys::ggml_backend_reg_count() })
        .filter_map(|i| unsafe {
            let reg = sys::ggml_backend_reg_get(i);
            let name = CStr::from_ptr(sys::ggml_backend_reg_name(reg)).to_string_lossy();
            let device = sys::ggml_backend_reg_dev_count(reg) > 0;
            (device && name != "CPU" && name != "RPC").then(|| name.to_lowercase())
        })
        .collect();
    match names.is_empty() {
        true => "cpu".into(),
        false => names.join("+"),
    }
}

/// llama.cpp's last error lines, kept even where its log is not shown: the
/// reason a load failed (`error loading model: ...`, then `failed to load
/// model`), for the error that reports it.
static LAST_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());
const ERRORS_KEPT: usize = 2;

/// llama.cpp's last error-level log lines, oldest first, if it logged any.
pub fn last_error() -> Option<String> {
    let errors = LAST_ERRORS.lock().ok()?;
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// llama.cpp logs line fragments; they go to the `llama.cpp` log target
/// (shown with `-v`), and an error's is kept ([`last_error`]). Never unwinds
/// into C: logging cannot panic here, and if it did, `catch_unwind` swallows it.
unsafe extern "C" fn log_trampoline(
    level: sys::ggml_log_level,
    text: *const c_char,
    _user: *mut c_void,
) {
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
        if level == log::Level::Error {
            if let Ok(mut errors) = LAST_ERRORS.lock() {
                if errors.len() == ERRORS_KEPT {
                    errors.remove(0);
                }
                errors.push(text.to_string());
            }
        }
        log::log!(target: "llama.cpp", level, "{text}");
    });
}

/// llama.cpp's description of the CPU features and backends it was built with.
pub fn system_info() -> String {
    // SAFETY: returns a pointer to a static, NUL-terminated buffer owned by llama.cpp.
    unsafe { CStr::from_ptr(sys::llama_print_system_info()) }
        .to_string_lossy()
        .into_owned()
}

/// ggml's version string (e.g. "0.26.0") and the commit it was built from, if known.
pub fn ggml_version() -> (String, String) {
    // SAFETY: both return static NUL-terminated strings.
    unsafe {
        (
            CStr::from_ptr(sys::ggml_version())
                .to_string_lossy()
                .into_owned(),
            CStr::from_ptr(sys::ggml_commit())
                .to_string_lossy()
                .into_owned(),
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
    unsafe { CStr::from_ptr(name) }
        .to_str()
        .unwrap_or("unknown")
}
