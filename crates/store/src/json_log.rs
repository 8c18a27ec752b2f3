//! The JSON-lines log: one JSON object per line, to a file or stdout, with
//! rotation by size (`FILE` -> `FILE.1` -> ... -> `FILE.<keep>`).
//!
//! A failing write (a full disk, EIO) loses nothing at once: lines are
//! queued and written in chunks, a chunk that could not be written whole is
//! cut off the file again (so the file never holds half a line) and stays
//! queued, and the next [`JsonLog::flush`] tries again. The queue is bounded
//! ([`BACKLOG_LIMIT`] bytes): beyond it the oldest lines are dropped and
//! counted ([`LogStats`]).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::StoreError;

/// How many bytes of lines wait for the file at most; beyond it the oldest
/// lines are dropped.
pub const BACKLOG_LIMIT: usize = 16 << 20;

/// Lines are written in chunks of about this size; a write is attempted as
/// soon as this much is queued.
const CHUNK: usize = 64 << 10;

enum Sink {
    /// Standard output (a duplicate of its descriptor, so that writes are
    /// not buffered twice).
    Stdout(File),
    /// The log file; `None` after a rotation that could not open the new
    /// file (opened again at the next write).
    File(Option<File>),
    #[cfg(test)]
    Other(Box<dyn Write + Send>),
}

/// What the log has written and lost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Lines written to the file or stdout.
    pub records_written: u64,
    /// Lines dropped because the queue was full.
    pub records_dropped: u64,
    /// Lines waiting to be written.
    pub records_pending: u64,
    /// Writes (and rotations) that failed.
    pub write_errors: u64,
}

/// A JSON-lines writer. Lines are queued: call [`JsonLog::flush`] after each
/// batch of records.
pub struct JsonLog {
    sink: Sink,
    /// The file, or None for stdout.
    path: Option<PathBuf>,
    max_size: Option<u64>,
    keep: usize,
    size: u64,
    backlog: VecDeque<Vec<u8>>,
    backlog_bytes: usize,
    backlog_limit: usize,
    /// The last write failed: new lines are only queued until the next
    /// flush tries again.
    failing: bool,
    /// Part of a line could not be cut off the output again: the next
    /// write starts on a new line.
    torn: bool,
    stats: LogStats,
}

impl std::fmt::Debug for JsonLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLog")
            .field("path", &self.path)
            .field("max_size", &self.max_size)
            .field("keep", &self.keep)
            .field("size", &self.size)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Opens `path` for appending, creating it readable by its owner only (the
/// log holds every process's command line). `nofollow`: refuse a symbolic
/// link (a file created anew by a rotation, where anyone who can write to
/// the directory could have put one).
fn open_append(path: &Path, nofollow: bool) -> Result<(File, u64), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut o = OpenOptions::new();
    o.create(true).append(true).mode(0o600);
    if nofollow {
        o.custom_flags(libc::O_NOFOLLOW);
    }
    let f = o.open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    Ok((f, size))
}

/// `FILE.n`
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Writes `buf` whole; returns how much was written before an error.
fn write_counting(w: &mut dyn Write, buf: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, w.flush())
}

impl JsonLog {
    /// Opens `target` for appending, or stdout when it is `-`. With
    /// `max_size`, a file that would grow past it is rotated first, keeping
    /// `keep` older files (`keep` = 0: the file is simply started anew).
    /// A single line longer than `max_size` gets a file of its own. A new
    /// file is created with mode 0600. A target that is not a regular file
    /// (/dev/null, a FIFO) is never rotated.
    pub fn open(
        target: impl AsRef<Path>,
        max_size: Option<u64>,
        keep: usize,
    ) -> Result<JsonLog, StoreError> {
        let target = target.as_ref();
        if target == Path::new("-") {
            use std::os::fd::AsFd;
            let out = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(StoreError::Output)?;
            return Ok(JsonLog::with_sink(
                Sink::Stdout(File::from(out)),
                None,
                None,
                0,
                0,
            ));
        }
        let (f, size) = open_append(target, false)?;
        // Only a regular file is rotated: renaming /dev/null, a FIFO or a
        // terminal would put a plain file in its place.
        let regular = f
            .metadata()
            .map_err(|source| StoreError::Io {
                path: target.to_path_buf(),
                source,
            })?
            .file_type()
            .is_file();
        Ok(JsonLog::with_sink(
            Sink::File(Some(f)),
            Some(target.to_path_buf()),
            max_size.filter(|_| regular),
            keep,
            size,
        ))
    }

