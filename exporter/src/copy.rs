//! Copy-mode weight streaming at disk speed: `<stem>.onnx.data` is written by two threads
//! joined by a bounded queue of large buffers.
//!
//! * the **converter** reads each piece with `pread` into a reusable buffer, converts it
//!   straight into the next free output buffer (bf16 -> f32 is a vectorised shift, see
//!   [`crate::convert::convert_into`]), counts NaN/Inf in the same pass, and packs padding and
//!   small tensors into the same buffer so every write is [`BUF`] bytes;
//! * the **writer** (the calling thread, which also reports progress) appends full buffers
//!   with one `write` each and returns them to the converter; `fdatasync` runs once at the
//!   end so the export is on disk when it reports success.
//! * writeback is started as the file grows (Linux `sync_file_range` on each [`WINDOW`]) and
//!   the page cache of windows already on disk is dropped, so dirty pages never pile up
//!   into one long flush at the end and a 30 GB export does not push everything else out of
//!   memory.
//!
//! Memory is bounded by [`BUFFERS`] × [`BUF`] plus one read buffer, whatever the model size,
//! and the page cache the export dirties by [`WINDOWS_IN_FLIGHT`] × [`WINDOW`].
//! Conversion overlaps the write of the previous buffer, so on two cores the export runs
//! at the speed of the slower of the two, which is the disk.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::checkpoint::Checkpoint;
use crate::convert::{convert_into, convert_scaled_into};
use crate::names::ResolvedWeight;
use crate::{io_err, ExportError, Result};

/// Size of one output buffer (and of each `write`).
pub const BUF: usize = 16 << 20;
/// Output buffers in flight: one being filled, one being written, one queued.
pub const BUFFERS: usize = 3;

/// Writeback unit: after each window is written its writeback is started.
pub const WINDOW: u64 = 64 << 20;
/// Windows whose writeback may be in progress before the writer waits for the oldest.
pub const WINDOWS_IN_FLIGHT: usize = 4;

/// Where each weight landed in the data file: (offset, length).
pub type Placement = Vec<(u64, u64)>;

/// Offsets of every weight: 4 KiB-aligned when ≥ 1 MiB (page-aligned for mmap), else 64.
pub fn placement(weights: &[ResolvedWeight]) -> Placement {
    let mut pos = 0u64;
    weights
        .iter()
        .map(|w| {
            let len = (w.decl.shape.iter().product::<usize>() * w.decl.dtype.size()) as u64;
            let align = if len >= 1 << 20 { 4096 } else { 64 };
            pos = pos.div_ceil(align) * align;
            let start = pos;
            pos += len;
            (start, len)
        })
        .collect()
}

/// One full buffer for the writer, and how many source bytes it accounts for.
struct Block {
    buf: Vec<u8>,
    source_bytes: u64,
}

/// Streams `weights` into `data_path` at the offsets of [`placement`]. Fails naming the
/// tensor when it holds NaN/Inf, unless `allow_nonfinite`. Returns the bytes written.
pub fn copy_weights(
    weights: &[ResolvedWeight],
    ckpt: &Checkpoint,
    data_path: &Path,
    allow_nonfinite: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let places = placement(weights);
    let total = places.last().map(|(s, l)| s + l).unwrap_or(0);
    let sources: Vec<File> =
        ckpt.files.iter().map(|f| File::open(&f.path).map_err(io_err(&f.path))).collect::<Result<_>>()?;
    let mut out = File::create(data_path).map_err(io_err(data_path))?;
    let (full_tx, full_rx) = sync_channel::<Result<Block>>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = free_tx.send(Vec::with_capacity(BUF));
    }
    std::thread::scope(|s| {
        let conv = Converter { weights, places: &places, ckpt, sources: &sources, allow_nonfinite };
        s.spawn(move || conv.run(full_tx, free_rx));
        write_blocks(&mut out, data_path, full_rx, free_tx, progress)
    })?;
    out.sync_data().map_err(io_err(data_path))?;
    Ok(total)
}

/// The writer side: appends each block, hands its buffer back.
fn write_blocks(
    out: &mut File,
    path: &Path,
    full: Receiver<Result<Block>>,
    free: SyncSender<Vec<u8>>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    // the converter drops its sender when done; an error ends the loop early, and dropping
    // `full` / `free` then makes the converter's next send fail so it stops too
    let mut wb = Writeback::default();
    for block in full {
        let mut block = block?;
        out.write_all(&block.buf).map_err(io_err(path))?;
        wb.wrote(out, block.buf.len() as u64);
        progress(block.source_bytes);
        block.buf.clear();
        let _ = free.send(block.buf);
    }
    Ok(())
}

/// Starts writeback window by window and drops the cache of windows already on disk. Only
/// a hint to the kernel: errors are ignored here (the final `fdatasync` reports real ones).
#[derive(Default)]
struct Writeback {
    written: u64,
    started: u64,
    in_flight: std::collections::VecDeque<(u64, u64)>,
}

