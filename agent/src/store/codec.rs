//! The encoding of a record inside a frame's payload.
//!
//! Frames written by this version carry a compact binary encoding; frames
//! written before it carry the record's JSON. Both are read: the first
//! payload byte tells them apart (a JSON frame starts with `{`, a binary
//! one with [`BINARY_V1`]).
//!
//! ```text
//! payload  = 0x01 count:u32le attr*count
//! attr     = key:str tag:u8 value
//! str      = len:varint bytes(len)          (UTF-8)
//! value    = tag 0: false   tag 1: true     (no bytes)
//!            tag 2: int     i64le
//!            tag 3: float   f64le (bits)
//!            tag 4: string  str
//!            tag 5: strings n:varint str*n
//! varint   = unsigned LEB128, at most 10 bytes
//! ```
//!
//! Strings (bodies included) are copied as they are: no escaping, no
//! quoting. Attributes are written in the record's (sorted) order; a
//! decoder keeps the last of duplicate keys, as the JSON reader does.
use crate::record::{AttrValue, Record};

/// First payload byte of a binary (version 1) record.
pub const BINARY_V1: u8 = 0x01;

const TAG_FALSE: u8 = 0;
const TAG_TRUE: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_FLOAT: u8 = 3;
const TAG_STR: u8 = 4;
const TAG_STRS: u8 = 5;

/// Why a frame payload does not decode to a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record payload")]
    Empty,
    #[error("unknown record encoding (first byte {0:#04x})")]
    UnknownEncoding(u8),
    #[error("record payload ends inside an attribute")]
    Truncated,
    #[error("unknown attribute value tag {0}")]
    BadTag(u8),
    #[error("attribute key or string is not UTF-8")]
    NotUtf8,
    #[error("varint longer than 64 bits")]
    BadVarint,
    #[error("{0} bytes after the last attribute")]
    Trailing(usize),
    #[error("JSON record: {0}")]
    Json(#[from] serde_json::Error),
}

/// Appends the binary encoding of `record` (a frame's payload as the spool
/// writes it) to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, record: &Record) {
    encode(buf, record, |_| true);
}

