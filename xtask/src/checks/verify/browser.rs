//! `report.html` in a real browser: Debian's Chromium, headless, loads the
//! page from disk with the network off and gives back the DOM it built. The
//! page must have its sections, tables and pictures, no script error, no
//! image to break, and every link must land on an element of the page; and
//! in every picture, as Chromium lays it out, no two texts may overlap and
//! none may leave its picture ([`boxes`]).

mod boxes;

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// Chromium on PATH (Debian: `apt-get install chromium`; .ci/run installs it).
pub fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
        .context(
            "no Chromium to open report.html with: install it (Debian: apt-get install chromium)",
        )
}

/// The DOM Chromium built from `page`, and what it logged. Each load has a
/// fresh profile, in `work`.
fn load(page: &Path, work: &Path) -> Result<(String, String)> {
    let profile = tempfile::Builder::new()
        .prefix("chromium-profile-")
        .tempdir_in(work)
        .with_context(|| format!("cannot make a Chromium profile in {}", work.display()))?;
    let profile = profile.path();
    let (mut dom, mut log) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = Command::new(chromium()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        // Into files, not pipes: nothing reads a pipe while Chromium runs,
        // and a DOM past the pipe's 64 KiB would block it until the deadline.
        .stdout(dom.try_clone()?)
        .stderr(log.try_clone()?)
        .spawn()
        .context("cannot start Chromium")?;
    // A page that never settles must not hang verify.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "Chromium did not finish loading {} in 120 s",
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait()?;
    ensure!(status.success(), "Chromium failed on {}", page.display());
    let read = |f: &mut std::fs::File| -> Result<String> {
        let mut bytes = Vec::new();
        f.seek(std::io::SeekFrom::Start(0))?;
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    Ok((read(&mut dom)?, read(&mut log)?))
}

/// Opens `page` and checks what a reader would see.
pub fn report_renders(page: &Path, work: &Path) -> Result<String> {
    // Chromium would wait on a missing file's error page until the deadline.
    ensure!(
        page.is_file(),
        "there is no {} to open: the compare above did not write it",
        page.display()
    );
    let (dom, log) = load(page, work)?;
    ensure!(
        !dom.is_empty(),
        "Chromium gave back no DOM for {}",
        page.display()
    );
    for section in ["summary", "picture", "details"] {
        ensure!(
            dom.contains(&format!("id=\"{section}\"")),
            "the page has no #{section} section"
        );
    }
    let (tables, pictures) = (dom.matches("<table").count(), dom.matches("<svg").count());
    ensure!(tables >= 1 && pictures >= 3, "{tables} table(s) and {pictures} picture(s): expected the summary, the per-layer picture and a heatmap and histogram");
    ensure!(
        !dom.contains("<img"),
        "the page has an <img>, which could break: pictures are inline SVG"
    );
    ensure!(
        !log.contains("Uncaught") && !dom.contains("<script"),
        "a script ran or failed:\n{log}"
    );
    let links: Vec<&str> = dom
        .split("href=\"#")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let broken: Vec<&&str> = links
        .iter()
        .filter(|id| !dom.contains(&format!("id=\"{id}\"")))
        .collect();
    ensure!(broken.is_empty(), "links to nothing: {broken:?}");
    let (texts, measured) = texts_fit(page, work)?;
    Ok(format!(
        "{}: {tables} tables, {pictures} inline pictures, {} links all landing, no script error; \
         {texts} text boxes measured in {measured} pictures, none overlapping another, none outside its picture",
        page.display(),
        links.len()
    ))
}

/// Measures every picture's texts in a copy of `page` with a script added
/// (the harness, in `work`); fails where two overlap or one leaves its
/// picture. Returns how many texts it measured, in how many pictures.
fn texts_fit(page: &Path, work: &Path) -> Result<(usize, usize)> {
    let html =
        std::fs::read_to_string(page).with_context(|| format!("cannot read {}", page.display()))?;
    let harness = work.join("report-text-boxes.html");
    std::fs::write(&harness, boxes::harness(&html)?)
        .with_context(|| format!("cannot write {}", harness.display()))?;
    let (dom, log) = load(&harness, work)?;
    ensure!(
        !log.contains("Uncaught"),
        "the script measuring the pictures' texts failed in {}:\n{log}",
        harness.display()
    );
    let pictures =
        boxes::parse(&dom).with_context(|| format!("measuring texts in {}", harness.display()))?;
    let svgs = html.matches("<svg").count();
    ensure!(
        pictures.len() == svgs,
        "{} measured {} pictures of the {svgs} in the page",
        harness.display(),
        pictures.len()
    );
    let findings = boxes::findings(&pictures);
    ensure!(
        findings.is_empty(),
        "texts that cannot be read in the pictures of {} (measured in {}):\n{}",
        page.display(),
        harness.display(),
        findings.join("\n")
    );
    let texts = pictures.iter().map(|p| p.texts.len()).sum();
    Ok((texts, pictures.len()))
}
