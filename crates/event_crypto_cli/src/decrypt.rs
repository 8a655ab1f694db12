//! `event-crypto decrypt`: JSON lines in, the same lines with every envelope of their documents decrypted out.
//!
//! Lines are read in batches (`--batch`, and for a pipe also when no more input is waiting, so a live stream from
//! pg_recvlogical is never held back); the keys a batch needs are fetched in one call, then each line is decrypted
//! and written in order. A bad line (not JSON, no document where the format expects one, an envelope that does not
//! open) stops the run under `--on-error fail` (the default) after the lines before it were written, or is reported
//! on stderr with its line number and left out under `--on-error skip`. A refused or failed key fetch always stops
//! the run. Messages never hold a plaintext or key bytes.

use crate::records::{extract, put_back, InputFormat, Slot};
use crate::{DecryptArgs, Input, OnError};
use event_crypto_client::{parse_on_shredded, parse_on_withheld, read_key_file, Consumer, ConsumerConfig};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::process::ExitCode;

#[derive(Default)]
struct Totals {
    lines: u64,
    written: u64,
    failed: u64,
}

enum Flow {
    Continue,
    Stop,
}

struct Run<'a, W: Write> {
    args: &'a DecryptArgs,
    fmt: InputFormat,
    consumer: Consumer,
    out: W,
    totals: Totals,
    progress: Option<indicatif::ProgressBar>,
}

pub fn run(args: &DecryptArgs) -> Result<ExitCode, String> {
    let fmt = match args.input {
        Input::Plain => InputFormat::Plain,
        Input::Wal2json => InputFormat::Wal2json {
            column: args.column.clone().ok_or("--input wal2json needs --column")?,
            context_column: args.context_column.clone(),
            table: args.table.clone(),
        },
        Input::Debezium => InputFormat::Debezium {
            field: args.field.clone().ok_or("--input debezium needs --field")?,
            context_column: args.context_column.clone(),
        },
    };
    if args.input == Input::Plain && args.context_column.is_some() {
        return Err("--context-column is for --input wal2json or debezium; plain documents take --context".into());
    }
    if args.input != Input::Wal2json && args.table.is_some() {
        return Err("--table is for --input wal2json".into());
    }
    if args.context.as_deref() == Some("") {
        return Err("--context must not be empty (leave it out for no context)".into());
    }
    let key = read_key_file(&args.key_file).map_err(|e| e.to_string())?;
    let mut config = ConsumerConfig::new(args.dsn.clone(), args.consumer.clone(), key);
    config.on_shredded = parse_on_shredded(&args.on_shredded).map_err(|e| e.to_string())?;
    config.on_withheld = parse_on_withheld(&args.on_withheld).map_err(|e| e.to_string())?;

    let mut inputs: Vec<(String, Box<dyn Read>, bool)> = Vec::new();
    let mut total_bytes = 0u64;
    if args.files.is_empty() {
        let stdin_is_file = is_regular_stdin();
        inputs.push(("stdin".into(), Box::new(std::io::stdin()), stdin_is_file));
    } else {
        for f in &args.files {
            let file = File::open(f).map_err(|e| format!("cannot open {}: {e}", f.display()))?;
            total_bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
            let regular = file.metadata().is_ok_and(|m| m.is_file());
            inputs.push((f.display().to_string(), Box::new(file), regular));
        }
    }
    let progress = (!args.files.is_empty() && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(total_bytes);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("a valid template"),
        );
        pb
    });
    let stdout = std::io::stdout();
    let mut run = Run {
        args,
        fmt,
        consumer: Consumer::new(config),
        out: BufWriter::with_capacity(1 << 16, stdout.lock()),
        totals: Totals::default(),
        progress,
    };
    let mut result = Ok(Flow::Continue);
    for (name, reader, regular) in inputs {
        result = run.stream(&name, reader, regular);
        if !matches!(result, Ok(Flow::Continue)) {
            break;
        }
    }
    let flushed = run.out.flush();
    if let Some(pb) = &run.progress {
        pb.finish_and_clear();
    }
    if !args.quiet {
        let (t, s) = (&run.totals, &run.consumer.stats);
        eprintln!(
            "event-crypto: {} lines read, {} written, {} failed; {} fields decrypted, {} shredded, {} withheld; \
             {} key {} ({} keys)",
            t.lines,
            t.written,
            t.failed,
            s.decrypted,
            s.shredded,
            s.withheld,
            s.fetches,
            if s.fetches == 1 { "fetch" } else { "fetches" },
            s.keys_fetched
        );
    }
    match result {
        Err(e) => Err(e),
        Ok(_) if flushed.is_err() => Err(format!("cannot write to stdout: {}", flushed.unwrap_err())),
        Ok(Flow::Stop) => Ok(ExitCode::FAILURE),
        Ok(Flow::Continue) if run.totals.failed > 0 && args.on_error == OnError::Fail => Ok(ExitCode::FAILURE),
        Ok(Flow::Continue) => Ok(ExitCode::SUCCESS),
    }
}

