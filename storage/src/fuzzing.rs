//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the stable test that replays
//! their corpora, so both exercise exactly the same code.

use crate::page::{self, PAGE_SIZE};
use crate::types::PageId;

/// `page_decode`: the input becomes a page image (cut or zero-padded to a page), its checksum
/// is fixed up so that decoding goes past the checksum into the structure checks, and the
/// page is inspected. Must never panic, whatever the bytes.
pub fn page_decode(data: &[u8]) {
    let mut p = vec![0u8; PAGE_SIZE];
    let n = data.len().min(PAGE_SIZE);
    p[..n].copy_from_slice(&data[..n]);
    let c = page::checksum_of(&p);
    p[..4].copy_from_slice(&c.to_le_bytes());
    let id = PageId(page::header(&p).page_id.get());
    let _ = page::inspect(&p, id);
    // The unmodified input must also be handled (wrong length, wrong checksum).
    let _ = page::inspect(data, PageId(1));
}

/// `wal_decode`: the input is a WAL stream starting at LSN 0 (and, re-read, at the LSN its
/// first record claims, bytes 8..16). Records are decoded one after another until the first error; every
/// decoded page record is replayed onto a scratch page. Must never panic, allocate per input
/// length beyond the scratch page, or loop: each step consumes at least a record header.
pub fn wal_decode(data: &[u8]) {
    use crate::wal::record::{self, DecodeError};
    let mut scratch = vec![0u8; PAGE_SIZE];
    let starts = [
        0u64,
        data.get(8..16)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
    ];
    for start in starts {
        let mut pos = 0usize;
        while pos < data.len() {
            match record::decode(
                &data[pos..],
                crate::types::Lsn(start.wrapping_add(pos as u64)),
            ) {
                Ok((rec, len)) => {
                    assert!(len >= record::RECORD_HEADER && len <= data.len() - pos);
                    record::redo(&mut scratch, &rec);
                    pos += len;
                }
                Err(DecodeError::Incomplete { need }) => {
                    assert!(need > data.len() - pos);
                    break;
                }
                Err(DecodeError::Invalid(_)) => break,
            }
        }
    }
}
