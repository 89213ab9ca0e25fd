//! Journal records: one per committed batch, written with a single
//! durable write before any appender of the batch is answered.
//!
//! Frame: `u32 payload length | 32-byte record digest | payload`;
//! payload: `u64 old size | u32 entry count | u32 entries length | entries
//! (u16 length + bytes) | the signed checkpoint note for the new size`.
//!
//! The record digest is SHA-256 over a domain tag, the payload's 16-byte
//! header, the entries' RFC 9162 leaf hashes in order, and the note. It
//! commits to every payload byte as a digest of the payload would (a leaf
//! hash commits to its entry, the header to how the entries are framed),
//! but the leaf hashes are already computed, in parallel, by the appenders:
//! hashing the whole payload again cost about 25 µs per batch on the
//! append path, between one sync and the next. Frames written before this
//! digest (SHA-256 of the payload) are still read.
//!
//! A frame that is cut short or whose digest does not match at the very end
//! of the journal is a write a crash interrupted (never acknowledged);
//! anywhere else it is tampering.

use kfm_core::Digest;
use sha2::{Digest as _, Sha256};

use crate::merkle::{Hash, leaf_hash};
use crate::tiles::{parse_bundle, push_entry};

/// Separates record digests from every other SHA-256 input in the ledger.
const RECORD_TAG: &[u8] = b"kfm-ledger journal record v2\n";

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

/// The record digest over a payload's header, its entries' leaf hashes
/// and its note (see the module docs).
fn record_digest<'a>(
    header: &[u8],
    leaves: impl IntoIterator<Item = &'a Hash>,
    note: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RECORD_TAG);
    h.update(header);
    for l in leaves {
        h.update(l);
    }
    h.update(note);
    h.finalize().into()
}

/// Frames one batch. `leaves[i]` must be the leaf hash of `entries[i]`
/// (the writer has them from the appenders; a wrong one makes the record
/// unreadable, never silently different).
pub(crate) fn encode<E: AsRef<[u8]>>(
    old_size: u64,
    entries: &[E],
    leaves: &[Hash],
    note: &[u8],
) -> Vec<u8> {
    debug_assert_eq!(entries.len(), leaves.len());
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
    let digest = record_digest(&frame[36..52], leaves, note);
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame[4..36].copy_from_slice(&digest);
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
    // Complete input always decides.
    decode_inner(bytes, floor, true).map(|d| {
        d.unwrap_or(Decoded {
            records: Vec::new(),
            #[cfg(test)]
            valid_len: 0,
        })
    })
}

/// Whether `prefix`, the start of a journal file, already decides what
/// [`decode`] of the whole file returns: the chain ends inside it (at a
/// zero length or a stale record), or it holds an error. Not when it ends
/// in the middle of a frame, or at a bad frame (only the rest of the file
/// tells a torn write from damage).
pub(crate) fn ends_within(prefix: &[u8], floor: u64) -> bool {
    !matches!(decode_inner(prefix, floor, false), Ok(None))
}

