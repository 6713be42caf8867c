//! Log set-up: tracing to stderr, level from the config, `RUST_LOG` overriding it. On a
//! terminal, tracing's usual format; under systemd, with stderr connected to the journal,
//! plain lines with the sd-daemon priority prefix (`<3>` error, `<4>` warning, `<6>` info,
//! `<7>` debug and trace), no colour and no timestamp (the journal keeps its own), so
//! `journalctl -p err` finds the errors; the fields stay on the line as `key=value`.

use std::fmt::Write as _;

use tracing::{Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter in force: `RUST_LOG` if set and valid, else the config's level, else `info`.
///
/// An invalid `RUST_LOG` is ignored rather than fatal: it comes from whoever started the
/// process, and the config level has already been checked.
pub fn filter(level_from_config: &str, rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level_from_config).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// tracing's own format, with colour when `ansi` (stderr is a terminal).
    Terminal { ansi: bool },
    /// stderr is the journal: one priority-prefixed plain line per line of text.
    Journal,
}

/// The style for stderr. systemd sets `JOURNAL_STREAM` to `DEVICE:INODE` of the stream it
/// connected stderr to; a child whose stderr was redirected elsewhere inherits the
/// variable, hence the comparison with stderr's own `(device, inode)`. Pure.
pub fn style_for(
    journal_stream: Option<&str>,
    stderr_id: Option<(u64, u64)>,
    stderr_is_terminal: bool,
) -> Style {
    let connected = journal_stream
        .and_then(|v| {
            let (dev, ino) = v.trim().split_once(':')?;
            Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
        })
        .is_some_and(|id| Some(id) == stderr_id);
    if connected {
        Style::Journal
    } else {
        Style::Terminal {
            ansi: stderr_is_terminal,
        }
    }
}

/// [`style_for`] this process's stderr.
pub fn stderr_style() -> Style {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    let id = nix::sys::stat::fstat(stderr.as_fd())
        .ok()
        .map(|st| (st.st_dev, st.st_ino));
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    style_for(journal_stream.as_deref(), id, stderr.is_terminal())
}

/// The sd-daemon(3) priority of a level: `<3>` err, `<4>` warning, `<6>` info, `<7>` debug.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `text` as journal lines at `priority`: every line prefixed, since the journal reads
/// each line of the stream as a record of its own.
pub fn journal_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.trim_end_matches('\n').split('\n') {
        let _ = writeln!(out, "<{priority}>{}", line.trim_end_matches('\r'));
    }
    out
}

/// tracing's full format without time, level or colour, each line behind the event's
/// priority prefix.
struct JournalFormat {
    inner: Format<Full, ()>,
}

impl JournalFormat {
    fn new() -> Self {
        JournalFormat {
            inner: format::format()
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut text = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut text), event)?;
        writer.write_str(&journal_lines(priority(event.metadata().level()), &text))
    }
}

/// The agent's subscriber in `style`, writing to `writer`.
pub fn subscriber<W>(
    filter: EnvFilter,
    style: Style,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match style {
        Style::Journal => Box::new(
            builder
                .with_ansi(false)
                .event_format(JournalFormat::new())
                .finish(),
        ),
        Style::Terminal { ansi } => Box::new(builder.with_ansi(ansi).finish()),
    }
}

/// Installs the global subscriber, writing to stderr (and `log` records of the libraries
/// through it). Only the first call installs anything and returns true; later calls
/// (tests, a second command in one process) change nothing.
pub fn init(level_from_config: &str) -> bool {
    let rust_log = std::env::var("RUST_LOG").ok();
    subscriber(
        filter(level_from_config, rust_log.as_deref()),
        stderr_style(),
        std::io::stderr,
    )
    .try_init()
    .is_ok()
}

