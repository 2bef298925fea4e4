//! Fetching as a specification: checksums, tampering, staging, restore.

use super::*;

/// A project root with vendor/pin.yaml, in a temp dir.
fn project_with(pin: &str) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("vendor")).unwrap();
    fs::write(dir.path().join("vendor/pin.yaml"), pin).unwrap();
    let project = Project::at(dir.path());
    (dir, project)
}

/// A `.crate`-shaped archive: `fake-1.0/llama.cpp/...` plus a file outside the subtree.
fn fake_crate(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("fake-1.0.crate");
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    ));
    for (name, body) in [
        ("fake-1.0/Cargo.toml", "[package]\n"),
        (
            "fake-1.0/llama.cpp/src/graph.cpp",
            "int a = 1;\nint b = 2;\nint c = 3;\n",
        ),
        ("fake-1.0/llama.cpp/include/llama.h", "void llama(void);\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, body.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    let sha = hex::encode(Sha256::digest(fs::read(&path).unwrap()));
    (path, sha)
}

fn crate_pin(sha: &str) -> String {
    format!("source:\n  crate:\n    name: fake\n    version: '1.0'\n    sha256: {sha}\n    subdir: llama.cpp\n")
}

#[test]
fn unpacks_only_the_subtree_as_released_and_is_idempotent() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, sha) = fake_crate(fixtures.path());
    let (_dir, project) = project_with(&crate_pin(&sha));
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());

    let tree = ensure_tree_with(&project, false, &download).unwrap();
    assert!(
        !tree.join("Cargo.toml").exists(),
        "only the llama.cpp subtree is unpacked"
    );
    let graph = fs::read_to_string(tree.join("src/graph.cpp")).unwrap();
    assert_eq!(graph, "int a = 1;\nint b = 2;\nint c = 3;\n");
    // Newer than any build of an earlier tree (the archive says 1970).
    let age = fs::metadata(tree.join("src/graph.cpp"))
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default();
    assert!(age.as_secs() < 3600, "mtime {age:?} ago");

    // Second run: nothing to do, so it must not even ask for the download.
    let no_download =
        |_: &Project, _: &CrateSource| -> Result<PathBuf> { panic!("downloaded again") };
    ensure_tree_with(&project, false, &no_download).unwrap();
}

#[test]
fn a_tree_an_earlier_version_patched_is_replaced() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, sha) = fake_crate(fixtures.path());
    let (_dir, project) = project_with(&crate_pin(&sha));
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());
    let tree = ensure_tree_with(&project, false, &download).unwrap();
    // What earlier versions wrote: the digest of the patch series they applied.
    let stamp_path = project.tree_stamp();
    let mut stamp: serde_json::Value =
        serde_json::from_slice(&fs::read(&stamp_path).unwrap()).unwrap();
    stamp["patches"] = "0123abcd".into();
    fs::write(&stamp_path, serde_json::to_vec(&stamp).unwrap()).unwrap();

    let downloads = std::cell::Cell::new(0);
    let counted = |p: &Project, s: &CrateSource| {
        downloads.set(downloads.get() + 1);
        download(p, s)
    };
    ensure_tree_with(&project, false, &counted).unwrap();
    assert_eq!(downloads.get(), 1, "the patched tree is fetched again");
    let stamp = fs::read_to_string(&stamp_path).unwrap();
    assert!(!stamp.contains("patches"), "{stamp}");
    assert!(tree.join("src/graph.cpp").is_file());
}

