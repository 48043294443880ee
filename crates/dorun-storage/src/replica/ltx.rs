//! The LTX file format (Litestream / LiteFS "Lite Transaction" files), as the current
//! `superfly/ltx` encoder writes it (the format its README calls version 3; the magic is
//! `LTX1` and the version is not on disk): a 100-byte header, page frames in page order
//! (6-byte page header with the size flag, a 4-byte compressed size, an LZ4 block), a zero
//! page header, a page index of uvarint triples, and a 16-byte trailer. All integers are
//! big-endian.
//!
//! The database checksum is the XOR of a CRC-64 (Go's ISO table) of each page's number and
//! contents, the lock page left out, with bit 63 set; the file checksum is a CRC-64 over the
//! header, the page headers with the *uncompressed* pages, the terminator, the index and the
//! post-apply checksum. Segments captured from commits carry `NO_CHECKSUM` (no rolling
//! database checksum: it would need the old contents of every page a commit changes);
//! snapshots carry real checksums.

use std::collections::BTreeMap;

use crc::{Crc, CRC_64_GO_ISO};

pub const MAGIC: &[u8; 4] = b"LTX1";
pub const HEADER_SIZE: usize = 100;
pub const PAGE_HEADER_SIZE: usize = 6;
pub const TRAILER_SIZE: usize = 16;
/// No rolling database checksum (pre- and post-apply checksums are zero).
pub const NO_CHECKSUM: u32 = 1 << 1;
/// A 4-byte compressed size follows the page header (always set by the encoder).
const PAGE_FLAG_SIZE: u16 = 1;
/// Set on every checksum so that a real one is never zero.
pub const CHECKSUM_FLAG: u64 = 1 << 63;
/// SQLite's lock-byte page lives at byte 2^30, whatever the page size; it is never stored.
const PENDING_BYTE: u64 = 0x4000_0000;

const CRC64: Crc<u64> = Crc::<u64>::new(&CRC_64_GO_ISO);

