//! Fuzzes the layer unpacker: arbitrary bytes unpacked as a layer blob (tar, or gzip/zstd
//! by magic bytes) must never panic, never write outside the destination, and leave a
//! destination kiln can remove. The first byte picks the whiteout mode; in `Apply` mode the
//! layer is applied twice, so its whiteouts meet real lower-layer content.
#![no_main]

use std::path::Path;

use kiln_layer::{UnpackOptions, WhiteoutMode, unpack_layer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, layer)) = data.split_first() else { return };
    let whiteouts = match mode % 3 {
        0 => WhiteoutMode::Oci,
        1 => WhiteoutMode::Overlay,
        _ => WhiteoutMode::Apply,
    };
    let opts = UnpackOptions {
        whiteouts,
        ..UnpackOptions::default()
    };
    // tmpfs when there is one: the fuzzer creates and deletes thousands of trees a second.
    let base = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let tmp = tempfile::Builder::new()
        .prefix("kiln-fuzz-unpack")
        .tempdir_in(base)
        .expect("temp dir");
    let dest = tmp.path().join("dest");
    let _ = unpack_layer(layer, &dest, &opts);
    if whiteouts == WhiteoutMode::Apply {
        let _ = unpack_layer(layer, &dest, &opts);
    }
    // Nothing may have been created beside the destination.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list temp dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        names.iter().all(|n| n == "dest"),
        "unpack wrote outside its destination: {names:?}"
    );
    tmp.close().expect("the unpacked tree must be removable");
});
