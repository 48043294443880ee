//! Reading an object's committed transactions out of its SQLite WAL, for replication.
//!
//! The WAL format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, format,
//! page size, checkpoint sequence, two salts, a checksum of its first 24 bytes), then frames
//! of a 24-byte header (page number, database size in pages on a transaction's last frame
//! and 0 otherwise, the salts, a running checksum) and one page. A frame belongs to the WAL
//! only while its salts match the header's and its checksum continues the chain: that is
//! how SQLite itself tells live frames from stale ones left by an earlier, longer WAL.
//!
//! A [`Cursor`] remembers where the last capture stopped. [`Cursor::capture`] reads on from
//! there to the last commit frame within the bytes given, and returns each committed
//! transaction's pages (the last version of a page within it) and size. Frames after the last
//! commit frame belong to a transaction still being written (a spilled cache) and are read
//! next time. A WAL whose salts changed was restarted by a checkpoint: the cursor starts over
//! at its first frame.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const WAL_HEADER_SIZE: usize = 32;
pub const FRAME_HEADER_SIZE: usize = 24;
/// Checksums of big-endian words (the low bit of the magic says which).
const MAGIC_BIG_ENDIAN: u32 = 0x377f_0683;
const MAGIC_LITTLE_ENDIAN: u32 = 0x377f_0682;
const FORMAT: u32 = 3_007_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalError {
    #[error("WAL: {0}")]
    Invalid(String),
}

/// One committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The pages it wrote, last version of each.
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// The database's size in pages after it.
    pub db_pages: u32,
}

/// What a capture found.
#[derive(Debug, Default)]
pub struct Captured {
    pub page_size: u32,
    pub transactions: Vec<Committed>,
    /// The byte range of the WAL these transactions came from, and its salts (LTX header).
    pub wal_offset: u64,
    pub wal_size: u64,
    pub salts: (u32, u32),
}

/// Where the previous capture of one WAL stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    salts: Option<(u32, u32)>,
    big_endian: bool,
    page_size: u32,
    /// Offset of the next frame to read.
    offset: u64,
    /// The running checksum after the last frame read.
    checksum: (u32, u32),
}

