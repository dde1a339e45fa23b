//! C arguments: strings and arrays in (NULL and invalid UTF-8 become statuses), values out.

use crate::status::{Failure, FfiResult, NudgeStatus};
use std::ffi::{CStr, CString, c_char};

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
    // What `from_raw_parts` requires and a C caller could still get wrong: a pointer
    // aligned for T, and a length whose bytes fit in the address space without wrapping.
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize && (p as usize).checked_add(b).is_some());
    if bytes.is_none() {
        return Err(Failure::invalid(format!(
            "{what}: {n} elements of {} bytes cannot be in memory",
            std::mem::size_of::<T>()
        )));
    }
    if !p.is_aligned() {
        return Err(Failure::invalid(format!(
            "{what} is not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    // SAFETY: C passes `n` elements at `p` that live for the call; the pointer is non-null
    // and aligned, and the length's bytes fit (checked above).
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// The strings handed to the app and not yet freed, by address: `nudge_string_free`
/// frees only these, so a double free or a foreign pointer is a no-op, not heap damage.
static GIVEN: std::sync::Mutex<Option<std::collections::HashSet<usize>>> = std::sync::Mutex::new(None);

fn given() -> std::sync::MutexGuard<'static, Option<std::collections::HashSet<usize>>> {
    // The set stays consistent through a panic elsewhere: inserts and removes are single steps.
    GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `text` as a C string; a NUL in it (which C would read as the end) becomes a space.
pub(crate) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).expect("no NUL is left")
}

/// `text` as a C string the app frees with `nudge_string_free` (see [`c_string`]).
pub(crate) fn string_out(text: &str) -> *mut c_char {
    let p = c_string(text).into_raw();
    given().get_or_insert_with(Default::default).insert(p as usize);
    p
}

/// The string at `p` if this library gave it and it was not freed yet; it is then no longer
/// the app's.
pub(crate) fn take_string(p: *mut c_char) -> Option<CString> {
    let known = given().as_mut().is_some_and(|set| set.remove(&(p as usize)));
    // SAFETY: `p` came from CString::into_raw in `string_out` and was not taken before.
    known.then(|| unsafe { CString::from_raw(p) })
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
    fn an_impossible_length_or_a_misaligned_array_is_invalid() {
        let x = [0u32; 4];
        let e = slice_arg(x.as_ptr(), usize::MAX / 2, "ids").err().unwrap();
        assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID);
        assert!(e.message.starts_with("ids: "), "{}", e.message);
        let e = slice_arg(x.as_ptr(), isize::MAX as usize / 4 + 1, "ids").err().unwrap();
        assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID);
        let odd = (x.as_ptr() as *const u8).wrapping_add(1) as *const u32;
        let e = slice_arg(odd, 1, "ids").err().unwrap();
        assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID);
        assert!(e.message.contains("aligned"), "{}", e.message);
        assert_eq!(slice_arg(x.as_ptr(), 4, "ids").unwrap(), &x);
    }

    #[test]
    fn a_string_is_taken_back_once_and_only_if_it_was_given() {
        let p = string_out("a\0b");
        assert_eq!(take_string(p).unwrap().to_str().unwrap(), "a b");
        assert!(take_string(p).is_none(), "a second free is a no-op");
        let mine = CString::new("not given").unwrap().into_raw();
        assert!(
            take_string(mine).is_none(),
            "a pointer the library did not give is not freed"
        );
        drop(unsafe { CString::from_raw(mine) });
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
