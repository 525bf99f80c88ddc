//! Replays every input kept in `fuzz/regressions/<target>/` through the property its fuzz
//! target checks (issue 5 §7): what fuzzing found once stays fixed. `scripts/fuzz` copies a
//! failing input there.

use std::path::Path;

use crate::common::fuzz_checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{target}: no regression inputs");
    for input in inputs {
        let data = std::fs::read(&input).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target} fails again on {}", input.display());
        }
    }
}

#[test]
fn event_decode_regressions() {
    replay("event_decode", fuzz_checks::event_decode);
}

#[test]
fn settings_decode_regressions() {
    replay("settings_decode", fuzz_checks::settings_decode);
}

#[test]
fn render_regressions() {
    replay("render", |data| {
        // Kept render inputs are events that decode: otherwise nothing would be rendered.
        let decoded = sysmos_notify::model::Event::decode(Some(data));
        assert!(decoded.is_ok(), "{decoded:?}");
        fuzz_checks::render(data)
    });
}
