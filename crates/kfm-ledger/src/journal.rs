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
//! Where records are: the store starts every write (one group of records)
//! at a 4 KiB block boundary and ends it with a zero length. So the chain
//! of records is followed record by record within a write, and from a zero
//! length to the next block boundary between writes. When the chain meets
//! bytes that are not a record, only block boundaries after it can hold a
//! later write: [`decode`] looks there (a few header bytes each, a frame
//! read and hashed only when its header is plausible, within a budget), so
//! a journal of any content is judged in time linear in its size.
//!
//! A record that does not verify with an intact later record of the same
//! chain after it is damage: an error naming both. One with nothing after
//! it is reported as where the chain stopped ([`Stop`]): a write a crash
//! tore before it was acknowledged, stale bytes of the file's earlier use,
//! or damage to an acknowledged record. The ledger tells these apart with
//! the checkpoint it witnessed (see `guard`).

use crate::durable::{JOURNAL_BLOCK, JournalFile};
use kfm_core::Digest;
use sha2::{Digest as _, Sha256};

use crate::merkle::{Hash, leaf_hash};
use crate::tiles::{parse_bundle, push_entry};

/// Separates record digests from every other SHA-256 input in the ledger.
const RECORD_TAG: &[u8] = b"kfm-ledger journal record v2\n";

/// The longest record payload a reader accepts. The writer closes a batch
/// once its entries reach [`BATCH_BYTES`] (so a payload is at most that
/// plus one entry, its framing and a note), far below this.
pub(crate) const MAX_PAYLOAD: usize = 4 << 20;

/// Entry bytes after which the writer closes a batch.
pub(crate) const BATCH_BYTES: usize = 1 << 20;

/// No ledger reaches this many entries: a header claiming more is noise.
const MAX_PLAUSIBLE_ENTRY: u64 = 1 << 48;

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

