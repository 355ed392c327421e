//! The page file, its memory map, and the frame table of pages changed since the last
//! checkpoint.
//!
//! Readers see a `Published` state: a page is read from its frame if one exists, otherwise
//! straight from the read-only memory map, checksum-verified on first touch. The writer
//! changes pages in a private overlay (`txn::WriteCtx`), logs them, and installs them as frames
//! in one step under the write lock, so a reader sees all of a batch or none of it. A
//! checkpoint writes frames to the file, syncs, and only then drops the frames that did not
//! change meanwhile: a page is never read through the map while its file bytes are being
//! rewritten.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::page::{self, Meta, PageArc, PageBuf, PAGE_SIZE};
use crate::types::{Lsn, PageId};
use crate::vfs::{Mapping, OpenMode, VFile, Vfs};
use crate::wal::io::{Backend, WriteOp};

/// Anything pages can be read from: the published state (readers) or a writer's overlay.
pub(crate) trait PageSource {
    /// The `PAGE_SIZE` bytes of page `id`, verified if they came from disk.
    fn page(&self, id: PageId) -> Result<&[u8]>;
}

/// What readers see: the last installed batch.
pub(crate) struct Published {
    pub meta: Meta,
    /// End LSN of the last commit.
    pub last_lsn: Lsn,
    frames: Vec<Option<Arc<PageBuf>>>,
    frame_count: usize,
    map: Option<Mapping>,
    mapped_pages: u64,
    verified: Vec<AtomicU64>,
}

