//! Event bodies as the log stores them: compressed with zstd and a
//! dictionary trained on Thinkific payloads (a ~520-byte body shares most
//! of its bytes with every other body of its topic, which plain zstd cannot
//! see within one body). A compressed row keeps `body` empty and names its
//! dictionary in `body_dict`, the frame in `body_zstd`; a row stored before
//! compression (SQLite migration 18, PostgreSQL 17) keeps its text in `body`
//! and reads as before. Dictionaries live in the database
//! (`body_dictionaries`), keyed by the id zstd writes in a dictionary's
//! header (derived from its content), so the one process-wide cache of
//! prepared decoders below is right for every database a process opens.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::{CCtx, DCtx};

use super::{Result, StoreError};

/// The dictionary every database starts with: trained offline on the
/// published samples and generated traffic (`bodies::tests::
/// rebuild_builtin_dictionary` writes it again, deterministically).
pub(crate) const BUILTIN_DICTIONARY: &[u8] = include_bytes!("bodies/builtin.dict");

/// zstd's usual default: ~10 µs a body here, ingest throughput within noise.
const LEVEL: i32 = 3;

/// Largest body a frame may claim to hold (webhook bodies are limited far
/// below this), so a corrupt header cannot make us allocate gigabytes.
const MAX_BODY: u64 = 64 << 20;

static DECODERS: LazyLock<RwLock<HashMap<i64, Arc<DecoderDictionary<'static>>>>> =
    LazyLock::new(Default::default);

