//! The page file, its memory map, and the frame table of pages changed since their last
//! write-back.
//!
//! Readers see a `Published` state: a page is read from its frame if one exists, otherwise
//! straight from the read-only memory map, checksum-verified on first touch. The writer
//! changes pages in a private overlay (`txn::WriteCtx`) and installs them as frames in one
//! step under the write lock, so a reader sees all of a batch or none of it. Write-back copies
//! frames to the file with `pwrite`, syncs, and only then drops the frames: a page is never
//! read through the map while the file bytes under it are being rewritten.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::page::{self, Meta, PageBuf, PAGE_SIZE};
use crate::types::PageId;

/// Anything pages can be read from: the published state (readers) or a writer's overlay.
pub(crate) trait PageSource {
    /// The `PAGE_SIZE` bytes of page `id`, verified if they came from disk.
    fn page(&self, id: PageId) -> Result<&[u8]>;
}

/// What readers see: the last installed batch.
pub(crate) struct Published {
    pub meta: Meta,
    frames: Vec<Option<Box<PageBuf>>>,
    frame_count: usize,
    map: Option<Mmap>,
    mapped_pages: u64,
    verified: Vec<AtomicU64>,
}

impl PageSource for Published {
    #[inline]
    fn page(&self, id: PageId) -> Result<&[u8]> {
        let i = id.0 as usize;
        if let Some(Some(f)) = self.frames.get(i) {
            return Ok(&f[..]);
        }
        if id.0 >= self.meta.page_count || id.0 >= self.mapped_pages {
            return Err(Error::corrupt(
                id,
                format!(
                    "reference beyond the end of the file ({} pages)",
                    self.meta.page_count
                ),
            ));
        }
        let map = match &self.map {
            Some(m) => m,
            None => return Err(Error::corrupt(id, "page file is not mapped")),
        };
        let p = &map[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        // Relaxed is enough: the bit only caches "these bytes passed verify"; a reader that
        // misses a racing set simply verifies again.
        if self.verified[word].load(Ordering::Relaxed) & bit == 0 {
            page::verify(p, id)?;
            self.verified[word].fetch_or(bit, Ordering::Relaxed);
        }
        Ok(p)
    }
}

impl Published {
    fn new(meta: Meta) -> Published {
        Published {
            meta,
            frames: Vec::new(),
            frame_count: 0,
            map: None,
            mapped_pages: 0,
            verified: Vec::new(),
        }
    }

    /// Installs a writer's sealed pages and meta: the moment a batch becomes visible.
    pub fn install(&mut self, pages: Vec<(PageId, Box<PageBuf>)>, meta: Meta) {
        let need = meta.page_count as usize;
        if self.frames.len() < need {
            self.frames.resize_with(need, || None);
        }
        for (id, buf) in pages {
            let slot = &mut self.frames[id.0 as usize];
            if slot.is_none() {
                self.frame_count += 1;
            }
            *slot = Some(buf);
        }
        self.meta = meta;
    }

    /// Pages held in frames (changed since their last write-back).
    pub fn dirty_pages(&self) -> usize {
        self.frame_count
    }

    fn remap(&mut self, file: &File, file_pages: u64) -> Result<()> {
        // SAFETY: the page file is locked (flock) by this process for as long as it is open,
        // so no other process changes it. This process only writes pages that are held in
        // frames, and readers read such pages from the frame, never through the map, until the
        // write is complete; the file never shrinks. So no byte a reader borrows from the map
        // changes under it. (Bytes seen through the map are still verified before use.)
        let map = unsafe { Mmap::map(file)? };
        self.map = Some(map);
        self.mapped_pages = file_pages;
        let words = (file_pages as usize).div_ceil(64);
        self.verified.resize_with(words, || AtomicU64::new(0));
        Ok(())
    }
}

/// The page file on disk; owned by the writer.
pub(crate) struct PageFile {
    file: File,
    path: PathBuf,
    /// Current file length in pages (grown ahead of use, never shrunk).
    len_pages: u64,
}

impl PageFile {
    /// Opens (creating if needed) and locks the page file, returning the published state.
    pub fn open(path: &Path) -> Result<(PageFile, Published)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let len = file.metadata()?.len();
        let incompatible = |reason: String| Error::Incompatible {
            path: path.to_path_buf(),
            reason,
        };
        if len % PAGE_SIZE as u64 != 0 {
            return Err(incompatible(format!(
                "length {len} is not a multiple of the {PAGE_SIZE}-byte page"
            )));
        }
        let mut pf = PageFile {
            file,
            path: path.to_path_buf(),
            len_pages: len / PAGE_SIZE as u64,
        };
        if len == 0 {
            let published = pf.create()?;
            return Ok((pf, published));
        }
        let mut buf = page::new_page_buf();
        pf.file.read_exact_at(&mut buf[..], 0)?;
        page::verify(&buf[..], PageId(0)).map_err(|e| incompatible(format!("meta page: {e}")))?;
        let meta = Meta::read(&buf[..]).map_err(incompatible)?;
        if meta.page_count > pf.len_pages {
            return Err(incompatible(format!(
                "meta page counts {} pages but the file holds {}",
                meta.page_count, pf.len_pages
            )));
        }
        let mut published = Published::new(meta);
        published.remap(&pf.file, pf.len_pages)?;
        Ok((pf, published))
    }

