//! `cargo xtask bindgen`: Rust bindings for the pinned llama.cpp headers,
//! and for a user's tree (`--llama-cpp`) generated at build time.
//!
//! The pin's bindings are committed (`extractor/src/ffi/bindings.rs`) and checked for
//! freshness with `--check`, rust-analyzer style: they are a pure function of the
//! pin and of the pinned libclang, so committing them costs nothing in
//! correctness, lets the extractor build without libclang, and turns every pin
//! move into a reviewable diff of the C API we depend on.

use anyhow::{bail, Context, Result};
use llorch_checkpoint_spec::files::write_atomically;

use std::path::{Path, PathBuf};

use crate::llama_cpp::tools;
use crate::llama_cpp::tree::Tree;
use crate::project::Project;

#[derive(clap::Args)]
pub struct Bindgen {
    /// Do not write; fail if the committed bindings differ from what the pinned headers give.
    #[arg(long)]
    check: bool,
}

/// What the extractor and the model writer use: the llama API, the eval
/// callback, tensor accessors and type traits, reading backend tensors, gguf.
const FUNCTIONS: &[&str] = &[
    "llama_.*",
    "gguf_.*",
    "ggml_backend_tensor_get",
    "ggml_backend_buffer_is_host",
    "ggml_backend_buffer_name",
    "ggml_backend_load_all.*",
    "ggml_backend_dev_.*",
    "ggml_backend_reg_.*",
    "ggml_set_abort_callback",
    "ggml_backend_register",
    // Reached through the RPC registry's proc addresses, never linked: bound
    // only so that the extractor checks their signatures against the headers.
    "ggml_backend_rpc_add_server",
    "ggml_backend_rpc_start_server",
    "ggml_get_type_traits",
    "ggml_type_name",
    "ggml_type_size",
    "ggml_blck_size",
    "ggml_row_size",
    "ggml_is_quantized",
    "ggml_nelements",
    "ggml_nbytes",
    "ggml_n_dims",
    "ggml_get_name",
    "ggml_get_tensor",
    "ggml_set_name",
    "ggml_op_name",
    "ggml_op_desc",
    "ggml_is_contiguous",
    "ggml_init",
    "ggml_free",
    "ggml_new_tensor(_[1-4]d)?",
    "ggml_get_data",
    "ggml_version",
    "ggml_commit",
    "ggml_fp16_to_fp32_row",
    "ggml_fp32_to_fp16_row",
    "ggml_quantize_chunk",
    "ggml_quantize_requires_imatrix",
];
/// C functions named like their return enum (`llama_vocab_type()` returns
/// `enum llama_vocab_type`) clash with the enum's Rust newtype; none is needed.
const CLASHING_FUNCTIONS: &[&str] = &[
    "llama_vocab_type",
    "llama_pooling_type",
    "ggml_backend_dev_type",
];
const TYPES: &[&str] = &[
    "ggml_backend_sched_eval_callback",
    "ggml_tensor",
    "ggml_type_traits",
];
/// Functions the extractor calls that trees older than [`OLDEST_WORKING`]
/// lack and that no bridge in `extractor/src/ffi/compat.rs` replaces: a tree
/// without one of them is refused before anything is built.
const REQUIRED: &[(&str, &str)] = &[
    (
        "gguf_init_from_file",
        "the GGUF API (in gguf.h, or in ggml.h before it was split out)",
    ),
    ("llama_get_memory", "the llama_memory_* API (mid 2025)"),
    ("llama_memory_clear", "the llama_memory_* API (mid 2025)"),
    ("llama_model_n_head_kv", "the model accessors"),
    ("ggml_set_abort_callback", "ggml's abort hook"),
    (
        "ggml_backend_rpc_add_server",
        "the RPC backend's registry API (ggml-rpc.h, 2025)",
    ),
];
/// The oldest tree the extractor was built and run on.
const OLDEST_WORKING: &str = "the llama.cpp of crate llama-cpp-sys-2 0.1.120";
const VARS: &[&str] = &[
    "GGML_MAX_DIMS",
    "GGML_MAX_NAME",
    "LLAMA_DEFAULT_SEED",
    "LLAMA_TOKEN_NULL",
];