impl Writeback {
    #[cfg(target_os = "linux")]
    fn wrote(&mut self, file: &File, n: u64) {
        use std::os::fd::AsRawFd;
        self.written += n;
        let fd = file.as_raw_fd();
        while self.written - self.started >= WINDOW {
            let range = (self.started, WINDOW);
            // SAFETY: plain syscalls on a file descriptor we own, with in-range offsets.
            unsafe {
                libc::sync_file_range(fd, range.0 as i64, range.1 as i64, libc::SYNC_FILE_RANGE_WRITE);
            }
            self.in_flight.push_back(range);
            self.started += WINDOW;
            if self.in_flight.len() > WINDOWS_IN_FLIGHT {
                if let Some((off, len)) = self.in_flight.pop_front() {
                    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                    // SAFETY: as above.
                    unsafe {
                        libc::sync_file_range(fd, off as i64, len as i64, wait);
                        libc::posix_fadvise(fd, off as i64, len as i64, libc::POSIX_FADV_DONTNEED);
                    }
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn wrote(&mut self, _file: &File, n: u64) {
        self.written += n;
    }
}

struct Converter<'a> {
    weights: &'a [ResolvedWeight],
    places: &'a [(u64, u64)],
    ckpt: &'a Checkpoint,
    sources: &'a [File],
    allow_nonfinite: bool,
}

/// The converter's output side: the buffer being filled.
struct Sink {
    buf: Vec<u8>,
    pos: u64,
    source_bytes: u64,
    full: SyncSender<Result<Block>>,
    free: Receiver<Vec<u8>>,
}

impl Sink {
    /// Room left in the current buffer (after handing it on if it is full).
    fn room(&mut self) -> Option<usize> {
        if self.buf.len() == BUF {
            self.flush()?;
        }
        Some(BUF - self.buf.len())
    }

    /// Sends the current buffer; `None` when the writer has stopped.
    fn flush(&mut self) -> Option<()> {
        let next = self.free.recv().ok()?;
        let buf = std::mem::replace(&mut self.buf, next);
        let block = Block { buf, source_bytes: std::mem::take(&mut self.source_bytes) };
        self.full.send(Ok(block)).ok()
    }

    fn zeros(&mut self, mut n: u64) -> Option<()> {
        while n > 0 {
            let k = (self.room()? as u64).min(n) as usize;
            self.buf.resize(self.buf.len() + k, 0);
            self.pos += k as u64;
            n -= k as u64;
        }
        Some(())
    }
}

impl Converter<'_> {
    fn run(&self, full: SyncSender<Result<Block>>, free: Receiver<Vec<u8>>) {
        let Ok(buf) = free.recv() else { return };
        let mut sink = Sink { buf, pos: 0, source_bytes: 0, full, free };
        match self.fill(&mut sink) {
            Ok(Some(())) => {
                if !sink.buf.is_empty() || sink.source_bytes > 0 {
                    let block = Block { buf: std::mem::take(&mut sink.buf), source_bytes: sink.source_bytes };
                    let _ = sink.full.send(Ok(block));
                }
            }
            Ok(None) => {} // the writer stopped and reports its own error
            Err(e) => {
                let _ = sink.full.send(Err(e));
            }
        }
    }

    /// Converts every weight into the sink; `Ok(None)` when the writer went away.
    fn fill(&self, sink: &mut Sink) -> Result<Option<()>> {
        let mut raw: Vec<u8> = Vec::new();
        for (w, &(start, _)) in self.weights.iter().zip(self.places) {
            if sink.zeros(start - sink.pos).is_none() {
                return Ok(None);
            }
            let to = w.decl.dtype;
            for p in &w.pieces {
                let path = &self.ckpt.files[p.file].path;
                let (esz, osz) = (p.dtype.size(), to.size());
                let mut off = 0u64;
                let mut bad = 0usize;
                while off < p.len {
                    let Some(room) = sink.room() else { return Ok(None) };
                    let elems = ((p.len - off) as usize / esz).min(room / osz).max(1);
                    raw.resize(elems * esz, 0);
                    self.ckpt
                        .read_at(p.file, &self.sources[p.file], &mut raw, p.offset + off)
                        .map_err(io_err(path))?;
                    let at = sink.buf.len();
                    sink.buf.resize(at + elems * osz, 0);
                    let converted = match p.scale {
                        None => convert_into(p.dtype, to, &raw, &mut sink.buf[at..]),
                        Some(s) => convert_scaled_into(p.dtype, to, s, &raw, &mut sink.buf[at..]),
                    };
                    bad += converted.ok_or_else(|| ExportError::Tensor {
                        name: p.tensor.clone(),
                        path: path.clone(),
                        msg: format!("cannot convert {} to {}", p.dtype, to),
                    })?;
                    sink.pos += (elems * osz) as u64;
                    sink.source_bytes += raw.len() as u64;
                    off += raw.len() as u64;
                }
                if bad > 0 && !self.allow_nonfinite {
                    return Err(nonfinite_error(&p.tensor, path, bad, p.len / esz as u64));
                }
            }
        }
        Ok(Some(()))
    }
}

/// The error for a tensor holding NaN/Inf.
pub fn nonfinite_error(tensor: &str, path: &Path, bad: usize, numel: u64) -> ExportError {
    ExportError::Tensor {
        name: tensor.to_string(),
        path: path.to_path_buf(),
        msg: format!(
            "{bad} of {numel} values are NaN or infinite; the checkpoint is damaged or was saved from a \
             diverged run (pass --allow-nonfinite to export it anyway)"
        ),
    }
}