/// Appends the binary encoding of the attributes of `record` that `keep`
/// accepts.
pub(super) fn encode(buf: &mut Vec<u8>, record: &Record, keep: impl Fn(&str) -> bool) {
    buf.push(BINARY_V1);
    let count_at = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    let mut count = 0u32;
    for (k, v) in record.iter() {
        if !keep(k) {
            continue;
        }
        count += 1;
        put_str(buf, k);
        match v {
            AttrValue::Bool(false) => buf.push(TAG_FALSE),
            AttrValue::Bool(true) => buf.push(TAG_TRUE),
            AttrValue::Int(i) => {
                buf.push(TAG_INT);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            AttrValue::Float(f) => {
                buf.push(TAG_FLOAT);
                buf.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            AttrValue::Str(s) => {
                buf.push(TAG_STR);
                put_str(buf, s);
            }
            AttrValue::StrArray(a) => {
                buf.push(TAG_STRS);
                put_varint(buf, a.len() as u64);
                for s in a {
                    put_str(buf, s);
                }
            }
        }
    }
    buf[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
}

/// Decodes a frame payload: binary, or JSON as older versions wrote it.
pub fn decode(payload: &[u8]) -> Result<Record, DecodeError> {
    match payload.first() {
        None => Err(DecodeError::Empty),
        Some(&BINARY_V1) => decode_binary(&payload[1..]),
        Some(b'{') => Ok(serde_json::from_slice(payload)?),
        Some(&b) => Err(DecodeError::UnknownEncoding(b)),
    }
}

fn decode_binary(data: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader { data };
    let count = u32::from_le_bytes(r.array()?);
    let mut rec = Record::default();
    for _ in 0..count {
        let key = r.str()?;
        let value = match r.byte()? {
            TAG_FALSE => AttrValue::Bool(false),
            TAG_TRUE => AttrValue::Bool(true),
            TAG_INT => AttrValue::Int(i64::from_le_bytes(r.array()?)),
            TAG_FLOAT => AttrValue::Float(f64::from_bits(u64::from_le_bytes(r.array()?))),
            TAG_STR => AttrValue::Str(r.str()?.to_owned()),
            TAG_STRS => {
                let n = r.varint()?;
                // Each string takes at least its length byte: a count the
                // payload cannot hold is refused before allocating.
                if n > r.data.len() as u64 {
                    return Err(DecodeError::Truncated);
                }
                let mut a = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    a.push(r.str()?.to_owned());
                }
                AttrValue::StrArray(a)
            }
            t => return Err(DecodeError::BadTag(t)),
        };
        rec.set(key.to_owned(), value);
    }
    match r.data.len() {
        0 => Ok(rec),
        n => Err(DecodeError::Trailing(n)),
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.data.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err(DecodeError::BadVarint);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semconv as sc;

    fn binary(r: &Record) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, r, |_| true);
        buf
    }

    /// A record with every value type, edge values included, and bodies as
    /// the proxy keeps them (text with characters JSON escapes; a base64
    /// body with its flag).
    fn every_type() -> Record {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::GEN_AI_REQUEST_STREAM, true);
        r.set(sc::RESPONSE_BODY_B64, false);
        r.set(sc::REQUEST_BODY_B64, true);
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 0i64);
        r.set(sc::START_TIME, i64::MAX);
        r.set(sc::END_TIME, i64::MIN);
        r.set(sc::HTTP_RESPONSE_STATUS_CODE, -1i64);
        r.set(sc::DURATION_MS, 1.5);
        r.set("egret.test.float_neg_zero", -0.0);
        r.set("egret.test.float_tiny", f64::MIN_POSITIVE);
        r.set("egret.test.float_int_valued", 3.0);
        r.set(
            sc::REQUEST_BODY,
            // The base64 of bytes that are not UTF-8 (0xff 0xfe 0x00 0x80).
            "//4AgA==",
        );
        r.set(
            sc::RESPONSE_BODY,
            "{\"a\":\"line\\nbreak \u{1}\u{7f} \u{e9}\u{1f600} \\\" </script>\"}\r\n\0tail",
        );
        r.set("egret.test.empty", "");
        r.set(sc::GEN_AI_RESPONSE_FINISH_REASONS, vec!["stop".to_owned()]);
        r.set("egret.test.strings_empty", Vec::<String>::new());
        r.set(
            "egret.test.strings",
            vec![String::new(), "x".repeat(300), "\u{e9}\"\\".to_owned()],
        );
        r.set("k\u{e9}y \"quoted\"", "non-ASCII key");
        r
    }

    #[test]
    fn binary_round_trip_keeps_every_type_and_byte() {
        let r = every_type();
        let enc = binary(&r);
        assert_eq!(enc[0], BINARY_V1);
        let back = decode(&enc).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.get(sc::DURATION_MS), Some(&AttrValue::Float(1.5)));
        assert_eq!(
            back.get("egret.test.float_int_valued"),
            Some(&AttrValue::Float(3.0)),
            "a float stays a float"
        );
        assert_eq!(back.get_i64(sc::END_TIME), Some(i64::MIN));
        assert_eq!(back.get_bool(sc::REQUEST_BODY_B64), Some(true));
        assert_eq!(back.get_bool(sc::RESPONSE_BODY_B64), Some(false));
        assert!(matches!(
            back.get("egret.test.float_neg_zero"),
            Some(AttrValue::Float(f)) if f.to_bits() == (-0.0f64).to_bits()
        ));
        // Bodies are stored as they are, unescaped.
        let body = r.get_str(sc::RESPONSE_BODY).unwrap().as_bytes();
        assert!(enc.windows(body.len()).any(|w| w == body));
        assert_eq!(binary(&back), enc, "re-encoding is byte-identical");
    }

    #[test]
    fn json_frames_of_older_versions_still_decode() {
        let r = every_type();
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(json[0], b'{');
        assert_eq!(decode(&json).unwrap(), r);
    }

    #[test]
    fn a_filter_drops_attributes_from_the_encoding() {
        let r = every_type();
        let mut buf = Vec::new();
        encode(&mut buf, &r, |k| {
            k != sc::REQUEST_BODY && k != sc::RESPONSE_BODY
        });
        let back = decode(&buf).unwrap();
        let mut want = r.clone();
        want.retain(|k| k != sc::REQUEST_BODY && k != sc::RESPONSE_BODY);
        assert_eq!(back, want);
        assert!(back.get(sc::REQUEST_BODY).is_none());
    }

    #[test]
    fn every_damaged_payload_is_an_error_never_a_panic() {
        let enc = binary(&every_type());
        for n in 0..enc.len() {
            assert!(decode(&enc[..n]).is_err(), "truncated at {n} decoded");
        }
        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(DecodeError::Trailing(1))));
        assert!(matches!(
            decode(&[0x02, 0]),
            Err(DecodeError::UnknownEncoding(2))
        ));
        // A key that is not UTF-8.
        assert!(matches!(
            decode(&[BINARY_V1, 1, 0, 0, 0, 1, 0xff, TAG_TRUE]),
            Err(DecodeError::NotUtf8)
        ));
        assert!(matches!(
            decode(&[BINARY_V1, 1, 0, 0, 0, 1, b'k', 9]),
            Err(DecodeError::BadTag(9))
        ));
        // A huge array count or string length is refused, not allocated.
        let mut huge = vec![BINARY_V1, 1, 0, 0, 0, 1, b'k', TAG_STRS];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(decode(&huge), Err(DecodeError::Truncated)));
        let mut long = vec![BINARY_V1, 1, 0, 0, 0, 1, b'k', TAG_STR];
        long.extend_from_slice(&[0xff; 11]);
        assert!(matches!(decode(&long), Err(DecodeError::BadVarint)));
        // Flip every byte in turn: errors or records, no panic.
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0xa5;
            let _ = decode(&bad);
        }
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;

    /// The fuzz seeds (`fuzz/seeds.py` writes the binary ones from its own
    /// encoder) decode, and the binary ones are exactly what this encoder
    /// writes for the record they hold: two writers of the format agree.
    #[test]
    fn the_fuzz_seeds_match_this_encoder() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/spool_record");
        let mut binary = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("seed-") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let rec = decode(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(rec.get("egret.record.kind").is_some(), "{name}");
            if name.starts_with("seed-binary-") {
                let mut enc = Vec::new();
                encode_record(&mut enc, &rec);
                assert_eq!(enc, data, "{name}");
                binary += 1;
            }
        }
        assert!(binary >= 2, "binary seeds in {}", dir.display());
    }
}
