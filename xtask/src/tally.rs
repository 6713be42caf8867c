//! The closing count of `cargo xtask test`: passed and failed from `cargo test`'s own
//! result lines, skipped from what could not run (tests' skip log, `#[ignore]`d tests,
//! checks this machine cannot do), each skip listed with its reason.

/// One line of a report: what did not run and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub why: String,
}

/// Counts summed over every test binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub skipped: Vec<Skipped>,
}

impl Tally {
    /// Adds one line of `cargo test` output, if it is a binary's result line
    /// (`test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; ...`).
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let Some((_, counts)) = rest.split_once(". ") else {
            return;
        };
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    pub fn skip(&mut self, name: impl Into<String>, why: impl Into<String>) {
        self.skipped.push(Skipped {
            name: name.into(),
            why: why.into(),
        });
    }

    /// Skipped cases, `#[ignore]`d tests included.
    pub fn skipped_count(&self) -> u64 {
        self.skipped.len() as u64 + self.ignored
    }

    /// The report's last lines: the skips with their reasons, then the closing count.
    pub fn report(&self) -> String {
        let mut out = String::new();
        if self.skipped_count() > 0 {
            out.push_str(&format!("xtask: {} skipped:\n", self.skipped_count()));
            for s in &self.skipped {
                out.push_str(&format!("  {}: {}\n", s.name, s.why));
            }
            if self.ignored > 0 {
                out.push_str(&format!(
                    "  {} test(s) marked #[ignore] (long or run by another test)\n",
                    self.ignored
                ));
            }
        }
        out.push_str(&format!(
            "xtask: {} passed, {} failed, {} skipped\n",
            self.passed,
            self.failed,
            self.skipped_count()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_result_lines_and_lists_skips() {
        let mut t = Tally::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; finished in 9.50s",
            "   Doc-tests tether",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.add_line(line);
        }
        assert_eq!((t.passed, t.failed, t.ignored), (15, 2, 1));
        t.skip("bad_input::DataDirFull", "mounting a tmpfs needs root");
        let report = t.report();
        assert!(
            report.ends_with("xtask: 15 passed, 2 failed, 2 skipped\n"),
            "{report}"
        );
        assert!(
            report.contains("  bad_input::DataDirFull: mounting a tmpfs needs root\n"),
            "{report}"
        );
        assert_eq!(
            Tally::default().report(),
            "xtask: 0 passed, 0 failed, 0 skipped\n"
        );
    }
}