impl Bindgen {
    pub fn run(self, project: &Project) -> Result<()> {
        let tree = Tree::pinned(project)?;
        let generated = generate(project, &tree)?;
        let path = project.bindings_file();
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed == generated {
            eprintln!("bindgen: {} is up to date", path.display());
            return Ok(());
        }
        if self.check {
            bail!(
                "{} is stale: it differs from the bindings of the pinned headers.\n\
                 Regenerate it with: cargo xtask bindgen",
                path.display()
            );
        }
        write_atomically(&path, generated.as_bytes())?;
        eprintln!("bindgen: wrote {}", path.display());
        Ok(())
    }
}

/// The bindings the extractor compiles against for `tree`: None for the pin
/// (the committed ones), else generated from the tree's own headers into
/// its extractor directory, after checking that it declares what is required.
pub fn for_tree(project: &Project, tree: &Tree) -> Result<Option<PathBuf>> {
    if !tree.is_local() {
        return Ok(None);
    }
    let generated = generate(project, tree)?;
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(name, _)| !generated.contains(&format!("pub fn {name}(")))
        .map(|(name, what)| format!("{name} ({what})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the llama.cpp tree {} is too old for this extractor: its headers lack {}.\n\
             The oldest tree known to work is {OLDEST_WORKING}; update the checkout (git pull) or use the pin (no --llama-cpp).",
            tree.root.display(),
            missing.join(", ")
        );
    }
    let path = project.extractor_dir(&tree.id).join("bindings.rs");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(generated.as_str()) {
        std::fs::create_dir_all(path.parent().expect("in a directory"))?;
        write_atomically(&path, generated.as_bytes())?;
    }
    Ok(Some(path))
}

/// The headers bindgen reads, checked before it runs: without one it would
/// stop with a compiler's `file not found`. GGUF's API has had two homes:
/// `ggml/include/gguf.h` since upstream split it out, `ggml.h`
/// before, and in the forks that branched then: `gguf.h` is read where it is.
fn wrapper_header(tree_root: &Path) -> Result<String> {
    let required = [
        "include/llama.h",
        "ggml/include/ggml.h",
        "ggml/include/ggml-backend.h",
    ];
    let missing: Vec<&str> = required
        .into_iter()
        .filter(|h| !tree_root.join(h).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the llama.cpp tree {} lacks {}, which the extractor's bindings are made from.\n\
             The oldest tree known to work is {OLDEST_WORKING}; update the checkout (git pull) or use the pin (no --llama-cpp).",
            tree_root.display(),
            missing.join(", ")
        );
    }
    let mut wrapper = String::from("#include \"llama.h\"\n#include \"ggml-backend.h\"\n");
    for optional in ["gguf.h", "ggml-rpc.h"] {
        if tree_root.join("ggml/include").join(optional).is_file() {
            wrapper.push_str(&format!("#include \"{optional}\"\n"));
        }
    }
    Ok(wrapper)
}

fn generate(project: &Project, tree: &Tree) -> Result<String> {
    let tree_root = &tree.root;
    let wrapper = wrapper_header(tree_root)?;
    let tools = tools::ensure(project)?;
    // bindgen loads libclang at run time from here.
    std::env::set_var("LIBCLANG_PATH", &tools.libclang_dir);

    let mut builder = bindgen::Builder::default()
        .header_contents("llorch_wrapper.h", &wrapper)
        .clang_arg(format!("-I{}", tree_root.join("include").display()))
        .clang_arg(format!("-I{}", tree_root.join("ggml/include").display()))
        // The libclang wheel has no resource headers (stddef.h, stdbool.h); the C
        // compiler's are equivalent for these declarations.
        .clang_args(compiler_include_dirs().into_iter().map(|dir| format!("-isystem{dir}")))
        .default_enum_style(bindgen::EnumVariation::NewType { is_bitfield: false, is_global: false })
        .derive_default(true)
        .generate_comments(true)
        .formatter(bindgen::Formatter::Prettyplease)
        .raw_line(format!(
            "// @generated by `cargo xtask bindgen` from the headers of {} (libclang from PyPI, see xtask/src/llama_cpp/tools.rs).\n\
             // Do not edit: `cargo xtask bindgen --check` fails when this file is stale.",
            tree.record.name
        ));
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for f in CLASHING_FUNCTIONS {
        builder = builder.blocklist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    let bindings = builder
        .generate()
        .with_context(|| format!("bindgen failed on the headers of {}", tree_root.display()))?;
    Ok(bindings.to_string())
}

/// The system C compiler's own include directory (stddef.h and friends), if it has one.
fn compiler_include_dirs() -> Vec<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    std::process::Command::new(cc)
        .arg("-print-file-name=include")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|dir| std::path::Path::new(dir).join("stddef.h").exists())
        .into_iter()
        .collect()
}
