//! Finding the records of CSV and JSON text: the bytes of a GET in chunks, record ends
//! (quote-aware for CSV), and records grouped into mini-batches of about a target size.

use super::*;

/// The bytes of a GET, in chunks: a local file in large reads on a blocking thread (the
/// store's own stream reads 8 KiB at a time, one blocking task each), a remote body as it
/// comes.
pub(super) fn text_chunks(result: GetResult) -> BoxStream<'static, DFResult<Bytes>> {
    const READ: usize = 4 * 1024 * 1024;
    match result.payload {
        GetResultPayload::File(file, _) => futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; READ];
                let mut filled = 0;
                while filled < READ {
                    match std::io::Read::read(&mut file, &mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok((file, buf))
            })
            .await;
            match read {
                Ok(Ok((_, buf))) if buf.is_empty() => None,
                Ok(Ok((file, buf))) => Some((Ok(Bytes::from(buf)), Some(file))),
                Ok(Err(e)) => Some((Err(DataFusionError::IoError(e)), None)),
                Err(e) => Some((Err(DataFusionError::External(Box::new(e))), None)),
            }
        })
        .boxed(),
        GetResultPayload::Stream(stream) => stream.map_err(DataFusionError::from).boxed(),
    }
}

/// Finds the records of a text file fed in chunks: calls `record(start, end)` for each
/// (`end` past its terminator, or the file's end).
pub(super) struct Lines {
    syntax: Syntax,
    /// Where the current line starts.
    line_start: u64,
    /// Nothing but blanks in the current line so far.
    blank: bool,
    /// The current line is a comment.
    comment: bool,
    /// At the line's first byte.
    first: bool,
    in_quotes: bool,
    escaped: bool,
    /// The CSV header is still to come.
    header_pending: bool,
}

impl Lines {
    pub(super) fn new(syntax: Syntax) -> Self {
        Lines {
            syntax,
            line_start: 0,
            blank: true,
            comment: false,
            first: true,
            in_quotes: false,
            escaped: false,
            header_pending: matches!(syntax, Syntax::Csv(csv) if csv.header),
        }
    }

    fn terminator(&self) -> u8 {
        match self.syntax {
            Syntax::Csv(csv) => csv.terminator,
            _ => b'\n',
        }
    }

    pub(super) fn feed(&mut self, chunk: &[u8], at: u64, mut record: impl FnMut(u64, u64)) {
        let terminator = self.terminator();
        let csv = match self.syntax {
            Syntax::Csv(csv) => Some(csv),
            _ => None,
        };
        let mut i = 0usize;
        while i < chunk.len() {
            if self.in_quotes {
                // Inside a quoted CSV value: only its closing quote (or an escape) matters.
                let Some(csv) = csv else { break };
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                let next = match csv.escape {
                    Some(escape) => memchr::memchr2(csv.quote, escape, &chunk[i..]),
                    None => memchr::memchr(csv.quote, &chunk[i..]),
                };
                match next {
                    None => break,
                    Some(k) => {
                        let b = chunk[i + k];
                        if Some(b) == csv.escape && b != csv.quote {
                            self.escaped = true;
                        } else {
                            self.in_quotes = false;
                        }
                        i += k + 1;
                    }
                }
                continue;
            }
            let b = chunk[i];
            if self.first {
                self.first = false;
                if csv.is_some_and(|c| c.comment == Some(b)) {
                    self.comment = true;
                }
            }
            if b == terminator {
                let end = at + i as u64 + 1;
                self.end_line(end, &mut record);
                i += 1;
                continue;
            }
            if !(b == b'\r' || (csv.is_none() && b.is_ascii_whitespace())) {
                self.blank = false;
            }
            if self.comment {
                // A comment line ends at the next terminator, whatever it holds.
                match memchr::memchr(terminator, &chunk[i + 1..]) {
                    Some(k) => i += k + 1,
                    None => i = chunk.len(),
                }
                continue;
            }
            if let Some(csv) = csv {
                if b == csv.quote {
                    self.in_quotes = true;
                    i += 1;
                    continue;
                }
                // Skip to the next byte that matters: a quote or the terminator.
                match memchr::memchr2(csv.quote, terminator, &chunk[i + 1..]) {
                    Some(k) => {
                        if k > 0 {
                            self.blank =
                                self.blank && chunk[i + 1..i + 1 + k].iter().all(|&c| c == b'\r');
                        }
                        i += k + 1;
                    }
                    None => {
                        self.blank = self.blank && chunk[i + 1..].iter().all(|&c| c == b'\r');
                        i = chunk.len();
                    }
                }
            } else if !self.blank {
                // JSON: the line is a record; its end is the next terminator.
                match memchr::memchr(terminator, &chunk[i + 1..]) {
                    Some(k) => i += k + 1,
                    None => i = chunk.len(),
                }
            } else {
                i += 1;
            }
        }
    }

    fn end_line(&mut self, end: u64, record: &mut impl FnMut(u64, u64)) {
        if !self.blank && !self.comment {
            if self.header_pending {
                self.header_pending = false;
            } else {
                record(self.line_start, end);
            }
        }
        self.line_start = end;
        self.blank = true;
        self.comment = false;
        self.first = true;
    }

    /// The file's end at `size`: its last line, when it has no terminator.
    pub(super) fn finish(&mut self, size: u64, mut record: impl FnMut(u64, u64)) {
        if self.line_start < size {
            self.end_line(size, &mut record);
        }
    }
}

/// Groups records into mini-batches of about `target` bytes.
pub(super) struct Cutter {
    target: u64,
    row: u64,
    batch_start: u64,
    bytes: u64,
    parts: Vec<RawPart>,
    /// The current file's part: where it starts, its records.
    part: Option<(u64, u64)>,
    /// The records of the current file.
    file_rows: u64,
    out: Vec<(Range<u64>, Vec<RawPart>)>,
}

impl Cutter {
    pub(super) fn new(target: u64) -> Self {
        Cutter {
            target: target.max(1),
            row: 0,
            batch_start: 0,
            bytes: 0,
            parts: Vec::new(),
            part: None,
            file_rows: 0,
            out: Vec::new(),
        }
    }

    pub(super) fn record(&mut self, file: u32, start: u64, end: u64) {
        let (part_start, rows) = self.part.get_or_insert((start, 0));
        let part_start = *part_start;
        *rows += 1;
        self.row += 1;
        self.file_rows += 1;
        self.bytes += end - start;
        if self.bytes >= self.target {
            self.close_part(file, part_start, end);
            self.out
                .push((self.batch_start..self.row, std::mem::take(&mut self.parts)));
            self.batch_start = self.row;
            self.bytes = 0;
        }
    }

    fn close_part(&mut self, file: u32, start: u64, end: u64) {
        if let Some((_, rows)) = self.part.take() {
            self.parts.push(RawPart {
                file,
                range: start..end,
                rows,
            });
        }
    }

    /// The end of file `file` at `size`; returns its records.
    pub(super) fn file_end(&mut self, file: u32, size: u64) -> u64 {
        if let Some((start, _)) = self.part {
            self.close_part(file, start, size);
        }
        std::mem::take(&mut self.file_rows)
    }

    pub(super) fn finish(mut self) -> Vec<(Range<u64>, Vec<RawPart>)> {
        if self.row > self.batch_start {
            self.out
                .push((self.batch_start..self.row, std::mem::take(&mut self.parts)));
        }
        self.out
    }
}
