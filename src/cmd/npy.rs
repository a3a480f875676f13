//! NumPy `.npy` files (format 1.0): what `ferroclip embed` and `ferroclip data dump` write
//! for Python to `numpy.load`.

/// The header of a C-order array of `descr` (`<f4`, `|u1`, `<i8`) with `shape`: magic,
/// version, header length, then the dict padded with spaces to a multiple of 64 bytes and
/// ending in a newline. The data follows it, little-endian, row-major.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(10 + header_len);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let header = npy_header("<f4", &[3, 512]);
        assert_eq!(header.len() % 64, 0);
        assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([header[8], header[9]]) as usize;
        assert_eq!(10 + len, header.len());
        let dict = std::str::from_utf8(&header[10..]).unwrap();
        assert!(dict.contains("'shape': (3, 512)") && dict.ends_with('\n'), "{dict}");
        let one = npy_header("<i8", &[4]);
        assert!(std::str::from_utf8(&one[10..]).unwrap().contains("'shape': (4,)"));
    }
}
