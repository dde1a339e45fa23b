//! CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, zlib's and PNG's), the checksum
//! of every journal frame, computed by `crc32fast`.

/// The CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The CRC-32 of several slices one after the other (a frame's length, then its payload).
pub fn crc32_of(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// The reflected CRC-32 polynomial.
const POLY: u32 = 0xEDB8_8320;

/// One byte's step of the reflected CRC register, by table.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Extends the checksum `crc` of some bytes by `more`.
fn extend(crc: u32, more: &[u8]) -> u32 {
    let mut r = !crc;
    for &b in more {
        r = TABLE[((r ^ b as u32) & 0xFF) as usize] ^ (r >> 8);
    }
    !r
}

/// `a * b` modulo the polynomial, both in the reflected representation (bit 31 is x^0).
fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        bit >>= 1;
    }
    product
}

/// x^(2^k) modulo the polynomial, for k = 0..64.
fn x_pow2() -> &'static [u32; 64] {
    static TABLE: std::sync::OnceLock<[u32; 64]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 64];
        t[0] = 1 << 30; // x^1
        for k in 1..64 {
            t[k] = mul_mod(t[k - 1], t[k - 1]);
        }
        t
    })
}

/// `crc * x^(8 n)`: the register of `crc` carried over `n` zero bytes, without the init and
/// final inversions. It is what turns the checksum of a prefix into that of a longer one:
/// `crc(A + B) = shift(crc(A), len(B)) ^ crc(B)`.
fn shift(crc: u32, n: usize) -> u32 {
    let table = x_pow2();
    let (mut power, mut n, mut k) = (1u32 << 31, n as u64, 3);
    while n != 0 {
        if n & 1 != 0 {
            power = mul_mod(table[k], power);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod(power, crc)
}

/// Checksums of any stretch of one byte string in O(log length + STRIDE) each, after one
/// pass over it. Looking for an intact frame after damage tries every offset; checksumming
/// each candidate's payload anew would make a crafted tail quadratic (a megabyte of
/// `00 00 01 00` took half a minute).
pub struct RangeCrc<'a> {
    bytes: &'a [u8],
    /// The checksum of `bytes[..k * STRIDE]` at index k.
    marks: Vec<u32>,
}

impl<'a> RangeCrc<'a> {
    /// Bytes between two stored prefix checksums: a sixteenth of the input's size in marks.
    const STRIDE: usize = 64;

    pub fn new(bytes: &'a [u8]) -> Self {
        let mut marks = Vec::with_capacity(bytes.len() / Self::STRIDE + 1);
        let mut crc = 0;
        marks.push(crc);
        for chunk in bytes.chunks_exact(Self::STRIDE) {
            crc = extend(crc, chunk);
            marks.push(crc);
        }
        RangeCrc { bytes, marks }
    }

    /// The checksum of `bytes[..i]`.
    fn prefix(&self, i: usize) -> u32 {
        let k = i / Self::STRIDE;
        extend(self.marks[k], &self.bytes[k * Self::STRIDE..i])
    }

    /// The checksum of `bytes[start..end]`, as [`crc32`] would give it.
    pub fn range(&self, start: usize, end: usize) -> u32 {
        self.prefix(end) ^ shift(self.prefix(start), end - start)
    }

    /// The checksum of `head` followed by `bytes[start..end]` (a frame's length field, then
    /// its payload), as [`crc32_of`] would give it.
    pub fn after(&self, head: &[u8], start: usize, end: usize) -> u32 {
        shift(crc32(head), end - start) ^ self.range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_of_stretches_equal_checksumming_them_directly() {
        let bytes: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let r = RangeCrc::new(&bytes);
        for (start, end) in [
            (0, 0),
            (0, 1000),
            (3, 4),
            (63, 64),
            (64, 128),
            (5, 999),
            (130, 700),
            (999, 1000),
        ] {
            assert_eq!(r.range(start, end), crc32(&bytes[start..end]), "{start}..{end}");
            assert_eq!(
                r.after(&bytes[..4], start, end),
                crc32_of(&[&bytes[..4], &bytes[start..end]]),
                "{start}..{end}"
            );
        }
        assert_eq!(extend(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn check_values() {
        // The standard check value of CRC-32/ISO-HDLC, and two from zlib's crc32().
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
        assert_eq!(crc32_of(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn same_checksums_as_the_journals_written_before() {
        // 0x7EBC569C is what the journal's earlier hand-written CRC-32 (slicing-by-8) gave
        // for these bytes, as zlib does: journals written by earlier builds still verify.
        let bytes: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(crc32(&bytes), 0x7EBC_569C);
        assert_eq!(crc32_of(&[&bytes[..5], &bytes[5..]]), 0x7EBC_569C);
    }
}