#[test]
fn a_checksum_other_than_the_pin_is_refused_and_nothing_is_unpacked() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, _) = fake_crate(fixtures.path());
    let wrong = "0".repeat(64);
    let (_dir, project) = project_with(&crate_pin(&wrong));
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());

    let err = ensure_tree_with(&project, false, &download).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("checksum mismatch") && msg.contains(&wrong),
        "{msg}"
    );
    let mut vendor: Vec<_> = fs::read_dir(project.root().join("vendor"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    vendor.sort();
    assert_eq!(vendor, ["pin.yaml"], "nothing unpacked, no staging left");
}

#[test]
fn the_real_crate_with_a_wrong_pinned_sha256_is_refused() {
    let real = Pin::load(&Project::from_env().unwrap().pin_file()).unwrap();
    let SourceRef::Crate(src) = real.source().unwrap() else {
        panic!("the committed pin is a crate")
    };
    let wrong = "f".repeat(64);
    let pin = format!(
        "source:\n  crate:\n    name: {}\n    version: '{}'\n    sha256: {wrong}\n    subdir: {}\n",
        src.name, src.version, src.subdir
    );
    let (_dir, project) = project_with(&pin);
    let err = ensure_tree(&project, false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("checksum mismatch") && msg.contains(&src.sha256),
        "{msg}"
    );
    assert!(!project.tree().exists());
}

#[test]
fn a_hand_edit_is_detected_with_the_restore_command() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, sha) = fake_crate(fixtures.path());
    let (_dir, project) = project_with(&crate_pin(&sha));
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());
    let tree = ensure_tree_with(&project, false, &download).unwrap();

    fs::write(tree.join("include/llama.h"), "void llama(int);\n").unwrap();
    fs::write(tree.join("src/extra.c"), "").unwrap();
    let err = ensure_tree_with(&project, false, &download).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("modified: include/llama.h"), "{msg}");
    assert!(msg.contains("added:    src/extra.c"), "{msg}");
    assert!(msg.contains("cargo xtask fetch --force"), "{msg}");

    // The restore command restores it.
    ensure_tree_with(&project, true, &download).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join("include/llama.h")).unwrap(),
        "void llama(void);\n"
    );
    assert!(!tree.join("src/extra.c").exists());
    ensure_tree_with(&project, false, &download).unwrap();
}

#[test]
fn the_git_source_checks_out_the_pinned_commit_of_a_local_repository() {
    let upstream = tempfile::tempdir().unwrap();
    let sh = xshell::Shell::new().unwrap();
    sh.change_dir(upstream.path());
    let _env = [
        sh.push_env("GIT_AUTHOR_NAME", "t"),
        sh.push_env("GIT_AUTHOR_EMAIL", "t@t"),
        sh.push_env("GIT_COMMITTER_NAME", "t"),
        sh.push_env("GIT_COMMITTER_EMAIL", "t@t"),
    ];
    cmd!(sh, "git init --quiet .").run().unwrap();
    fs::create_dir_all(upstream.path().join("src")).unwrap();
    fs::write(
        upstream.path().join("src/graph.cpp"),
        "int a = 1;\nint b = 2;\nint c = 3;\n",
    )
    .unwrap();
    cmd!(sh, "git add .").run().unwrap();
    cmd!(sh, "git commit --quiet -m pinned").run().unwrap();
    let pinned = cmd!(sh, "git rev-parse HEAD").read().unwrap();
    fs::write(upstream.path().join("src/graph.cpp"), "int later = 1;\n").unwrap();
    cmd!(sh, "git commit --quiet -am later").run().unwrap();

    let url = upstream.path().display().to_string();
    let pin = format!("source:\n  git:\n    url: {url}\n    commit: {pinned}\n");
    let (_dir, project) = project_with(&pin);
    let never = |_: &Project, _: &CrateSource| -> Result<PathBuf> { unreachable!() };
    let tree = ensure_tree_with(&project, false, &never).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join("src/graph.cpp")).unwrap(),
        "int a = 1;\nint b = 2;\nint c = 3;\n"
    );
    assert!(
        !tree.join(".git").exists(),
        "the tree is a plain source tree"
    );

    // A commit the repository does not have is an error that names it.
    let missing = "1234567890".repeat(4);
    let pin = format!("source:\n  git:\n    url: {url}\n    commit: '{missing}'\n");
    let (_dir2, project2) = project_with(&pin);
    let err = ensure_tree_with(&project2, false, &never).unwrap_err();
    assert!(format!("{err:#}").contains(&missing), "{err:#}");
    assert!(!project2.tree().exists());
}
