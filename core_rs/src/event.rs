//! Encoding of `statepipe.v1.Event`, once per event, for both places it goes:
//! the protobuf bytes watchers receive, and the row PostgreSQL's COPY reads.
//!
//! Emitting a token is the hottest path of the control plane; doing this in
//! one native call instead of building a protobuf message and a database row
//! in Python is most of its cost.

/// The fields of an event. `data` is an encoded `google.protobuf.Struct`.
pub struct EventFields<'a> {
    pub run_id: &'a str,
    pub seq: i64,
    pub ts_ns: i64,
    pub kind: &'a str,
    pub node_id: &'a str,
    pub attempt: i32,
    pub status: &'a str,
    pub message: &'a str,
    pub level: &'a str,
    pub data: &'a [u8],
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        varint(out, u64::from(field << 3 | 2));
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

fn int_field(out: &mut Vec<u8>, field: u32, value: i64) {
    if value != 0 {
        varint(out, u64::from(field << 3));
        varint(out, value as u64); // negative ints take ten bytes, as in protobuf
    }
}

/// Appends the protobuf encoding of the event to `out`, fields in number
/// order and defaults omitted: byte for byte what protobuf itself writes.
pub fn encode(event: &EventFields<'_>, out: &mut Vec<u8>) {
    bytes_field(out, 1, event.run_id.as_bytes());
    int_field(out, 2, event.seq);
    let seconds = event.ts_ns.div_euclid(1_000_000_000);
    let nanos = event.ts_ns.rem_euclid(1_000_000_000);
    let mut ts = Vec::with_capacity(16);
    int_field(&mut ts, 1, seconds);
    int_field(&mut ts, 2, nanos);
    // Every event has a timestamp: the field is present even at the epoch.
    out.push(3 << 3 | 2);
    varint(out, ts.len() as u64);
    out.extend_from_slice(&ts);
    bytes_field(out, 4, event.kind.as_bytes());
    bytes_field(out, 5, event.node_id.as_bytes());
    int_field(out, 6, i64::from(event.attempt));
    bytes_field(out, 7, event.status.as_bytes());
    bytes_field(out, 8, event.message.as_bytes());
    bytes_field(out, 9, event.level.as_bytes());
    bytes_field(out, 10, event.data);
}

/// Appends `body` (an encoded Event) framed as one element of
/// `EventBatch.events` (field 1): concatenated frames are an EventBatch.
pub fn frame(body: &[u8], out: &mut Vec<u8>) {
    bytes_field(out, 1, body);
    if body.is_empty() {
        out.extend_from_slice(&[0x0a, 0]); // an empty event is still an element
    }
}

/// Text for one COPY text-format column, with its special characters escaped.
/// PostgreSQL text cannot hold NUL: it becomes U+FFFD (the body keeps it).
fn copy_text(out: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            0 => out.extend_from_slice("\u{fffd}".as_bytes()),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A UTC timestamp as PostgreSQL reads it: `2026-11-24 01:02:03.456789+00`.
pub fn format_timestamp(out: &mut Vec<u8>, ts_ns: i64) {
    use std::io::Write;
    let micros = ts_ns.div_euclid(1000);
    let seconds = micros.div_euclid(1_000_000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let in_day = seconds.rem_euclid(86_400);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}+00",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        micros.rem_euclid(1_000_000)
    );
}

/// Appends one row for `COPY events (run_id, seq, ts, kind, node_id, body)`
/// in text format, `body` being the encoded event (a bytea in hex).
pub fn copy_row(event: &EventFields<'_>, body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    copy_text(out, event.run_id);
    out.push(b'\t');
    out.extend_from_slice(event.seq.to_string().as_bytes());
    out.push(b'\t');
    format_timestamp(out, event.ts_ns);
    out.push(b'\t');
    copy_text(out, event.kind);
    out.push(b'\t');
    copy_text(out, event.node_id);
    out.push(b'\t');
    out.extend_from_slice(b"\\\\x"); // "\x" with its backslash escaped for COPY
    out.reserve(body.len() * 2 + 1);
    for &b in body {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>() -> EventFields<'a> {
        EventFields {
            run_id: "r1",
            seq: 300,
            ts_ns: 1_764_000_000_123_456_789,
            kind: "token",
            node_id: "n",
            attempt: 1,
            status: "",
            message: "hi",
            level: "",
            data: &[],
        }
    }

    #[test]
    fn encodes_fields_in_order_and_skips_defaults() {
        let mut out = Vec::new();
        encode(&fields(), &mut out);
        let mut expected = vec![0x0a, 2, b'r', b'1', 0x10, 0xac, 0x02];
        // ts: seconds 1764000000 (varint), nanos 123456789 (varint)
        let mut ts = vec![0x08];
        varint(&mut ts, 1_764_000_000);
        ts.push(0x10);
        varint(&mut ts, 123_456_789);
        expected.push(0x1a);
        expected.push(ts.len() as u8);
        expected.extend(ts);
        expected.extend([0x22, 5, b't', b'o', b'k', b'e', b'n', 0x2a, 1, b'n', 0x30, 1]);
        expected.extend([0x42, 2, b'h', b'i']);
        assert_eq!(out, expected);
    }

    #[test]
    fn frames_are_batch_elements() {
        let mut out = Vec::new();
        frame(b"abc", &mut out);
        frame(b"", &mut out);
        assert_eq!(out, [0x0a, 3, b'a', b'b', b'c', 0x0a, 0]);
    }

    #[test]
    fn formats_timestamps_like_postgres() {
        let mut out = Vec::new();
        format_timestamp(&mut out, 0);
        assert_eq!(out, b"1970-01-01 00:00:00.000000+00");
        out.clear();
        format_timestamp(&mut out, 1_709_164_800_000_001_000); // 2024-02-29 (leap day)
        assert_eq!(out, b"2024-02-29 00:00:00.000001+00");
        out.clear();
        format_timestamp(&mut out, -1_000); // one microsecond before the epoch
        assert_eq!(out, b"1969-12-31 23:59:59.999999+00");
    }

    #[test]
    fn copy_rows_escape_text_and_hex_encode_the_body() {
        let mut event = fields();
        event.node_id = "a\tb\\c\nd\0";
        let mut out = Vec::new();
        copy_row(&event, &[0x00, 0xff], &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "r1\t300\t2025-11-24 16:00:00.123456+00\ttoken\ta\\tb\\\\c\\nd\u{fffd}\t\\\\x00ff\n"
        );
    }
}
