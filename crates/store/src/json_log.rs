//! The JSON-lines log: one JSON object per line, to a file or stdout, with
//! rotation by size (`FILE` -> `FILE.1` -> ... -> `FILE.<keep>`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::StoreError;

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
    #[cfg(test)]
    Other(Box<dyn Write + Send>),
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
            #[cfg(test)]
            Sink::Other(w) => w,
        }
    }
}

/// A JSON-lines writer. Lines are buffered: call [`JsonLog::flush`] after
/// each batch of records.
pub struct JsonLog {
    sink: Sink,
    /// The file, or None for stdout.
    path: Option<PathBuf>,
    max_size: Option<u64>,
    keep: usize,
    size: u64,
}

impl std::fmt::Debug for JsonLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLog")
            .field("path", &self.path)
            .field("max_size", &self.max_size)
            .field("keep", &self.keep)
            .field("size", &self.size)
            .finish()
    }
}

fn open_append(path: &Path) -> Result<(File, u64), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    Ok((f, size))
}

/// `FILE.n`
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl JsonLog {
    /// Opens `target` for appending, or stdout when it is `-`. With
    /// `max_size`, a file that would grow past it is rotated first, keeping
    /// `keep` older files (`keep` = 0: the file is simply started anew).
    /// A single line longer than `max_size` gets a file of its own.
    pub fn open(
        target: impl AsRef<Path>,
        max_size: Option<u64>,
        keep: usize,
    ) -> Result<JsonLog, StoreError> {
        let target = target.as_ref();
        if target == Path::new("-") {
            return Ok(JsonLog {
                sink: Sink::Stdout(BufWriter::new(io::stdout())),
                path: None,
                max_size: None,
                keep: 0,
                size: 0,
            });
        }
        let (f, size) = open_append(target)?;
        Ok(JsonLog {
            sink: Sink::File(BufWriter::new(f)),
            path: Some(target.to_path_buf()),
            max_size,
            keep,
            size,
        })
    }

    #[cfg(test)]
    fn to_writer(w: Box<dyn Write + Send>) -> JsonLog {
        JsonLog {
            sink: Sink::Other(w),
            path: None,
            max_size: None,
            keep: 0,
            size: 0,
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

    /// Writes one record as one line. A reader that went away (broken pipe
    /// on stdout) gives [`StoreError::BrokenPipe`].
    pub fn write(&mut self, record: &impl Serialize) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if let Some(max) = self.max_size {
            if self.size > 0 && self.size.saturating_add(len) > max {
                self.rotate()?;
            }
        }
        self.sink
            .writer()
            .write_all(&line)
            .map_err(|e| self.io_error(e))?;
        self.size += len;
        Ok(())
    }

    /// Pushes buffered lines to the file or stdout.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.sink.writer().flush().map_err(|e| self.io_error(e))
    }

    /// Current size of the file being written, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn rotate(&mut self) -> Result<(), StoreError> {
        self.flush()?;
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
        let (f, size) = open_append(&path)?;
        self.sink = Sink::File(BufWriter::new(f));
        self.size = size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
