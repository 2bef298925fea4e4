//! Faults from outside: signals, a model that changes, is cut short or
//! holds garbage (a full disk is verify's: it needs a mount). Each run must end with a clear error (or, for
//! garbage, name what it captured) and leave nothing half-written.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{files_in, manifests, model};
use llorch_checkpoint_extractor::ffi::gguf::GgufFile;

fn extractor() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llorch-checkpoint-extractor"));
    cmd.args(["-t", "2"]);
    cmd
}

/// Every layer of GPT-2 (108 checkpoints, 43 MB for the long prompt) into `out`.
fn all_layers(model: &Path, out: &Path) -> Vec<String> {
    let mut all = args(model, "gpt2.yaml", out);
    all.push("--layers=all".into());
    all
}

fn args(model: &Path, manifest: &str, out: &Path) -> Vec<String> {
    [
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifests().join(manifest).to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// The GPT-2 manifest's run of `model` into `dir`: its status and stderr.
fn extract_gpt2(model: &Path, dir: &Path) -> (std::process::Output, String) {
    let out = extractor()
        .args(args(model, "gpt2.yaml", dir))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// A run with `--test-pause point` (a hidden flag of `--features test-hooks`
/// builds only), its stderr lines on a channel.
fn paused_run(args: &[String], point: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = extractor()
        .args(args)
        .args(["--test-pause", point])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, rx) = mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    (child, rx)
}

/// Waits for the pause line; returns everything the run said up to it.
fn wait_for_pause(rx: &mpsc::Receiver<String>, point: &str) -> String {
    let mut said = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the run never paused in the {point}: {said}"));
        said.push_str(&line);
        said.push('\n');
        if line.contains(&format!("test hook: paused in the {point}")) {
            return said;
        }
    }
}

fn rest(rx: mpsc::Receiver<String>) -> String {
    rx.into_iter().collect::<Vec<_>>().join("\n")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// A complete earlier run in `dir`, for the runs that must not disturb it.
fn earlier_run(dir: &Path) -> Vec<String> {
    let out = extractor()
        .args(args(&model(), "gpt2.yaml", dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    files_in(dir)
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs --features test-hooks (cargo xtask verify enables it)"
)]
fn sigint_and_sigterm_in_the_decode_or_the_writes_leave_nothing_and_free_the_lock() {
    for (sig, point) in [
        ("INT", "decode"),
        ("TERM", "decode"),
        ("INT", "write"),
        ("TERM", "write"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        // Into a new directory: it goes. Into one holding an earlier run: that stays as it was.
        let fresh = tmp.path().join("fresh");
        let (mut child, rx) = paused_run(&all_layers(&model(), &fresh), point);
        wait_for_pause(&rx, point);
        signal(&child, sig);
        let status = child.wait().unwrap();
        let said = rest(rx);
        assert_eq!(status.code(), Some(130), "SIG{sig} in the {point}: {said}");
        assert!(
            said.contains("interrupted") && said.contains("nothing was written"),
            "{said}"
        );
        assert!(
            !fresh.exists(),
            "SIG{sig} in the {point} left {:?}",
            files_in(&fresh)
        );

        let kept = tmp.path().join("kept");
        let before = earlier_run(&kept);
        let (mut child, rx) = paused_run(&all_layers(&model(), &kept), point);
        wait_for_pause(&rx, point);
        signal(&child, sig);
        assert_eq!(child.wait().unwrap().code(), Some(130));
        assert_eq!(
            files_in(&kept),
            before,
            "SIG{sig} in the {point}: the earlier run changed"
        );
        // The lock went with the process: the next run gets it.
        assert_eq!(earlier_run(&kept), before);
    }
}

/// The staging directories beside `dir` (`.NAME.llorch-run-PID`).
fn staged_beside(dir: &Path) -> Vec<String> {
    let prefix = format!(".{}.llorch-", dir.file_name().unwrap().to_string_lossy());
    files_in(dir.parent().unwrap())
        .into_iter()
        .filter(|f| f.starts_with(&prefix))
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs --features test-hooks (cargo xtask verify enables it)"
)]
fn after_sigkill_in_the_writes_the_run_is_as_it_was_and_the_next_run_removes_the_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let before = earlier_run(&dir);
    let (mut child, rx) = paused_run(&all_layers(&model(), &dir), "write");
    wait_for_pause(&rx, "write");
    signal(&child, "KILL");
    child.wait().unwrap();
    assert_eq!(files_in(&dir), before, "SIGKILL changed the earlier run");
    assert_eq!(
        staged_beside(&dir).len(),
        1,
        "SIGKILL leaves its staging directory beside the output: {:?}",
        files_in(tmp.path())
    );
    assert_eq!(earlier_run(&dir), before);
    assert_eq!(staged_beside(&dir), Vec::<String>::new());
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs --features test-hooks (cargo xtask verify enables it)"
)]
fn a_second_run_into_a_directory_a_live_run_writes_to_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let before = earlier_run(&dir);
    let (mut first, rx) = paused_run(&args(&model(), "gpt2.yaml", &dir), "decode");
    wait_for_pause(&rx, "decode");
    let (out, stderr) = extract_gpt2(&model(), &dir);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another extraction is writing to"),
        "{stderr}"
    );
    assert_eq!(
        files_in(&dir),
        before,
        "the refused run changed the directory"
    );
    assert!(first.wait().unwrap().success(), "{}", rest(rx));
    assert_eq!(staged_beside(&dir), Vec::<String>::new());
}

