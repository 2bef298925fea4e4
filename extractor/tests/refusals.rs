//! What the extractor refuses, and that a refused or failed run leaves nothing
//! behind: bad manifests, a corrupt or foreign model, prompts past the
//! context, unwritable or locked output, a panic in the callback, a run
//! record of a newer schema.

mod common;

use std::process::Command;

use common::{extractor, files_in, manifests, model, run_err, run_ok};

fn failing_run(manifest_text: Option<&str>, extra: &[&str]) -> (String, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("m.yaml");
    match manifest_text {
        // The architecture goes last, so the line numbers of `text` stay.
        Some(text) => std::fs::write(&manifest, format!("{text}architecture: gpt2\n")).unwrap(),
        None => std::fs::copy(manifests().join("gpt2.yaml"), &manifest)
            .map(|_| ())
            .unwrap(),
    }
    let dir = tmp.path().join("run");
    let model = model();
    let err = run_err(
        &[
            &[
                "-m",
                model.to_str().unwrap(),
                "--manifest",
                manifest.to_str().unwrap(),
                "-p",
                "Hello world",
                "--out",
                dir.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat(),
    );
    // Nothing in the output directory, and nothing beside it (no staging).
    let mut left = files_in(tmp.path());
    left.retain(|f| f != "m.yaml");
    (err, left)
}

#[test]
fn an_unknown_tensor_is_named_and_nothing_is_written() {
    let (err, files) = failing_run(
        Some("checkpoints:\n  - {id: ln1, tensor: attn_norm-0, shape: [n_embd, n_tokens], file: ln1}\n  - {id: typo, tensor: atn_norm-0, shape: [n_embd, n_tokens], file: typo}\n"),
        &[],
    );
    assert!(
        err.contains("typo (tensor `atn_norm-0`)") && err.contains("not seen"),
        "{err}"
    );
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[test]
fn a_shape_mismatch_gives_expected_and_actual() {
    let (err, files) = failing_run(
        Some("checkpoints:\n  - {id: ln1, tensor: attn_norm-0, shape: [n_embd, 7], file: ln1}\n"),
        &[],
    );
    assert!(
        err.contains("checkpoint ln1") && err.contains("expected ne [768, 7], got [768, 2]"),
        "{err}"
    );
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[test]
fn a_file_name_with_dotdot_is_refused_before_inference() {
    let (err, files) = failing_run(Some("checkpoints:\n  - {id: ln1, tensor: attn_norm-0, shape: [n_embd, n_tokens], file: ../escape}\n"), &[]);
    assert!(
        err.contains("plain name inside the output directory"),
        "{err}"
    );
    assert!(
        !err.contains("model"),
        "refused before the model is loaded: {err}"
    );
    assert!(files.is_empty());
}

#[test]
fn malformed_yaml_reports_its_line() {
    let (err, files) = failing_run(Some("checkpoints:\n  - id: ln1\n    tensor: attn_norm-0\n    shape: [n_embd, n_tokens\n    file: ln1\n"), &[]);
    assert!(err.contains("line 5"), "{err}");
    assert!(files.is_empty());
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs --features test-hooks (cargo xtask verify enables it)"
)]
fn a_panic_in_the_callback_stops_the_run_and_leaves_no_file() {
    let (err, files) = failing_run(None, &["--inject-panic", "ffn_out-0"]);
    assert!(err.contains("panicked on node `ffn_out-0`"), "{err}");
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[test]
fn an_unwritable_output_directory_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = blocker.join("run");
    let model = model();
    let manifest = manifests().join("gpt2.yaml");
    let err = run_err(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("cannot write to the output directory") && err.contains("--out"),
        "{err}"
    );
}

/// Every file under `dir`, with its sha256: what "byte-identical" compares.
fn snapshot(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            all.extend(
                snapshot(&path)
                    .into_iter()
                    .map(|(f, sha)| (format!("{name}/{f}"), sha)),
            );
        } else {
            let sha = llorch_checkpoint_spec::files::sha256_file(&path).unwrap();
            all.push((name, sha));
        }
    }
    all.sort();
    all
}

#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs --features test-hooks (cargo xtask verify enables it)"
)]
fn a_refused_run_leaves_the_earlier_run_byte_identical_and_nothing_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let (m, mf, d) = (
        model.to_str().unwrap(),
        manifest.to_str().unwrap(),
        dir.to_str().unwrap(),
    );
    run_ok(&["-m", m, "--manifest", mf, "--out", d]);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let before = snapshot(tmp.path());
    let long = "the ".repeat(1100);
    let refusals: [(&str, Vec<&str>, &str); 5] = [
        (
            "a prompt past the trained context",
            vec!["--out", d, "--manifest", mf, "-p", &long],
            "trained for a context",
        ),
        (
            "a panic in the callback",
            vec!["--out", d, "--manifest", mf, "--inject-panic", "ffn_out-0"],
            "panicked on node",
        ),
        (
            "a glob that matches no node",
            vec!["--out", d, "--tensors", "no-such-node*"],
            "no node of pass 0",
        ),
        (
            "writes that fail (a full disk)",
            vec![
                "--out",
                d,
                "--manifest",
                mf,
                "--layers=all",
                "--test-fail-write-at",
                "100000",
            ],
            "No space left on device",
        ),
        (
            "a file where the output directory should be",
            vec!["--manifest", mf, "--out", file.to_str().unwrap()],
            "is a file, not a directory",
        ),
    ];
    for (why, args, expect) in refusals {
        let err = run_err(&[&["-m", m][..], &args].concat());
        assert!(err.contains(expect), "{why}: {err}");
        assert_eq!(snapshot(tmp.path()), before, "{why} changed the directory");
    }
}