/// Random-access bytes: a journal file, or a slice (tests).
pub(crate) trait Source {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; fewer bytes only at the end.
    fn read_into(&self, buf: &mut [u8], offset: u64) -> Result<usize, String>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_into(&self, buf: &mut [u8], offset: u64) -> Result<usize, String> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl Source for JournalFile {
    fn size(&self) -> u64 {
        self.len()
    }
    fn read_into(&self, buf: &mut [u8], offset: u64) -> Result<usize, String> {
        self.read_at(buf, offset).map_err(|e| e.to_string())
    }
}

/// Reads through a window of the source, so that following the chain
/// costs a system call per megabyte, not per record.
struct Window<'a, S: Source + ?Sized> {
    src: &'a S,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW: usize = 1 << 20;

impl<'a, S: Source + ?Sized> Window<'a, S> {
    fn new(src: &'a S) -> Self {
        Self {
            src,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Up to `n` bytes at `at` (fewer only at the end of the source).
    fn get(&mut self, at: u64, n: usize) -> Result<&[u8], String> {
        let end = self.start + self.buf.len() as u64;
        let have_all = at >= self.start && at + n as u64 <= end;
        let at_eof = at >= self.start && end == self.src.size() && at <= end;
        if !(have_all || at_eof) {
            self.buf.resize(n.max(WINDOW), 0);
            let got = self.src.read_into(&mut self.buf, at)?;
            self.buf.truncate(got);
            self.start = at;
        }
        let from = (at - self.start) as usize;
        let to = (from + n).min(self.buf.len());
        Ok(&self.buf[from..to])
    }
}

/// Where the chain stopped at bytes that are neither a record, nor a zero
/// length, nor a stale record, with no intact record of the chain after
/// them: a torn unacknowledged write, stale bytes of an earlier use, or
/// damage. Which of them, the witnessed checkpoint tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop {
    pub offset: u64,
    /// The frame length its header claims, when plausible.
    pub claimed: Option<u64>,
    /// Right after a record of the same write (a write cut short), rather
    /// than at a block boundary after the end of one (where stale bytes
    /// of a reused file are normal).
    pub after_record: bool,
}

/// What reading a journal file found.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub records: Vec<Record>,
    pub stopped: Option<Stop>,
    /// End of the last record read.
    #[cfg(test)]
    #[allow(dead_code)]
    pub valid_len: u64,
}

/// What a position of the file holds.
enum At {
    /// The end of the file.
    Eof,
    /// A zero length: the end of a write.
    Zero,
    /// An intact record and its frame length.
    Record(Record, u64),
    /// Anything else.
    Bytes { claimed: Option<u64> },
}

fn at<S: Source + ?Sized>(w: &mut Window<'_, S>, pos: u64) -> Result<At, String> {
    let head = w.get(pos, 4)?;
    if head.len() < 4 {
        return Ok(At::Eof);
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return Ok(At::Zero);
    }
    if len <= 16 || len > MAX_PAYLOAD {
        return Ok(At::Bytes { claimed: None });
    }
    let frame = w.get(pos, 36 + len)?;
    if frame.len() < 36 + len {
        return Ok(At::Bytes {
            claimed: Some(36 + len as u64),
        });
    }
    let flen = 36 + len as u64;
    Ok(match frame_at(frame).and_then(|(_, p)| parse(p)) {
        Some(rec) => At::Record(rec, flen),
        None => At::Bytes {
            claimed: Some(flen),
        },
    })
}

/// Decodes the chain of records from the start of a journal file.
///
/// Files are reused, so what follows the last write may be zeros (end),
/// a torn write, or records of the file's earlier use. Records chain: each
/// starts at the tree size where the one before ends. An intact record that
/// starts earlier is stale, and ends the chain; one that starts later means
/// records are missing, and is refused. `floor` is the tree size the tiles
/// hold: every stale record ends at or below it, because a file is reused
/// only once the tiles hold all it had.
pub(crate) fn decode<S: Source + ?Sized>(src: &S, floor: u64) -> Result<Decoded, String> {
    let mut w = Window::new(src);
    let mut records: Vec<Record> = Vec::new();
    let mut pos = 0u64;
    // Entries hashed while looking past damage: bounded, so crafted bytes
    // cannot make a reader hash more than the file holds, twice over.
    let mut budget = 2 * src.size() + (MAX_PAYLOAD as u64);
    let done = |records: Vec<Record>, stopped: Option<Stop>, _end: u64| Decoded {
        records,
        stopped,
        #[cfg(test)]
        valid_len: _end,
    };
    loop {
        let expect = records.last().map(Record::new_size);
        let (place, found) = match at(&mut w, pos)? {
            At::Eof => return Ok(done(records, None, pos)),
            At::Zero if records.is_empty() => return Ok(done(records, None, pos)),
            At::Zero => {
                // The end of a write; the next one starts at the next
                // block boundary, if there is one.
                let next = (pos + 4).next_multiple_of(JOURNAL_BLOCK);
                (next, at(&mut w, next)?)
            }
            other => (pos, other),
        };
        match found {
            At::Eof | At::Zero => return Ok(done(records, None, pos)),
            At::Record(rec, flen) => match expect {
                Some(e) if rec.old_size < e => return Ok(done(records, None, pos)),
                Some(e) if rec.old_size > e => {
                    return Err(format!(
                        "journal record at byte {place} starts at entry {} but the record before it ends at entry {e}: entries {e}..{} are missing",
                        rec.old_size, rec.old_size
                    ));
                }
                _ => {
                    records.push(rec);
                    pos = place + flen;
                }
            },
            At::Bytes { claimed } => {
                let min = expect.unwrap_or(floor);
                let from = (place + 1).next_multiple_of(JOURNAL_BLOCK);
                if let Some((later, first)) = resync(&mut w, from, min, &mut budget)? {
                    let end = claimed.map(|c| (place + c).min(later)).unwrap_or(later);
                    return Err(format!(
                        "journal record at bytes {place}..{end} is damaged: an intact record follows at byte {later} (from entry {first}), so entries {min}..{first} were acknowledged and are lost"
                    ));
                }
                let stop = Stop {
                    offset: place,
                    claimed,
                    after_record: place == pos && !records.is_empty(),
                };
                return Ok(done(records, Some(stop), pos));
            }
        }
    }
}

/// The first block boundary at or after `from` holding an intact record
/// that starts at or after entry `min` (so could not be a stale one), with
/// where it starts. Headers are checked cheaply first; only a plausible
/// one has its frame read and hashed, against `budget`.
fn resync<S: Source + ?Sized>(
    w: &mut Window<'_, S>,
    from: u64,
    min: u64,
    budget: &mut u64,
) -> Result<Option<(u64, u64)>, String> {
    let size = w.src.size();
    let mut b = from;
    while b + 52 <= size {
        let h = w.get(b, 52)?;
        if h.len() == 52 && plausible(h, min) {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
            if len > *budget {
                return Err(format!(
                    "the journal is damaged and the bytes after byte {from} hold more plausible records than can be checked; treat the journal as damaged"
                ));
            }
            *budget -= len;
            if let At::Record(rec, _) = at(w, b)? {
                return Ok(Some((b, rec.old_size)));
            }
        }
        b += JOURNAL_BLOCK;
    }
    Ok(None)
}

/// Whether a 52-byte header could start a record of the chain at or after
/// entry `min`: length, entry count and bundle length in range.
fn plausible(h: &[u8], min: u64) -> bool {
    let be32 = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as usize;
    let len = be32(0);
    let mut old = [0u8; 8];
    old.copy_from_slice(&h[36..44]);
    let old = u64::from_be_bytes(old);
    let (count, blen) = (be32(44), be32(48));
    (17..=MAX_PAYLOAD).contains(&len)
        && (min..MAX_PLAUSIBLE_ENTRY).contains(&old)
        && count >= 1
        && blen >= 2 * count
        && 16 + blen < len
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

    /// Lays writes (each a group of frames) out as the store does: each at
    /// a block boundary, followed by a zero length and zeros to the block
    /// end. Returns the file and where each write starts.
    fn layout(writes: &[Vec<Vec<u8>>]) -> (Vec<u8>, Vec<usize>) {
        let mut file = Vec::new();
        let mut starts = Vec::new();
        for w in writes {
            starts.push(file.len());
            for f in w {
                file.extend_from_slice(f);
            }
            file.extend_from_slice(&[0; 4]);
            file.resize(file.len().next_multiple_of(JOURNAL_BLOCK as usize), 0);
        }
        (file, starts)
    }

    /// A chain of `n` records of `k` entries each from `from`, one per write.
    fn chain(from: u64, n: u64, k: u64) -> Vec<Vec<Vec<u8>>> {
        (0..n)
            .map(|i| {
                let old = from + i * k;
                let entries: Vec<Vec<u8>> = (0..k)
                    .map(|j| format!("entry {} of record {i}", old + j).into_bytes())
                    .collect();
                vec![encode(
                    old,
                    &entries,
                    format!("note-{}", old + k).as_bytes(),
                )]
            })
            .collect()
    }

    fn sizes(d: &Decoded) -> Vec<u64> {
        d.records.iter().map(Record::new_size).collect()
    }

    #[test]
    fn any_altered_byte_of_a_record_makes_it_unreadable() {
        let rec = encode(
            7,
            &[b"first".to_vec(), vec![b'x'; 300], Vec::new()],
            b"note-10",
        );
        assert_eq!(decode(&rec[..], 0).unwrap().records.len(), 1);
        for at in 0..rec.len() {
            let mut bad = rec.clone();
            bad[at] ^= 0x20;
            // Alone in a journal it is where the chain stops, never read.
            let d = decode(&bad[..], 0).unwrap();
            assert!(d.records.is_empty(), "byte {at}");
            assert_eq!(d.stopped.map(|s| s.offset), Some(0), "byte {at}");
        }
        // A record framed with a wrong leaf hash is never read.
        let entries = [b"a".to_vec(), b"b".to_vec()];
        let wrong = super::encode(0, &entries, &[leaf_hash(b"a"), leaf_hash(b"c")], b"n");
        assert!(decode(&wrong[..], 0).unwrap().records.is_empty());
    }

    #[test]
    fn records_of_the_earlier_frame_digest_and_layout_are_still_read() {
        // Written back to back, as the journal did before writes were
        // aligned to blocks, and with the earlier frame digest.
        let j = [
            encode_legacy(0, &[b"a".to_vec()], b"note-1"),
            encode(1, &[b"b".to_vec(), b"c".to_vec()], b"note-3"),
            vec![0; 4],
        ]
        .concat();
        let d = decode(&j[..], 0).unwrap();
        assert_eq!(sizes(&d), [1, 3]);
        assert_eq!(d.records[0].entries, [b"a".to_vec()]);
        assert_eq!(d.stopped, None);
    }

    #[test]
    fn writes_chain_across_blocks_and_several_records_share_a_write() {
        let mut writes = chain(0, 3, 2);
        // A write of three records (one sync carrying three batches).
        writes.push(vec![
            encode(6, &[b"x".to_vec()], b"note-7"),
            encode(7, &[vec![b'y'; 5000]], b"note-8"),
            encode(8, &[b"z".to_vec()], b"note-9"),
        ]);
        let (file, _) = layout(&writes);
        let d = decode(&file[..], 0).unwrap();
        assert_eq!(sizes(&d), [2, 4, 6, 7, 8, 9]);
        assert_eq!(d.stopped, None);
        // More zeros after the end change nothing.
        let padded = [file.clone(), vec![0; 3 * 4096]].concat();
        assert_eq!(sizes(&decode(&padded[..], 0).unwrap()), [2, 4, 6, 7, 8, 9]);
    }

    #[test]
    fn a_damaged_last_write_stops_the_chain_and_damage_before_an_intact_one_is_refused() {
        let writes = chain(10, 4, 3);
        let (file, starts) = layout(&writes);
        assert_eq!(sizes(&decode(&file[..], 10).unwrap()), [13, 16, 19, 22]);
        // The last write torn at every length: the chain stops there.
        let last = starts[3];
        let flen = writes[3][0].len();
        for cut in 0..flen {
            let mut torn = file.clone();
            torn[last + cut..].fill(0);
            if cut > 0 {
                torn[last + cut - 1] ^= 0x55;
            }
            let d = decode(&torn[..], 10).unwrap();
            assert_eq!(sizes(&d), [13, 16, 19], "cut {cut}");
            if cut > 0 {
                assert_eq!(d.stopped.map(|s| s.offset), Some(last as u64), "cut {cut}");
            }
        }
        // One byte flipped in any earlier record: an error naming its
        // bytes, the intact record after it and the entries lost.
        for (w, &start) in starts.iter().enumerate().take(3) {
            for at in [0, 4, 36, 40, 60, writes[w][0].len() - 1] {
                let mut bad = file.clone();
                bad[start + at] ^= 1;
                let e = decode(&bad[..], 10).unwrap_err();
                let from = 10 + 3 * w as u64;
                assert!(e.contains(&format!("bytes {start}..")), "{e}");
                assert!(
                    e.contains(&format!("entries {from}..{}", from + 3)),
                    "write {w} byte {at}: {e}"
                );
            }
        }
    }

    /// A reused file: new writes over the writes of its earlier use. The
    /// chain stops where the new writes end, whatever lies after them
    /// (a stale write, the middle of one, zeros); a torn new write is where
    /// it stops; damage followed by a new write is refused.
    #[test]
    fn stale_writes_of_a_reused_file_end_the_chain() {
        // The earlier use: 6 records of 3 entries, the tiles hold all 18.
        let old: Vec<Vec<Vec<u8>>> = (0..6u64)
            .map(|i| {
                vec![encode(
                    i * 3,
                    &[vec![b'o'; 3000], vec![b'p'; 10], vec![b'q'; 7]],
                    b"old",
                )]
            })
            .collect();
        let (old_file, _) = layout(&old);
        let new = chain(18, 2, 1);
        let (new_file, new_starts) = layout(&new);
        let mut file = old_file.clone();
        file[..new_file.len()].copy_from_slice(&new_file);
        let d = decode(&file[..], 18).unwrap();
        assert_eq!(sizes(&d), [19, 20]);
        // Whatever followed was stale, never "where the chain stopped"
        // unless it is not a record at all.
        if let Some(s) = d.stopped {
            assert!(s.offset >= new_file.len() as u64);
        }

        // The second new write torn: the chain stops at it.
        let mut torn = file.clone();
        torn[new_starts[1] + 40] ^= 1;
        let d = decode(&torn[..], 18).unwrap();
        assert_eq!(sizes(&d), [19]);
        assert_eq!(d.stopped.map(|s| s.offset), Some(new_starts[1] as u64));

        // Damage in the first new write while the second is intact.
        let mut bad = file.clone();
        bad[40] ^= 1;
        assert!(decode(&bad[..], 18).unwrap_err().contains("bytes 0.."));

        // A record that skips entries is refused, not taken as stale.
        let gap = layout(&[
            new[0].clone(),
            vec![encode(25, &[b"z".to_vec()], b"note-26")],
        ])
        .0;
        assert!(decode(&gap[..], 18).unwrap_err().contains("missing"));
    }

    /// A small deterministic generator (no external randomness in tests).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random bytes, and random bytes shaped like headers at every block
    /// boundary: judged with work linear in the size (the window reads and
    /// the hashing are bounded by construction), and nothing is reported
    /// that was not written.
    #[test]
    fn random_and_header_shaped_bytes_are_judged_quickly_and_yield_nothing() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..8 {
            let mut file: Vec<u8> = (0..(1 << 20) + round * 777)
                .map(|_| r.next() as u8)
                .collect();
            if round % 2 == 1 {
                // Plausible headers everywhere: length, entry, counts.
                for b in (0..file.len() - 52).step_by(JOURNAL_BLOCK as usize) {
                    file[b..b + 4].copy_from_slice(&60_000u32.to_be_bytes());
                    file[b + 36..b + 44].copy_from_slice(&5u64.to_be_bytes());
                    file[b + 44..b + 48].copy_from_slice(&1u32.to_be_bytes());
                    file[b + 48..b + 52].copy_from_slice(&100u32.to_be_bytes());
                }
            }
            match decode(&file[..], 0) {
                Ok(d) => assert!(d.records.is_empty(), "round {round}"),
                // Too many plausible headers to check within the budget:
                // judged damaged, never read as records.
                Err(e) => {
                    assert!(round % 2 == 1, "round {round}: {e}");
                    assert!(e.contains("treat the journal as damaged"), "{e}");
                }
            }
        }
    }