/// [`decode`]; with `complete` false, `bytes` may be only the start of the
/// file, and `None` means the rest is needed.
fn decode_inner(bytes: &[u8], floor: u64, complete: bool) -> Result<Option<Decoded>, String> {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0usize;
    loop {
        let rest = &bytes[at..];
        if rest.len() < 4 {
            if complete {
                break;
            }
            return Ok(None);
        }
        // A zero length marks the end: files are preallocated with zeros.
        if rest[..4] == [0, 0, 0, 0] {
            break;
        }
        let expect = records.last().map(Record::new_size);
        let Some((flen, payload)) = frame_at(rest) else {
            if !complete {
                return Ok(None);
            }
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
    Ok(Some(Decoded {
        records,
        #[cfg(test)]
        valid_len: at as u64,
    }))
}

/// The length and payload of the digest-valid frame at the start of `rest`.
fn frame_at(rest: &[u8]) -> Option<(usize, &[u8])> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let hash = rest.get(4..36)?;
    let payload = rest.get(36..36usize.checked_add(len)?)?;
    if len <= 16 {
        return None;
    }
    let valid = payload_digest(payload).is_some_and(|d| d[..] == *hash)
        // Frames written before the record digest: SHA-256 of the payload.
        || Digest::of(payload).as_bytes()[..] == *hash;
    valid.then_some((36 + len, payload))
}

/// The record digest a well-formed payload must carry (`None` if its
/// entries are not framed as its header says).
fn payload_digest(payload: &[u8]) -> Option<[u8; 32]> {
    let blen = u32::from_be_bytes(payload.get(12..16)?.try_into().ok()?) as usize;
    let bundle = payload.get(16..16usize.checked_add(blen)?)?;
    let leaves: Vec<Hash> = parse_bundle(bundle)?.into_iter().map(leaf_hash).collect();
    Some(record_digest(
        &payload[..16],
        &leaves,
        &payload[16 + blen..],
    ))
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

    /// Frames a batch the way the writer does, leaf hashes included.
    fn encode(old_size: u64, entries: &[Vec<u8>], note: &[u8]) -> Vec<u8> {
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        super::encode(old_size, entries, &leaves, note)
    }

    /// The frame an earlier version wrote: SHA-256 of the payload.
    fn encode_legacy(old_size: u64, entries: &[Vec<u8>], note: &[u8]) -> Vec<u8> {
        let mut frame = encode(old_size, entries, note);
        let digest = Digest::of(&frame[36..]);
        frame[4..36].copy_from_slice(digest.as_bytes());
        frame
    }

    #[test]
    fn any_altered_byte_of_a_record_makes_it_unreadable() {
        let rec = encode(
            7,
            &[b"first".to_vec(), vec![b'x'; 300], Vec::new()],
            b"note-10",
        );
        assert_eq!(decode(&rec, 0).unwrap().records.len(), 1);
        for at in 0..rec.len() {
            let mut bad = rec.clone();
            bad[at] ^= 0x20;
            // Alone at the end of a journal it reads as a torn write.
            assert!(decode(&bad, 0).unwrap().records.is_empty(), "byte {at}");
        }
        // A record framed with a wrong leaf hash is never read.
        let entries = [b"a".to_vec(), b"b".to_vec()];
        let wrong = super::encode(0, &entries, &[leaf_hash(b"a"), leaf_hash(b"c")], b"n");
        assert!(decode(&wrong, 0).unwrap().records.is_empty());
    }

    /// Readers read a journal file in chunks until [`ends_within`] says the
    /// chunk decides: at every cut of a reused file, the prefix either
    /// decides exactly what the whole file does, or asks for more.
    #[test]
    fn a_prefix_decides_only_when_the_whole_file_would_agree() {
        let old: Vec<u8> = (0..4u64)
            .flat_map(|i| encode(i * 2, &[vec![b'o'; 90], vec![b'p'; 5]], b"old"))
            .collect();
        let new = [
            encode(8, &[b"a".to_vec()], b"note-9"),
            encode(9, &[b"b".to_vec(), b"c".to_vec()], b"note-11"),
        ]
        .concat();
        // Ends at a stale record, at a zero length, and at a torn write
        // followed by stale records.
        let stale_end = [
            new.clone(),
            encode(2, &[b"s".to_vec()], b"old"),
            old.clone(),
        ]
        .concat();
        let zero_end = [new.clone(), vec![0; 64]].concat();
        let mut torn = old.clone();
        torn[..new.len()].copy_from_slice(&new);
        torn[new.len() - 3] ^= 1;
        for (what, file) in [("stale", stale_end), ("zeros", zero_end), ("torn", torn)] {
            let whole = decode(&file, 8).map(|d| (d.records, d.valid_len));
            let mut decided = false;
            for cut in 0..=file.len() {
                if ends_within(&file[..cut], 8) {
                    decided = true;
                    let part = decode(&file[..cut], 8).map(|d| (d.records, d.valid_len));
                    assert_eq!(part, whole, "{what}: cut at {cut}");
                } else {
                    assert!(!decided, "{what}: decided at a shorter cut, not at {cut}");
                }
            }
            // The torn write is only told from damage by the whole file.
            assert_eq!(ends_within(&file, 8), what != "torn", "{what}");
        }
        // Damage in the middle is an error of the whole file, never of a
        // prefix that stops before the intact record after it.
        let mut damaged = [new.clone(), vec![0; 8]].concat();
        damaged[40] ^= 1;
        assert!(decode(&damaged, 8).is_err());
        assert!(!ends_within(&damaged[..new.len()], 8));
    }

    #[test]
    fn records_of_the_earlier_frame_digest_are_still_read() {
        let j = [
            encode_legacy(0, &[b"a".to_vec()], b"note-1"),
            encode(1, &[b"b".to_vec(), b"c".to_vec()], b"note-3"),
        ]
        .concat();
        let d = decode(&j, 0).unwrap();
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.records[0].entries, [b"a".to_vec()]);
        assert_eq!(d.valid_len, j.len() as u64);
    }

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