/// Whether stdin is a regular file (a redirect `< file`): then batches are cut by count only.
fn is_regular_stdin() -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let fd = std::io::stdin().as_fd().try_clone_to_owned();
        if let Ok(fd) = fd {
            let f = File::from(fd);
            return f.metadata().is_ok_and(|m| m.is_file());
        }
    }
    false
}

impl<W: Write> Run<'_, W> {
    fn stream(&mut self, name: &str, reader: Box<dyn Read>, regular: bool) -> Result<Flow, String> {
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let batch = self.args.batch as usize;
        let mut lineno = 0u64;
        // the line buffers are kept from batch to batch
        let mut lines: Vec<Vec<u8>> = Vec::with_capacity(batch);
        loop {
            let mut count = 0;
            let first = lineno + 1;
            let mut eof = false;
            let mut bytes = 0u64;
            while count < batch {
                if lines.len() == count {
                    lines.push(Vec::new());
                }
                let line = &mut lines[count];
                line.clear();
                let n = reader
                    .read_until(b'\n', line)
                    .map_err(|e| format!("{name}: cannot read: {e}"))?;
                if n == 0 {
                    eof = true;
                    break;
                }
                bytes += n as u64;
                lineno += 1;
                count += 1;
                // a pipe: decrypt what has arrived rather than wait for a full batch
                if !regular && reader.buffer().is_empty() {
                    break;
                }
            }
            self.totals.lines += count as u64;
            if count > 0 {
                if let Flow::Stop = self.batch(name, first, &lines[..count])? {
                    return Ok(Flow::Stop);
                }
                self.out.flush().map_err(|e| format!("cannot write to stdout: {e}"))?;
                if let Some(pb) = &self.progress {
                    pb.inc(bytes);
                }
            }
            if eof {
                return Ok(Flow::Continue);
            }
        }
    }

    /// Decrypts and writes one batch of lines; `first` is the number of its first line.
    fn batch(&mut self, name: &str, first: u64, lines: &[Vec<u8>]) -> Result<Flow, String> {
        let mut records: Vec<Option<Value>> = Vec::with_capacity(lines.len());
        let mut errors: Vec<Option<String>> = vec![None; lines.len()];
        let mut docs: Vec<Value> = Vec::with_capacity(lines.len());
        let mut slots: Vec<Slot> = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let text = trim_line(line);
            if text.iter().all(u8::is_ascii_whitespace) {
                records.push(None);
                continue;
            }
            // the record around a document may add a few levels (wal2json: columns, Debezium: payload.after)
            if let Err(e) = event_crypto_client::check_nesting(text, event_crypto_client::MAX_NESTING + 8) {
                errors[i] = Some(e.to_string());
                records.push(None);
                continue;
            }
            match serde_json::from_slice::<Value>(text) {
                Ok(mut rec) => {
                    if let Err(e) = extract(&self.fmt, &mut rec, i, &mut docs, &mut slots) {
                        errors[i] = Some(e);
                    }
                    records.push(Some(rec));
                }
                Err(e) => {
                    errors[i] = Some(format!("not a JSON value ({})", json_error(&e)));
                    records.push(None);
                }
            }
        }
        let fixed_context = self.args.context.as_ref().map(|c| c.as_bytes());
        let contexts: Vec<Option<&[u8]>> = slots.iter().map(|s| fixed_context.or(s.context.as_deref())).collect();
        let results = self
            .consumer
            .decrypt_batch(&mut docs, &contexts)
            .map_err(|e| e.to_string())?;
        for ((slot, doc), r) in slots.iter().zip(docs).zip(results) {
            match r {
                Ok(()) => {
                    if let Some(rec) = records[slot.line].as_mut() {
                        put_back(rec, slot, doc)
                    }
                }
                Err(e) => {
                    if errors[slot.line].is_none() {
                        errors[slot.line] = Some(e.to_string());
                    }
                }
            }
        }
        for (i, rec) in records.into_iter().enumerate() {
            let n = first + i as u64;
            if let Some(e) = &errors[i] {
                self.totals.failed += 1;
                eprintln!("event-crypto: {name}:{n}: {e}");
                if self.args.on_error == OnError::Fail {
                    return Ok(Flow::Stop);
                }
                continue;
            }
            let Some(rec) = rec else { continue };
            serde_json::to_writer(&mut self.out, &rec)
                .map_err(|e| e.to_string())
                .and_then(|_| self.out.write_all(b"\n").map_err(|e| e.to_string()))
                .map_err(|e| format!("cannot write to stdout: {e}"))?;
            self.totals.written += 1;
        }
        Ok(Flow::Continue)
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [rest @ .., b'\n' | b'\r'] = l {
        l = rest;
    }
    l
}

/// serde_json's syntax messages name the mistake and its position, never the input's text.
fn json_error(e: &serde_json::Error) -> String {
    e.to_string()
}
