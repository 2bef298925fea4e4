//! `cargo xtask doctor`: what this machine has and lacks for each backend
//! and for `compare`, with the command that fixes each missing piece. It
//! only looks: nothing is installed, written or removed.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::project::Project;

#[derive(clap::Args)]
pub struct Doctor {}

/// What one check found.
enum Found {
    Ok(String),
    /// Not there yet, but the first task that needs it installs it.
    Later(String),
    Missing {
        why: String,
        fix: String,
    },
}

/// Which work a check is for: a missing `Cpu` piece stops every task.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Cpu,
    Compare,
    Cuda,
    Metal,
    Vulkan,
    Optional,
}

impl Need {
    fn label(self) -> &'static str {
        match self {
            Need::Cpu => "cpu",
            Need::Compare => "compare",
            Need::Cuda => "cuda",
            Need::Metal => "metal",
            Need::Vulkan => "vulkan",
            Need::Optional => "optional",
        }
    }
}

impl Doctor {
    pub fn run(self, project: &Project) -> Result<()> {
        let checks: Vec<(&str, Need, Found)> = vec![
            ("rust", Need::Cpu, rust()),
            ("C/C++ compiler", Need::Cpu, compilers()),
            ("python3 + venv", Need::Cpu, python()),
            ("build tools", Need::Cpu, build_tools(project)),
            ("disk space", Need::Cpu, disk(project)),
            ("CPU features", Need::Cpu, cpu()),
            ("PyTorch env", Need::Compare, pyenv(project)),
            ("nvcc (CUDA)", Need::Cuda, nvcc()),
            ("Metal", Need::Metal, metal()),
            ("Vulkan", Need::Vulkan, vulkan(project)),
            (
                "git",
                Need::Optional,
                version_of(
                    "git",
                    &["--version"],
                    "apt-get install git (only for a git pin)",
                ),
            ),
            ("nightly rust", Need::Optional, nightly()),
            (
                "chromium",
                Need::Optional,
                version_of(
                    "chromium",
                    &["--version"],
                    "apt-get install chromium (verify opens report.html in it)",
                ),
            ),
        ];
        let mut blocking = 0;
        for (name, need, found) in &checks {
            let (mark, text) = match found {
                Found::Ok(what) => ("ok", what.clone()),
                Found::Later(what) => ("later", what.clone()),
                Found::Missing { why, fix } => {
                    blocking += (*need == Need::Cpu) as usize;
                    let mark = if *need == Need::Cpu {
                        "MISSING"
                    } else {
                        "absent"
                    };
                    (mark, format!("{why}\n{:>28} fix: {fix}", ""))
                }
            };
            println!("{mark:>7} {:<8} {name:<16} {text}", need.label());
        }
        if blocking > 0 {
            bail!("{blocking} piece(s) every task needs are missing: run the fix lines above");
        }
        println!("\nnothing missing for the CPU pipeline; `cargo xtask extract` builds the rest");
        Ok(())
    }
}

/// The first line `program args` prints, if it runs.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    out.status.success().then(|| {
        String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    })
}

fn version_of(program: &str, args: &[&str], fix: &str) -> Found {
    match first_line(program, args) {
        Some(v) => Found::Ok(v),
        None => Found::Missing {
            why: format!("`{program}` is not on PATH"),
            fix: fix.into(),
        },
    }
}

fn rust() -> Found {
    let Some(v) = first_line("rustc", &["--version"]) else {
        return Found::Missing {
            why: "no rustc".into(),
            fix: "curl https://sh.rustup.rs -sSf | sh".into(),
        };
    };
    let minor = v
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 89 => Found::Ok(v),
        _ => Found::Missing {
            why: format!("{v}: 1.89 or later is needed"),
            fix: "rustup update stable".into(),
        },
    }
}

fn compilers() -> Found {
    match (
        first_line("cc", &["--version"]),
        first_line("c++", &["--version"]),
    ) {
        (Some(c), Some(_)) => Found::Ok(c),
        _ => Found::Missing {
            why: "cc and c++ are needed for llama.cpp".into(),
            fix: "apt-get install build-essential".into(),
        },
    }
}

fn python() -> Found {
    let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    match first_line(&python3, &["-c", "import venv, ensurepip, sys; print(sys.version.split()[0])"]) {
        Some(v) => Found::Ok(format!("{python3} {v} with venv and pip")),
        None => Found::Missing {
            why: format!("`{python3}` with the venv and ensurepip modules is needed (cmake, ninja, libclang come from PyPI through it)"),
            fix: "apt-get install python3 python3-venv".into(),
        },
    }
}

