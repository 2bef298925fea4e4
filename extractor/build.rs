//! Links the extractor against the llama.cpp build that `cargo xtask build` made.
//!
//! xtask records the active build in `target/llorch/active-build.json`
//! (override with `LLORCH_ACTIVE_BUILD=path`); the libraries' directory goes
//! into the binary's rpath so it runs without LD_LIBRARY_PATH. Without a
//! build, `cargo check` still works (the committed bindings).
//!
//! A tree other than the pin comes with bindings generated from its own
//! headers. The functions and types that differ between llama.cpp versions
//! become `llama_has="NAME"` cfgs, from what the bindings declare, and
//! `src/ffi/compat.rs` picks its code by them.

use std::path::{Path, PathBuf};

#[derive(serde::Deserialize, Default)]
struct ActiveBuild {
    backend: String,
    lib_dir: PathBuf,
    bindings: Option<PathBuf>,
    tree: serde_json::Value,
}

/// What some supported trees declare and others do not (`pub fn NAME(` or
/// `pub struct NAME`): each is a `llama_has="NAME"` cfg.
const OPTIONAL: &[&str] = &[
    // llama-cpp-sys-2 0.1.150 and older: `use_mmap`/`use_mlock` instead.
    "llama_load_mode",
    // 0.1.120 and older: a `flash_attn` bool (off by default) instead.
    "llama_flash_attn_type",
    // 0.1.120 and older: RPC servers cannot be registered as devices.
    "ggml_backend_register",
];

/// Which bindings to compile, and the cfgs for what they declare.
fn bindings(active: &ActiveBuild) {
    let text = match &active.bindings {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", path.display());
            let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("bindings.rs");
            std::fs::copy(path, &out)
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", path.display()));
            println!("cargo:rustc-cfg=llorch_tree_bindings");
            std::fs::read_to_string(&out).unwrap()
        }
        None => {
            println!("cargo:rerun-if-changed=src/ffi/bindings.rs");
            std::fs::read_to_string(Path::new("src/ffi/bindings.rs")).unwrap()
        }
    };
    println!("cargo::rustc-check-cfg=cfg(llorch_tree_bindings)");
    println!(
        "cargo::rustc-check-cfg=cfg(llama_has, values({}))",
        OPTIONAL
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for name in OPTIONAL {
        if text.contains(&format!("pub fn {name}("))
            || text.contains(&format!("pub struct {name}("))
        {
            println!("cargo:rustc-cfg=llama_has=\"{name}\"");
        }
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=LLORCH_ACTIVE_BUILD");
    let path = std::env::var_os("LLORCH_ACTIVE_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
                .join("../target/llorch/active-build.json")
        });
    println!("cargo:rerun-if-changed={}", path.display());
    let Ok(text) = std::fs::read_to_string(&path) else {
        // `cargo check` needs no library: it works on a fresh clone. Linking
        // does, and fails on llama's symbols after this warning.
        println!(
            "cargo:warning=llama.cpp is not built yet ({} is missing): checking works, linking \
             needs `cargo xtask build` first",
            path.display()
        );
        println!("cargo:rustc-env=LLORCH_BACKEND=none");
        println!("cargo:rustc-env=LLORCH_TREE={{}}");
        println!("cargo:rustc-env=LLORCH_TREE_NAME=not built");
        bindings(&ActiveBuild::default());
        return;
    };
    let active: ActiveBuild =
        serde_json::from_str(&text).expect("active-build.json written by xtask");
    let lib_dir = &active.lib_dir;
    println!(
        "cargo:rerun-if-changed={}",
        lib_dir.join("libllama.so").display()
    );
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    for lib in ["llama", "ggml", "ggml-base"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-env=LLORCH_BACKEND={}", active.backend);
    println!("cargo:rustc-env=LLORCH_TREE={}", active.tree);
    println!(
        "cargo:rustc-env=LLORCH_TREE_NAME={} ({})",
        active.tree["name"].as_str().unwrap_or("?"),
        active.tree["kind"].as_str().unwrap_or("?")
    );
    bindings(&active);
}