    mod mutations {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Damage {
            None,
            Flip(usize),
            Zero(usize, usize),
            Cut(usize),
            Noise(usize, Vec<u8>),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                Just(Damage::None),
                any::<usize>().prop_map(Damage::Flip),
                (any::<usize>(), 1..5000usize).prop_map(|(a, n)| Damage::Zero(a, n)),
                any::<usize>().prop_map(Damage::Cut),
                (
                    any::<usize>(),
                    proptest::collection::vec(any::<u8>(), 1..6000)
                )
                    .prop_map(|(a, b)| Damage::Noise(a, b)),
            ]
        }

        /// Records (first entry, entries) grouped into writes.
        type Writes = Vec<Vec<(u64, Vec<Vec<u8>>)>>;

        /// Writes of 1–3 records each; records of 1–4 entries of 0–2000
        /// bytes, chaining from `floor`.
        fn journal() -> impl Strategy<Value = (u64, Writes)> {
            let rec =
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..4);
            let write = proptest::collection::vec(rec, 1..4);
            (0..500u64, proptest::collection::vec(write, 1..12)).prop_map(|(floor, ws)| {
                let mut at = floor;
                let ws = ws
                    .into_iter()
                    .map(|w| {
                        w.into_iter()
                            .map(|entries| {
                                let old = at;
                                at += entries.len() as u64;
                                (old, entries)
                            })
                            .collect()
                    })
                    .collect();
                (floor, ws)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            /// Whatever happens to a journal, the reader never reports a
            /// record that was not written, keeps the chain's order, finds
            /// every record that lies wholly before the damage (or reports
            /// the damage), and finds all of them when there is none.
            #[test]
            fn mutated_journals_yield_only_written_records((floor, ws) in journal(), d in damage()) {
                let frames: Vec<Vec<Vec<u8>>> = ws
                    .iter()
                    .map(|w| {
                        w.iter()
                            .map(|(old, e)| encode(*old, e, format!("note-{}", old + e.len() as u64).as_bytes()))
                            .collect()
                    })
                    .collect();
                let (mut file, starts) = layout(&frames);
                let written: Vec<Record> = ws
                    .iter()
                    .flatten()
                    .map(|(old, e)| Record {
                        old_size: *old,
                        entries: e.clone(),
                        note: format!("note-{}", old + e.len() as u64).into_bytes(),
                    })
                    .collect();
                // Where each record ends in the file.
                let mut ends = Vec::new();
                for (w, start) in frames.iter().zip(&starts) {
                    let mut at = *start;
                    for f in w {
                        at += f.len();
                        ends.push(at);
                    }
                }
                let len = file.len();
                let first_damaged = match &d {
                    Damage::None => usize::MAX,
                    Damage::Flip(a) => {
                        let a = a % len;
                        file[a] ^= 0x40;
                        a
                    }
                    Damage::Zero(a, n) => {
                        let a = a % len;
                        let end = (a + n).min(len);
                        if file[a..end].iter().all(|&b| b == 0) { usize::MAX } else {
                            let first = a + file[a..end].iter().position(|&b| b != 0).unwrap_or(0);
                            file[a..end].fill(0);
                            first
                        }
                    }
                    Damage::Cut(a) => {
                        let a = a % len;
                        file.truncate(a);
                        a
                    }
                    Damage::Noise(a, bytes) => {
                        let a = a % len;
                        let end = (a + bytes.len()).min(len);
                        file[a..end].copy_from_slice(&bytes[..end - a]);
                        a
                    }
                };
                match decode(&file[..], floor) {
                    Ok(got) => {
                        prop_assert!(got.records.len() <= written.len());
                        for (g, w) in got.records.iter().zip(&written) {
                            prop_assert_eq!(g, w);
                        }
                        let intact = ends.iter().filter(|&&e| e <= first_damaged).count();
                        prop_assert!(
                            got.records.len() >= intact,
                            "found {} of the {} records before the damage", got.records.len(), intact
                        );
                    }
                    Err(e) => {
                        prop_assert!(!matches!(d, Damage::None), "an intact journal refused: {}", e);
                    }
                }
            }
        }
    }
}
