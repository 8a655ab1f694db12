//! Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/): real envelopes of both formats and both
//! algorithms with and without context, field paths of every form, and binary jsonb documents, plaintext and
//! encrypted. `cargo run -p event_crypto_core --example fuzz_seeds [OUTPUT_DIR]` (default: fuzz/corpus).

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::document::Encryptor;
use event_crypto_core::envelope::{KeyHandle, KeyRef};
use event_crypto_core::jsonb::{from_json_text, Document, Value};
use event_crypto_core::path::{FieldPath, Selector};
use std::path::Path;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = match std::env::args().nth(1) {
        Some(dir) => Path::new(&dir).to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"),
    };
    let handle = KeyHandle::new(0x0fed_cba9_8765_4321).unwrap();
    // format 1 seeds keep their names (env-N, enc-…); format 2 seeds are env2-N and enc2-…
    let formats = [
        ("", KeyRef::Id("fuzz"), KeyRef::Id("tenant-42")),
        ("2", KeyRef::Handle(handle), KeyRef::Handle(handle)),
    ];
    let docs = [
        r#"{"email": "a@x.io", "n": 12.50, "items": [{"card": "4111"}, {"card": "5500", "qty": 2}], "a": {"b": [1, null, true]}}"#,
        r#"[{"email": "x"}, 1, "two", [3, [4]]]"#,
        r#"{"k0": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4, "k5": 5, "k6": 6, "k7": 7, "k8": 8, "k9": 9, "k10": 10, "k11": 11, "k12": 12, "k13": 13, "k14": 14, "k15": 15, "k16": 16, "k17": 17, "k18": 18, "k19": 19, "k20": 20, "k21": 21, "k22": 22, "k23": 23, "k24": 24, "k25": 25, "k26": 26, "k27": 27, "k28": 28, "k29": 29, "k30": 30, "k31": 31, "k32": 32, "k33": 33}"#,
        r#""just a string""#,
        r#"{"big": 123456789012345678901234567890.000001, "neg": -1.5e-300, "u": "ünïcødé ✓ \u0001"}"#,
    ];
    let paths: Vec<FieldPath> = ["email", "items[*].card", "a.b", "[0].email", "k33"]
        .iter()
        .map(|p| FieldPath::parse(p).unwrap())
        .collect();
    for (i, d) in docs.iter().enumerate() {
        let datum = from_json_text(d).unwrap();
        write(&root.join("jsonb_document"), &format!("plain-{i}"), &datum);
        for (tag, key, _) in formats {
            for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
                let c = Cipher::new(alg, &[9u8; 32]);
                let doc = Document::from_datum(&datum).unwrap();
                let mut out = Vec::new();
                if Encryptor::new(&c, key, 1, None)
                    .encrypt_document(&doc, &Selector::new(&paths).unwrap(), &mut out)
                    .unwrap_or(0)
                    > 0
                {
                    write(
                        &root.join("jsonb_document"),
                        &format!("enc{tag}-{i}-{}", alg.name()),
                        &out,
                    );
                }
            }
        }
    }
    for (tag, _, key) in formats {
        let mut n = 0;
        for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
            let c = Cipher::new(alg, &[7u8; 32]);
            for ctx in [None, Some(&b"ctx"[..])] {
                for v in [Value::String(b"secret@x.io"), Value::Null, Value::Bool(true)] {
                    let env = Encryptor::new(&c, key, 3, ctx).encrypt_value(&v).unwrap();
                    write(&root.join("envelope"), &format!("env{tag}-{n}"), env.as_bytes());
                    n += 1;
                }
            }
        }
    }
    for (i, p) in [
        "email",
        "address.street",
        "items[*].card",
        "\"a.b\".c",
        "[0]",
        "a[12].b[*]",
        "x\ny[1]",
    ]
    .iter()
    .enumerate()
    {
        write(&root.join("field_path"), &format!("path-{i}"), p.as_bytes());
    }
    println!("seed corpus written under {}", root.display());
}
