//! One error type: what went wrong and how to fix it, in words.

use std::fmt;

/// What could not be done: a run that cannot be read, a checkpoint it does
/// not hold, a candidate that cannot be written. Its text names the problem
/// and, where there is one, the fix.
pub struct Error(anyhow::Error);

/// This crate's results.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn msg(text: impl fmt::Display) -> Self {
        Error(anyhow::anyhow!("{text}"))
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

// Debug as Display: a test's `?` or `unwrap()` prints the whole message.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {}
