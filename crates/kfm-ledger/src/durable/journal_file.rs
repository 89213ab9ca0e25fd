//! The ledger's local journal file (directory stores): preallocated files
//! written with one durable write per group of records.
//!
//! This layer does not interpret what is written (the record format is
//! `crate::journal`); it guarantees where:
//! every write starts at a [`JOURNAL_BLOCK`] boundary and is followed by a
//! zero length. A reader that lost its place (damage, a torn write) then
//! needs to look for the next write only at block boundaries, so judging a
//! damaged journal costs time linear in its size.

use std::path::{Path as FsPath, PathBuf};

use kfm_store::{Audit, Result, StoreError};

/// A local append-only journal kept beside the audit zone (directory
/// backend only), so that the ledger can make a batch durable with a single
/// `fdatasync` and write its tiles afterwards. It lives in
/// `.kfm-journal/audit.journal` under the store directory, outside every
/// zone.
///
/// Two files take turns, so the journal stays bounded under unbroken load:
/// the writer continues in a spare while the tiles catch up with the file
/// it retired (`audit.journal.old`), and a retired file the tiles hold
/// entirely becomes the next spare. Files are reused, never shrunk: after
/// the first, nothing is zero-filled again.
///
/// Every byte an append overwrites was written before (zeros, or records of
/// an earlier use), so `fdatasync` flushes data only, without a file-system
/// journal commit for a size change. What follows the last write may
/// therefore be zeros or stale records; the record format must tell those
/// from its own (the ledger's records chain by tree size).
///
/// Each append is one write starting at a block boundary: the bytes, a
/// zero length, and (direct writes) zeros to the end of the block. The next
/// append starts at the next boundary. So no write ever touches a byte of
/// an earlier one (a torn write cannot damage an acknowledged record), and
/// a reader that finds damage looks for later writes only at boundaries.
///
/// Where the file system allows it (Linux, not tmpfs), appends go through a
/// second descriptor opened `O_DIRECT | O_DSYNC`: one system call that
/// returns once the bytes are on disk, without a copy into the page cache
/// and its writeback first (measured here: 20% more synced writes per
/// second than `pwrite` + `fdatasync`).
#[derive(Debug)]
pub struct Journal {
    file: std::fs::File,
    path: PathBuf,
    /// Where the next write goes: always a block boundary.
    len: u64,
    /// Bytes allocated (written with zeros or records) so far.
    allocated: u64,
    /// The direct descriptor, if the file system took one.
    direct: Option<std::fs::File>,
    /// Direct writes: the buffer, over-allocated so an aligned run of it
    /// can be used.
    scratch: Vec<u8>,
}

/// Every journal write starts at a multiple of this (also the alignment of
/// direct writes: offsets, lengths and memory; 4096 suits both 512-byte
/// and 4 KiB logical blocks).
pub const JOURNAL_BLOCK: u64 = 4096;
const DIRECT_ALIGN: u64 = JOURNAL_BLOCK;

/// The journal at `path`, opened again for direct synchronous writes, or
/// `None` where that is not supported (the journal then uses `pwrite` and
/// `fdatasync`).
fn open_direct(path: &FsPath) -> Option<std::fs::File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "journal: no direct writes here; using fdatasync");
                None
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Written after every write's bytes: a zero length, which readers take as
/// the end of that write (the next one, if any, starts at the next block
/// boundary).
const END_MARK: [u8; 4] = [0; 4];

/// The smallest journal file, and the step it grows by when a round of
/// appends does not fit.
pub const JOURNAL_STEP: u64 = 64 << 20;

