//! A JPEG's marker structure, followed without decoding: does the data reach its
//! end-of-image marker? The `image` crate's JPEG decoder (zune-jpeg) decodes a file cut
//! inside its scan data, filling the rest, and reports success; PIL refuses such a file
//! ("image file is truncated"). This check is what rejects it on the `image` crate path.

/// `0xFF`, the first byte of every marker.
const MARKER: u8 = 0xFF;
/// Start of image.
const SOI: u8 = 0xD8;
/// End of image.
const EOI: u8 = 0xD9;
/// `TEM`: a marker without a length.
const TEM: u8 = 0x01;

/// True when `bytes` starts with SOI and its segments, followed by their lengths (and each
/// scan's entropy-coded data up to the next marker), reach an EOI marker before the data
/// ends. Bytes after EOI are allowed, as libjpeg and PIL allow them.
pub(crate) fn reaches_end_of_image(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[MARKER, SOI]) {
        return false;
    }
    let mut i = 2;
    loop {
        // The next marker. Outside a segment this skips a scan's entropy-coded data, where
        // 0xFF is followed by 0x00 (a stuffed data byte) or a restart marker; any other
        // stray byte is skipped too, as libjpeg does (with a warning).
        let Some(found) = bytes[i..].iter().position(|&b| b == MARKER) else {
            return false;
        };
        i += found;
        // Fill bytes: any number of 0xFF before the code.
        while bytes.get(i) == Some(&MARKER) {
            i += 1;
        }
        let Some(&code) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match code {
            EOI => return true,
            // Stuffed zero, restart markers, TEM, SOI: no length follows.
            0x00 | 0xD0..=0xD7 | TEM | SOI => {}
            _ => {
                let Some(length) = bytes
                    .get(i..i + 2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                else {
                    return false;
                };
                if length < 2 || i + length > bytes.len() {
                    return false;
                }
                i += length;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_jpegs_reach_their_end_and_cut_ones_do_not() {
        let image = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, (x ^ y) as u8]));
        let mut jpeg = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        assert!(reaches_end_of_image(&jpeg));
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailing bytes after EOI");
        assert!(reaches_end_of_image(&trailing));
        for cut in 0..jpeg.len() {
            assert!(!reaches_end_of_image(&jpeg[..cut]), "cut at {cut} of {}", jpeg.len());
        }
        assert!(!reaches_end_of_image(b"\x89PNG\r\n\x1a\n"));
    }
}
