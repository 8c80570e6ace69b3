//! Small durable files for the Raft state: whole files replaced atomically, and one
//! append-only record file whose torn tail (a crash mid-write) is cut off when read back.
//!
//! A record is `len: u32 LE | crc32: u32 LE | body`. A reader stops at the first record
//! that is short or fails its checksum, and never allocates more than the file holds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Largest record accepted when reading back (a log entry is a few hundred bytes).
const MAX_RECORD: usize = 16 << 20;

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Reads a whole file, `None` if it does not exist.
pub fn read_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// An append-only file of checksummed records.
pub struct RecordFile {
    path: PathBuf,
    file: File,
}

impl RecordFile {
    /// Opens (creating) the file and returns it with every intact record, oldest first.
    /// A torn or corrupt tail is cut off so that new records follow the last good one.
    pub fn open(path: &Path) -> io::Result<(RecordFile, Vec<Vec<u8>>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, good_len) = parse_records(&bytes);
        if good_len < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - good_len,
                "cutting off a torn tail of the Raft log"
            );
            file.set_len(good_len as u64)?;
            file.sync_all()?;
        }
        Ok((
            RecordFile {
                path: path.to_path_buf(),
                file,
            },
            records,
        ))
    }

    /// Appends records and makes them durable before returning.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut buf = Vec::new();
        for body in records {
            encode_record(&mut buf, body)?;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    /// Replaces the whole file with `records` (used to drop purged history).
    pub fn rewrite<'a>(&mut self, records: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut buf = Vec::new();
        for body in records {
            encode_record(&mut buf, body)?;
        }
        replace_file(&self.path, &buf)?;
        self.file = OpenOptions::new().read(true).append(true).open(&self.path)?;
        Ok(())
    }
}

fn encode_record(buf: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_RECORD {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "record too large"));
    }
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    buf.extend_from_slice(body);
    Ok(())
}

/// The intact records of `bytes` and the length they cover.
fn parse_records(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        records.push(body.to_vec());
        at += 8 + len;
    }
    (records, at)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn torn_tails_are_cut_off() {
        let dir = std::env::temp_dir().join(format!("troupe-disk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = fs::remove_file(&path);
        {
            let (mut file, records) = RecordFile::open(&path).unwrap();
            assert!(records.is_empty());
            file.append([&b"one"[..], &b"two"[..]]).unwrap();
        }
        // A crash mid-append: half a header, then garbage claiming a huge length.
        let mut raw = fs::read(&path).unwrap();
        raw.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 1, 2]);
        fs::write(&path, &raw).unwrap();
        let (mut file, records) = RecordFile::open(&path).unwrap();
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
        file.append([&b"three"[..]]).unwrap();
        // A flipped bit fails the checksum: that record and what follows are dropped.
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&path, &raw).unwrap();
        let (mut file, records) = RecordFile::open(&path).unwrap();
        assert_eq!(records.len(), 2);
        file.rewrite([&b"only"[..]]).unwrap();
        drop(file);
        let (_, records) = RecordFile::open(&path).unwrap();
        assert_eq!(records, vec![b"only".to_vec()]);
        let _ = fs::remove_dir_all(&dir);
    }
}
