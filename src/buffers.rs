//! The engine's large buffers (activations, logits, KV caches, adapter and optimizer
//! state) come from here: their sizes follow from a file or a caller, and a failed
//! allocation must be an error the host sees, not the abort that `vec![0; n]` gives.

use crate::error::{Error, Result};

/// `n` zeroed values, or [`Error::OutOfMemory`] naming `what`.
pub fn zeros<T: Copy + Default>(n: usize, what: &'static str) -> Result<Vec<T>> {
    filled(n, T::default(), what)
}

/// `n` copies of `value`, or [`Error::OutOfMemory`] naming `what`.
pub fn filled<T: Copy>(n: usize, value: T, what: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// Room for `additional` more values in `v`, or [`Error::OutOfMemory`] naming `what`.
pub fn reserve<T>(v: &mut Vec<T>, additional: usize, what: &'static str) -> Result<()> {
    v.try_reserve(additional).map_err(|_| Error::OutOfMemory {
        what,
        bytes: (v.len() as u128 + additional as u128) * std::mem::size_of::<T>() as u128,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_size_is_an_error_naming_the_buffer() {
        match zeros::<f32>(usize::MAX / 2, "test logits") {
            Err(Error::OutOfMemory { what, bytes }) => {
                assert_eq!(what, "test logits");
                assert_eq!(bytes, (usize::MAX / 2) as u128 * 4);
            }
            other => panic!("expected OutOfMemory, got {:?}", other.map(|v| v.len())),
        }
        let mut v = vec![1u8; 3];
        assert!(reserve(&mut v, usize::MAX, "bytes").is_err());
        assert_eq!(v, [1, 1, 1], "a refused reservation leaves the buffer as it was");
    }

    #[test]
    fn a_possible_size_is_filled() {
        assert_eq!(zeros::<f32>(5, "x").unwrap(), [0.0; 5]);
        assert_eq!(filled(3, 7u16, "x").unwrap(), [7, 7, 7]);
    }
}
