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

pub(crate) fn encode<E: AsRef<[u8]>>(old_size: u64, entries: &[E], note: &[u8]) -> Vec<u8> {
    // One buffer, written once: this runs on the append path, between an
    // appender's wake-up and its batch's sync.
    let blen: usize = entries.iter().map(|e| 2 + e.as_ref().len()).sum();
    let mut frame = Vec::with_capacity(36 + 16 + blen + note.len());
    frame.extend_from_slice(&[0; 36]);
    frame.extend_from_slice(&old_size.to_be_bytes());
    frame.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(blen as u32).to_be_bytes());
    for e in entries {
        push_entry(&mut frame, e.as_ref());
    }
    frame.extend_from_slice(note);
    let len = (frame.len() - 36) as u32;
    let digest = Digest::of(&frame[36..]);
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame[4..36].copy_from_slice(digest.as_bytes());
    frame
}

/// What reading a journal file found.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub records: Vec<Record>,
    /// Length of the valid prefix; anything after it is a torn final
    /// write, zero padding, or stale records of the file's earlier use.
    #[cfg(test)]
    pub valid_len: u64,
}

/// Decodes the chain of records from the start of a journal file.
///
/// Files are reused, so what follows the last record may be zeros (end),
/// a torn write, or records of the file's earlier use. Records chain: each
/// starts where the one before ends. An intact record that starts earlier
/// is stale, and ends the chain; one that starts later means records are
/// missing, and is refused. `floor` is the tree size the tiles hold: every
/// stale record ends at or below it, because a file is reused only once
/// the tiles hold all it had.
///
/// A bad frame is a torn last write, unless an intact record that could
/// belong to this chain (starting at or after where the chain has got to)
/// follows it somewhere: then it is damage in the middle, reported as
/// corruption at its byte offset.
pub(crate) fn decode(bytes: &[u8], floor: u64) -> Result<Decoded, String> {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        // A zero length marks the end: files are preallocated with zeros.
        if rest.len() < 4 || rest[..4] == [0, 0, 0, 0] {
            break;
        }
        let expect = records.last().map(Record::new_size);
        let Some((flen, payload)) = frame_at(rest) else {
            if find_chain_frame_after(bytes, at + 1, expect.unwrap_or(floor)) {
                return Err(format!(
                    "journal record at byte {at} is corrupt (a later record is intact)"
                ));
            }
            break;
        };
        let rec =
            parse(payload).ok_or_else(|| format!("journal record at byte {at} is malformed"))?;
        match expect {
            Some(e) if rec.old_size < e => break, // stale: an earlier use
            Some(e) if rec.old_size > e => {
                return Err(format!(
                    "journal record at byte {at} starts at entry {} but the record before it ends at entry {e}: records are missing",
                    rec.old_size
                ));
            }
            _ => {}
        }
        records.push(rec);
        at += flen;
    }
    Ok(Decoded {
        records,
        #[cfg(test)]
        valid_len: at as u64,
    })
}

/// The length and payload of the hash-valid frame at the start of `rest`.
fn frame_at(rest: &[u8]) -> Option<(usize, &[u8])> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let hash = rest.get(4..36)?;
    let payload = rest.get(36..36usize.checked_add(len)?)?;
    (len > 16 && Digest::of(payload).as_bytes()[..] == *hash).then_some((36 + len, payload))
}

fn parse(payload: &[u8]) -> Option<Record> {
    let old_size = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let count = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
    let blen = u32::from_be_bytes(payload.get(12..16)?.try_into().ok()?) as usize;
    let bundle = payload.get(16..16usize.checked_add(blen)?)?;
    let entries: Vec<Vec<u8>> = parse_bundle(bundle)?
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    (entries.len() == count).then(|| Record {
        old_size,
        entries,
        note: payload[16 + blen..].to_vec(),
    })
}

/// Whether any offset after `from` starts an intact record that starts at
/// or after entry `min` (so could not be a stale one).
fn find_chain_frame_after(bytes: &[u8], from: usize, min: u64) -> bool {
    (from..bytes.len().saturating_sub(36)).any(|i| {
        frame_at(&bytes[i..])
            .and_then(|(_, p)| p.get(..8))
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b| u64::from_be_bytes(b) >= min)
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
        let d = decode(&j, 0).unwrap();
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.records[1].new_size(), 3);
        assert_eq!(d.valid_len, j.len() as u64);

        // A torn last frame: cut at every length; the first record survives.
        for cut in a.len()..j.len() {
            let d = decode(&j[..cut], 0).unwrap();
            assert_eq!(d.records.len(), 1, "cut {cut}");
            assert_eq!(d.valid_len, a.len() as u64);
        }
        // Zero padding after the records ends the journal.
        let padded = [j.clone(), vec![0u8; 4096]].concat();
        assert_eq!(decode(&padded, 0).unwrap().valid_len, j.len() as u64);
        // Damage in the first frame with an intact second: refused.
        j[40] ^= 1;
        assert!(decode(&j, 0).unwrap_err().contains("byte 0"));
    }

    /// A reused file: new records over the records of its earlier use.
    /// Whatever the new records' lengths, the chain stops where they end,
    /// a torn new record is a torn tail (the stale records after it start
    /// too early to belong), and damage followed by a new record is not.
    #[test]
    fn stale_records_of_a_reused_file_end_the_chain() {
        let old: Vec<u8> = (0..6u64)
            .flat_map(|i| {
                encode(
                    i * 3,
                    &[vec![b'o'; 300], vec![b'p'; 10], vec![b'q'; 7]],
                    b"old",
                )
            })
            .collect();
        // The tiles hold the 18 old entries; the file restarts at 18.
        let new_a = encode(18, &[b"a".to_vec()], b"note-19");
        let new_b = encode(19, &[b"b".to_vec(), b"c".to_vec()], b"note-21");
        let mut file = old.clone();
        file[..new_a.len()].copy_from_slice(&new_a);
        let d = decode(&file, 18).unwrap();
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.valid_len, new_a.len() as u64);

        let both = [new_a.clone(), new_b.clone()].concat();
        let mut file = old.clone();
        file[..both.len()].copy_from_slice(&both);
        let d = decode(&file, 18).unwrap();
        assert_eq!(
            d.records.iter().map(Record::new_size).collect::<Vec<_>>(),
            [19, 21]
        );

        // new_b torn at every length: still just new_a, never an error.
        for cut in new_a.len()..both.len() {
            let mut file = old.clone();
            file[..cut].copy_from_slice(&both[..cut]);
            let d = decode(&file, 18).unwrap();
            assert_eq!(d.records.len(), 1, "cut {cut}");
        }
        // The very first new record torn: nothing, not corruption.
        let mut file = old.clone();
        file[..10].copy_from_slice(&new_a[..10]);
        assert!(decode(&file, 18).unwrap().records.is_empty());

        // Damage in new_a while new_b is intact: corruption.
        let mut file = old.clone();
        file[..both.len()].copy_from_slice(&both);
        file[40] ^= 1;
        assert!(decode(&file, 18).unwrap_err().contains("byte 0"));

        // A record that skips entries is refused, not taken as stale.
        let gap = [new_a.clone(), encode(25, &[b"z".to_vec()], b"note-26")].concat();
        assert!(decode(&gap, 18).unwrap_err().contains("missing"));
    }
}
