//! Links the extractor against the llama.cpp build that `cargo xtask build` made.
//!
//! xtask records the active build in `target/llorch/active-build.json`
//! (override with `LLORCH_ACTIVE_BUILD=path`); the libraries' directory goes
//! into the binary's rpath so it runs without LD_LIBRARY_PATH.

use std::path::PathBuf;

#[derive(serde::Deserialize)]
struct ActiveBuild {
    backend: String,
    pin: String,
    flavour: String,
    lib_dir: PathBuf,
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
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) => {
            eprintln!(
                "\nllama.cpp has not been built yet ({} is missing).\nRun `cargo xtask build` first: it fetches, builds llama.cpp and then this crate.\n",
                path.display()
            );
            std::process::exit(1);
        }
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
    println!("cargo:rustc-env=LLORCH_PIN={}", active.pin);
    println!("cargo:rustc-env=LLORCH_FLAVOUR={}", active.flavour);
}
