//! The `sd_notify` datagrams a worker sends to its `NOTIFY_SOCKET`, parsed as a pure function.
//!
//! A datagram is newline-separated `KEY=VALUE` assignments; reloadsup reads `READY=1` and
//! `STATUS=` and ignores the rest, as systemd ignores keys it does not know. The bytes come from
//! the user's command and are hostile: [`parse`] never panics, never allocates more than the
//! datagram, and returns a status that is safe to print on an operator's terminal (no control
//! characters, so no escape sequences, carriage returns or bidi tricks; at most
//! [`MAX_STATUS_CHARS`] characters).

/// The longest `STATUS=` text kept, in characters; the rest is cut.
pub const MAX_STATUS_CHARS: usize = 256;

/// What a notify datagram says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    /// `READY=1` was present.
    pub ready: bool,
    /// The last `STATUS=` text, sanitised with [`sanitize_status`].
    pub status: Option<String>,
}

impl Notice {
    /// Nothing that reloadsup acts on.
    pub fn is_empty(&self) -> bool {
        !self.ready && self.status.is_none()
    }
}

/// Parses one datagram. Lines are split on `\n` only (as systemd does); invalid UTF-8 is
/// replaced, so a status in another encoding still shows something.
pub fn parse(datagram: &[u8]) -> Notice {
    let mut notice = Notice::default();
    for line in datagram.split(|&b| b == b'\n') {
        if line == b"READY=1" {
            notice.ready = true;
        } else if let Some(text) = line.strip_prefix(b"STATUS=") {
            notice.status = Some(sanitize_status(&String::from_utf8_lossy(text)));
        }
    }
    notice
}

/// Replaces every control character (C0 including ESC, CR and TAB, DEL, C1) and the Unicode
/// bidirectional overrides, isolates and marks with `?`, and cuts the text to [`MAX_STATUS_CHARS`].
pub fn sanitize_status(text: &str) -> String {
    text.chars()
        .take(MAX_STATUS_CHARS)
        .map(|c| if unsafe_char(c) { '?' } else { c })
        .collect()
}

/// A worker's output line as it may be shown on an operator's terminal (`ctl logs`, the
/// console's `logs`): every character [`sanitize_status`] replaces is replaced by `?`, but
/// for the tab and the newline that ends a line, which no terminal takes for a command. Not
/// cut: the logger bounds its lines. The log file keeps the bytes as they were.
pub fn sanitize_log_line(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_here = |c: char| c != '\t' && c != '\n' && unsafe_char(c);
    if !text.chars().any(unsafe_here) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| if unsafe_here(c) { '?' } else { c })
            .collect(),
    )
}

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18, item 9: escape sequences, carriage returns and C1 controls of a worker's
    /// output never reach an operator's terminal; tabs and the line's newline stay.
    #[test]
    fn a_log_line_keeps_tabs_and_its_newline_and_loses_every_control() {
        let line = "\x1b[31mred\x1b[0m\rover\x7f\u{9b}2J\ttab\u{202e}evil\u{200f}\u{61c}\n";
        assert_eq!(
            sanitize_log_line(line),
            "?[31mred?[0m?over??2J\ttab?evil??\n"
        );
        assert!(matches!(
            sanitize_log_line("plain\tline\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn ready_and_status_are_read_and_other_keys_ignored() {
        let n = parse(b"MAINPID=12\nREADY=1\nSTATUS=serving 3 apps\nWATCHDOG=1\n");
        assert!(n.ready);
        assert_eq!(n.status.as_deref(), Some("serving 3 apps"));
        assert_eq!(parse(b"READY=0\nREADY=10"), Notice::default());
        assert!(parse(b"").is_empty());
        // The last STATUS wins, as with systemd.
        assert_eq!(parse(b"STATUS=a\nSTATUS=b").status.as_deref(), Some("b"));
    }

    #[test]
    fn status_control_characters_are_replaced() {
        let n = parse(b"STATUS=\x1b[31mred\x1b[0m\rover\x7f\xc2\x9b2J\ttab\xe2\x80\xaeevil");
        assert_eq!(n.status.as_deref(), Some("?[31mred?[0m?over??2J?tab?evil"));
        let n = parse(b"STATUS=caf\xc3\xa9 \xff ok");
        assert_eq!(n.status.as_deref(), Some("caf\u{e9} \u{fffd} ok"));
    }

    #[test]
    fn status_is_cut_to_its_bound() {
        let long = [b"STATUS=".as_slice(), &[b'x'; 5000]].concat();
        assert_eq!(parse(&long).status.map(|s| s.len()), Some(MAX_STATUS_CHARS));
    }

    /// Every seed of the fuzz target `notify` parses without panicking, and the seeds that
    /// say READY=1 are read as ready. Self-contained, so it runs with `cargo test` alone.
    #[test]
    fn fuzz_seed_corpus_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/notify");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/notify exists") {
            let path = entry.expect("readable corpus entry").path();
            let bytes = std::fs::read(&path).expect("readable seed");
            let notice = parse(&bytes);
            if let Some(s) = &notice.status {
                assert!(s.chars().count() <= MAX_STATUS_CHARS, "{}", path.display());
                assert!(!s.chars().any(unsafe_char), "{}", path.display());
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("ready") {
                assert!(notice.ready, "{} should read as ready", path.display());
            }
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} seeds in {}", dir.display());
    }
}
