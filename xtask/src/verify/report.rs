//! What verify prints and counts: a `PASS`, `FAIL` or `SKIPPED` line per
//! check (only checks that can fail are counted as passed), `INFO` lines for
//! figures that are reported but judged by nothing, and `report.json`.

use std::path::Path;
use std::time::Instant;

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
}

impl Report {
    pub fn section(&mut self, name: &str) {
        self.section = name.to_string();
        println!("\n== {name}");
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
            _ => self.failed += 1,
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

    /// `report.json`, the tally, and each failure's first line again.
    pub fn finish(&self, path: &Path, header: serde_json::Value, started: Instant) -> Result<()> {
        let mut summary = header;
        summary["seconds"] = started.elapsed().as_secs_f64().into();
        summary["passed"] = self.passed.into();
        summary["failed"] = self.failed.into();
        summary["skipped"] = self.skipped.into();
        summary["checks"] = self.lines.clone().into();
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
        println!(
            "\nreport: {} ({:.0} s in all)",
            path.display(),
            started.elapsed().as_secs_f64()
        );
        println!(
            "{} passed, {} failed, {} skipped",
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
}