/// The page that holds SQLite's lock bytes for this page size (never in an LTX file).
pub fn lock_pgno(page_size: u32) -> u32 {
    (PENDING_BYTE / u64::from(page_size)) as u32 + 1
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LtxError {
    #[error("LTX: {0}")]
    Invalid(String),
}

fn invalid<T>(message: impl Into<String>) -> Result<T, LtxError> {
    Err(LtxError::Invalid(message.into()))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub page_size: u32,
    /// The database's size in pages after the file is applied.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub pre_apply_checksum: u64,
    pub wal_offset: u64,
    pub wal_size: u64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub node_id: u64,
}

impl Header {
    /// A snapshot starts at TXID 1 and holds every page of the database.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    pub fn no_checksum(&self) -> bool {
        self.flags & NO_CHECKSUM != 0
    }

    fn validate(&self) -> Result<(), LtxError> {
        if self.flags & !NO_CHECKSUM != 0 {
            return invalid(format!("invalid flags 0x{:08x}", self.flags));
        }
        if !(512..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return invalid(format!("invalid page size {}", self.page_size));
        }
        if self.min_txid == 0 || self.max_txid == 0 || self.min_txid > self.max_txid {
            return invalid(format!(
                "transaction ids out of order: ({}, {})",
                self.min_txid, self.max_txid
            ));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return invalid("WAL offset required with WAL salts");
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return invalid("WAL offset required with a WAL size");
        }
        if self.is_snapshot() || self.no_checksum() {
            if self.pre_apply_checksum != 0 {
                return invalid("pre-apply checksum not allowed");
            }
        } else if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return invalid("pre-apply checksum required");
        }
        Ok(())
    }

    fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Result<Self, LtxError> {
        if b.len() < HEADER_SIZE {
            return invalid("file shorter than a header");
        }
        if &b[0..4] != MAGIC {
            return invalid("not an LTX file (bad magic)");
        }
        let header = Self {
            flags: be32(&b[4..]),
            page_size: be32(&b[8..]),
            commit: be32(&b[12..]),
            min_txid: be64(&b[16..]),
            max_txid: be64(&b[24..]),
            timestamp: be64(&b[32..]),
            pre_apply_checksum: be64(&b[40..]),
            wal_offset: be64(&b[48..]),
            wal_size: be64(&b[56..]),
            wal_salt1: be32(&b[64..]),
            wal_salt2: be32(&b[68..]),
            node_id: be64(&b[72..]),
        };
        header.validate()?;
        Ok(header)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// One page's contribution to a database checksum.
pub fn page_checksum(pgno: u32, page: &[u8]) -> u64 {
    let mut digest = CRC64.digest();
    digest.update(&pgno.to_be_bytes());
    digest.update(page);
    CHECKSUM_FLAG | digest.finalize()
}

/// The rolling checksum of a whole database image (`page_size`-byte pages from page 1).
pub fn database_checksum(image: &[u8], page_size: u32) -> u64 {
    let lock = lock_pgno(page_size);
    let mut sum = CHECKSUM_FLAG;
    for (i, page) in image.chunks(page_size as usize).enumerate() {
        let pgno = i as u32 + 1;
        if pgno != lock {
            sum = CHECKSUM_FLAG | (sum ^ page_checksum(pgno, page));
        }
    }
    sum
}

/// The database checksum of a whole image given as pages by number (the lock page, if
/// present, left out).
pub fn pages_checksum(pages: &BTreeMap<u32, Vec<u8>>) -> u64 {
    let mut sum = CHECKSUM_FLAG;
    for (pgno, page) in pages {
        if *pgno != lock_pgno(page.len() as u32) {
            sum = CHECKSUM_FLAG | (sum ^ page_checksum(*pgno, page));
        }
    }
    sum
}

/// A decoded file: its header, its pages by number, and its post-apply checksum.
#[derive(Debug)]
pub struct Ltx {
    pub header: Header,
    pub pages: BTreeMap<u32, Vec<u8>>,
    pub post_apply_checksum: u64,
}

/// Encodes `pages` (every page of `header.page_size` bytes; ascending numbers; for a snapshot
/// pages 1..=commit without the lock page) with the given post-apply checksum (0 when the
/// header says `NO_CHECKSUM`).
pub fn encode(
    header: &Header,
    pages: &BTreeMap<u32, Vec<u8>>,
    post_apply_checksum: u64,
) -> Result<Vec<u8>, LtxError> {
    header.validate()?;
    if header.no_checksum() {
        if post_apply_checksum != 0 {
            return invalid("post-apply checksum not allowed");
        }
    } else if post_apply_checksum & CHECKSUM_FLAG == 0 {
        return invalid("post-apply checksum required");
    }
    if pages.is_empty() {
        return invalid("an LTX file holds at least one page");
    }
    let lock = lock_pgno(header.page_size);
    if header.is_snapshot() {
        let expected = (1..=header.commit).filter(|p| *p != lock);
        if !pages.keys().copied().eq(expected) {
            return invalid("a snapshot holds every page from 1 to its commit size");
        }
    }
    let mut out = Vec::with_capacity(HEADER_SIZE + pages.len() * 1024);
    let mut hash = CRC64.digest();
    let head = header.to_bytes();
    out.extend_from_slice(&head);
    hash.update(&head);
    let mut index = Vec::with_capacity(pages.len());
    for (&pgno, page) in pages {
        if pgno == 0 || pgno > header.commit {
            return invalid(format!(
                "page {pgno} out of bounds for commit size {}",
                header.commit
            ));
        }
        if pgno == lock {
            return invalid(format!("page {pgno} is the lock page"));
        }
        if page.len() != header.page_size as usize {
            return invalid(format!("page {pgno} is {} bytes", page.len()));
        }
        let offset = out.len() as u64;
        let compressed = lz4_flex::block::compress(page);
        let mut frame_head = [0u8; PAGE_HEADER_SIZE + 4];
        frame_head[0..4].copy_from_slice(&pgno.to_be_bytes());
        frame_head[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        frame_head[6..10].copy_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&frame_head);
        hash.update(&frame_head);
        out.extend_from_slice(&compressed);
        hash.update(page);
        index.push((pgno, offset, out.len() as u64 - offset));
    }
    let terminator = [0u8; PAGE_HEADER_SIZE];
    out.extend_from_slice(&terminator);
    hash.update(&terminator);
    let index_start = out.len();
    for (pgno, offset, size) in index {
        put_uvarint(&mut out, u64::from(pgno));
        put_uvarint(&mut out, offset);
        put_uvarint(&mut out, size);
    }
    put_uvarint(&mut out, 0);
    let index_size = (out.len() - index_start) as u64;
    out.extend_from_slice(&index_size.to_be_bytes());
    hash.update(&out[index_start..]);
    out.extend_from_slice(&post_apply_checksum.to_be_bytes());
    hash.update(&post_apply_checksum.to_be_bytes());
    out.extend_from_slice(&(CHECKSUM_FLAG | hash.finalize()).to_be_bytes());
    Ok(out)
}

/// Decodes and checks a whole file: structure, page order, the index against the frames, and
/// the file checksum.
pub fn decode(bytes: &[u8]) -> Result<Ltx, LtxError> {
    let header = Header::from_bytes(bytes)?;
    if bytes.len() < HEADER_SIZE + PAGE_HEADER_SIZE + 1 + 8 + TRAILER_SIZE {
        return invalid("file too short");
    }
    let mut hash = CRC64.digest();
    hash.update(&bytes[..HEADER_SIZE]);
    let lock = lock_pgno(header.page_size);
    let page_size = header.page_size as usize;
    let mut pages = BTreeMap::new();
    let mut frames = Vec::new();
    let mut at = HEADER_SIZE;
    loop {
        let Some(frame_head) = bytes.get(at..at + PAGE_HEADER_SIZE) else {
            return invalid("truncated page block");
        };
        let pgno = be32(frame_head);
        let flags = u16::from_be_bytes([frame_head[4], frame_head[5]]);
        if pgno == 0 {
            if flags != 0 {
                return invalid("page block terminator with flags");
            }
            hash.update(frame_head);
            at += PAGE_HEADER_SIZE;
            break;
        }
        if flags != PAGE_FLAG_SIZE {
            return invalid(format!("page {pgno}: unsupported page flags 0x{flags:04x}"));
        }
        let Some(size_bytes) = bytes.get(at + PAGE_HEADER_SIZE..at + PAGE_HEADER_SIZE + 4) else {
            return invalid("truncated page block");
        };
        let size = be32(size_bytes) as usize;
        let data_start = at + PAGE_HEADER_SIZE + 4;
        let Some(compressed) = bytes.get(data_start..data_start + size) else {
            return invalid(format!("page {pgno}: truncated data"));
        };
        let page = lz4_flex::block::decompress(compressed, page_size)
            .map_err(|e| LtxError::Invalid(format!("page {pgno}: {e}")))?;
        if page.len() != page_size {
            return invalid(format!("page {pgno}: decompresses to {} bytes", page.len()));
        }
        if pgno > header.commit || pgno == lock {
            return invalid(format!(
                "page {pgno} not allowed (commit {})",
                header.commit
            ));
        }
        if let Some(&last) = pages.keys().next_back() {
            if pgno <= last {
                return invalid(format!("page numbers out of order: {last}, {pgno}"));
            }
        }
        hash.update(&bytes[at..data_start]);
        hash.update(&page);
        frames.push((pgno, at as u64, (data_start + size - at) as u64));
        pages.insert(pgno, page);
        at = data_start + size;
    }
    if pages.is_empty() {
        return invalid("no pages");
    }
    if header.is_snapshot()
        && !pages
            .keys()
            .copied()
            .eq((1..=header.commit).filter(|p| *p != lock))
    {
        return invalid("a snapshot holds every page from 1 to its commit size");
    }
    let index_start = at;
    let mut entries = Vec::new();
    loop {
        let pgno = get_uvarint(bytes, &mut at)?;
        if pgno == 0 {
            break;
        }
        let offset = get_uvarint(bytes, &mut at)?;
        let size = get_uvarint(bytes, &mut at)?;
        entries.push((pgno as u32, offset, size));
    }
    let Some(size_field) = bytes.get(at..at + 8) else {
        return invalid("truncated page index");
    };
    if be64(size_field) != (at - index_start) as u64 {
        return invalid("page index size does not match");
    }
    at += 8;
    if entries != frames {
        return invalid("page index does not match the page block");
    }
    hash.update(&bytes[index_start..at]);
    if bytes.len() != at + TRAILER_SIZE {
        return invalid("trailing bytes after the trailer");
    }
    let post_apply_checksum = be64(&bytes[at..]);
    let file_checksum = be64(&bytes[at + 8..]);
    hash.update(&bytes[at..at + 8]);
    if file_checksum != CHECKSUM_FLAG | hash.finalize() {
        return invalid("file checksum mismatch");
    }
    if header.no_checksum() {
        if post_apply_checksum != 0 {
            return invalid("post-apply checksum not allowed");
        }
    } else if post_apply_checksum & CHECKSUM_FLAG == 0 {
        return invalid("post-apply checksum required");
    }
    Ok(Ltx {
        header,
        pages,
        post_apply_checksum,
    })
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_uvarint(bytes: &[u8], at: &mut usize) -> Result<u64, LtxError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = bytes.get(*at) else {
            return invalid("truncated page index");
        };
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    invalid("page index varint too long")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(size: usize, seed: u8) -> Vec<u8> {
        (0..size)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    fn segment(pages: &[u32]) -> (Header, BTreeMap<u32, Vec<u8>>) {
        let header = Header {
            flags: NO_CHECKSUM,
            page_size: 4096,
            commit: 10,
            min_txid: 5,
            max_txid: 7,
            timestamp: 1_796_000_000_000,
            ..Header::default()
        };
        let pages = pages.iter().map(|&p| (p, page(4096, p as u8))).collect();
        (header, pages)
    }

    #[test]
    fn crc_is_gos_iso_table() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO)).
        assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn round_trip_of_a_segment() {
        let (header, pages) = segment(&[1, 3, 10]);
        let bytes = encode(&header, &pages, 0).unwrap();
        let ltx = decode(&bytes).unwrap();
        assert_eq!(ltx.header, header);
        assert_eq!(ltx.pages, pages);
        assert_eq!(ltx.post_apply_checksum, 0);
    }

    #[test]
    fn snapshots_carry_real_checksums_and_every_page() {
        let image: Vec<u8> = (1..=4).flat_map(|p| page(512, p)).collect();
        let header = Header {
            page_size: 512,
            commit: 4,
            min_txid: 1,
            max_txid: 9,
            ..Header::default()
        };
        let pages: BTreeMap<u32, Vec<u8>> = image
            .chunks(512)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p.to_vec()))
            .collect();
        let sum = database_checksum(&image, 512);
        let ltx = decode(&encode(&header, &pages, sum).unwrap()).unwrap();
        assert_eq!(ltx.post_apply_checksum, sum);
        let mut missing = pages.clone();
        missing.remove(&2);
        assert!(encode(&header, &missing, sum).is_err());
        assert!(
            encode(&header, &pages, 0).is_err(),
            "a snapshot needs its checksum"
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let (header, pages) = segment(&[2, 4]);
        let bytes = encode(&header, &pages, 0).unwrap();
        for at in [
            20,
            HEADER_SIZE + 2,
            HEADER_SIZE + 40,
            bytes.len() - 30,
            bytes.len() - 1,
        ] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "byte {at} flipped was accepted");
        }
    }

    #[test]
    fn the_lock_page_and_pages_past_commit_are_refused() {
        let header = Header {
            flags: NO_CHECKSUM,
            page_size: 65536,
            commit: 20_000,
            min_txid: 2,
            max_txid: 2,
            ..Header::default()
        };
        let lock = lock_pgno(65536);
        assert_eq!(lock, 16_385);
        let pages = BTreeMap::from([(lock, vec![0u8; 65536])]);
        assert!(encode(&header, &pages, 0).is_err());
        let pages = BTreeMap::from([(20_001, vec![0u8; 65536])]);
        assert!(encode(&header, &pages, 0).is_err());
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let (header, pages) = segment(&[7]);
        let bytes = encode(&header, &pages, 0).unwrap();
        assert_eq!(&bytes[0..4], b"LTX1");
        assert_eq!(be32(&bytes[4..]), NO_CHECKSUM);
        assert_eq!(be32(&bytes[8..]), 4096);
        assert_eq!(be64(&bytes[16..]), 5);
        // First frame: page number, the size flag, the compressed size, an LZ4 block.
        assert_eq!(be32(&bytes[HEADER_SIZE..]), 7);
        assert_eq!(&bytes[HEADER_SIZE + 4..HEADER_SIZE + 6], &[0, 1]);
        let size = be32(&bytes[HEADER_SIZE + 6..]) as usize;
        let block = &bytes[HEADER_SIZE + 10..HEADER_SIZE + 10 + size];
        assert_eq!(lz4_flex::block::decompress(block, 4096).unwrap(), pages[&7]);
        // Then the terminator and the index: (7, 100, frame size), 0, and its size.
        let at = HEADER_SIZE + 10 + size;
        assert_eq!(&bytes[at..at + 6], &[0; 6]);
        let mut index_at = at + 6;
        assert_eq!(get_uvarint(&bytes, &mut index_at).unwrap(), 7);
        assert_eq!(get_uvarint(&bytes, &mut index_at).unwrap(), 100);
        assert_eq!(
            get_uvarint(&bytes, &mut index_at).unwrap(),
            (10 + size) as u64
        );
        assert_eq!(get_uvarint(&bytes, &mut index_at).unwrap(), 0);
        assert_eq!(be64(&bytes[index_at..]), (index_at - at - 6) as u64);
        assert_eq!(bytes.len(), index_at + 8 + TRAILER_SIZE);
    }
}
