//! Stopping a long call from outside it: scoring a long text or prefilling a long prompt is
//! one forward pass, which asks between layers whether its caller still wants it.

use crate::error::{Error, Result};
use std::fmt;

/// A question a forward pass asks between layers (and a generator before each token):
/// `true` stops the call with [`Error::Cancelled`]. Another thread raises the flag the
/// closure reads (an `AtomicBool`, the C ABI's interrupt counter).
#[derive(Clone, Copy)]
pub struct Cancel<'a>(&'a (dyn Fn() -> bool + Sync));

impl<'a> Cancel<'a> {
    pub fn new(is_cancelled: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Cancel(is_cancelled)
    }

    /// [`Error::Cancelled`] once the caller asked to stop.
    pub fn check(&self) -> Result<()> {
        if (self.0)() { Err(Error::Cancelled) } else { Ok(()) }
    }
}

/// [`Cancel::check`] of an optional flag.
pub(crate) fn check(cancel: Option<Cancel<'_>>) -> Result<()> {
    cancel.map_or(Ok(()), |c| c.check())
}

impl fmt::Debug for Cancel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cancel")
    }
}
