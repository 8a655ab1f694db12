//! `event-crypto`: the command line of an event_crypto consumer.
//!
//! - `keygen --out FILE`: a new X25519 private key (mode 0600, never over an existing file); prints the public key
//!   to register with `event_crypto.create_consumer`;
//! - `decrypt`: JSON lines from stdin or files to stdout, every envelope decrypted with the keys the database grants
//!   the consumer (plain documents, wal2json format-version 2 records, Debezium change events);
//! - `inspect`: the header of each envelope in a text or document (no key needed).

mod decrypt;
mod inspect;
mod records;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "event-crypto",
    version,
    about = "Consumer tools for event_crypto: keys, decryption, inspection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a consumer's private key into FILE (mode 0600) and print its public key.
    Keygen {
        /// Where to write the private key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Decrypt JSON lines (from stdin, or FILES in order) to stdout.
    Decrypt(Box<DecryptArgs>),
    /// Print the header of every envelope in TEXT (or stdin): an envelope, or a JSON document holding envelopes.
    Inspect {
        /// An envelope (`$ec2$...`) or a JSON document; read from stdin when absent.
        text: Option<String>,
        /// One JSON object per envelope instead of a line of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum Input {
    /// Each line is a document.
    Plain,
    /// wal2json change records, format-version 2 (pg_recvlogical -o format-version=2).
    Wal2json,
    /// Debezium change events (before/after).
    Debezium,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Report the line on stderr, count it and go on.
    Skip,
    /// Stop at the first bad line with a non-zero exit.
    Fail,
}

#[derive(clap::Args, Debug)]
pub struct DecryptArgs {
    /// Files of JSON lines; stdin when none.
    pub files: Vec<PathBuf>,
    /// Connection string of the database that holds the keys (libpq key=value form or postgresql:// URL).
    #[arg(long, env = "EVENT_CRYPTO_DSN", hide_env_values = true)]
    pub dsn: String,
    /// The consumer's name (event_crypto.create_consumer).
    #[arg(long, env = "EVENT_CRYPTO_CONSUMER")]
    pub consumer: String,
    /// The consumer's private key file (event-crypto keygen).
    #[arg(long, env = "EVENT_CRYPTO_KEY_FILE")]
    pub key_file: PathBuf,
    #[arg(long, value_enum, default_value = "plain")]
    pub input: Input,
    /// wal2json: the jsonb column to decrypt in place.
    #[arg(long, required_if_eq("input", "wal2json"))]
    pub column: Option<String>,
    /// Debezium: the field of before/after to decrypt in place.
    #[arg(long, required_if_eq("input", "debezium"))]
    pub field: Option<String>,
    /// wal2json/Debezium: the column whose text value is the row's context (protect()'s context_column).
    #[arg(long)]
    pub context_column: Option<String>,
    /// A context for every document (plain input): the value the envelopes were bound to.
    #[arg(long, conflicts_with = "context_column")]
    pub context: Option<String>,
    /// wal2json: only records of this table (`name` or `schema.name`).
    #[arg(long)]
    pub table: Option<String>,
    /// What a field under a shredded key becomes: null (the default), keep (the envelope) or error.
    #[arg(long, default_value = "null", value_parser = ["null", "keep", "error"])]
    pub on_shredded: String,
    /// What a field under a key withheld from this consumer becomes: keep (the envelope, the default), null or error.
    #[arg(long, default_value = "keep", value_parser = ["keep", "null", "error"])]
    pub on_withheld: String,
    /// What a bad line does: fail (stop, non-zero exit; the default) or skip (report it on stderr and go on).
    #[arg(long, value_enum, default_value = "fail")]
    pub on_error: OnError,
    /// Lines per key fetch (a pipe's batch also ends when no more input is waiting).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// No summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Decrypt(args) => decrypt::run(&args),
        Command::Inspect { text, json } => inspect::run(text, json),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("event-crypto: {message}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &std::path::Path) -> Result<ExitCode, String> {
    let key = event_crypto_client::write_new_key_file(out).map_err(|e| e.to_string())?;
    println!("{}", key.public_key().to_text());
    eprintln!(
        "event-crypto: private key written to {} (mode 0600); register the public key above with \
         event_crypto.create_consumer(name, public_key)",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