fn build_tools(project: &Project) -> Found {
    match crate::llama_cpp::tools::installed(project) {
        Some(tools) => Found::Ok(format!(
            "{tools} in {}",
            project.tools_dir().join("venv").display()
        )),
        None => Found::Later(
            "cmake, ninja, libclang: the first build installs them from PyPI (about 100 MB)".into(),
        ),
    }
}

fn pyenv(project: &Project) -> Found {
    match crate::models::python::installed(project) {
        Some(venv) => Found::Ok(format!("{} ({})", venv.display(), size(&venv))),
        None => Found::Later(
            "torch, transformers: the first `cargo xtask compare` installs them (about 5 GB)"
                .into(),
        ),
    }
}

/// Free space where everything is built: what a fresh clone's full verify
/// takes at its peak (the PyTorch env, builds, models, the largest runs).
fn disk(project: &Project) -> Found {
    let (dir, need) = (project.root(), crate::host::FULL_VERIFY_GB);
    match crate::host::free_gb(dir) {
        Some(gb) if gb >= need as f64 => {
            Found::Ok(format!("{gb:.0} GB free under {}", dir.display()))
        }
        Some(gb) => Found::Missing {
            why: format!(
                "{gb:.1} GB free under {}; a fresh clone's `cargo xtask verify --full` takes about {need} GB \
                 at its peak (builds, the PyTorch env and models)",
                dir.display()
            ),
            fix: "free disk space (or clone elsewhere)".into(),
        },
        None => Found::Later(format!("`df` did not answer; about {need} GB are needed")),
    }
}

/// What `--backend vulkan` needs: glslc, the loader, a driver (llvmpipe
/// runs on the CPU); the headers it fetches itself where the system's are old.
fn vulkan(project: &Project) -> Found {
    let missing = crate::llama_cpp::vulkan::missing();
    if !missing.is_empty() {
        return Found::Missing {
            why: format!("--backend vulkan needs {}", missing.join(", ")),
            fix: crate::llama_cpp::vulkan::install_command(project),
        };
    }
    let device = first_line_matching("vulkaninfo", &["--summary"], "deviceName")
        .unwrap_or_else(|| "a driver (vulkaninfo, from vulkan-tools, names the device)".into());
    Found::Ok(format!("glslc, libvulkan and {device}"))
}

/// The value of the first line of `program args`'s output that holds
/// `key` (what follows its `=`), trimmed.
fn first_line_matching(program: &str, args: &[&str], key: &str) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(key))
        .map(|l| l.split_once('=').map_or(l, |(_, v)| v).trim().to_string())
}

fn size(dir: &Path) -> String {
    let kb = Command::new("du")
        .arg("-sk")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        });
    kb.map_or("size unknown".into(), |kb| {
        format!("{:.1} GB", kb as f64 / 1048576.0)
    })
}

fn cpu() -> Found {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let has = |f: &str| flags.contains(&f);
    let listed: Vec<&str> = [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
    ]
    .into_iter()
    .filter(|f| has(f))
    .collect();
    let amx = if has("amx_tile") {
        "; AMX present: the build leaves ggml's AMX kernels out (they crash on the pinned tree), LLORCH_CPU_AMX=on puts them back"
    } else {
        ""
    };
    Found::Ok(format!(
        "{}{amx}",
        if listed.is_empty() {
            "no AVX2".into()
        } else {
            listed.join(" ")
        }
    ))
}

fn nvcc() -> Found {
    match crate::llama_cpp::build::find_nvcc() {
        Some(path) => Found::Ok(
            first_line(&path.to_string_lossy(), &["--version"])
                .unwrap_or_else(|| path.display().to_string()),
        ),
        None => Found::Missing {
            why: "no nvcc on PATH, in $CUDACXX or /usr/local/cuda (only --backend cuda needs it)"
                .into(),
            fix: "install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads)".into(),
        },
    }
}

fn metal() -> Found {
    if cfg!(target_os = "macos") {
        Found::Ok("macOS: --backend metal builds here".into())
    } else {
        Found::Missing {
            why: format!(
                "Metal exists only on macOS; this host is {}",
                std::env::consts::OS
            ),
            fix: "build --backend metal on a Mac".into(),
        }
    }
}

fn nightly() -> Found {
    match crate::checks::fuzz::nightly_available() {
        true => Found::Ok(
            "cargo +nightly works: `cargo xtask fuzz` and verify's fuzz checks run".into(),
        ),
        false => Found::Missing {
            why: "no nightly toolchain: fuzzing is skipped".into(),
            fix: "rustup toolchain install nightly".into(),
        },
    }
}
