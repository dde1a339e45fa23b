//! Structs that carry their own size. An app passes `sizeof` of the struct it was built
//! with; the library accepts the size of any version it knows (an older app's struct is a
//! prefix of the current one, and the fields it lacks take their defaults) and refuses an
//! unknown size (an app built against a newer header than the library) with
//! `NUDGE_ERR_INVALID`. New fields are only appended, and every version ends without
//! trailing padding, so each version has a different size.

use crate::status::{Failure, FfiResult};

/// A `#[repr(C)]` struct whose first field is `uint32_t struct_size`.
///
/// # Safety
/// The implementor is `#[repr(C)]`, starts with a `u32` size, and every field is valid for
/// any bit pattern (integers, floats, raw pointers, such structs), so that a prefix of
/// bytes copied over a default value is a valid value.
pub(crate) unsafe trait Versioned: Default {
    /// The size of every version this library knows, oldest first; the last is the current.
    fn sizes() -> &'static [usize];
    fn set_size(&mut self, size: u32);
}

/// `versioned!(T)` for a struct with one version; `versioned!(T, [8, 12])` lists the
/// sizes of its earlier versions, oldest first.
macro_rules! versioned {
    ($t:ty) => {
        $crate::options::versioned!($t, []);
    };
    ($t:ty, [$($old:expr),*]) => {
        // SAFETY: every use is on a `#[repr(C)]` struct of numbers and pointers whose first
        // field is `struct_size: u32` (checked by the layout tests).
        unsafe impl $crate::options::Versioned for $t {
            fn sizes() -> &'static [usize] {
                const SIZES: &[usize] = &[$($old,)* std::mem::size_of::<$t>()];
                SIZES
            }
            fn set_size(&mut self, size: u32) {
                self.struct_size = size;
            }
        }
    };
}
pub(crate) use versioned;

/// The caller's `struct_size`, if it is one this library knows.
fn known_size<T: Versioned>(size: usize, what: &str) -> FfiResult<usize> {
    if T::sizes().contains(&size) {
        Ok(size)
    } else {
        Err(Failure::invalid(format!(
            "{what}: struct_size {size} is not a size this library knows ({:?}); set it to \
             sizeof the struct, and use a library at least as new as the header",
            T::sizes()
        )))
    }
}

fn size_field<T>(p: *const T) -> usize {
    // SAFETY: the caller passes a pointer to a struct whose first field is a u32.
    unsafe { p.cast::<u32>().read_unaligned() as usize }
}

/// Copies the first `size` bytes of `value` to `out`.
fn write_prefix<T: Versioned>(out: *mut T, mut value: T, size: usize) {
    value.set_size(size as u32);
    // SAFETY: `size` is at most size_of::<T>() (a known version), `out` points to the
    // caller's struct of that size.
    unsafe { std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), out.cast::<u8>(), size) }
}

/// Fills the caller's struct with the defaults (`struct_size` bytes of it).
pub(crate) fn init<T: Versioned>(out: *mut T, struct_size: usize, what: &str) -> FfiResult<()> {
    if out.is_null() {
        return Err(Failure::null(what));
    }
    let size = known_size::<T>(struct_size, what)?;
    write_prefix(out, T::default(), size);
    Ok(())
}

/// The options the caller gave; NULL means all defaults.
pub(crate) fn read<T: Versioned>(p: *const T, what: &str) -> FfiResult<T> {
    let mut value = T::default();
    if p.is_null() {
        return Ok(value);
    }
    let size = known_size::<T>(size_field(p), what)?;
    // SAFETY: `p` points to the caller's struct of `size` bytes, `size` <= size_of::<T>(),
    // and every bit pattern is a valid T (the trait's contract).
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&mut value as *mut T).cast::<u8>(), size) }
    Ok(value)
}

/// Writes a result into the caller's struct, as much of it as the caller's version holds.
pub(crate) fn write<T: Versioned>(out: *mut T, value: T, what: &str) -> FfiResult<()> {
    if out.is_null() {
        return Err(Failure::null(what));
    }
    let size = known_size::<T>(size_field(out), what)?;
    write_prefix(out, value, size);
    Ok(())
}

/// The caller's struct size, checked, before a long call writes its result.
pub(crate) fn check_out<T: Versioned>(out: *const T, what: &str) -> FfiResult<()> {
    if !out.is_null() {
        known_size::<T>(size_field(out), what)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    /// No trailing padding: the last field ends where the struct ends, so that a field
    /// appended in a later version always changes the size.
    #[macro_export]
    macro_rules! assert_packed_end {
        ($t:ty, $last:ident, $last_ty:ty) => {
            assert_eq!(
                std::mem::offset_of!($t, $last) + std::mem::size_of::<$last_ty>(),
                std::mem::size_of::<$t>(),
                "{} has trailing padding",
                stringify!($t)
            );
            assert_eq!(std::mem::offset_of!($t, struct_size), 0);
        };
    }

    use super::*;
    use crate::model::NudgeModelOptions;

    #[test]
    fn an_older_version_is_read_as_its_prefix_with_defaults_for_the_rest() {
        // The first NudgeModelOptions ended at `threads` (8 bytes).
        let mut old = NudgeModelOptions {
            threads: 3,
            no_mmap: 77,
            ..Default::default()
        };
        old.struct_size = 8;
        let got = read(&old, "options").unwrap();
        assert_eq!(
            (got.threads, got.no_mmap),
            (3, 0),
            "the field the app lacks takes its default"
        );
        old.struct_size = 10;
        assert!(read(&old, "options").is_err(), "a size between versions is refused");
    }
}
