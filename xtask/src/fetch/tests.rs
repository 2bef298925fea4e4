//! Fetching as a specification: checksums, tampering, staging, restore.

use super::*;

/// A project root with vendor/pin.yaml and vendor/patches, in a temp dir.
fn project_with(pin: &str, patches: &[(&str, &str)]) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("vendor/patches")).unwrap();
    fs::write(dir.path().join("vendor/pin.yaml"), pin).unwrap();
    for (name, text) in patches {
        fs::write(dir.path().join("vendor/patches").join(name), text).unwrap();
    }
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

const GOOD_PATCH: &str = "--- a/src/graph.cpp\n+++ b/src/graph.cpp\n@@ -1,3 +1,4 @@\n int a = 1;\n+int named = 1;\n int b = 2;\n int c = 3;\n";
const BAD_PATCH: &str = "--- a/src/graph.cpp\n+++ b/src/graph.cpp\n@@ -1,3 +1,4 @@\n int x = 1;\n+int named = 1;\n int y = 2;\n int z = 3;\n";

#[test]
fn unpacks_only_the_subtree_applies_patches_and_is_idempotent() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, sha) = fake_crate(fixtures.path());
    let (_dir, project) = project_with(&crate_pin(&sha), &[("0001-name.patch", GOOD_PATCH)]);
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());

    let tree = ensure_tree_with(&project, Flavour::Patched, false, &download).unwrap();
    assert!(
        !tree.join("Cargo.toml").exists(),
        "only the llama.cpp subtree is unpacked"
    );
    let graph = fs::read_to_string(tree.join("src/graph.cpp")).unwrap();
    assert_eq!(
        graph,
        "int a = 1;\nint named = 1;\nint b = 2;\nint c = 3;\n"
    );

    // Second run: nothing to do, so it must not even ask for the download.
    let no_download =
        |_: &Project, _: &CrateSource| -> Result<PathBuf> { panic!("downloaded again") };
    ensure_tree_with(&project, Flavour::Patched, false, &no_download).unwrap();

    // The unpatched flavour is a separate, pristine tree.
    let pristine = ensure_tree_with(&project, Flavour::Unpatched, false, &download).unwrap();
    assert_eq!(
        fs::read_to_string(pristine.join("src/graph.cpp")).unwrap(),
        "int a = 1;\nint b = 2;\nint c = 3;\n"
    );
}

#[test]
fn a_checksum_other_than_the_pin_is_refused_and_nothing_is_unpacked() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, _) = fake_crate(fixtures.path());
    let wrong = "0".repeat(64);
    let (_dir, project) = project_with(&crate_pin(&wrong), &[]);
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());

    let err = ensure_tree_with(&project, Flavour::Patched, false, &download).unwrap_err();
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
    assert_eq!(
        vendor,
        ["patches", "pin.yaml"],
        "nothing unpacked, no staging left"
    );
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
    let (_dir, project) = project_with(&pin, &[]);
    let err = ensure_tree(&project, Flavour::Patched, false).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("checksum mismatch") && msg.contains(&src.sha256),
        "{msg}"
    );
    assert!(!project.tree(Flavour::Patched).exists());
}

#[test]
fn a_hand_edit_is_detected_with_the_restore_command() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, sha) = fake_crate(fixtures.path());
    let (_dir, project) = project_with(&crate_pin(&sha), &[]);
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());
    let tree = ensure_tree_with(&project, Flavour::Patched, false, &download).unwrap();

    fs::write(tree.join("include/llama.h"), "void llama(int);\n").unwrap();
    fs::write(tree.join("src/extra.c"), "").unwrap();
    let err = ensure_tree_with(&project, Flavour::Patched, false, &download).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("modified: include/llama.h"), "{msg}");
    assert!(msg.contains("added:    src/extra.c"), "{msg}");
    assert!(msg.contains("cargo xtask fetch --force"), "{msg}");

    // The restore command restores it.
    ensure_tree_with(&project, Flavour::Patched, true, &download).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join("include/llama.h")).unwrap(),
        "void llama(void);\n"
    );
    assert!(!tree.join("src/extra.c").exists());
    ensure_tree_with(&project, Flavour::Patched, false, &download).unwrap();
}

#[test]
fn a_patch_that_does_not_apply_names_itself_and_leaves_no_tree() {
    let fixtures = tempfile::tempdir().unwrap();
    let (crate_file, sha) = fake_crate(fixtures.path());
    let (_dir, project) = project_with(
        &crate_pin(&sha),
        &[
            ("0001-good.patch", GOOD_PATCH),
            ("0002-stale.patch", BAD_PATCH),
        ],
    );
    let download = |_: &Project, _: &CrateSource| Ok(crate_file.clone());
    let err = ensure_tree_with(&project, Flavour::Patched, false, &download).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("patch 0002-stale.patch does not apply"),
        "{msg}"
    );
    assert!(!project.tree(Flavour::Patched).exists());
    assert!(!project.root().join("vendor/.staging-llama.cpp").exists());
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
    let (_dir, project) = project_with(&pin, &[("0001-name.patch", GOOD_PATCH)]);
    let never = |_: &Project, _: &CrateSource| -> Result<PathBuf> { unreachable!() };
    let tree = ensure_tree_with(&project, Flavour::Patched, false, &never).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join("src/graph.cpp")).unwrap(),
        "int a = 1;\nint named = 1;\nint b = 2;\nint c = 3;\n"
    );
    assert!(
        !tree.join(".git").exists(),
        "the tree is a plain source tree"
    );

    // A commit the repository does not have is an error that names it.
    let missing = "1234567890".repeat(4);
    let pin = format!("source:\n  git:\n    url: {url}\n    commit: '{missing}'\n");
    let (_dir2, project2) = project_with(&pin, &[]);
    let err = ensure_tree_with(&project2, Flavour::Patched, false, &never).unwrap_err();
    assert!(format!("{err:#}").contains(&missing), "{err:#}");
    assert!(!project2.tree(Flavour::Patched).exists());
}
