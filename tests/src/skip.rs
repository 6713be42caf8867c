//! Tests that cannot run here say so where the summary shows it: a skipped case is
//! printed and, under `cargo xtask test`, appended to the file that `TETHER_SKIP_LOG`
//! names, which xtask reads after `cargo test` and reports as "N skipped" with the names
//! and reasons. A skip is never a pass.

use std::io::Write;

/// The variable naming the file skipped cases are appended to (one `name<TAB>why` line).
pub const SKIP_LOG: &str = "TETHER_SKIP_LOG";

/// Records that the case `name` did not run, and why.
pub fn skip(name: &str, why: &str) {
    eprintln!("{name}: skipped ({why})");
    let Some(path) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    let line = format!("{}\t{}\n", one_line(name), one_line(why));
    // One write of a short line in append mode: concurrent tests do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "{name} is skipped but the skip cannot be recorded in {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

/// The skipped cases in a skip log: (name, why).
pub fn read_log(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('\t') {
            Some((name, why)) => (name.to_owned(), why.to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_read_back() {
        assert_eq!(
            read_log("a\tneeds root\n\nb\tno\ttabs kept\n"),
            [
                ("a".to_owned(), "needs root".to_owned()),
                ("b".to_owned(), "no\ttabs kept".to_owned())
            ]
        );
        assert_eq!(one_line("x\ny\tz"), "x y z");
    }
}
