//! The bytes of a TensorBoard event file: TFRecord framing around `tensorflow.Event`
//! protobuf messages, hand-encoded (the few fields a scalar log needs; no protobuf
//! dependency).
//!
//! TFRecord: `u64 length (LE) | u32 masked crc32c(length bytes) | data | u32 masked
//! crc32c(data)`. Event (tensorflow/core/util/event.proto): `wall_time = 1` (double),
//! `step = 2` (int64), `file_version = 3` (string), `summary = 5`, `session_log = 7`;
//! Summary: `repeated Value value = 1`; Summary.Value: `tag = 1` (string),
//! `simple_value = 2` (float); SessionLog: `status = 1` (enum, START = 1).

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The CRC-32C (Castagnoli) table, reflected polynomial 0x82F63B78.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of `data`. A table-driven loop: event files are small (one record per
/// log step), so speed does not matter, and a dependency is not worth it.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &byte| {
        CRC_TABLE[((crc ^ byte as u32) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// TFRecord's masked CRC: rotated and offset, so a CRC over data holding CRCs stays strong.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: `data` with its length and both checksums.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An Event's header fields: wall time and step.
fn event_head(wall_time: f64, step: u64) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, 1, FIXED64);
    out.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut out, 2, VARINT);
    varint(&mut out, step);
    out
}

/// The first event of every file: `file_version = "brain.Event:2"` (version 2 tells
/// readers that restarts are marked by SessionLog.START events).
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut out = event_head(wall_time, 0);
    bytes_field(&mut out, 3, b"brain.Event:2");
    out
}

/// A SessionLog.START event at `step`: readers drop every event of an earlier file at
/// this step or later (TensorBoard's purge of data orphaned by a restart).
pub fn session_start_event(wall_time: f64, step: u64) -> Vec<u8> {
    let mut out = event_head(wall_time, step);
    let mut session_log = Vec::new();
    key(&mut session_log, 1, VARINT);
    varint(&mut session_log, 1); // SessionLog.START
    bytes_field(&mut out, 7, &session_log);
    out
}

/// An event with one `simple_value` (a 32-bit float, as TensorBoard stores scalars)
/// per `(tag, value)`.
pub fn scalars_event(wall_time: f64, step: u64, values: &[(String, f64)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in values {
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, tag.as_bytes());
        key(&mut entry, 2, FIXED32);
        entry.extend_from_slice(&(*value as f32).to_le_bytes());
        bytes_field(&mut summary, 1, &entry);
    }
    let mut out = event_head(wall_time, step);
    bytes_field(&mut out, 5, &summary);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // The CRC catalogue's check value, and RFC 3720 (iSCSI) B.4's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn frame_carries_length_and_checksums() {
        let framed = frame(b"abc");
        assert_eq!(framed.len(), 8 + 4 + 3 + 4);
        assert_eq!(&framed[..8], &3u64.to_le_bytes());
        assert_eq!(&framed[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&framed[12..15], b"abc");
        // TensorFlow's mask, written as TensorFlow writes it: rotate right by 15, add 0xa282ead8.
        let crc = crc32c(b"abc");
        #[allow(clippy::manual_rotate)]
        let masked = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282ead8);
        assert_eq!(&framed[15..], &masked.to_le_bytes());
    }

    #[test]
    fn scalar_event_encodes_the_protobuf_fields() {
        let event = scalars_event(1.5, 300, &[("a".into(), 2.0)]);
        let mut expected = vec![0x09];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.extend_from_slice(&[0x10, 0xac, 0x02]); // step 300 as a varint
                                                         // summary (field 5, len 10) { value (field 1, len 8) { tag "a", simple_value 2.0 } }
        expected.extend_from_slice(&[0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        expected.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(event, expected);
    }
}
