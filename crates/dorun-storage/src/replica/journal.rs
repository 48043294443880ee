//! A journal batch: one upload holding LTX segments of many objects (ARCHITECTURE.md,
//! "Group upload: the session journal"), stored at `j/<session>/b/<seq as 16 hex>`.
//!
//! Layout (integers big-endian): `DOJ1`, format (u32 = 1), seq (u64), created ms (u64),
//! session (u16 length + UTF-8), entry count (u32); the LTX files back to back; the index,
//! one entry per segment: namespace and object id (u16 length + UTF-8 each), epoch, min TXID,
//! max TXID, offset and length of its LTX file from the start of the batch (u64 each); and
//! last the index's length (u64), so a reader can fetch the index alone with a ranged GET.
//! A fence, which closes a session's journal at a seq, is the 4 bytes `DOJF`.

pub const MAGIC: &[u8; 4] = b"DOJ1";
pub const FENCE: &[u8; 4] = b"DOJF";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("journal batch: {0}")]
    Invalid(String),
}

fn invalid<T>(message: impl Into<String>) -> Result<T, JournalError> {
    Err(JournalError::Invalid(message.into()))
}

/// Which object a segment belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace's directory name under the data directory.
    pub namespace: String,
    /// The object id (64 hex digits).
    pub id: String,
}

/// One segment's place in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub object: ObjectKey,
    pub epoch: u64,
    pub min_txid: u64,
    pub max_txid: u64,
    pub offset: u64,
    pub length: u64,
}

/// A batch's header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    pub seq: u64,
    pub created_ms: u64,
    pub session: String,
}

/// Builds a batch from segments (object, epoch, TXID range, LTX bytes).
pub fn encode(info: &BatchInfo, segments: &[(ObjectKey, u64, u64, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + segments.iter().map(|s| s.4.len() + 100).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&info.seq.to_be_bytes());
    out.extend_from_slice(&info.created_ms.to_be_bytes());
    put_str(&mut out, &info.session);
    out.extend_from_slice(&(segments.len() as u32).to_be_bytes());
    let mut entries = Vec::with_capacity(segments.len());
    for (object, epoch, min_txid, max_txid, ltx) in segments {
        entries.push(Entry {
            object: object.clone(),
            epoch: *epoch,
            min_txid: *min_txid,
            max_txid: *max_txid,
            offset: out.len() as u64,
            length: ltx.len() as u64,
        });
        out.extend_from_slice(ltx);
    }
    let index_start = out.len();
    for entry in &entries {
        put_str(&mut out, &entry.object.namespace);
        put_str(&mut out, &entry.object.id);
        for value in [
            entry.epoch,
            entry.min_txid,
            entry.max_txid,
            entry.offset,
            entry.length,
        ] {
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    let index_length = (out.len() - index_start) as u64;
    out.extend_from_slice(&index_length.to_be_bytes());
    out
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// What a stored journal key holds.
#[derive(Debug)]
pub enum Stored {
    Batch(BatchInfo, Vec<Entry>),
    Fence,
}

/// Reads a whole batch (or a fence): its header and index, checked against its size.
pub fn decode(bytes: &[u8]) -> Result<Stored, JournalError> {
    if bytes == FENCE {
        return Ok(Stored::Fence);
    }
    let mut reader = Reader { bytes, at: 0 };
    if reader.take(4)? != MAGIC {
        return invalid("bad magic");
    }
    if reader.u32()? != FORMAT {
        return invalid("unknown format");
    }
    let info = BatchInfo {
        seq: reader.u64()?,
        created_ms: reader.u64()?,
        session: reader.string()?,
    };
    let count = reader.u32()? as usize;
    let Some(length_field) = bytes.len().checked_sub(8) else {
        return invalid("too short");
    };
    let index_length = u64::from_be_bytes(bytes[length_field..].try_into().expect("8 bytes"));
    let Some(index_start) = (length_field as u64).checked_sub(index_length) else {
        return invalid("index length past the start");
    };
    let mut index = Reader {
        bytes: &bytes[..length_field],
        at: index_start as usize,
    };
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = Entry {
            object: ObjectKey {
                namespace: index.string()?,
                id: index.string()?,
            },
            epoch: index.u64()?,
            min_txid: index.u64()?,
            max_txid: index.u64()?,
            offset: index.u64()?,
            length: index.u64()?,
        };
        if entry.offset < reader.at as u64
            || entry.offset + entry.length > index_start
            || entry.min_txid == 0
            || entry.min_txid > entry.max_txid
        {
            return invalid("index entry out of bounds");
        }
        entries.push(entry);
    }
    if index.at != length_field {
        return invalid("index length does not match its entries");
    }
    Ok(Stored::Batch(info, entries))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JournalError> {
        let Some(slice) = self.bytes.get(self.at..self.at + n) else {
            return invalid("truncated");
        };
        self.at += n;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, JournalError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, JournalError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, JournalError> {
        let length = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(length)?.to_vec())
            .map_err(|_| JournalError::Invalid("a name is not UTF-8".into()))
    }
}

/// The store key of a batch or fence.
pub fn batch_key(session: &str, seq: u64) -> String {
    format!("j/{session}/b/{seq:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(n: u8) -> ObjectKey {
        ObjectKey {
            namespace: "app-Counter".into(),
            id: format!("{n:064x}"),
        }
    }

    #[test]
    fn round_trip_and_entries_point_at_their_segments() {
        let info = BatchInfo {
            seq: 7,
            created_ms: 1_796_000_000_123,
            session: "node.g0000000000000003".into(),
        };
        let segments = vec![
            (object(1), 3, 10, 12, vec![1u8; 300]),
            (object(2), 3, 1, 1, vec![2u8; 5]),
        ];
        let bytes = encode(&info, &segments);
        let Stored::Batch(decoded, entries) = decode(&bytes).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(decoded, info);
        assert_eq!(entries.len(), 2);
        for (entry, segment) in entries.iter().zip(&segments) {
            assert_eq!(entry.object, segment.0);
            assert_eq!(
                (entry.epoch, entry.min_txid, entry.max_txid),
                (segment.1, segment.2, segment.3)
            );
            let at = entry.offset as usize;
            assert_eq!(&bytes[at..at + entry.length as usize], &segment.4[..]);
        }
        assert!(matches!(decode(FENCE).unwrap(), Stored::Fence));
    }

    #[test]
    fn truncated_or_damaged_batches_are_refused() {
        let info = BatchInfo {
            seq: 1,
            created_ms: 1,
            session: "s".into(),
        };
        let bytes = encode(&info, &[(object(1), 1, 1, 2, vec![9u8; 50])]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&bytes[..20]).is_err());
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(decode(&bad).is_err());
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 4;
        assert!(decode(&bad).is_err());
    }
}
