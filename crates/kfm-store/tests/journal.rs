//! The audit journal's two ways of writing (direct synchronous writes of
//! whole blocks, or `pwrite` + `fdatasync`) leave the same bytes: a direct
//! write rewrites the start of the journal's last block, and must put back
//! exactly what was there.

use kfm_store::{FreshJournal, Journal, Store};

fn journal(dir: &std::path::Path, direct: bool) -> (Store, Journal) {
    let store = Store::open_local(dir).unwrap();
    let mut j = store
        .audit()
        .journal()
        .unwrap()
        .expect("a directory store has a journal");
    if !direct {
        j.disable_direct();
    }
    (store, j)
}

/// The journal file's first 256 KiB (the records here stay well inside).
fn file(j: &Journal) -> Vec<u8> {
    use std::io::Read;
    let mut head = vec![0; 256 << 10];
    std::fs::File::open(j.path())
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap();
    head
}

/// Records of awkward lengths: inside one block, exactly a block, across
/// several, and ending one byte either side of a block boundary.
fn record(i: usize) -> Vec<u8> {
    const LENGTHS: [usize; 12] = [1, 4095, 4096, 4097, 17, 9000, 3, 4092, 4, 8191, 12_289, 60];
    let len = LENGTHS[i % LENGTHS.len()];
    (0..len)
        .map(|k| (1 + (i * 31 + k * 7) % 255) as u8)
        .collect()
}

#[test]
fn direct_and_buffered_appends_leave_the_same_bytes() {
    // A real disk where there is one (tmpfs refuses direct writes).
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (_sa, mut a) = journal(&tmp.path().join("a"), true);
    let (_sb, mut b) = journal(&tmp.path().join("b"), false);
    assert!(!b.is_direct());
    if !a.is_direct() {
        eprintln!("note: this file system refuses direct writes; both journals are buffered");
    }

    let mut expect = Vec::new();
    for i in 0..40 {
        let r = record(i);
        a.append_durable(&r).unwrap();
        b.append_durable(&r).unwrap();
        expect.extend_from_slice(&r);
        assert_eq!(a.len(), expect.len() as u64);
        let (fa, fb) = (file(&a), file(&b));
        assert_eq!(&fa[..expect.len()], &expect[..], "record {i}");
        // Both files started as zeros: nothing else differs either.
        assert!(fa == fb, "record {i}: the two journals differ");
    }

    // Restarted over the old records: the new ones, then a zero length.
    a.restart().unwrap();
    b.restart().unwrap();
    // Readers of the restarted, idle journal stop at once.
    assert_eq!(&file(&a)[..4], &[0; 4]);
    let mut expect = Vec::new();
    for i in 0..7 {
        let r = record(i + 3);
        a.append_durable(&r).unwrap();
        b.append_durable(&r).unwrap();
        expect.extend_from_slice(&r);
        let (fa, fb) = (file(&a), file(&b));
        let end = expect.len();
        assert_eq!(&fa[..end], &expect[..], "after restart, record {i}");
        assert_eq!(&fa[..end + 4], &fb[..end + 4], "after restart, record {i}");
        assert_eq!(&fa[end..end + 4], &[0; 4], "the end mark");
    }

    // Rotated into a spare: the new file is written the same way.
    let direct = a.is_direct();
    let spare = FreshJournal::prepare(a.path(), a.allocated(), false).unwrap();
    a.rotate(spare).unwrap();
    assert_eq!(a.is_direct(), direct);
    assert_eq!(a.len(), 0);
    a.append_durable(&record(5)).unwrap();
    a.append_durable(&record(2)).unwrap();
    let want = [record(5), record(2)].concat();
    assert_eq!(
        &file(&a)[..want.len() + 4],
        &[want, vec![0; 4]].concat()[..]
    );
}
