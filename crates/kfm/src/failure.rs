//! Failures as the user sees them: a message, an optional hint, an exit code.

use kfm_pipeline::IngestError;
use kfm_store::StoreError;

/// Exit code: a rule or gate failed.
pub const EXIT_RULE: u8 = 1;
/// Exit code: cannot evaluate (bad input, unreadable file or store).
pub const EXIT_INPUT: u8 = 2;

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_INPUT,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with what it concerns (a file name, say).
    pub fn with_context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub fn report(&self) {
        eprintln!("error: {}", self.message);
        if let Some(h) = &self.hint {
            eprintln!("  hint: {h}");
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::AlreadyExists { .. } | StoreError::Conflict { .. } => EXIT_RULE,
            _ => EXIT_INPUT,
        };
        Failure {
            code,
            message: e.to_string(),
            hint: None,
        }
    }
}

impl From<IngestError> for Failure {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(s) => s.into(),
            IngestError::Spec(_) => Failure::input(e.to_string())
                .hint("fix the spec, then check it with `kfm spec check`"),
            IngestError::SourceOutsideWorkspace { .. } => Failure::input(e.to_string()).hint(
                "move the file into the workspace, or pass --allow-outside-workspace to acquire it from where it is",
            ),
            IngestError::CorruptRecord { .. } => Failure {
                code: EXIT_RULE,
                message: e.to_string(),
                hint: None,
            },
            other => Failure::input(other.to_string()),
        }
    }
}
