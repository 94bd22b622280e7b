//! Encoding of `statepipe.v1.Event`, once per event, for both places it goes:
//! the protobuf bytes watchers receive, and the row PostgreSQL's COPY reads.
//!
//! Emitting a token is the hottest path of the control plane; doing this in
//! one native call instead of building a protobuf message and a database row
//! in Python is most of its cost.
//!
//! Watchers receive `EventBatch` messages: a batch is its events' frames
//! (field 1's tag, the length, the bytes) one after another, so one is built
//! by concatenation, from the stored bodies on replay or from the bus's frames
//! live, without decoding anything ([`plan_batches`], [`write_batch`]).

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

/// `EventBatch.events` is field 1, length-delimited: the tag byte of a frame.
const EVENTS_TAG: u8 = 1 << 3 | 2;

/// The size a batch of events is kept under, unless one event alone is larger:
/// well below gRPC's default 4 MiB receive limit.
pub const DEFAULT_BATCH_LIMIT: usize = 1 << 20;

/// Appends `body` (an encoded Event) framed as one element of
/// `EventBatch.events` (field 1): concatenated frames are an EventBatch.
/// An empty event is still an element (`0a 00`).
pub fn frame(body: &[u8], out: &mut Vec<u8>) {
    let (head, n) = frame_head(body.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(body);
}

/// The bytes before a framed body: the tag, then the body's length as a varint
/// (at most ten bytes); returns them and how many there are.
fn frame_head(body_len: usize) -> ([u8; 11], usize) {
    let mut head = [EVENTS_TAG; 11];
    let mut n = body_len;
    let mut at = 1;
    while n >= 0x80 {
        head[at] = (n as u8) | 0x80;
        n >>= 7;
        at += 1;
    }
    head[at] = n as u8;
    (head, at + 1)
}

/// The size of a `body_len`-byte event framed by [`frame`].
pub fn framed_len(body_len: usize) -> usize {
    // The varint takes 7 bits per byte; a length of 0 still takes one.
    let varint_len = (usize::BITS - (body_len | 1).leading_zeros()).div_ceil(7) as usize;
    1 + varint_len + body_len
}

/// What the items given to [`plan_batches`] and [`write_batch`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Items {
    /// Encoded Events as stored in PostgreSQL: each gets its frame.
    Bodies,
    /// Events already framed (by [`frame`], as the bus carries them): copied as they are.
    Frames,
}

impl Items {
    fn encoded_len(self, item: &[u8]) -> usize {
        match self {
            Items::Bodies => framed_len(item.len()),
            Items::Frames => item.len(),
        }
    }
}

/// One EventBatch message to build: `items[start..end]`, `len` bytes encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    pub start: usize,
    pub end: usize,
    pub len: usize,
}

/// Splits `items` into consecutive EventBatch messages of at most `limit`
/// bytes each, in order; an event larger than `limit` is a batch of its own.
/// No items, no batches.
pub fn plan_batches(items: &[&[u8]], kind: Items, limit: usize) -> Vec<BatchPlan> {
    let mut plans = Vec::new();
    let mut start = 0;
    let mut len = 0;
    for (i, item) in items.iter().enumerate() {
        let size = kind.encoded_len(item);
        if i > start && len + size > limit {
            plans.push(BatchPlan { start, end: i, len });
            start = i;
            len = 0;
        }
        len += size;
    }
    if start < items.len() {
        plans.push(BatchPlan { start, end: items.len(), len });
    }
    plans
}

/// Writes the EventBatch message holding `items` into `out`, which is exactly
/// as long as the message (the `len` of its [`BatchPlan`]).
///
/// # Panics
/// If `out` has another length: a caller's bug, never the data's.
pub fn write_batch(items: &[&[u8]], kind: Items, out: &mut [u8]) {
    let mut at = 0;
    for item in items {
        if kind == Items::Bodies {
            let (head, n) = frame_head(item.len());
            out[at..at + n].copy_from_slice(&head[..n]);
            at += n;
        }
        out[at..at + item.len()].copy_from_slice(item);
        at += item.len();
    }
    assert_eq!(at, out.len(), "the buffer must be exactly the batch's length");
}

/// The EventBatch messages holding `items`, each at most `limit` bytes unless
/// one event alone is larger (see [`plan_batches`]).
pub fn event_batches(items: &[&[u8]], kind: Items, limit: usize) -> Vec<Vec<u8>> {
    plan_batches(items, kind, limit)
        .into_iter()
        .map(|plan| {
            let mut out = vec![0; plan.len];
            write_batch(&items[plan.start..plan.end], kind, &mut out);
            out
        })
        .collect()
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
    fn framed_len_counts_every_varint_length_class() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 1 << 28, usize::MAX >> 1] {
            let mut head = Vec::new();
            varint(&mut head, n as u64);
            assert_eq!(framed_len(n), 1 + head.len() + n, "length {n}");
        }
    }

    #[test]
    fn batches_of_bodies_are_the_concatenated_frames() {
        let bodies: Vec<Vec<u8>> = [0usize, 1, 127, 128, 300, 16_383, 16_384, 2_097_152]
            .iter()
            .map(|&n| (0..n).map(|i| i as u8).collect())
            .collect();
        let items: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let mut expected = Vec::new();
        for body in &items {
            frame(body, &mut expected);
        }
        assert_eq!(event_batches(&items, Items::Bodies, usize::MAX), [expected.clone()]);
        // Frames given as they are make the same batch.
        let frames: Vec<Vec<u8>> = items
            .iter()
            .map(|body| {
                let mut out = Vec::new();
                frame(body, &mut out);
                out
            })
            .collect();
        let framed: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(event_batches(&framed, Items::Frames, usize::MAX), [expected]);
    }

    #[test]
    fn batches_split_under_the_limit_in_order() {
        let bodies: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; i * 7 % 40]).collect();
        let items: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let plans = plan_batches(&items, Items::Bodies, 100);
        assert!(plans.len() > 1);
        assert_eq!(plans[0].start, 0);
        assert_eq!(plans.last().unwrap().end, items.len());
        for (a, b) in plans.iter().zip(&plans[1..]) {
            assert_eq!(a.end, b.start);
            // Split only where the next event would not have fitted.
            assert!(a.len + framed_len(items[a.end].len()) > 100);
        }
        let batches = event_batches(&items, Items::Bodies, 100);
        assert!(batches.iter().all(|b| b.len() <= 100));
        let mut whole = Vec::new();
        for body in &items {
            frame(body, &mut whole);
        }
        assert_eq!(batches.concat(), whole);
    }

    #[test]
    fn an_event_larger_than_the_limit_is_a_batch_of_its_own() {
        let (small, big) = (vec![1u8; 10], vec![2u8; 500]);
        let items: Vec<&[u8]> = vec![&small, &big, &small, &small];
        let plans = plan_batches(&items, Items::Bodies, 100);
        let ranges: Vec<_> = plans.iter().map(|p| (p.start, p.end)).collect();
        assert_eq!(ranges, [(0, 1), (1, 2), (2, 4)]);
        assert_eq!(plans[1].len, framed_len(500));
        // A limit of zero: one event per batch.
        assert_eq!(plan_batches(&items, Items::Bodies, 0).len(), 4);
    }

    #[test]
    fn no_items_no_batches() {
        assert!(event_batches(&[], Items::Bodies, 100).is_empty());
        assert!(event_batches(&[], Items::Frames, 0).is_empty());
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
