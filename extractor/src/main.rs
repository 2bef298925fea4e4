use llorch_checkpoint_extractor::ffi;

fn main() {
    let (version, commit) = ffi::ggml_version();
    println!(
        "llorch-checkpoint-extractor {} (llama.cpp {}, {} tree, backend {}, ggml {version} {commit})",
        env!("CARGO_PKG_VERSION"),
        env!("LLORCH_PIN"),
        env!("LLORCH_FLAVOUR"),
        env!("LLORCH_BACKEND"),
    );
    println!("{}", ffi::system_info());
}
