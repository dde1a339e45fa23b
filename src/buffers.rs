//! The engine's large buffers (activations, logits, KV caches, adapter and optimizer
//! state) come from here: their sizes follow from a file or a caller, and a failed
//! allocation must be an error the host sees, not the abort that `vec![0; n]` gives.

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `n` zeroed values, or [`Error::OutOfMemory`] naming `what`.
pub fn zeros<T: Copy + Default + Send + Sync>(n: usize, what: &'static str) -> Result<Vec<T>> {
    filled(n, T::default(), what)
}

/// Buffers of at least this many values are written by all the pool's threads, in
/// pieces of [`PIECE`]: a fresh buffer's first writes fault its pages in, and in a profile
/// of 2-thread training the serial fills of each layer's activations (1.9% of the main
/// thread's samples) left the other thread waiting.
const PARALLEL_FROM: usize = 1 << 16;
const PIECE: usize = 1 << 14;

/// `n` copies of `value`, or [`Error::OutOfMemory`] naming `what`.
pub fn filled<T: Copy + Send + Sync>(n: usize, value: T, what: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    write_all(&mut v, n, |_, piece| piece.fill(MaybeUninit::new(value)));
    Ok(v)
}

/// `v` emptied and refilled with `n` copies of `value`, its memory reused (a working
/// buffer's next use). Aborts when memory runs out, as `Vec::resize` does.
pub fn refill<T: Copy + Send + Sync>(v: &mut Vec<T>, n: usize, value: T) -> &mut [T] {
    v.clear();
    v.reserve(n);
    write_all(v, n, |_, piece| piece.fill(MaybeUninit::new(value)));
    v
}

/// A copy of `src`, or [`Error::OutOfMemory`] naming `what` (written by all threads when
/// it is large, as [`filled`] is).
pub fn copied<T: Copy + Send + Sync>(src: &[T], what: &'static str) -> Result<Vec<T>> {
    let n = src.len();
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    write_all(&mut v, n, |at, piece| {
        for (d, &s) in piece.iter_mut().zip(&src[at..]) {
            d.write(s);
        }
    });
    Ok(v)
}

/// Sets the empty `v` (whose capacity holds `n`) to `n` values, `write(at, piece)` writing
/// every value of each piece, which starts at value `at`: in pieces of [`PIECE`] on all
/// threads from [`PARALLEL_FROM`] values, else in one piece.
fn write_all<T: Send>(v: &mut Vec<T>, n: usize, write: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync) {
    assert!(v.is_empty() && v.capacity() >= n);
    let spare = &mut v.spare_capacity_mut()[..n];
    if n >= PARALLEL_FROM {
        spare
            .par_chunks_mut(PIECE)
            .enumerate()
            .for_each(|(i, piece)| write(i * PIECE, piece));
    } else {
        write(0, spare);
    }
    // SAFETY: every piece of the first n values was written in full above (the callers'
    // `write` fill or copy whole pieces); the capacity holds them.
    unsafe { v.set_len(n) };
}

/// `x += y` elementwise (the shorter length), by all threads when long.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    let add = |(x, y): (&mut [f32], &[f32])| {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    };
    if x.len().min(y.len()) >= PARALLEL_FROM {
        x.par_chunks_mut(PIECE).zip(y.par_chunks(PIECE)).for_each(add);
    } else {
        add((x, y));
    }
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
        // Sizes around the parallel threshold and its pieces, with a ragged last piece.
        for n in [PARALLEL_FROM - 1, PARALLEL_FROM, PARALLEL_FROM + PIECE / 2 + 3] {
            let v = filled(n, 2.5f32, "x").unwrap();
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 2.5), "filled({n})");
        }
    }

    #[test]
    fn a_refill_and_a_sum_cover_every_value() {
        let mut v = vec![1.0f32; 3];
        for n in [2, PARALLEL_FROM + PIECE / 2 + 3, 5] {
            assert_eq!(refill(&mut v, n, 0.5).len(), n);
            assert!(v.iter().all(|&x| x == 0.5), "refill({n})");
        }
        for n in [9, PARALLEL_FROM + PIECE / 2 + 3] {
            let mut x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let y: Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
            add_into(&mut x, &y);
            assert!(x.iter().enumerate().all(|(i, &v)| v == (3 * i) as f32), "add_into({n})");
        }
    }

    #[test]
    fn a_copy_holds_every_value_in_order() {
        for n in [0, 7, PARALLEL_FROM - 1, PARALLEL_FROM + PIECE / 2 + 3] {
            let src: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2654435761)).collect();
            assert_eq!(copied(&src, "x").unwrap(), src, "copied({n})");
        }
    }
}
