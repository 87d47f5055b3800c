//! Where a policy goes wrong: file, line and column, and the message.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// An error or warning about a policy file, printed as `file:line:col: severity: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.location.file.display(),
            self.location.line,
            self.location.column,
            self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

/// Maps byte offsets of one source text to 1-based line and column (in characters).
/// Line starts are found once: policies with 100,000 rules locate every rule.
pub(crate) struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceMap { file, text, line_starts }
    }

    pub(crate) fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        // The last line start at or before offset.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        Location { file: self.file.to_path_buf(), line, column }
    }

    pub(crate) fn diagnostic(&self, severity: Severity, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity, location: self.locate(span.start), message: message.into() }
    }
}