    fn with_sink(
        sink: Sink,
        path: Option<PathBuf>,
        max_size: Option<u64>,
        keep: usize,
        size: u64,
    ) -> JsonLog {
        JsonLog {
            sink,
            path,
            max_size,
            keep,
            size,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            backlog_limit: BACKLOG_LIMIT,
            failing: false,
            torn: false,
            stats: LogStats::default(),
        }
    }

    #[cfg(test)]
    fn to_writer(w: Box<dyn Write + Send>) -> JsonLog {
        JsonLog::with_sink(Sink::Other(w), None, None, 0, 0)
    }

    /// Bounds the queue of lines waiting for the file to `bytes` (default
    /// [`BACKLOG_LIMIT`]).
    pub fn set_backlog_limit(&mut self, bytes: usize) {
        self.backlog_limit = bytes;
    }

    /// The file, or None for stdout.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            records_pending: self.backlog.len() as u64,
            ..self.stats
        }
    }

    fn io_error(&self, e: io::Error) -> StoreError {
        match &self.path {
            Some(p) if e.kind() != io::ErrorKind::BrokenPipe => StoreError::Io {
                path: p.clone(),
                source: e,
            },
            _ => StoreError::output(e),
        }
    }

    /// Queues one record as one line, and writes the queue out once a chunk
    /// is full. An error is that write's (the record stays queued); a reader
    /// that went away (broken pipe on stdout) gives
    /// [`StoreError::BrokenPipe`].
    pub fn write(&mut self, record: &impl Serialize) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.backlog_bytes += line.len();
        self.backlog.push_back(line);
        while self.backlog_bytes > self.backlog_limit && self.backlog.len() > 1 {
            if let Some(old) = self.backlog.pop_front() {
                self.backlog_bytes -= old.len();
                self.stats.records_dropped += 1;
            }
        }
        if !self.failing && self.backlog_bytes >= CHUNK {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes every queued line to the file or stdout. On error the lines
    /// not written stay queued for the next flush.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.write_out()
    }

    /// Current size of the file being written, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn write_out(&mut self) -> Result<(), StoreError> {
        let result = self.write_queue();
        self.failing = result.is_err();
        if let Err(e) = &result {
            if !matches!(e, StoreError::BrokenPipe) {
                self.stats.write_errors += 1;
            }
        }
        result
    }

    fn write_queue(&mut self) -> Result<(), StoreError> {
        let mut rotate_error = None;
        let mut chunk = Vec::with_capacity(CHUNK);
        while let Some(first_len) = self.backlog.front().map(|l| l.len() as u64) {
            if let Some(max) = self.max_size.filter(|_| rotate_error.is_none()) {
                if self.size > 0 && self.size.saturating_add(first_len) > max {
                    // A rotation that fails leaves the lines in the current
                    // file rather than holding them back.
                    if let Err(e) = self.rotate() {
                        rotate_error.get_or_insert(e);
                    }
                }
            }
            if let Sink::File(None) = self.sink {
                let path = self.path.clone().unwrap_or_default();
                let (f, size) = open_append(&path, true)?;
                self.sink = Sink::File(Some(f));
                self.size = size;
                self.torn = false;
            }
            chunk.clear();
            if self.torn {
                chunk.push(b'\n');
            }
            let mut lines = 0;
            let room = self.max_size.filter(|_| rotate_error.is_none());
            for line in &self.backlog {
                let grown = self.size + (chunk.len() + line.len()) as u64;
                if lines > 0
                    && (chunk.len() + line.len() > CHUNK || room.is_some_and(|m| grown > m))
                {
                    break;
                }
                chunk.extend_from_slice(line);
                lines += 1;
            }
            let (done, result) = match &mut self.sink {
                Sink::Stdout(f) | Sink::File(Some(f)) => write_counting(f, &chunk),
                Sink::File(None) => (0, Err(io::ErrorKind::NotConnected.into())),
                #[cfg(test)]
                Sink::Other(w) => write_counting(w, &chunk),
            };
            if let Err(e) = result {
                if done > 0 {
                    // Cut the partial chunk off again; where that is not
                    // possible (stdout), start the next write on a new line.
                    let cut = match &self.sink {
                        Sink::File(Some(f)) => f.set_len(self.size).is_ok(),
                        _ => false,
                    };
                    if !cut {
                        self.torn = true;
                        self.size += done as u64;
                    }
                }
                return Err(self.io_error(e));
            }
            self.torn = false;
            self.size += chunk.len() as u64;
            for _ in 0..lines {
                if let Some(l) = self.backlog.pop_front() {
                    self.backlog_bytes -= l.len();
                }
            }
            self.stats.records_written += lines as u64;
        }
        match rotate_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn rotate(&mut self) -> Result<(), StoreError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        if self.keep == 0 {
            fs::remove_file(&path).map_err(io(&path))?;
        } else {
            for n in (1..self.keep).rev() {
                let from = numbered(&path, n);
                if from.exists() {
                    let to = numbered(&path, n + 1);
                    fs::rename(&from, &to).map_err(io(&from))?;
                }
            }
            fs::rename(&path, numbered(&path, 1)).map_err(io(&path))?;
        }
        // The old file is gone from under the name: from here on the
        // lines go to a new one, opened at the next write if not now.
        self.sink = Sink::File(None);
        self.size = 0;
        self.torn = false;
        let (f, size) = open_append(&path, true)?;
        self.sink = Sink::File(Some(f));
        self.size = size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_log_that_is_not_a_regular_file_is_never_rotated() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                File::open(&fifo).unwrap().read_to_end(&mut got).unwrap();
                got
            })
        };
        let mut log = JsonLog::open(&fifo, Some(64), 2).unwrap();
        for i in 0..100 {
            log.write(&serde_json::json!({ "n": i, "pad": "xxxxxxxxxxxxxxxx" }))
                .unwrap();
        }
        log.flush().unwrap();
        drop(log);
        let got = reader.join().unwrap();
        assert_eq!(String::from_utf8(got).unwrap().lines().count(), 100);
        let meta = std::fs::metadata(&fifo).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_fifo(), "the FIFO was replaced");
        assert!(!numbered(&fifo, 1).exists(), "the FIFO was rotated");
    }
    use super::*;

    #[derive(Serialize)]
    struct Line {
        n: u32,
        pad: &'static str,
    }

    fn lines(p: &Path) -> Vec<u32> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap() as u32
            })
            .collect()
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        // Each line is exactly 20 bytes: {"n":N,"pad":"xxxx"}\n with one digit.
        let line_len = serde_json::to_vec(&Line { n: 0, pad: "xxxx" })
            .unwrap()
            .len()
            + 1;
        assert_eq!(line_len, 21);
        let mut log = JsonLog::open(&path, Some(3 * 21), 2).unwrap();
        for n in 0..10 {
            log.write(&Line { n, pad: "xxxx" }).unwrap();
        }
        log.flush().unwrap();
        assert_eq!(lines(&path), vec![9]);
        assert_eq!(lines(&numbered(&path, 1)), vec![6, 7, 8]);
        assert_eq!(lines(&numbered(&path, 2)), vec![3, 4, 5]);
        assert!(!numbered(&path, 3).exists());
        assert_eq!(fs::metadata(&path).unwrap().len(), 21);
    }

    #[test]
    fn reopening_appends_and_counts_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        {
            let mut log = JsonLog::open(&path, Some(2 * 21), 1).unwrap();
            log.write(&Line { n: 1, pad: "xxxx" }).unwrap();
            log.flush().unwrap();
        }
        let mut log = JsonLog::open(&path, Some(2 * 21), 1).unwrap();
        assert_eq!(log.size(), 21);
        log.write(&Line { n: 2, pad: "xxxx" }).unwrap();
        log.write(&Line { n: 3, pad: "xxxx" }).unwrap();
        log.flush().unwrap();
        assert_eq!(lines(&numbered(&path, 1)), vec![1, 2]);
        assert_eq!(lines(&path), vec![3]);
    }

    #[test]
    fn keep_zero_starts_the_file_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut log = JsonLog::open(&path, Some(21), 0).unwrap();
        for n in 0..3 {
            log.write(&Line { n, pad: "xxxx" }).unwrap();
        }
        log.flush().unwrap();
        assert_eq!(lines(&path), vec![2]);
        assert!(!numbered(&path, 1).exists());
    }

    #[test]
    fn broken_pipe_is_its_own_variant() {
        let (reader, writer) = io::pipe().unwrap();
        drop(reader);
        let mut log = JsonLog::to_writer(Box::new(writer));
        let result = log
            .write(&Line { n: 1, pad: "x" })
            .and_then(|()| log.flush());
        match result {
            Err(StoreError::BrokenPipe) => {}
            other => panic!("expected BrokenPipe, got {other:?}"),
        }
    }
    /// A writer that fails while `fail` is set, after taking `partial`
    /// bytes of the write that fails.
    #[derive(Default)]
    struct Flaky {
        fail: bool,
        partial: usize,
        data: Vec<u8>,
    }

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Flaky>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut f = self.0.lock().unwrap();
            if f.fail {
                if f.partial > 0 {
                    let n = f.partial.min(buf.len());
                    f.partial = 0;
                    f.data.extend_from_slice(&buf[..n]);
                    return Ok(n);
                }
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            f.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn numbers(data: &[u8]) -> Vec<u32> {
        String::from_utf8_lossy(data)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["n"].as_u64().unwrap() as u32)
            .collect()
    }

    #[test]
    fn a_failing_write_keeps_the_lines_and_the_next_flush_writes_them() {
        let out = Shared::default();
        let mut log = JsonLog::to_writer(Box::new(out.clone()));
        log.write(&Line { n: 1, pad: "x" }).unwrap();
        log.flush().unwrap();
        out.0.lock().unwrap().fail = true;
        log.write(&Line { n: 2, pad: "x" }).unwrap();
        log.write(&Line { n: 3, pad: "x" }).unwrap();
        assert!(log.flush().is_err());
        assert!(log.flush().is_err());
        let st = log.stats();
        assert_eq!((st.records_written, st.records_pending), (1, 2));
        assert_eq!((st.write_errors, st.records_dropped), (2, 0));
        out.0.lock().unwrap().fail = false;
        log.write(&Line { n: 4, pad: "x" }).unwrap();
        log.flush().unwrap();
        assert_eq!(numbers(&out.0.lock().unwrap().data), vec![1, 2, 3, 4]);
        let st = log.stats();
        assert_eq!((st.records_written, st.records_pending), (4, 0));
    }

    #[test]
    fn half_a_line_written_before_a_failure_is_ended_before_the_next_line() {
        let out = Shared::default();
        let mut log = JsonLog::to_writer(Box::new(out.clone()));
        {
            let mut f = out.0.lock().unwrap();
            f.fail = true;
            f.partial = 5;
        }
        log.write(&Line { n: 1, pad: "x" }).unwrap();
        assert!(log.flush().is_err());
        out.0.lock().unwrap().fail = false;
        log.flush().unwrap();
        let data = out.0.lock().unwrap().data.clone();
        let text = String::from_utf8(data.clone()).unwrap();
        // The torn start stands on a line of its own; the record is whole.
        assert_eq!(text, "{\"n\":\n{\"n\":1,\"pad\":\"x\"}\n");
        assert_eq!(numbers(&data), vec![1]);
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_lines_and_counts_them() {
        let out = Shared::default();
        out.0.lock().unwrap().fail = true;
        let mut log = JsonLog::to_writer(Box::new(out.clone()));
        // Each line is 18 bytes: {"n":N,"pad":"x"}\n
        log.set_backlog_limit(3 * 18);
        for n in 0..5 {
            log.write(&Line { n, pad: "x" }).unwrap();
        }
        assert_eq!(log.stats().records_dropped, 2);
        out.0.lock().unwrap().fail = false;
        log.flush().unwrap();
        assert_eq!(numbers(&out.0.lock().unwrap().data), vec![2, 3, 4]);
    }

    #[test]
    fn a_new_log_is_private_and_rotation_refuses_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut log = JsonLog::open(&path, Some(21), 1).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        log.write(&Line { n: 1, pad: "xxxx" }).unwrap();
        log.flush().unwrap();
        log.write(&Line { n: 2, pad: "xxxx" }).unwrap();
        log.flush().unwrap();
        assert_eq!(lines(&numbered(&path, 1)), vec![1]);
        assert_eq!(
            mode(&path),
            0o600,
            "the file a rotation creates is private too"
        );
        // The file a rotation opens is never a link someone put there.
        let victim = dir.path().join("victim");
        fs::write(&victim, "").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = open_append(&link, true).unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "");
    }
}