impl Journal {
    fn io(&self) -> impl Fn(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Where the next record goes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the file holds, records and padding: how large a spare must be
    /// to take over from it without growing.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Whether appends use direct synchronous writes (see [`Journal`]).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends with `pwrite` and `fdatasync` from now on (tests compare the
    /// two ways of writing).
    #[doc(hidden)]
    pub fn disable_direct(&mut self) {
        self.direct = None;
    }

    /// Appends `bytes` as one write at the next block boundary and waits
    /// until they are on disk. Four zero bytes follow them in the same
    /// write (direct writes: zeros to the end of the block), so a reader of
    /// a reused file finds the end of the write at a zero length instead of
    /// in stale bytes.
    pub fn append_durable(&mut self, bytes: &[u8]) -> Result<()> {
        debug_assert_eq!(self.len % JOURNAL_BLOCK, 0);
        let used = self.len + bytes.len() as u64 + END_MARK.len() as u64;
        let next = used.next_multiple_of(JOURNAL_BLOCK);
        if next > self.allocated {
            // Rare: the tile writer rotates files long before this; only a
            // burst larger than a whole file gets here.
            let target = next.div_ceil(JOURNAL_STEP) * JOURNAL_STEP;
            zero_fill(&self.file, self.allocated, target).map_err(self.io())?;
            self.file.sync_all().map_err(self.io())?;
            self.allocated = target;
        }
        if self.direct.is_some() {
            match self.append_direct(bytes) {
                Ok(()) => {
                    self.len = next;
                    return Ok(());
                }
                // The file system refused the alignment after all: write
                // this and every later record the buffered way.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "journal: direct write refused; using fdatasync");
                    self.direct = None;
                }
                Err(e) => return Err(self.io()(e)),
            }
        }
        use std::os::unix::fs::FileExt;
        let mut framed = Vec::with_capacity(bytes.len() + END_MARK.len());
        framed.extend_from_slice(bytes);
        framed.extend_from_slice(&END_MARK);
        self.file
            .write_all_at(&framed, self.len)
            .map_err(self.io())?;
        self.file.sync_data().map_err(self.io())?;
        self.len = next;
        Ok(())
    }

    /// One direct synchronous write at `len` (a block boundary): `bytes`,
    /// then zeros to the next block end.
    fn append_direct(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let Some(direct) = &self.direct else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let align = DIRECT_ALIGN as usize;
        let total = (bytes.len() + END_MARK.len()).next_multiple_of(align);
        // The buffer is kept between writes and only grows; only what
        // follows the bytes is zeroed each time (zeroing all of it cost as
        // much as the copy).
        if self.scratch.len() < total + align {
            self.scratch.resize(total + align, 0);
        }
        let at = self.scratch.as_ptr().align_offset(align);
        let Some(buf) = self.scratch.get_mut(at..at + total) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        buf[..bytes.len()].copy_from_slice(bytes);
        buf[bytes.len()..].fill(0);
        direct.write_all_at(buf, self.len)
    }

    /// Starts writing again at the beginning of this same file. The caller
    /// guarantees that every record in it is held elsewhere (in tiles):
    /// what follows the new records is then stale, and readers stop there.
    ///
    /// A zero length goes at the start (not synced: should a crash undo
    /// it, readers find the old records, all held in tiles already), so
    /// that readers of an idle journal stop at once instead of reading the
    /// earlier use's records.
    pub fn restart(&mut self) -> Result<()> {
        self.len = 0;
        self.mark_empty()
    }

    fn mark_empty(&self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&END_MARK, 0).map_err(self.io())
    }

    /// Where the journal lives (for [`FreshJournal`]).
    pub fn path(&self) -> &FsPath {
        &self.path
    }

    /// Retires this file as `audit.journal.old` and continues in `spare`:
    /// two renames and a directory sync, so the writer's lock on the
    /// journal is held only briefly. Refused while a retired file exists
    /// (its records may not be in tiles yet).
    pub fn rotate(&mut self, spare: FreshJournal) -> Result<()> {
        let old = retired_path(&self.path);
        let io = |p: &FsPath| {
            let path = p.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        if old.exists() {
            return Err(io(&old)(std::io::Error::other(
                "a retired journal is still waiting for its tiles",
            )));
        }
        std::fs::rename(&self.path, &old).map_err(io(&self.path))?;
        std::fs::rename(&spare.path, &self.path).map_err(io(&spare.path))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.file = spare.file;
        self.allocated = spare.allocated;
        self.direct = spare.direct;
        self.len = 0;
        // A reused spare holds an earlier use's records (in tiles).
        self.mark_empty()
    }
}

fn retired_path(journal: &FsPath) -> PathBuf {
    journal.with_extension("journal.old")
}

fn spare_path(journal: &FsPath) -> PathBuf {
    journal.with_extension("journal.new")
}

/// A journal file ready to take over ([`Journal::rotate`]): beside the
/// journal as `audit.journal.new`, every byte written, its size synced.
/// Making one costs a zero-fill the first time and nothing after (a retired
/// file is reused), and it is done ahead, outside the writer's lock, so it
/// never stalls an append.
#[derive(Debug)]
pub struct FreshJournal {
    file: std::fs::File,
    path: PathBuf,
    allocated: u64,
    direct: Option<std::fs::File>,
}