/// Prints an error that ends the program to stderr: at priority err when stderr is the
/// journal (so `journalctl -p err` finds why the service stopped), as it is otherwise.
pub fn fatal(message: &str) {
    match stderr_style() {
        Style::Journal => eprint!("{}", journal_lines(3, message)),
        Style::Terminal { .. } => eprintln!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn rust_log_overrides_the_config() {
        assert_eq!(
            filter("info", Some("tether=trace")).to_string(),
            "tether=trace"
        );
        assert_eq!(filter("debug", None).to_string(), "debug");
        assert_eq!(filter("debug", Some("")).to_string(), "debug");
        assert_eq!(filter("debug", Some("=[bad")).to_string(), "debug");
        assert_eq!(filter("=[bad", None).to_string(), "info");
    }

    #[test]
    fn the_journal_only_when_stderr_is_the_stream_systemd_connected() {
        let id = Some((64769, 123456));
        assert_eq!(style_for(Some("64769:123456"), id, false), Style::Journal);
        assert_eq!(style_for(Some("64769:123456\n"), id, true), Style::Journal);
        // Inherited by a child whose stderr goes elsewhere.
        for other in ["64769:123457", "1:123456", "64769", "x:y", ""] {
            assert_eq!(
                style_for(Some(other), id, false),
                Style::Terminal { ansi: false },
                "{other}"
            );
        }
        assert_eq!(style_for(None, id, true), Style::Terminal { ansi: true });
        assert_eq!(
            style_for(Some("64769:123456"), None, false),
            Style::Terminal { ansi: false }
        );
    }

    #[test]
    fn priorities_and_line_prefixes() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
        assert_eq!(journal_lines(3, "one\ntwo\n"), "<3>one\n<3>two\n");
        assert_eq!(journal_lines(6, "crlf\r\n"), "<6>crlf\n");
    }

    /// What a subscriber wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    /// Logs one event of each level (plus a two-line one) through `style` at `level`.
    fn logged(style: Style, level: &str) -> String {
        let out = Captured::default();
        let sub = subscriber(filter(level, None), style, out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::error!(error = "refused", "cannot reach the hub");
            tracing::warn!(retry_in = ?std::time::Duration::from_millis(1500), "link down");
            tracing::info!(addr = %"127.0.0.1:8080", auth = false, "status page");
            tracing::debug!(n = 3, "a detail");
            tracing::trace!("a finer detail");
            tracing::info!("first line\nsecond line");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn journal_lines_carry_priority_and_fields_and_nothing_else() {
        let text = logged(Style::Journal, "debug");
        assert_eq!(
            text,
            "<3>cannot reach the hub error=\"refused\"\n\
             <4>link down retry_in=1.5s\n\
             <6>status page addr=127.0.0.1:8080 auth=false\n\
             <7>a detail n=3\n\
             <6>first line\n\
             <6>second line\n"
        );
    }

    #[test]
    fn terminal_lines_keep_the_usual_format_and_the_filter() {
        let text = logged(Style::Terminal { ansi: false }, "info");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].ends_with(" ERROR cannot reach the hub error=\"refused\""),
            "{text}"
        );
        assert!(
            lines[1].ends_with(" WARN link down retry_in=1.5s"),
            "{text}"
        );
        assert!(
            lines[2].ends_with(" INFO status page addr=127.0.0.1:8080 auth=false"),
            "{text}"
        );
        assert!(!text.contains("a detail"), "debug is filtered out: {text}");
        assert!(!text.contains('\x1b'), "no colour off a terminal: {text}");
        // A timestamp leads each line (RFC 3339, UTC).
        assert!(
            lines[0].starts_with("20") && lines[0].contains('T'),
            "{text}"
        );
        let coloured = logged(Style::Terminal { ansi: true }, "info");
        assert!(coloured.contains('\x1b'), "{coloured}");
    }

    #[test]
    fn only_the_first_init_installs() {
        // Whichever test of this binary initialises first wins; a second call never
        // replaces the subscriber, and logging still works after it.
        let first = init("info");
        assert!(!init("debug"));
        if first {
            assert!(tracing::dispatcher::has_been_set());
        }
        tracing::info!("logging works after a second init");
    }
}
