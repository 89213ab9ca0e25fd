//! Journal records: one per committed batch, written with a single
//! `fdatasync` before any appender of the batch is answered.
//!
//! Frame: `u32 payload length | 32-byte SHA-256 of the payload | payload`;
//! payload: `u64 old size | u32 entry count | entries (u16 length + bytes) |
//! the signed checkpoint note for the new size`. A frame that is cut short
//! or whose hash does not match at the very end of the journal is a write a
//! crash interrupted (never acknowledged); anywhere else it is tampering.

use kfm_core::Digest;

use crate::tiles::{parse_bundle, push_entry};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub old_size: u64,
    pub entries: Vec<Vec<u8>>,
    pub note: Vec<u8>,
}

impl Record {
    pub fn new_size(&self) -> u64 {
        self.old_size + self.entries.len() as u64
    }
}

pub(crate) fn encode(old_size: u64, entries: &[Vec<u8>], note: &[u8]) -> Vec<u8> {
    let mut bundle = Vec::new();
    for e in entries {
        push_entry(&mut bundle, e);
    }
    let mut payload = Vec::with_capacity(12 + 4 + bundle.len() + note.len());
    payload.extend_from_slice(&old_size.to_be_bytes());
    payload.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    payload.extend_from_slice(&(bundle.len() as u32).to_be_bytes());
    payload.extend_from_slice(&bundle);
    payload.extend_from_slice(note);
    let mut frame = Vec::with_capacity(36 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(Digest::of(&payload).as_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// What reading a journal found.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub records: Vec<Record>,
    /// Length of the valid prefix; anything after it is a torn final write.
    pub valid_len: u64,
}

/// Decodes every frame up to the first zero length (the preallocated end).
/// A bad frame with an intact frame somewhere after it is reported as
/// corruption at its byte offset; a bad last frame is a torn write.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        // A zero length marks the end: the file is preallocated with zeros.
        if rest.len() < 4 || rest[..4] == [0, 0, 0, 0] {
            break;
        }
        let frame = (|| {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let hash = rest.get(4..36)?;
            let payload = rest.get(36..36 + len)?;
            (Digest::of(payload).as_bytes()[..] == *hash).then_some((36 + len, payload))
        })();
        let Some((flen, payload)) = frame else {
            // A torn final write leaves a short or unhashed last frame; the
            // writer truncates it. Anything that is not the tail cannot be told
            // apart from tampering without the frame, so it is refused when a
            // valid frame follows.
            if find_valid_frame_after(bytes, at + 1) {
                return Err(format!(
                    "journal record at byte {at} is corrupt (a later record is intact)"
                ));
            }
            break;
        };
        let parse = || -> Option<Record> {
            let old_size = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
            let count = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
            let blen = u32::from_be_bytes(payload.get(12..16)?.try_into().ok()?) as usize;
            let bundle = payload.get(16..16 + blen)?;
            let entries: Vec<Vec<u8>> = parse_bundle(bundle)?
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect();
            (entries.len() == count).then(|| Record {
                old_size,
                entries,
                note: payload[16 + blen..].to_vec(),
            })
        };
        let rec = parse().ok_or_else(|| format!("journal record at byte {at} is malformed"))?;
        records.push(rec);
        at += flen;
    }
    Ok(Decoded {
        records,
        valid_len: at as u64,
    })
}

/// Whether any offset after `from` starts a complete, hash-valid frame.
fn find_valid_frame_after(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len().saturating_sub(36)).any(|i| {
        let rest = &bytes[i..];
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest.get(36..36 + len)
            .is_some_and(|p| len > 16 && Digest::of(p).as_bytes()[..] == rest[4..36])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_torn_tails_are_cut_and_middle_damage_is_refused() {
        let a = encode(0, &[b"a".to_vec(), b"bb".to_vec()], b"note-2");
        let b = encode(2, &[b"c".to_vec()], b"note-3");
        let mut j = [a.clone(), b.clone()].concat();
        let d = decode(&j).unwrap();
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.records[1].new_size(), 3);
        assert_eq!(d.valid_len, j.len() as u64);

        // A torn last frame: cut at every length; the first record survives.
        for cut in a.len()..j.len() {
            let d = decode(&j[..cut]).unwrap();
            assert_eq!(d.records.len(), 1, "cut {cut}");
            assert_eq!(d.valid_len, a.len() as u64);
        }
        // Zero padding after the records ends the journal.
        let padded = [j.clone(), vec![0u8; 4096]].concat();
        assert_eq!(decode(&padded).unwrap().valid_len, j.len() as u64);
        // Damage in the first frame with an intact second: refused.
        j[40] ^= 1;
        assert!(decode(&j).unwrap_err().contains("byte 0"));
    }
}