impl Cursor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The salts of the WAL this cursor reads (none before the first capture).
    pub fn salts(&self) -> Option<(u32, u32)> {
        self.salts
    }

    /// The offset just after the last captured commit frame (0 before the first capture).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the committed transactions in `wal` (the WAL's bytes from offset 0, up to the
    /// size the caller saw after its last commit) past this cursor, and moves the cursor to
    /// the end of the last one.
    pub fn capture(&mut self, wal: &[u8]) -> Result<Captured, WalError> {
        if wal.len() < WAL_HEADER_SIZE {
            return Ok(Captured::default());
        }
        let header = parse_header(wal)?;
        self.restart_if_new(&header);
        let frames = wal.get(self.offset as usize..).unwrap_or(&[]);
        self.scan(&header, frames)
    }

    /// [`capture`](Self::capture) reading only the WAL's header and the bytes from the
    /// cursor to `wal_end` of the file at `path`.
    pub fn capture_file(&mut self, path: &Path, wal_end: u64) -> Result<Captured, WalError> {
        let io = |e: std::io::Error| WalError::Invalid(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(io)?;
        let mut head = [0u8; WAL_HEADER_SIZE];
        if wal_end < WAL_HEADER_SIZE as u64 || file.read_exact_at(&mut head, 0).is_err() {
            return Ok(Captured::default());
        }
        let header = parse_header(&head)?;
        self.restart_if_new(&header);
        let mut frames = vec![0u8; wal_end.saturating_sub(self.offset) as usize];
        let mut read = 0;
        while read < frames.len() {
            match file.read_at(&mut frames[read..], self.offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        frames.truncate(read);
        self.scan(&header, &frames)
    }

    /// A new WAL (or one restarted by a checkpoint): start at its first frame.
    fn restart_if_new(&mut self, header: &WalHeader) {
        if self.salts != Some(header.salts) || self.offset < WAL_HEADER_SIZE as u64 {
            *self = Self {
                salts: Some(header.salts),
                big_endian: header.big_endian,
                page_size: header.page_size,
                offset: WAL_HEADER_SIZE as u64,
                checksum: header.checksum,
            };
        }
    }

    /// Reads frames (the WAL's bytes from the cursor on) up to the last commit frame.
    fn scan(&mut self, header: &WalHeader, frames: &[u8]) -> Result<Captured, WalError> {
        let page_size = self.page_size as usize;
        let frame_size = FRAME_HEADER_SIZE + page_size;
        let start = self.offset;
        let mut at = 0usize;
        let mut checksum = self.checksum;
        let mut pending: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut transactions = Vec::new();
        while at + frame_size <= frames.len() {
            let frame = &frames[at..at + frame_size];
            let pgno = be32(&frame[0..]);
            let db_pages = be32(&frame[4..]);
            if (be32(&frame[8..]), be32(&frame[12..])) != header.salts {
                break;
            }
            let mut sum = checksum_words(checksum, &frame[..8], self.big_endian);
            sum = checksum_words(sum, &frame[FRAME_HEADER_SIZE..], self.big_endian);
            if sum != (be32(&frame[16..]), be32(&frame[20..])) {
                break;
            }
            if pgno == 0 {
                return Err(WalError::Invalid(format!(
                    "frame at {} has page number 0",
                    start + at as u64
                )));
            }
            checksum = sum;
            at += frame_size;
            pending.insert(pgno, frame[FRAME_HEADER_SIZE..].to_vec());
            if db_pages != 0 {
                transactions.push(Committed {
                    pages: std::mem::take(&mut pending),
                    db_pages,
                });
                self.offset = start + at as u64;
                self.checksum = checksum;
            }
        }
        Ok(Captured {
            page_size: self.page_size,
            transactions,
            wal_offset: start,
            wal_size: self.offset - start,
            salts: header.salts,
        })
    }
}

/// The salts in the header of the WAL at `path` (which WAL it is: a checkpoint that
/// restarts the WAL, or a new file, changes them).
pub fn header_salts(path: &Path) -> Option<(u32, u32)> {
    let file = std::fs::File::open(path).ok()?;
    let mut head = [0u8; WAL_HEADER_SIZE];
    file.read_exact_at(&mut head, 0).ok()?;
    Some((be32(&head[16..]), be32(&head[20..])))
}

struct WalHeader {
    big_endian: bool,
    page_size: u32,
    salts: (u32, u32),
    checksum: (u32, u32),
}

fn parse_header(wal: &[u8]) -> Result<WalHeader, WalError> {
    let magic = be32(wal);
    let big_endian = match magic {
        MAGIC_BIG_ENDIAN => true,
        MAGIC_LITTLE_ENDIAN => false,
        _ => return Err(WalError::Invalid(format!("bad magic 0x{magic:08x}"))),
    };
    if be32(&wal[4..]) != FORMAT {
        return Err(WalError::Invalid("unknown format version".into()));
    }
    let raw = be32(&wal[8..]);
    let page_size = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(WalError::Invalid(format!("bad page size {raw}")));
    }
    let checksum = checksum_words((0, 0), &wal[..24], big_endian);
    if checksum != (be32(&wal[24..]), be32(&wal[28..])) {
        return Err(WalError::Invalid("header checksum mismatch".into()));
    }
    Ok(WalHeader {
        big_endian,
        page_size,
        salts: (be32(&wal[16..]), be32(&wal[20..])),
        checksum,
    })
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `(s0, s1)`.
fn checksum_words(mut sum: (u32, u32), data: &[u8], big_endian: bool) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (be32(&pair[0..]), be32(&pair[4..]))
        } else {
            (
                u32::from_le_bytes(pair[0..4].try_into().expect("4 bytes")),
                u32::from_le_bytes(pair[4..8].try_into().expect("4 bytes")),
            )
        };
        sum.0 = sum.0.wrapping_add(a).wrapping_add(sum.1);
        sum.1 = sum.1.wrapping_add(b).wrapping_add(sum.0);
    }
    sum
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Merges consecutive transactions into one set of pages (the last version of each page) and
/// the database size after the last; pages past that size are dropped (a shrinking
/// transaction, e.g. a VACUUM).
pub fn merge(transactions: &[Committed]) -> Option<Committed> {
    let last = transactions.last()?;
    let mut pages = BTreeMap::new();
    for transaction in transactions {
        for (pgno, page) in &transaction.pages {
            pages.insert(*pgno, page.clone());
        }
    }
    pages.retain(|pgno, _| *pgno <= last.db_pages);
    Some(Committed {
        pages,
        db_pages: last.db_pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::ltx;
    use rusqlite::Connection;

    struct Db {
        _dir: tempdir::Dir,
        path: std::path::PathBuf,
        conn: Connection,
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        pub fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "dorun-wal-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }

    /// A WAL database whose checkpoints are ours alone, as replication runs them.
    fn open(name: &str) -> Db {
        let dir = tempdir::new(name);
        let path = dir.0.join("object.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=NORMAL;
             CREATE TABLE kv(k TEXT PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        Db {
            _dir: dir,
            path,
            conn,
        }
    }

    fn wal(db: &Db) -> Vec<u8> {
        std::fs::read(db.path.with_extension("sqlite-wal")).unwrap_or_default()
    }

    /// Applies transactions to a database image as a restore does.
    fn apply(image: &mut Vec<u8>, page_size: u32, committed: &Committed) {
        let size = page_size as usize;
        image.resize(committed.db_pages as usize * size, 0);
        for (pgno, page) in &committed.pages {
            let at = (*pgno as usize - 1) * size;
            image[at..at + size].copy_from_slice(page);
        }
    }

    fn checkpointed_image(db: &Db) -> Vec<u8> {
        db.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        std::fs::read(&db.path).unwrap()
    }

    #[test]
    fn captured_commits_rebuild_the_database_byte_for_byte() {
        let db = open("rebuild");
        let mut image = std::fs::read(&db.path).unwrap();
        let mut cursor = Cursor::new();
        for round in 0..5 {
            for i in 0..40 {
                db.conn
                    .execute(
                        "INSERT OR REPLACE INTO kv VALUES (?1, ?2)",
                        (format!("k{round}-{i}"), vec![round as u8; 300 + i * 13]),
                    )
                    .unwrap();
            }
            // Several commits between captures.
            // (A transaction that changes nothing writes no frame at all.)
            db.conn
                .execute("DELETE FROM kv WHERE k LIKE ?1", [format!("k{round}-1%")])
                .unwrap();
            let captured = cursor.capture(&wal(&db)).unwrap();
            assert_eq!(captured.transactions.len(), 41, "round {round}");
            assert_eq!(cursor.offset(), wal(&db).len() as u64);
            let merged = merge(&captured.transactions).unwrap();
            // Through LTX and back, as the store would hold it.
            let header = ltx::Header {
                flags: ltx::NO_CHECKSUM,
                page_size: captured.page_size,
                commit: merged.db_pages,
                min_txid: 2 + round * 41,
                max_txid: 2 + round * 41 + 40,
                wal_offset: captured.wal_offset,
                wal_size: captured.wal_size,
                wal_salt1: captured.salts.0,
                wal_salt2: captured.salts.1,
                ..ltx::Header::default()
            };
            let decoded = ltx::decode(&ltx::encode(&header, &merged.pages, 0).unwrap()).unwrap();
            assert_eq!(decoded.pages, merged.pages);
            apply(&mut image, captured.page_size, &merged);
        }
        assert_eq!(image, checkpointed_image(&db));
    }

    #[test]
    fn an_uncommitted_transaction_is_not_captured_and_a_rollback_leaves_nothing() {
        let db = open("uncommitted");
        db.conn
            .execute("INSERT INTO kv VALUES ('a', 1)", [])
            .unwrap();
        let mut cursor = Cursor::new();
        assert_eq!(cursor.capture(&wal(&db)).unwrap().transactions.len(), 1);
        // A big transaction spills pages into the WAL before it commits.
        db.conn.execute_batch("PRAGMA cache_size=2; BEGIN").unwrap();
        for i in 0..300 {
            db.conn
                .execute(
                    "INSERT INTO kv VALUES (?1, zeroblob(2000))",
                    [format!("big{i}")],
                )
                .unwrap();
        }
        let spilled = wal(&db);
        assert!(spilled.len() as u64 > cursor.offset(), "nothing spilled");
        assert!(cursor.capture(&spilled).unwrap().transactions.is_empty());
        db.conn.execute_batch("ROLLBACK").unwrap();
        assert!(cursor.capture(&wal(&db)).unwrap().transactions.is_empty());
        // The next commit overwrites the spilled frames and is captured alone.
        db.conn
            .execute("INSERT INTO kv VALUES ('b', 2)", [])
            .unwrap();
        let captured = cursor.capture(&wal(&db)).unwrap();
        assert_eq!(captured.transactions.len(), 1);
        // Replaying the whole WAL over the main file gives the checkpointed database.
        let mut image = std::fs::read(&db.path).unwrap();
        for t in Cursor::new().capture(&wal(&db)).unwrap().transactions {
            apply(&mut image, captured.page_size, &t);
        }
        assert_eq!(image, checkpointed_image(&db));
    }

    #[test]
    fn a_checkpoint_restarts_the_cursor() {
        let db = open("restart");
        let mut cursor = Cursor::new();
        db.conn
            .execute("INSERT INTO kv VALUES ('a', 1)", [])
            .unwrap();
        assert_eq!(cursor.capture(&wal(&db)).unwrap().transactions.len(), 1);
        let mut image = checkpointed_image(&db);
        // After a checkpoint the next commit starts the WAL over with new salts.
        for i in 0..3 {
            db.conn
                .execute("INSERT INTO kv VALUES (?1, 2)", [format!("b{i}")])
                .unwrap();
        }
        let captured = cursor.capture(&wal(&db)).unwrap();
        assert_eq!(captured.transactions.len(), 3);
        assert_eq!(captured.wal_offset, WAL_HEADER_SIZE as u64);
        for t in &captured.transactions {
            apply(&mut image, captured.page_size, t);
        }
        assert_eq!(image, checkpointed_image(&db));
    }

    #[test]
    fn a_torn_frame_ends_the_capture_at_the_last_whole_commit() {
        let db = open("torn");
        for i in 0..4 {
            db.conn
                .execute("INSERT INTO kv VALUES (?1, 1)", [format!("a{i}")])
                .unwrap();
        }
        let mut bytes = wal(&db);
        let mut whole = Cursor::new();
        assert_eq!(whole.capture(&bytes).unwrap().transactions.len(), 4);
        // Flip one byte in the last frame's page: that commit is gone, the others stay.
        let last = bytes.len() - 10;
        bytes[last] ^= 1;
        let mut torn = Cursor::new();
        assert_eq!(torn.capture(&bytes).unwrap().transactions.len(), 3);
        // A WAL cut in the middle of a frame: likewise.
        let mut cut = Cursor::new();
        assert_eq!(
            cut.capture(&bytes[..bytes.len() - 100])
                .unwrap()
                .transactions
                .len(),
            3
        );
    }
}
