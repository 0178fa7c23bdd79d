//! The config file parser (`enrollhook.toml`) and the size syntax it uses.
//!
//! Invariants: no panic; an accepted config has valid, unique source names and a
//! usable body size, and resolves to exactly those sources; a refusal says why.
#![no_main]

use enrollhook::config::{ByteSize, FileConfig, Secret, Sources};
use enrollhook::ids::SourceName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `FileConfig::load` reads the file with `read_to_string`: non-UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(ByteSize(n)) = text.parse::<ByteSize>() {
        assert!(n > 0);
    }

    match FileConfig::parse(text) {
        Ok(config) => {
            let mut names = std::collections::BTreeSet::new();
            for s in &config.sources {
                assert!(SourceName::parse(s.name.as_str()).is_ok(), "{:?}", s.name);
                assert!(names.insert(s.name.as_str()), "duplicate {:?}", s.name);
            }
            if let Some(ByteSize(n)) = config.max_body {
                assert!(n > 0);
            }
            let resolved = Sources::resolve(None, &config);
            let mut expected: Vec<&str> = names.into_iter().collect();
            if config.secret.is_some() && !expected.contains(&"default") {
                expected.push("default");
                expected.sort_unstable();
            }
            assert_eq!(resolved.names().collect::<Vec<_>>(), expected);
            // Debug output (what could reach a log) does not depend on any secret.
            let mut blanked = config.clone();
            for secret in blanked
                .sources
                .iter_mut()
                .filter_map(|s| s.secret.as_mut())
                .chain(blanked.secret.as_mut())
                .chain(blanked.api_token.as_mut())
            {
                *secret = Secret::new("");
            }
            assert_eq!(format!("{config:?}"), format!("{blanked:?}"));
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