    /// Writes an empty database: meta page and an empty root leaf.
    fn create(&mut self) -> Result<Published> {
        let meta = Meta {
            root: PageId(1),
            page_count: 2,
            freelist_head: PageId::NONE,
            free_count: 0,
            entries: 0,
            last_lsn: Default::default(),
        };
        let mut p0 = page::new_page_buf();
        page::init(&mut p0[..], page::PageKind::Meta, PageId(0));
        meta.write(&mut p0[..]);
        page::seal(&mut p0[..], meta.last_lsn);
        let mut p1 = page::new_page_buf();
        page::init(&mut p1[..], page::PageKind::Leaf, PageId(1));
        page::seal(&mut p1[..], meta.last_lsn);
        self.file.write_all_at(&p0[..], 0)?;
        self.file.write_all_at(&p1[..], PAGE_SIZE as u64)?;
        self.file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            // Make the new file's directory entry durable too.
            File::open(dir)?.sync_all()?;
        }
        self.len_pages = 2;
        let mut published = Published::new(meta);
        published.remap(&self.file, self.len_pages)?;
        Ok(published)
    }

    /// Writes every frame to the file and syncs it. Runs with shared access to the published
    /// state (readers continue); returns the ids written, to be dropped by `finish`.
    pub fn write_back(&mut self, published: &Published) -> Result<Vec<PageId>> {
        let need = published.meta.page_count;
        if need > self.len_pages {
            // Grow in large steps so the map is not rebuilt on every commit.
            let grown = need.max(self.len_pages + (self.len_pages / 4).max(256));
            self.file.set_len(grown * PAGE_SIZE as u64)?;
            self.len_pages = grown;
        }
        let mut written = Vec::with_capacity(published.frame_count);
        // Coalesce runs of consecutive pages into one write.
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut run_next = 0u64;
        for (i, f) in published.frames.iter().enumerate() {
            let Some(f) = f else { continue };
            let id = i as u64;
            if !run.is_empty() && (id != run_next || run.len() >= 1 << 20) {
                self.file.write_all_at(&run, run_start * PAGE_SIZE as u64)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = id;
            }
            debug_assert_eq!(page::header(&f[..]).page_id.get(), id);
            debug_assert!(page::verify(&f[..], PageId(id)).is_ok());
            run.extend_from_slice(&f[..]);
            run_next = id + 1;
            written.push(PageId(id));
        }
        if !run.is_empty() {
            self.file.write_all_at(&run, run_start * PAGE_SIZE as u64)?;
        }
        self.file.sync_data()?;
        Ok(written)
    }

    /// After a successful write-back: remap if the file grew and drop the written frames.
    pub fn finish_write_back(&self, published: &mut Published, written: &[PageId]) -> Result<()> {
        if self.len_pages != published.mapped_pages {
            published.remap(&self.file, self.len_pages)?;
        }
        for id in written {
            let i = id.0 as usize;
            if published.frames[i].take().is_some() {
                published.frame_count -= 1;
            }
            // Written from a sealed frame, so the file bytes are known good.
            published.verified[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len_bytes(&self) -> u64 {
        self.len_pages * PAGE_SIZE as u64
    }
}