/// A prompt of `n` GPT-2 tokens (" the" is one token).
fn long_prompt(n: usize) -> String {
    "the".to_string() + &" the".repeat(n - 1)
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs --features test-hooks (cargo xtask verify enables it)"
)]
fn a_writer_that_fails_mid_capture_ends_the_run_with_its_error_not_a_hang() {
    // The whole graph of a 950-token prompt (over a GB) through a 64 MB buffer:
    // the capture waits for the writer, which fails at 32 MB as a full disk would.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let before = earlier_run(&dir);
    let mut child = extractor()
        .args([
            "-m",
            model().to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .args(["--tensors", "*", "--buffer-mb", "64", "-n", "0"])
        .args(["--test-fail-write-at", &(32u64 << 20).to_string()])
        .arg("-p")
        .arg(long_prompt(950))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
        text
    });
    // A hang is the defect: give up (and fail) after two minutes, not a timing gate.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("the run still waits 120 s after its writer failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ended = started.elapsed().as_secs_f64();
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    eprintln!("ended after {ended:.1} s with: {error}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        error.contains("cannot write the run for")
            && stderr.contains("cannot write")
            && stderr.contains("No space left on device"),
        "the writer's error is the one reported: {stderr}"
    );
    assert_eq!(files_in(&dir), before);
    assert_eq!(staged_beside(&dir), Vec::<String>::new());
}

/// A private copy of the default model, to damage.
fn model_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("model.gguf");
    std::fs::copy(model(), &copy).unwrap();
    copy
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs --features test-hooks (cargo xtask verify enables it)"
)]
fn a_model_that_changes_during_the_run_is_detected_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = model_copy(tmp.path());
    let dir = tmp.path().join("run");
    let (mut child, rx) = paused_run(&args(&copy, "gpt2.yaml", &dir), "decode");
    wait_for_pause(&rx, "decode");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .unwrap();
    std::io::Write::write_all(&mut file, b"appended").unwrap();
    drop(file);
    let status = child.wait().unwrap();
    let said = rest(rx);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("changed during the run"), "{said}");
    assert!(!dir.exists(), "left {:?}", files_in(&dir));
}

#[test]
fn a_truncated_model_is_a_clear_error_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = model_copy(tmp.path());
    let len = std::fs::metadata(&copy).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let dir = tmp.path().join("run");
    let (out, stderr) = extract_gpt2(&copy, &dir);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code 1, not a signal: {stderr}"
    );
    assert!(
        stderr.contains("could not load") && stderr.contains("model.gguf"),
        "{stderr}"
    );
    assert!(!dir.exists());
}

#[test]
fn garbage_tensor_data_behind_a_valid_header_is_captured_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = model_copy(tmp.path());
    let first = GgufFile::open(&copy)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.file_offset)
        .min()
        .unwrap();
    let len = std::fs::metadata(&copy).unwrap().len();
    let mut file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(first)).unwrap();
    // 0xFF bytes: every f32 weight a NaN.
    let chunk = vec![0xFFu8; 1 << 20];
    let mut left = len - first;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut file, &chunk[..n]).unwrap();
        left -= n as u64;
    }
    drop(file);

    let dir = tmp.path().join("run");
    let (out, stderr) = extract_gpt2(&copy, &dir);
    assert!(out.status.success(), "captured as it is: {stderr}");
    assert!(
        stderr.contains("checkpoint(s) hold NaN or Inf values, first checkpoint_01_ln1_output.bin"),
        "{stderr}"
    );
    let validate = Command::new(env!("CARGO_BIN_EXE_llorch-checkpoint-validate"))
        .arg(&dir)
        .arg("--manifest")
        .arg(manifests().join("gpt2.yaml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&validate.stdout).into_owned()
        + &String::from_utf8_lossy(&validate.stderr);
    assert!(!validate.status.success(), "{report}");
    assert!(
        report.contains("checkpoint_01_ln1_output.bin: 1536 NaN or Inf values"),
        "{report}"
    );
}
