//! What verify prints and counts: a `PASS`, `FAIL` or `SKIPPED` line per
//! check (only checks that can fail are counted as passed), `INFO` lines for
//! figures that are reported but judged by nothing, each section's time and
//! the disk it took, and `report.json`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

/// What a check found when it did not fail.
pub enum Checked {
    /// It ran and held; its figures.
    Pass(String),
    /// It could not run here; why, and what would let it.
    Skipped(String),
}

#[derive(Default)]
pub struct Report {
    passed: usize,
    failed: usize,
    skipped: usize,
    lines: Vec<serde_json::Value>,
    section: String,
    /// Failures in the current section.
    section_failed: usize,
    /// When the current section began, and the disk free then (MB).
    section_start: Option<(Instant, u64)>,
    /// The least free disk (MB) seen since the report began, sampled.
    least_free: Option<Arc<AtomicU64>>,
    /// The free disk (MB) when the report began.
    free_at_start: u64,
    /// Per section: name, seconds, disk taken (GB).
    sections: Vec<serde_json::Value>,
}

/// Free disk under the project in MB (0 where `df` does not answer).
fn free_mb() -> u64 {
    crate::host::free_gb(Path::new(".")).map_or(0, |gb| (gb * 1024.0) as u64)
}

impl Report {
    /// A report whose disk figures come from a sampler (every 2 s) of the
    /// free disk: a section's peak is not always at its end.
    pub fn sampling_disk() -> Report {
        let free = free_mb();
        let least = Arc::new(AtomicU64::new(free));
        let sampled = Arc::clone(&least);
        std::thread::spawn(move || loop {
            sampled.fetch_min(free_mb(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(2));
        });
        Report {
            least_free: Some(least),
            free_at_start: free,
            ..Report::default()
        }
    }

    /// The disk taken (GB) at its peak so far, against the start.
    fn peak_taken_gb(&self) -> f64 {
        let least = self.least_free.as_ref().map_or(self.free_at_start, |l| {
            l.load(Ordering::Relaxed).min(free_mb())
        });
        self.free_at_start.saturating_sub(least) as f64 / 1024.0
    }

    /// A new section; its header says the disk left, what a failure elsewhere may hinge on.
    pub fn section(&mut self, name: &str) {
        self.end_section();
        self.section = name.to_string();
        self.section_failed = 0;
        let free = free_mb();
        self.section_start = Some((Instant::now(), free));
        println!("\n== {name} ({:.1} GB free)", free as f64 / 1024.0);
    }

    /// The section's time and the disk it took (what it left, against its start).
    fn end_section(&mut self) {
        let Some((started, free)) = self.section_start.take() else {
            return;
        };
        let (secs, taken) = (
            started.elapsed().as_secs_f64(),
            (free as f64 - free_mb() as f64) / 1024.0,
        );
        println!(
            "   {}: {secs:.0} s, {taken:+.1} GB of disk left behind",
            self.section
        );
        self.sections.push(serde_json::json!({
            "section": self.section, "seconds": secs, "disk_gb": taken,
        }));
    }

    /// Removes a directory of the current section's runs once every check
    /// in it held (a failure's files stay to be read): the disk a verify
    /// needs is its largest section's, not the sum of all.
    pub fn tidy(&self, dir: &Path) {
        if self.section_failed == 0 && dir.exists() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// A check that passes with its figures or fails with its error; true when it passed.
    pub fn check(&mut self, name: &str, started: Instant, result: Result<String>) -> bool {
        self.record(name, started, result.map(Checked::Pass))
    }

    /// A check that may also say it could not run here.
    pub fn record(&mut self, name: &str, started: Instant, result: Result<Checked>) -> bool {
        let (status, text) = match result {
            Ok(Checked::Pass(figures)) => ("PASS", figures),
            Ok(Checked::Skipped(why)) => ("SKIPPED", why),
            Err(err) => ("FAIL", format!("{err:#}")),
        };
        match status {
            "PASS" => self.passed += 1,
            "SKIPPED" => self.skipped += 1,
            _ => {
                self.failed += 1;
                self.section_failed += 1;
            }
        }
        self.line(status, name, started, &text);
        status == "PASS"
    }

    /// Figures nothing judges: printed as `INFO`, not counted; a measurement
    /// that could not be made is a failure.
    pub fn info(&mut self, name: &str, started: Instant, result: Result<String>) {
        match result {
            Ok(figures) => self.line("INFO", name, started, &figures),
            Err(err) => {
                self.failed += 1;
                self.section_failed += 1;
                self.line("FAIL", name, started, &format!("{err:#}"));
            }
        }
    }

    fn line(&mut self, status: &str, name: &str, started: Instant, text: &str) {
        let secs = started.elapsed().as_secs_f64();
        let text = text.replace('\n', "\n        ");
        println!("{status} {name} ({secs:.1} s): {text}");
        self.lines.push(serde_json::json!({
            "section": self.section, "check": name, "status": status, "seconds": secs, "detail": text,
        }));
    }

    pub fn failed(&self) -> usize {
        self.failed
    }

    /// `report.json`, the tally with the tier that ran, and each failure's first line again.
    pub fn finish(
        &mut self,
        path: &Path,
        header: serde_json::Value,
        started: Instant,
    ) -> Result<()> {
        self.end_section();
        let tier = header["tier"].as_str().unwrap_or("?").to_string();
        let peak = self.peak_taken_gb();
        let mut summary = header;
        summary["seconds"] = started.elapsed().as_secs_f64().into();
        summary["peak_disk_gb"] = peak.into();
        summary["sections"] = self.sections.clone().into();
        summary["passed"] = self.passed.into();
        summary["failed"] = self.failed.into();
        summary["skipped"] = self.skipped.into();
        summary["checks"] = self.lines.clone().into();
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
        println!(
            "\nreport: {} ({} tier, {:.0} s in all, {peak:.1} GB of disk taken at the peak)",
            path.display(),
            tier,
            started.elapsed().as_secs_f64()
        );
        println!(
            "{tier}: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
        for line in self
            .lines
            .iter()
            .filter(|l| l["status"] != "PASS" && l["status"] != "INFO")
        {
            println!(
                "  {} {} / {}: {}",
                line["status"].as_str().unwrap_or_default(),
                line["section"].as_str().unwrap_or_default(),
                line["check"].as_str().unwrap_or_default(),
                line["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checks_that_ran_and_held_count_as_passed() {
        let mut report = Report::default();
        let t = Instant::now();
        assert!(report.check("a", t, Ok("fine".into())));
        assert!(!report.record("b", t, Ok(Checked::Skipped("no mount here".into()))));
        report.info("c", t, Ok("12 MB/s".into()));
        report.info("d", t, Err(anyhow::anyhow!("the run failed")));
        assert!(!report.check("e", t, Err(anyhow::anyhow!("wrong"))));
        assert_eq!((report.passed, report.failed, report.skipped), (1, 2, 1));
        let statuses: Vec<_> = report
            .lines
            .iter()
            .map(|l| l["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["PASS", "SKIPPED", "INFO", "FAIL", "FAIL"]);
    }

    /// PyTorch that did not fit on the disk is a failure with its figures:
    /// a tier that compared nothing with a reference is not green.
    #[test]
    fn no_room_for_pytorch_fails_and_a_section_tidies_only_when_it_held() {
        let mut report = Report::default();
        report.section("compare");
        let t = Instant::now();
        let no_room = anyhow::Error::new(crate::models::python::NoRoom(
            "no room for PyTorch: 5.9 GB free".into(),
        ))
        .context("the PyTorch reference needs the project's Python environment");
        assert!(!report.check("reference", t, Err(no_room)));
        assert_eq!((report.passed, report.failed, report.skipped), (0, 1, 0));
        assert!(report.lines[0]["detail"]
            .as_str()
            .unwrap()
            .contains("5.9 GB free"));

        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        std::fs::create_dir(&runs).unwrap();
        report.section("compare again");
        report.tidy(&runs);
        assert!(!runs.exists(), "nothing failed: the runs go");
        std::fs::create_dir(&runs).unwrap();
        assert!(!report.check("e", t, Err(anyhow::anyhow!("No space left on device"))));
        report.tidy(&runs);
        assert!(runs.exists(), "a failure's runs stay to be read");
        report.section("next");
        report.tidy(&runs);
        assert!(!runs.exists(), "a new section starts with no failure");
    }
}
