//! The library's version, as numbers in the header and from the library at run time.

use crate::status::NudgeStatus;
use std::ffi::c_char;

/// The header's major version (incompatible API changes).
pub const NUDGE_VERSION_MAJOR: u32 = 0;
/// The header's minor version (additions).
pub const NUDGE_VERSION_MINOR: u32 = 1;
/// The header's patch version (fixes).
pub const NUDGE_VERSION_PATCH: u32 = 0;
/// MAJOR * 10000 + MINOR * 100 + PATCH of the header; compare with `nudge_version_number()`.
pub const NUDGE_VERSION_NUMBER: u32 = 100;

/// The running library's version as MAJOR * 10000 + MINOR * 100 + PATCH.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_version_number() -> u32 {
    NUDGE_VERSION_NUMBER
}

/// The running library's version as "MAJOR.MINOR.PATCH" (static storage).
#[unsafe(no_mangle)]
pub extern "C" fn nudge_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a status value ("NUDGE_ERR_BUSY"), or "NUDGE_UNKNOWN" for a value this
/// library does not define (static storage).
#[unsafe(no_mangle)]
pub extern "C" fn nudge_status_name(status: i32) -> *const c_char {
    NudgeStatus::ALL
        .iter()
        .find(|s| **s as i32 == status)
        .map_or(c"NUDGE_UNKNOWN", |s| s.name())
        .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn the_header_constants_are_the_package_version() {
        let v = |s: &str| s.parse::<u32>().unwrap();
        assert_eq!(NUDGE_VERSION_MAJOR, v(env!("CARGO_PKG_VERSION_MAJOR")));
        assert_eq!(NUDGE_VERSION_MINOR, v(env!("CARGO_PKG_VERSION_MINOR")));
        assert_eq!(NUDGE_VERSION_PATCH, v(env!("CARGO_PKG_VERSION_PATCH")));
        assert_eq!(
            NUDGE_VERSION_NUMBER,
            NUDGE_VERSION_MAJOR * 10000 + NUDGE_VERSION_MINOR * 100 + NUDGE_VERSION_PATCH
        );
        let s = unsafe { CStr::from_ptr(nudge_version_string()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(env!("CARGO_PKG_VERSION"), engine_version());
    }

    #[test]
    fn the_pkg_config_template_has_the_package_version() {
        let pc = include_str!("../nudge.pc.in");
        assert!(pc.contains(&format!("\nVersion: {}\n", env!("CARGO_PKG_VERSION"))));
    }

    /// The C library and the engine it wraps are released together.
    fn engine_version() -> &'static str {
        let manifest = include_str!("../../Cargo.toml");
        let line = manifest.lines().find(|l| l.starts_with("version = ")).unwrap();
        line.trim_start_matches("version = ").trim_matches('"')
    }

    #[test]
    fn status_names() {
        let name = |s| unsafe { CStr::from_ptr(nudge_status_name(s)) }.to_str().unwrap();
        assert_eq!(name(0), "NUDGE_OK");
        assert_eq!(name(6), "NUDGE_ERR_BUSY");
        assert_eq!(name(9), "NUDGE_ERR_UNSUPPORTED");
        assert_eq!(name(-1), "NUDGE_UNKNOWN");
        assert_eq!(name(10), "NUDGE_ERR_NO_MEMORY");
        assert_eq!(name(11), "NUDGE_UNKNOWN");
    }
}