#[test]
fn a_corrupt_model_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let manifest = manifests().join("gpt2.yaml");
    let dir = tmp.path().join("run");
    let err = run_err(&[
        "-m",
        bad.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        err.contains("could not load") && err.contains("bad.gguf"),
        "{err}"
    );
    assert!(files_in(&dir).is_empty());
}

/// A refused run: exit code 1, one `error:` message, and no output directory.
fn refused(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = extractor(&[args, &["--out", dir.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert!(!dir.exists(), "left behind: {:?}", files_in(&dir));
    stderr
}

#[test]
fn a_prompt_past_the_trained_context_is_refused_before_compute() {
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let long = "hello world ".repeat(600); // 1200 tokens; GPT-2 was trained for 1024
    let long = long.trim_end();
    let err = refused(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-p",
        long,
    ]);
    assert!(
        err.contains("the prompt is 1200 tokens")
            && err.contains("trained for a context of 1024")
            && err.contains("shorten the prompt to at most 1023 tokens"),
        "{err}"
    );
    // Prompt and generation together: the fix is a smaller -n.
    let err = refused(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-p",
        "hello world ".repeat(500).trim_end(),
        "-n",
        "100",
    ]);
    assert!(
        err.contains("1100 positions") && err.contains("lower -n to 24"),
        "{err}"
    );
}

#[test]
fn a_ctx_size_above_the_trained_context_is_refused() {
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let err = refused(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "-c",
        "4096",
    ]);
    assert!(
        err.contains("--ctx-size 4096 is above the context")
            && err.contains("(1024); use --ctx-size 1024 or less"),
        "{err}"
    );
}

#[test]
fn a_model_of_another_architecture_is_refused_with_the_manifests_that_fit() {
    use llorch_checkpoint_extractor::ffi::gguf::{Dtype, GgufWriter};
    let tmp = tempfile::tempdir().unwrap();
    let gguf = |arch: &str| {
        let path = tmp.path().join(format!("{arch}.gguf"));
        let mut w = GgufWriter::new(1).unwrap();
        w.set_str("general.architecture", arch).unwrap();
        w.add_tensor("token_embd.weight", &[4, 2], Dtype::F32, vec![0; 32])
            .unwrap();
        w.write(&path).unwrap();
        path
    };
    let gpt2 = manifests().join("gpt2.yaml");
    let run = |model: &std::path::Path| {
        refused(&[
            "-m",
            model.to_str().unwrap(),
            "--manifest",
            gpt2.to_str().unwrap(),
        ])
    };

    // The project has a manifest for llama: the message names it.
    let err = run(&gguf("llama"));
    assert!(
        err.contains("llama.gguf is a `llama` model, but the manifest")
            && err.contains("describes the graph of `gpt2`")
            && err.contains("manifests for `llama`: ")
            && err.contains("manifests/llama.yaml"),
        "{err}"
    );
    // None for falcon: the message says how to write one.
    let err = run(&gguf("falcon"));
    assert!(
        err.contains("is a `falcon` model")
            && err.contains("is written for `falcon` yet")
            && err.contains("--list-nodes"),
        "{err}"
    );
}

