//! How many worker threads a caller may ask for. A count comes from a command line or a C
//! host; a typo (100000) must be refused, not start that many threads.

use crate::error::{Error, Result};

/// The cores this process may use (1 when the system cannot say).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |c| c.get())
}

/// The most worker threads accepted: eight per core, and at least 64 so that a host may
/// oversubscribe a small machine on purpose.
pub fn max_threads() -> usize {
    (8 * cores()).max(64)
}

/// `n` if it is a usable thread count (1 to [`max_threads`]); `what` names the setting in
/// the error (`--threads`, `options.threads`).
pub fn check_threads(n: usize, what: &str) -> Result<usize> {
    let max = max_threads();
    if n == 0 || n > max {
        return Err(Error::invalid(format!(
            "{what} {n}: give 1 to {max} ({} cores here)",
            cores()
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_one_to_the_maximum_are_refused() {
        assert_eq!(check_threads(1, "t").unwrap(), 1);
        assert_eq!(check_threads(max_threads(), "t").unwrap(), max_threads());
        for n in [0, max_threads() + 1, 100_000] {
            let e = check_threads(n, "--threads").unwrap_err().to_string();
            assert!(e.contains("--threads") && e.contains(&n.to_string()), "{e}");
        }
    }
}
