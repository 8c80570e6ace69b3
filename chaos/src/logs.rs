//! The logs of a local cluster's processes, on the launcher's stderr one line at a time,
//! each prefixed with the process's name (`node 2 | …`). A dev cluster holds them back while
//! it starts, so that its addresses come first, and then shows only the warnings among
//! them; a chaos run prints them above its progress bar.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;

/// Where the processes' lines go; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    inner: Arc<Mutex<Sink>>,
}

#[derive(Debug, Default)]
struct Sink {
    /// Lines kept back until [`Logs::release`].
    held: Option<Vec<String>>,
    /// A progress bar to print above.
    bar: Option<ProgressBar>,
    /// The cluster is being stopped: Raft's complaints about peers gone are expected.
    stopping: bool,
}

impl Logs {
    /// Lines printed as they come.
    pub fn direct() -> Logs {
        Logs::default()
    }

    /// Lines kept back until [`Logs::release`].
    pub fn held() -> Logs {
        let logs = Logs::default();
        if let Ok(mut sink) = logs.inner.lock() {
            sink.held = Some(Vec::new());
        }
        logs
    }

    /// Prints lines above `bar` from now on (none: plainly again).
    pub fn print_above(&self, bar: Option<ProgressBar>) {
        if let Ok(mut sink) = self.inner.lock() {
            sink.bar = bar;
        }
    }

    /// Prints what comes from now on and, of the lines kept back, those `keep` accepts.
    fn release_where(&self, keep: impl Fn(&str) -> bool) {
        let Ok(mut sink) = self.inner.lock() else { return };
        for line in sink.held.take().unwrap_or_default() {
            if keep(&line) {
                sink.print(&line);
            }
        }
    }

    /// Prints what comes from now on; of the lines kept back, only warnings and errors (the
    /// start-up is summed up by what the launcher prints).
    pub fn release(&self) {
        self.release_where(is_warning);
    }

    /// Prints everything, kept back or to come: the start-up failed.
    pub fn release_all(&self) {
        self.release_where(|_| true);
    }

    /// The cluster is being stopped: from now on Raft's lines (elections among peers that
    /// already left) are dropped.
    pub fn stopping(&self) {
        if let Ok(mut sink) = self.inner.lock() {
            sink.stopping = true;
        }
    }

    /// Forwards `pipe`'s lines, named `name`, from a thread of its own until it closes.
    pub fn forward(&self, name: &str, pipe: impl Read + Send + 'static) {
        let (logs, name) = (self.clone(), name.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                logs.line(&name, &line);
            }
        });
    }

    fn line(&self, name: &str, line: &str) {
        let line = format!("{name:<6} | {}", tidy(line));
        let Ok(mut sink) = self.inner.lock() else { return };
        if sink.stopping && line.contains(" openraft::") {
            return;
        }
        match &mut sink.held {
            Some(held) => held.push(line),
            None => sink.print(&line),
        }
    }
}

impl Sink {
    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

/// A tracing line with the date and the sub-millisecond digits cut off its timestamp:
/// `08:02:06.358  INFO …` (faults recover in hundreds of milliseconds: the logs must show
/// them).
fn tidy(line: &str) -> Cow<'_, str> {
    let b = line.as_bytes();
    let stamped = b.len() > 27 && b[4] == b'-' && b[10] == b'T' && b[26] == b'Z';
    match (line.get(11..23), line.get(27..)) {
        (Some(time), Some(rest)) if stamped => Cow::Owned(format!("{time}{rest}")),
        _ => Cow::Borrowed(line),
    }
}

/// Whether a (prefixed) line is a tracing event at WARN or ERROR.
fn is_warning(line: &str) -> bool {
    let text = line.split_once(" | ").map_or(line, |(_, text)| text);
    let mut words = text.split_whitespace();
    let stamped = words
        .next()
        .is_some_and(|w| w.starts_with(|c: char| c.is_ascii_digit()));
    stamped && matches!(words.next(), Some("WARN" | "ERROR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_their_date_and_warnings_are_known() {
        let info = "2026-12-03T08:02:05.358877Z  INFO troupe_node: troupe-node starting node=1";
        assert_eq!(
            tidy(info),
            "08:02:05.358  INFO troupe_node: troupe-node starting node=1"
        );
        assert_eq!(tidy("troupe-router: WARNING: x"), "troupe-router: WARNING: x");
        assert!(!is_warning(&format!("node 1 | {}", tidy(info))));
        assert!(is_warning("node 1 | 08:02:05.358  WARN troupe_node: slow"));
        assert!(is_warning("node 1 | 08:02:05.358 ERROR troupe_node: broken"));
        assert!(!is_warning("router | troupe-router: WARNING: dev tokens are ON"));
    }
}