impl FreshJournal {
    /// Bytes it holds: how much the writer can append before it grows.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// A spare of at least `min_len` bytes: the retired file when
    /// `reuse_retired` (the caller knows the tiles hold all its records),
    /// else a leftover spare, else a new zero-filled file.
    pub fn prepare(journal: &FsPath, min_len: u64, reuse_retired: bool) -> Result<Self> {
        let path = spare_path(journal);
        let io = |p: &FsPath| {
            let path = p.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        let old = retired_path(journal);
        if reuse_retired && old.exists() {
            // No sync needed: after a crash either name holds only records
            // the tiles already have.
            std::fs::rename(&old, &path).map_err(io(&old))?;
        }
        let want = min_len.max(JOURNAL_STEP).div_ceil(JOURNAL_STEP) * JOURNAL_STEP;
        let (file, allocated) = open_zero_filled(&path, want).map_err(io(&path))?;
        let direct = open_direct(&path);
        Ok(Self {
            file,
            path,
            allocated,
            direct,
        })
    }
}

/// Opens (creating it and its directory) a file of at least `len` bytes,
/// zero-filling and syncing what it lacks, and returns it with its length.
/// A file that lacked bytes is synced, and so is its directory entry.
///
/// The ledger's journal and its witness use it: both overwrite preallocated
/// bytes only, so that recording never needs a block the file system may
/// no longer have (a full disk) or a metadata change to be durable.
pub fn open_zero_filled(path: &FsPath, len: u64) -> std::io::Result<(std::fs::File, u64)> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let have = file.metadata()?.len();
    if have >= len {
        return Ok((file, have));
    }
    zero_fill(&file, have, len)?;
    file.sync_all()?;
    // The file may be new (or a crash may have come before its directory
    // was synced): make its name as durable as its zeros.
    if let Some(dir) = dir {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok((file, len))
}

/// Writes zeros over `[from, to)` (real blocks, not a hole or an unwritten
/// extent, so later overwrites need no metadata change).
fn zero_fill(f: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The audit journal on a directory store (`None` on S3, where every
/// object write is durable on return and there is no local disk), for its
/// writer: created (zero-filled) if missing. Its content is not
/// interpreted here: read it with [`journal_files`].
pub fn open_journal(audit: &Audit) -> Result<Option<Journal>> {
    let Some(path) = journal_path(audit) else {
        return Ok(None);
    };
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let (file, allocated) = open_zero_filled(&path, JOURNAL_STEP).map_err(io)?;
    let direct = open_direct(&path);
    Ok(Some(Journal {
        file,
        path,
        len: 0,
        allocated,
        direct,
        scratch: Vec::new(),
    }))
}

/// Every journal file there is (directory stores), opened for reading: the
/// current one first, then the retired one. Read in that order, a rotation
/// in between shows records twice rather than not at all. The caller reads
/// what it needs with [`JournalFile::read_at`] (files are preallocated,
/// 64 MiB and up, and usually hold far fewer records).
pub fn journal_files(audit: &Audit) -> Result<Vec<JournalFile>> {
    let Some(path) = journal_path(audit) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for p in [path.clone(), retired_path(&path)] {
        let io = |source| StoreError::Io {
            path: p.display().to_string(),
            source,
        };
        let file = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        let len = file.metadata().map_err(io)?.len();
        out.push(JournalFile {
            name: format!(".kfm-journal/{}", file_name(&p)),
            path: p.clone(),
            file,
            len,
        });
    }
    Ok(out)
}

/// Where the current journal file is or would be: `.kfm-journal/audit.journal`
/// under a directory store's root, outside every zone (so no zone listing
/// or object key can reach it). `None` on S3.
pub fn journal_path(audit: &Audit) -> Option<PathBuf> {
    Some(
        audit
            .local_root()?
            .join(".kfm-journal")
            .join("audit.journal"),
    )
}

fn file_name(p: &FsPath) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One journal file opened for reading ([`journal_files`]).
#[derive(Debug)]
pub struct JournalFile {
    /// Store-relative name, for messages (`.kfm-journal/audit.journal`).
    pub name: String,
    path: PathBuf,
    file: std::fs::File,
    len: u64,
}

impl JournalFile {
    /// The file's length when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads up to `buf.len()` bytes at `offset` (fewer only at the end of
    /// the file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        path: self.path.display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(got)
    }
}
