//! C arguments: strings and arrays in (NULL and invalid UTF-8 become statuses), values out.

use crate::status::{Failure, FfiResult, NudgeStatus};
use std::ffi::{CStr, c_char};

/// A NUL-terminated UTF-8 argument; `what` names it in errors.
pub(crate) fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: C passes a NUL-terminated string that lives for the call.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        Failure::new(
            NudgeStatus::NUDGE_ERR_UTF8,
            format!(
                "{what} is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// A C array argument: NULL is accepted only when it is empty.
pub(crate) fn slice_arg<'a, T>(p: *const T, n: usize, what: &str) -> FfiResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: C passes `n` elements at `p` that live for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Writes an output argument; a NULL pointer is an optional output the caller skipped.
pub(crate) fn write_opt<T>(p: *mut T, value: T) {
    if !p.is_null() {
        // SAFETY: a non-NULL output argument points to a T the caller owns.
        unsafe { p.write(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_bad_utf8_are_statuses() {
        assert_eq!(
            str_arg(std::ptr::null(), "path").err().unwrap().status,
            NudgeStatus::NUDGE_ERR_NULL
        );
        let bad = c"ab\xffcd";
        let e = str_arg(bad.as_ptr(), "prompt").err().unwrap();
        assert_eq!(e.status, NudgeStatus::NUDGE_ERR_UTF8);
        assert_eq!(e.message, "prompt is not valid UTF-8 (first bad byte at offset 2)");
        assert_eq!(str_arg(c"héllo".as_ptr(), "x").unwrap(), "héllo");
    }

    #[test]
    fn an_empty_array_may_be_null() {
        assert!(slice_arg::<u32>(std::ptr::null(), 0, "a").unwrap().is_empty());
        assert_eq!(
            slice_arg::<u32>(std::ptr::null(), 2, "a").err().unwrap().status,
            NudgeStatus::NUDGE_ERR_NULL
        );
    }
}