#[test]
fn every_reader_refuses_a_run_record_of_a_future_schema_naming_its_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let dir = tmp.path().join("run");
    run_ok(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    let path = dir.join("run.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let now = llorch_checkpoint_extractor::record::SCHEMA_VERSION;
    assert_eq!(record["schema_version"], now);
    record["schema_version"] = (now + 1).into();
    std::fs::write(&path, record.to_string()).unwrap();

    let (m, d) = (manifest.to_str().unwrap(), dir.to_str().unwrap());
    let readers: [(&str, Vec<&str>); 3] = [
        (
            env!("CARGO_BIN_EXE_llorch-checkpoint-validate"),
            vec![d, "--manifest", m],
        ),
        (
            env!("CARGO_BIN_EXE_llorch-checkpoint-diff"),
            vec!["compare", d, d, "--manifest", m],
        ),
        (
            env!("CARGO_BIN_EXE_llorch-checkpoint-diff"),
            vec!["timing", "--with", d, "--without", d],
        ),
    ];
    for (exe, args) in readers {
        let out = Command::new(exe).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "run record schema version {} is newer than this tool's ({now})",
                now + 1
            )),
            "{args:?}: {stderr}"
        );
    }
}

/// A free port on loopback (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An RPC server of this build on loopback; killed when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
    /// The server's stdout, a line at a time ("Accepted client connection", ...).
    log: std::sync::mpsc::Receiver<String>,
}

const ACCEPTED: &str = "Accepted client connection";
const CLOSED: &str = "Client connection closed";

impl Server {
    /// Started, and listening: its log holds nothing of the connection that checked.
    fn start() -> Server {
        use std::io::BufRead;
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_llorch-checkpoint-rpc-server"))
            .args(["--port", &port.to_string(), "-t", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (lines, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        // Owned at once, so that a server that never listens is killed too.
        let server = Server { child, port, log };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // That connection is the server's first client: its lines go here.
                server.wait_for(CLOSED, std::time::Duration::from_secs(30));
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the RPC server did not start on port {port}");
    }

    /// Log lines up to one that contains `what`, within `timeout`; false if none came.
    fn wait_for(&self, what: &str, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(what) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits for a client connection that stays open: the extractor connects
    /// briefly to check that the server answers and to ask for its devices,
    /// then opens the session that takes the model's offloaded layers.
    fn wait_for_session(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !self.wait_for(ACCEPTED, left) {
                break;
            }
            if !self.wait_for(CLOSED, std::time::Duration::from_millis(200)) {
                return;
            }
        }
        panic!("the extractor never opened a session with the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_rpc_server_that_is_not_there_or_dies_mid_run_ends_the_run_cleanly() {
    let (model, manifest) = (model(), manifests().join("gpt2.yaml"));
    let closed = free_port();
    let err = refused(&[
        "-m",
        model.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--rpc",
        &format!("127.0.0.1:{closed}"),
        "--n-gpu-layers",
        "99",
    ]);
    assert!(
        err.contains(&format!(
            "the RPC server 127.0.0.1:{closed} cannot be reached"
        )),
        "{err}"
    );

    // Killed once the client is in (the 500 MB model then goes to it): exit
    // code 1, the server named, nothing left in the output directory.
    let mut server = Server::start();
    let endpoint = format!("127.0.0.1:{}", server.port);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_llorch-checkpoint-extractor"))
        .args([
            "-t",
            "2",
            "-m",
            model.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ])
        .args([
            "--rpc",
            &endpoint,
            "--n-gpu-layers",
            "99",
            "--out",
            dir.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    server.wait_for_session();
    server.child.kill().unwrap();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the RPC server {endpoint} stopped answering"))
            && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert!(!dir.exists(), "left behind: {:?}", files_in(&dir));
}
