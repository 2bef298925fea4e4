//! Tells xtask the target it was built for, which the `cc` crate needs to find
//! a C compiler outside a build script (`cargo xtask bench`'s raw-C baseline).

fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=XTASK_TARGET={target}");
}