thread_local! {
    static CCTX: RefCell<CCtx<'static>> = RefCell::new(CCtx::create());
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

/// The id zstd wrote in a dictionary's header; an error if `dictionary` is
/// not a zstd dictionary.
pub(crate) fn dictionary_id(dictionary: &[u8]) -> Result<i64> {
    zstd::zstd_safe::get_dict_id_from_dict(dictionary)
        .map(|id| i64::from(id.get()))
        .ok_or_else(|| {
            StoreError::Invalid(
                "not a zstd dictionary (no dictionary id in its header); train one with \
                 zstd's dictionary builder (`zstd --train`)"
                    .into(),
            )
        })
}

/// Makes rows compressed with `dictionary` readable in this process.
pub(crate) fn remember(id: i64, dictionary: &[u8]) {
    let mut decoders = DECODERS.write().expect("decoder cache lock");
    decoders
        .entry(id)
        .or_insert_with(|| Arc::new(DecoderDictionary::copy(dictionary)));
}

/// The dictionary a writer compresses new bodies with.
pub(crate) struct Encoder {
    id: i64,
    dictionary: EncoderDictionary<'static>,
}

impl Encoder {
    pub(crate) fn new(dictionary: &[u8]) -> Result<Encoder> {
        let id = dictionary_id(dictionary)?;
        remember(id, dictionary);
        Ok(Encoder {
            id,
            dictionary: EncoderDictionary::copy(dictionary, LEVEL),
        })
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// `body` as one zstd frame (with its size, so reading allocates once).
    pub(crate) fn compress(&self, body: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(body.len()));
        CCTX.with(|cctx| {
            cctx.borrow_mut()
                .compress_using_cdict(&mut out, body.as_bytes(), self.dictionary.as_cdict())
                .expect("a buffer of compress_bound bytes holds any frame");
        });
        out
    }
}

/// The body a row holds: its text, or its frame decompressed with the
/// dictionary it names. Corrupt data is an error naming the event, never a
/// panic.
pub(crate) fn decode(
    event: &dyn Fn() -> String,
    text: String,
    frame: Option<Vec<u8>>,
    dictionary: Option<i64>,
) -> Result<String> {
    let (Some(frame), Some(id)) = (frame, dictionary) else {
        return Ok(text);
    };
    let corrupt = |what: String| {
        StoreError::Corrupt(format!(
            "the compressed body of {} cannot be read: {what}; restore the row from a backup \
             or export",
            event()
        ))
    };
    let decoder = DECODERS
        .read()
        .expect("decoder cache lock")
        .get(&id)
        .cloned()
        .ok_or_else(|| {
            corrupt(format!(
                "dictionary {id} is not in body_dictionaries (or was added after this process \
                 opened the database: restart it)"
            ))
        })?;
    let size = match zstd::zstd_safe::get_frame_content_size(&frame) {
        Ok(Some(size)) if size <= MAX_BODY => size as usize,
        Ok(Some(size)) => return Err(corrupt(format!("its frame claims {size} bytes"))),
        _ => return Err(corrupt("not a zstd frame with its size".into())),
    };
    let mut out = Vec::with_capacity(size);
    DCTX.with(|dctx| {
        dctx.borrow_mut()
            .decompress_using_ddict(&mut out, &frame, decoder.as_ddict())
            .map_err(|code| corrupt(zstd::zstd_safe::get_error_name(code).to_owned()))
    })?;
    String::from_utf8(out).map_err(|_| corrupt("it is not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thinkific::samples;

    /// A dictionary trained on `bodies` (zstd's fastCover, deterministic).
    fn train(bodies: &[String]) -> Vec<u8> {
        zstd::dict::from_samples(bodies, 112 * 1024).unwrap()
    }

    fn name() -> String {
        "event `x` of source `s`".into()
    }

    #[test]
    fn every_sample_round_trips_and_shrinks() {
        let enc = Encoder::new(BUILTIN_DICTIONARY).unwrap();
        for body in [
            samples::CREATED,
            samples::PROGRESS,
            samples::COMPLETED,
            samples::LESSON_COMPLETED,
            samples::ORDER_CREATED,
            samples::USER_SIGNUP,
        ] {
            let frame = enc.compress(body);
            assert!(
                frame.len() < body.len(),
                "{} -> {}",
                body.len(),
                frame.len()
            );
            let back = decode(&name, String::new(), Some(frame), Some(enc.id())).unwrap();
            assert_eq!(back, body);
        }
    }

    #[test]
    fn uncompressed_rows_read_as_they_are() {
        let back = decode(&name, "{\"a\":1}".into(), None, None).unwrap();
        assert_eq!(back, "{\"a\":1}");
    }

    #[test]
    fn corrupt_frames_and_unknown_dictionaries_are_errors() {
        let enc = Encoder::new(BUILTIN_DICTIONARY).unwrap();
        let mut frame = enc.compress(samples::CREATED);
        let n = frame.len();
        frame[n / 2] ^= 0xff;
        frame.truncate(n - 3);
        let e = decode(&name, String::new(), Some(frame), Some(enc.id())).unwrap_err();
        assert!(e.to_string().contains("event `x` of source `s`"), "{e}");
        let e = decode(&name, String::new(), Some(b"nope".to_vec()), Some(enc.id())).unwrap_err();
        assert!(e.to_string().contains("not a zstd frame"), "{e}");
        let e = decode(&name, String::new(), Some(enc.compress("{}")), Some(7)).unwrap_err();
        assert!(e.to_string().contains("dictionary 7"), "{e}");
    }

    /// Not a measurement that gates anything: prints µs per body.
    #[test]
    fn time_per_body() {
        let enc = Encoder::new(BUILTIN_DICTIONARY).unwrap();
        let body = samples::CREATED;
        let n = 2000;
        let t = std::time::Instant::now();
        let frames: Vec<_> = (0..n).map(|_| enc.compress(body)).collect();
        let c = t.elapsed();
        let t = std::time::Instant::now();
        for f in frames {
            decode(&name, String::new(), Some(f), Some(enc.id())).unwrap();
        }
        let d = t.elapsed();
        println!(
            "{} bytes: compress {:.1} µs, decompress {:.1} µs per body",
            body.len(),
            c.as_secs_f64() * 1e6 / n as f64,
            d.as_secs_f64() * 1e6 / n as f64
        );
    }

    /// Writes `bodies/builtin.dict` again: the published samples and the
    /// benchmark's generated traffic (`bench/gen_events.py`, 20,000 bodies),
    /// trained deterministically. Run with `cargo test --lib
    /// rebuild_builtin_dictionary -- --ignored`.
    #[test]
    #[ignore]
    fn rebuild_builtin_dictionary() {
        let out = tempfile::NamedTempFile::new().unwrap();
        let status = std::process::Command::new("python3")
            .args([
                "bench/gen_events.py",
                "--count",
                "20000",
                "--secret",
                "x",
                "--out",
            ])
            .arg(out.path())
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(out.path()).unwrap();
        let mut bodies: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, b)| b.to_owned()))
            .collect();
        for name in [
            "enrollment.created",
            "enrollment.progress",
            "enrollment.completed",
            "lesson.completed",
            "order.created",
            "user.signup",
        ] {
            // Weighted up: a few bodies among thousands would not be learned.
            for _ in 0..500 {
                bodies.push(samples::by_name(name).unwrap().to_owned());
            }
        }
        let dict = train(&bodies);
        std::fs::write("src/store/bodies/builtin.dict", dict).unwrap();
    }
}
