//! `spool_record`: a spool frame's payload through the record decoder
//! (`egret::store::decode_record`), which every spool reader (cursors of
//! the sinks, `egret records`) runs on what it reads from disk.
//!
//! Layout: the payload bytes (the CRC framing around them is not part of
//! the input: a frame that fails its CRC never reaches the decoder).
//! Invariants: decoding never panics and never allocates more than the
//! payload can describe (a count or length the payload cannot hold is an
//! error before any allocation); a payload that decodes — binary, or JSON
//! as agents before the binary encoding wrote it — re-encodes to a binary
//! payload that decodes to the same record (compared by encoding, so NaN
//! floats compare equal), so records read from an old spool and rewritten
//! lose nothing; a binary payload that decodes holds exactly the
//! attributes it names (its own re-encoding is never longer, equal unless
//! it repeated or misordered keys).
//! Seeds: binary and JSON encodings of records with every value type and
//! bodies as the proxy keeps them (`fuzz/seeds.py`).
pub fn spool_record(data: &[u8]) {
    let Ok(rec) = egret::store::decode_record(data) else {
        return;
    };
    let mut enc = Vec::new();
    egret::store::encode_record(&mut enc, &rec);
    let back = egret::store::decode_record(&enc).expect("a re-encoded record decodes");
    let mut again = Vec::new();
    egret::store::encode_record(&mut again, &back);
    assert_eq!(enc, again, "binary encoding is stable through a decode");
    if data.first() == Some(&1) {
        assert!(
            enc.len() <= data.len(),
            "re-encoding a binary payload ({} bytes) grew it to {}",
            data.len(),
            enc.len()
        );
    }
}
