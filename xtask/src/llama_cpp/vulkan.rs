//! What llama.cpp's Vulkan backend needs to build and run here: glslc, the
//! Vulkan loader and a driver (Mesa's CPU driver, llvmpipe, where there is
//! no GPU), and headers at least as new as the pin needs (`vendor/vulkan.yaml`:
//! fetched and unpacked into `target/llorch/vulkan` when the system's are older).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::llama_cpp::fetch::check_sha256;
use crate::project::Project;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VulkanPin {
    min_header_version: u32,
    headers: Headers,
    debian_packages: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Headers {
    version: String,
    packages: Vec<Package>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Package {
    url: String,
    sha256: String,
}

fn pin(project: &Project) -> Result<VulkanPin> {
    let path = project.root().join("vendor/vulkan.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is malformed", path.display()))
}

/// The command that installs what the Vulkan backend needs on Debian.
pub fn install_command(project: &Project) -> String {
    let packages = pin(project).map(|p| p.debian_packages).unwrap_or_default();
    format!("apt-get install {}", packages.join(" "))
}

/// What is missing to build and run the Vulkan backend, one sentence each.
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    if !on_path("glslc") {
        missing.push("glslc (the GLSL compiler that makes the backend's shaders)".to_string());
    }
    if library_dirs().all(|d| !d.join("libvulkan.so").exists()) {
        missing.push("libvulkan.so (the Vulkan loader to link against)".to_string());
    }
    if drivers().is_empty() {
        missing.push(
            "a Vulkan driver (no ICD file in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d; \
             Mesa's llvmpipe runs on the CPU)"
                .to_string(),
        );
    }
    missing
}

/// Fails fast, before any configure, naming what is missing and the fix.
pub fn check_toolchain(project: &Project) -> Result<()> {
    let missing = missing();
    if !missing.is_empty() {
        bail!(
            "--backend vulkan needs {}.\nInstall them (Debian, as root): {}",
            missing.join(", "),
            install_command(project)
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

fn library_dirs() -> impl Iterator<Item = PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .into_iter()
    .map(PathBuf::from)
}

/// The installed Vulkan drivers' ICD files.
pub fn drivers() -> Vec<PathBuf> {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

/// `VK_HEADER_VERSION` of the headers under `include`, if they are there.
fn header_version(include: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(include.join("vulkan/vulkan_core.h")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("#define VK_HEADER_VERSION "))?
        .trim()
        .parse()
        .ok()
}

/// Which headers a Vulkan build uses, in words.
pub fn headers_in_use(project: &Project) -> String {
    let system = header_version(Path::new("/usr/include"));
    match (std::env::var_os("VULKAN_SDK"), pin(project)) {
        (Some(sdk), _) => format!("VULKAN_SDK's ({})", Path::new(&sdk).display()),
        (None, Ok(pin)) if system.is_some_and(|v| v >= pin.min_header_version) => {
            format!("the system's (1.3.{})", system.unwrap_or_default())
        }
        (None, Ok(pin)) => format!(
            "Vulkan-Headers {} from vendor/vulkan.yaml (the system's: {})",
            pin.headers.version,
            system.map_or("none".into(), |v| format!("1.x.{v}"))
        ),
        (None, Err(err)) => format!("unknown ({err:#})"),
    }
}

/// The CMake defines that point the build at headers new enough for the
/// pin: none where `VULKAN_SDK` is set or the system's are; otherwise the
/// pinned packages' headers, fetched and unpacked once.
pub fn header_defines(project: &Project) -> Result<Vec<String>> {
    let pin = pin(project)?;
    if std::env::var_os("VULKAN_SDK").is_some() {
        return Ok(Vec::new());
    }
    if header_version(Path::new("/usr/include")).is_some_and(|v| v >= pin.min_header_version) {
        return Ok(Vec::new());
    }
    let root = project
        .work_dir()
        .join("vulkan")
        .join(format!("headers-{}", pin.headers.version));
    if header_version(&root.join("usr/include")).is_none() {
        unpack_headers(project, &pin, &root)?;
    }
    Ok(vec![
        format!("Vulkan_INCLUDE_DIR={}", root.join("usr/include").display()),
        format!(
            "SPIRV-Headers_DIR={}",
            root.join("usr/share/cmake/SPIRV-Headers").display()
        ),
    ])
}

/// Downloads each pinned package, checks its sha256, and unpacks it into
/// `root` (staged, so that an interrupted fetch leaves nothing half-made).
fn unpack_headers(project: &Project, pin: &VulkanPin, root: &Path) -> Result<()> {
    let system = header_version(Path::new("/usr/include"))
        .map_or("none".to_string(), |v| format!("1.x.{v}"));
    eprintln!(
        "    vulkan the system's Vulkan headers ({system}) are older than the pin needs (1.3.{}): \
         fetching Vulkan-Headers {} into {}",
        pin.min_header_version,
        pin.headers.version,
        project.shown(root)
    );
    ensure!(
        on_path("dpkg-deb"),
        "the Vulkan headers here are older than the pin needs (VK_HEADER_VERSION {}) and dpkg-deb, \
         which unpacks the pinned Debian packages, is missing: install Vulkan-Headers {} or newer \
         and point VULKAN_SDK at them",
        pin.min_header_version,
        pin.headers.version
    );
    let staging = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let python = crate::llama_cpp::tools::ensure(project)?.python;
    for package in &pin.headers.packages {
        let name = package.url.rsplit('/').next().unwrap_or("package.deb");
        let deb = staging.join(name);
        duct::cmd!(
            &python,
            "-c",
            "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])",
            &package.url,
            &deb
        )
        .stdout_null()
        .run()
        .with_context(|| {
            format!(
                "cannot download {} (is deb.debian.org reachable?)",
                package.url
            )
        })?;
        let bytes = std::fs::read(&deb)?;
        check_sha256(&deb, &bytes, name, &package.sha256, "vendor/vulkan.yaml")?;
        duct::cmd!("dpkg-deb", "-x", &deb, &staging)
            .run()
            .with_context(|| format!("dpkg-deb could not unpack {}", deb.display()))?;
        std::fs::remove_file(&deb)?;
    }
    ensure!(
        header_version(&staging.join("usr/include")).is_some(),
        "the pinned packages hold no usr/include/vulkan/vulkan_core.h"
    );
    let _ = std::fs::remove_dir_all(root);
    std::fs::rename(&staging, root)
        .with_context(|| format!("cannot move the headers to {}", root.display()))
}

/// `GGML_VK_VISIBLE_DEVICES` for a run, unless the caller set it: llama.cpp
/// skips a Vulkan device that is a CPU (llvmpipe) unless it is named there,
/// so where the machine has no other, name the first (from `vulkaninfo
/// --summary`). None: leave llama.cpp's choice (a GPU).
pub fn visible_devices() -> Option<String> {
    if std::env::var_os("GGML_VK_VISIBLE_DEVICES").is_some() {
        return None;
    }
    let out = std::process::Command::new("vulkaninfo")
        .arg("--summary")
        .output()
        .ok()?;
    let types: Vec<bool> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("deviceType"))
        .map(|t| t.contains("PHYSICAL_DEVICE_TYPE_CPU"))
        .collect();
    match types.iter().all(|&cpu| cpu) {
        true => types.iter().position(|&cpu| cpu).map(|i| i.to_string()),
        false => None,
    }
}