impl PageSource for Published {
    #[inline]
    fn page(&self, id: PageId) -> Result<&[u8]> {
        let i = id.0 as usize;
        // Past the count, or (below) neither in memory nor in the file.
        let beyond = || {
            Error::corrupt(
                id,
                format!(
                    "reference beyond the end of the file ({} pages)",
                    self.meta.page_count
                ),
            )
        };
        if id.0 >= self.meta.page_count {
            return Err(beyond());
        }
        if let Some(Some(f)) = self.frames.get(i) {
            return Ok(&f[..]);
        }
        if id.0 >= self.mapped_pages {
            return Err(beyond());
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
    /// Installs a batch's pages and meta: the moment the batch becomes visible.
    pub fn install(&mut self, pages: Vec<(PageId, PageArc)>, meta: Meta, last_lsn: Lsn) {
        // The frame table grows to the pages installed, not to the page count: a count is a
        // number a damaged file or a peer can make huge, pages are bytes that were sent.
        let need = pages
            .iter()
            .map(|(id, _)| id.0 as usize + 1)
            .max()
            .unwrap_or(0);
        if self.frames.len() < need {
            self.frames.resize_with(need, || None);
        }
        for (id, buf) in pages {
            let slot = &mut self.frames[id.0 as usize];
            match slot.replace(buf) {
                Some(old) => page::recycle(old),
                None => self.frame_count += 1,
            }
        }
        if meta.page_count < self.meta.page_count {
            // A shrink step lowered the count: frames of the pages cut off are gone (a
            // checkpoint must not write them back past the end).
            let keep = meta.page_count as usize;
            for slot in self.frames.iter_mut().skip(keep) {
                if slot.take().is_some() {
                    self.frame_count -= 1;
                }
            }
            self.frames.truncate(keep);
        }
        self.meta = meta;
        self.last_lsn = last_lsn;
    }

    /// The bytes of page `id` as they stand, unverified: its frame, else the file's bytes
    /// (zeros past the end of the file). For digests, which must cover every page, including
    /// free pages that were never written.
    pub fn page_raw(&self, id: PageId) -> &[u8] {
        const ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        let i = id.0 as usize;
        if let Some(Some(f)) = self.frames.get(i) {
            return &f[..];
        }
        match &self.map {
            Some(m) if id.0 < self.mapped_pages => &m[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
            _ => &ZERO,
        }
    }

    /// Every page that fails its checks, each with why: a page in memory (changed since the
    /// last checkpoint) must be whole, a page read from the file must also pass its
    /// checksum. Pages never written (all zeros in the file) are skipped. Unlike a tree walk,
    /// this goes on past the first damaged page, so an operator learns of all of them.
    pub fn damaged_pages(&self) -> Vec<(PageId, String)> {
        let mut out = Vec::new();
        for i in 0..self.meta.page_count {
            let id = PageId(i);
            let r = match self.frames.get(i as usize) {
                Some(Some(f)) => page::check_structure(&f[..], id),
                _ => {
                    let p = self.page_raw(id);
                    if p.iter().all(|&b| b == 0) {
                        continue;
                    }
                    page::verify(p, id)
                }
            };
            if let Err(e) = r {
                out.push((id, e.to_string()));
            }
        }
        out
    }

    /// Pages held in frames (changed since the last checkpoint).
    pub fn dirty_pages(&self) -> usize {
        self.frame_count
    }

    /// Forgets that page `id` passed its checks, so the next read checks it again (a scrub
    /// found its bytes in the file damaged since).
    pub fn forget_verified(&self, id: PageId) {
        let i = id.0 as usize;
        if let Some(w) = self.verified.get(i / 64) {
            w.fetch_and(!(1u64 << (i % 64)), Ordering::Relaxed);
        }
    }

    /// Whether page `id` is in memory (changed since the last checkpoint).
    pub fn has_frame(&self, id: PageId) -> bool {
        matches!(self.frames.get(id.0 as usize), Some(Some(_)))
    }

    /// The frames as they are now, for a checkpoint to write.
    pub fn frames_snapshot(&self) -> Vec<(PageId, Arc<PageBuf>)> {
        let mut v = Vec::with_capacity(self.frame_count);
        for (i, f) in self.frames.iter().enumerate() {
            if let Some(f) = f {
                v.push((PageId(i as u64), f.clone()));
            }
        }
        v
    }

    /// Drops the frames that a checkpoint wrote and that have not changed since.
    pub fn evict(&mut self, written: &[(PageId, Arc<PageBuf>)]) {
        for (id, buf) in written {
            let i = id.0 as usize;
            if self.frames[i].as_ref().is_some_and(|f| Arc::ptr_eq(f, buf)) {
                self.frames[i] = None;
                self.frame_count -= 1;
                // Written from this very frame, so the file bytes are known good.
                self.verified[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
            }
        }
    }

    fn remap(&mut self, file: &dyn VFile, file_pages: u64) -> Result<()> {
        // A memory map of the real page file (see `VFile::map` for why it is sound), or a copy
        // of a simulated one.
        let map = file.map()?;
        if (map.len() as u64) < file_pages * PAGE_SIZE as u64 {
            return Err(Error::Invariant(format!(
                "the page file's view holds {} bytes, fewer than its {file_pages} pages",
                map.len()
            )));
        }
        self.map = Some(map);
        if file_pages < self.mapped_pages {
            // The file was cut: pages that come back later are new bytes, not verified yet.
            if let Some(w) = self.verified.get_mut(file_pages as usize / 64) {
                *w.get_mut() &= (1u64 << (file_pages % 64)) - 1;
            }
        }
        self.mapped_pages = file_pages;
        let words = (file_pages as usize).div_ceil(64);
        self.verified.resize_with(words, || AtomicU64::new(0));
        Ok(())
    }
}

/// The lock file inside a database directory.
pub const LOCK_FILE: &str = "lock";

/// Takes the exclusive lock of the database directory `dir` (flock on `dir/lock`), held for
/// as long as the returned guard lives; `Error::Locked` if another process holds it.
pub(crate) fn lock_dir(vfs: &dyn Vfs, dir: &Path) -> Result<Box<dyn std::any::Any + Send + Sync>> {
    match vfs.lock(&dir.join(LOCK_FILE)) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(Error::Locked {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The page file on disk.
pub(crate) struct PageFile {
    file: Box<dyn VFile>,
    /// Holds the directory's lock (flock on `DIR/lock`) for as long as the page file is open.
    _lock: Box<dyn std::any::Any + Send + Sync>,
    path: PathBuf,
    /// Current file length in pages (grown ahead of use; cut by a checkpoint after a shrink
    /// pass lowered the page count well below it).
    len_pages: u64,
    /// The least the file grows by, and the slack past the page count a checkpoint leaves.
    step_pages: u64,
    /// The page count the last checkpoint saw (`u64::MAX` before the first).
    last_count: u64,
}

impl PageFile {
    /// Opens (creating if needed) and locks the page file. Nothing is read or verified yet:
    /// recovery may have to repair pages first.
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<PageFile> {
        // The lock lives on a file of its own that no I/O ring ever touches: a ring's pending
        // references to the page file outlive a killed process for a moment, and would keep
        // a lock on the page file itself held after the process is gone.
        let lock = lock_dir(vfs, path.parent().unwrap_or(path))?;
        let file = vfs.open(path, OpenMode::Create)?;
        let mut len = file.len()?;
        if len % PAGE_SIZE as u64 != 0 {
            // Only a power cut makes this: the file is extended and written in whole pages,
            // and a cut can keep some sectors of an unsynced extension and not the rest. The
            // pages out there were never synced, so no checkpoint that wrote them completed:
            // recovery rewrites every page it needs from the log. The cut page is padded out.
            let whole = len.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
            tracing::warn!(
                path = %path.display(),
                len,
                padded_to = whole,
                "the page file ends inside a page (an extension cut short by a crash); padding it to whole pages"
            );
            file.set_len(whole)?;
            file.sync_all()?;
            len = whole;
        }
        Ok(PageFile {
            file,
            _lock: lock,
            path: path.to_path_buf(),
            len_pages: len / PAGE_SIZE as u64,
            step_pages: 256,
            last_count: u64::MAX,
        })
    }

    pub fn set_step_pages(&mut self, pages: u64) {
        self.step_pages = pages.max(1);
    }

    pub fn len_pages(&self) -> u64 {
        self.len_pages
    }

    /// Writes an empty database: meta page and an empty root leaf.
    pub fn create(&mut self, vfs: &dyn Vfs) -> Result<()> {
        let meta = Meta {
            root: PageId(1),
            page_count: 2,
            freelist_head: PageId::NONE,
            free_count: 0,
            entries: 0,
            heap_tail: PageId::NONE,
            heap_pages: 0,
            heap_live: 0,
        };
        let mut p0 = page::new_page_buf();
        page::init(&mut p0[..], page::PageKind::Meta, PageId(0));
        meta.write(&mut p0[..]);
        page::seal(&mut p0[..]);
        let mut p1 = page::new_page_buf();
        page::init(&mut p1[..], page::PageKind::Leaf, PageId(1));
        page::seal(&mut p1[..]);
        self.file.set_len(0)?;
        self.file.write_all_at(&p0[..], 0)?;
        self.file.write_all_at(&p1[..], PAGE_SIZE as u64)?;
        self.file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            // Make the new file's directory entry durable too.
            vfs.sync_dir(dir)?;
        }
        self.len_pages = 2;
        Ok(())
    }

    /// Reads page `id` from the file (zeros if the file does not reach it).
    pub fn read_page(&self, id: PageId, buf: &mut [u8]) -> Result<()> {
        if id.0 >= self.len_pages {
            buf.fill(0);
            return Ok(());
        }
        self.file.read_exact_at(buf, id.0 * PAGE_SIZE as u64)?;
        Ok(())
    }

    /// Builds the published state over this file, with `pages` (from recovery) as frames.
    pub fn publish(&self, pages: Vec<(PageId, PageArc)>, last_lsn: Lsn) -> Result<Published> {
        let meta_page: Vec<u8> = match pages.iter().find(|(id, _)| id.0 == 0) {
            Some((_, b)) => b.to_vec(),
            None => {
                let mut b = vec![0u8; PAGE_SIZE];
                self.read_page(PageId(0), &mut b)?;
                page::verify(&b, PageId(0))
                    .map_err(|e| self.incompatible(format!("meta page: {e}")))?;
                b
            }
        };
        let meta = Meta::read(&meta_page).map_err(|e| self.incompatible(e))?;
        let mut published = Published {
            meta,
            last_lsn,
            frames: Vec::new(),
            frame_count: 0,
            map: None,
            mapped_pages: 0,
            verified: Vec::new(),
        };
        for (id, p) in &pages {
            if id.0 >= meta.page_count {
                return Err(self.incompatible(format!(
                    "the log changes page {id} beyond the {} pages",
                    meta.page_count
                )));
            }
            // Redo built these pages from the log: whole before anyone reads them.
            page::check_structure(&p[..], *id)
                .map_err(|e| self.incompatible(format!("the log leaves page {id} broken: {e}")))?;
        }
        published.install(pages, meta, last_lsn);
        published.remap(&*self.file, self.len_pages)?;
        Ok(published)
    }

    fn incompatible(&self, reason: String) -> Error {
        Error::Incompatible {
            path: self.path.clone(),
            reason,
        }
    }

    /// Writes the given frames (sealed copies: checksum filled in) and syncs the file: the
    /// data part of a checkpoint. Adjacent pages go out as one write; all writes and the sync
    /// are one submission through `backend`.
    pub fn write_pages(
        &mut self,
        backend: &mut dyn Backend,
        pages: &[(PageId, Arc<PageBuf>)],
        page_count: u64,
    ) -> Result<()> {
        if page_count > self.len_pages {
            // Grow in large steps so the map is not rebuilt at every checkpoint.
            let grown = page_count.max(self.len_pages + (self.len_pages / 4).max(self.step_pages));
            self.file.set_len(grown * PAGE_SIZE as u64)?;
            self.len_pages = grown;
        }
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        for (id, f) in pages {
            let start_new = match runs.last() {
                Some((start, bytes)) => {
                    start + (bytes.len() / PAGE_SIZE) as u64 != id.0 || bytes.len() >= 1 << 20
                }
                None => true,
            };
            if start_new {
                runs.push((id.0, Vec::with_capacity(PAGE_SIZE)));
            }
            // The second of a pair of checks (the first ran when the page was built, by the
            // writer or by redo): a page is whole before it goes to the file, so a bug that
            // broke it in memory fails this checkpoint (which is then refused until reopen,
            // the WAL keeping everything) instead of reaching the disk.
            page::check_structure(&f[..], *id).map_err(|e| {
                Error::Invariant(format!("a checkpoint would write a broken page: {e}"))
            })?;
            let bytes = &mut runs.last_mut().expect("a run").1;
            let at = bytes.len();
            bytes.extend_from_slice(&f[..]);
            page::seal(&mut bytes[at..at + PAGE_SIZE]);
        }
        let ops: Vec<WriteOp<'_>> = runs
            .iter()
            .map(|(start, bytes)| WriteOp {
                file: &*self.file,
                offset: start * PAGE_SIZE as u64,
                bytes,
            })
            .collect();
        backend.write_and_sync(&ops, &[&*self.file])?;
        Ok(())
    }

    /// After a checkpoint: cut the file if the page count fell well below its length, rebuild
    /// the map if the file changed size, then drop the written frames. `page_count` is the
    /// count the checkpoint wrote the pages of: every page below it is in the file now, and
    /// pages added since are in frames.
    pub fn finish_checkpoint(
        &mut self,
        published: &mut Published,
        written: &[(PageId, Arc<PageBuf>)],
        page_count: u64,
    ) -> Result<()> {
        let keep = page_count.max(published.meta.page_count);
        // After the page count fell (a shrink pass), cut once more than a growth step lies
        // past the pages in use; otherwise only past the slack growth itself leaves, so a
        // growing file is not cut back and remapped at every checkpoint.
        let fell = keep < self.last_count;
        self.last_count = keep;
        let slack = if fell {
            self.step_pages
        } else {
            (keep / 4).max(self.step_pages)
        };
        if self.len_pages > keep + slack {
            // Readers borrow the map only under the published state's lock, which the caller
            // holds exclusively: no byte of the old map is in use while the file shrinks.
            published.map = None;
            published.mapped_pages = 0;
            self.file.set_len(keep * PAGE_SIZE as u64)?;
            self.len_pages = keep;
            tracing::info!(pages = keep, "page file cut after a shrink");
        }
        // A view that does not follow the file (a simulated file's copy) is taken again: the
        // evicted pages are read from it from now on.
        let live = published.map.as_ref().is_some_and(Mapping::is_live);
        if self.len_pages != published.mapped_pages || !live {
            published.remap(&*self.file, self.len_pages)?;
        }
        published.evict(written);
        Ok(())
    }

    pub fn len_bytes(&self) -> u64 {
        self.len_pages * PAGE_SIZE as u64
    }
}
