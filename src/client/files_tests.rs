//! Tests of [`super`]: names, slots, placing, chunks in any order.

use super::*;

#[test]
fn hostile_names_become_safe_base_names() {
    assert_eq!(safe_name("../../x"), "x");
    assert_eq!(safe_name("/etc/passwd"), "passwd");
    assert_eq!(safe_name("a/../../b"), "b");
    assert_eq!(safe_name("..\\..\\win.ini"), "win.ini");
    assert_eq!(safe_name(".."), "file");
    assert_eq!(safe_name(""), "file");
    assert_eq!(safe_name(".bashrc"), "bashrc");
    assert_eq!(safe_name("bad\nname\u{7}\u{0}.txt"), "badname.txt");
    assert_eq!(safe_name("evil\u{202e}txt.exe"), "eviltxt.exe");
    let long = format!("{}.pdf", "a".repeat(10_000));
    let safe = safe_name(&long);
    assert!(
        safe.len() <= MAX_NAME_BYTES && safe.ends_with(".pdf"),
        "{safe}"
    );
    let multibyte = "é".repeat(200);
    assert!(safe_name(&multibyte).len() <= MAX_NAME_BYTES);
}

#[test]
fn fuzz_regression_dots_and_spaces_interleaved() {
    // Found by the file_name fuzz target: once trimmed of one leading
    // dot, this still started with one.
    let input = b"\x7f\x01\x00\x00..\x00\x00 .\x00\x00 \x00\x7f\x00\xda\x7f\x7f\x7f\x7f";
    let safe = safe_name(&String::from_utf8_lossy(input));
    assert!(!safe.starts_with('.') && !safe.is_empty(), "{safe:?}");
    assert_eq!(safe_name(". .. .x"), "x");
}

fn manifest(file_id: &str) -> FileStart {
    FileStart {
        file_id: file_id.into(),
        name: format!("{file_id}.bin"),
        size: 10,
        sha256: String::new(),
        mode: FileMode::Dm,
        group_id: None,
        user_id: None,
        content_sig: None,
        msg_id: None,
        extra: Default::default(),
    }
}

#[test]
fn one_sender_cannot_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Receiver::new(dir.path(), 1 << 20).unwrap();
    let mallory = Some("mallory".to_owned());
    for i in 0..MAX_TRANSFERS_PER_SENDER {
        r.start(manifest(&format!("m{i}")), mallory.clone())
            .unwrap();
    }
    let e = r.start(manifest("m-more"), mallory.clone()).unwrap_err();
    assert!(matches!(e, FileError::TooManyFrom { .. }), "{e}");
    // Unnamed senders share one bucket too.
    for i in 0..MAX_TRANSFERS_PER_SENDER {
        r.start(manifest(&format!("u{i}")), None).unwrap();
    }
    assert!(r.start(manifest("u-more"), None).is_err());
    // Bob still gets his file through.
    r.start(manifest("b0"), Some("bob".into())).unwrap();
    assert_eq!(r.len(), 2 * MAX_TRANSFERS_PER_SENDER + 1);
}

#[test]
fn idle_transfers_are_dropped_with_their_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Receiver::new(dir.path(), 1 << 20).unwrap();
    r.start(manifest("stale"), Some("mallory".into())).unwrap();
    let parts = || std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(parts(), 1);
    let now = Instant::now();
    assert!(r.expire(now, TRANSFER_IDLE).is_empty());
    let dropped = r.expire(now + TRANSFER_IDLE, TRANSFER_IDLE);
    assert_eq!(
        dropped,
        [("stale.bin".to_owned(), Some("mallory".to_owned()))]
    );
    assert_eq!((r.len(), parts()), (0, 0));
}

fn chunk(index: u64) -> FileChunk {
    FileChunk {
        file_id: "f".into(),
        index,
        ciphertext: String::new(),
        iv: String::new(),
        tag: String::new(),
        wrapped_key: None,
        user_id: None,
        msg_id: None,
        extra: Default::default(),
    }
}

#[test]
fn chunks_again_or_out_of_order_still_make_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Receiver::new(dir.path(), 1 << 20).unwrap();
    let data: Vec<u8> = (0..CHUNK_SIZE + 5).map(|i| i as u8).collect();
    let mut start = manifest("f");
    start.size = data.len() as u64;
    start.sha256 = hex(digest::digest(&digest::SHA256, &data).as_ref());
    let bob = Some("bob".to_owned());
    r.start(start.clone(), bob.clone()).unwrap();
    let (first, last) = data.split_at(CHUNK_SIZE);
    // The last chunk first (handed on again after a reconnect, the
    // order can change), then the first one twice.
    assert_eq!(r.append(&chunk(1), last).unwrap(), (5, data.len() as u64));
    assert!(!r.is_repeat("f", 0) && r.is_repeat("f", 1));
    // The manifest again (after a reconnect): what was written stays.
    r.start(start.clone(), bob.clone()).unwrap();
    assert_eq!(r.get_mut("f").unwrap().received(), 5);
    // Another manifest under the same id is refused.
    let mut other = start.clone();
    other.size += 1;
    assert!(matches!(r.start(other, bob), Err(FileError::Duplicate)));
    // The end before the first chunk: not complete yet.
    assert!(!r.end("f").unwrap());
    r.append(&chunk(0), first).unwrap();
    r.append(&chunk(0), first).unwrap();
    assert!(r.is_complete("f"));
    let done = r.finish("f").unwrap();
    assert_eq!(std::fs::read(done.path).unwrap(), data);
}

#[test]
fn a_chunk_that_does_not_fit_the_manifest_ends_the_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Receiver::new(dir.path(), 1 << 20).unwrap();
    r.start(manifest("f"), None).unwrap();
    let e = r.append(&chunk(0), b"12345").unwrap_err();
    assert!(matches!(e, FileError::BadChunk { .. }), "{e}");
    r.start(manifest("f"), None).unwrap();
    let e = r.append(&chunk(1), &[0; 10]).unwrap_err();
    assert!(matches!(e, FileError::BadChunk { .. }), "{e}");
    assert!(r.is_empty());
}

#[test]
fn placing_never_clobbers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "old").unwrap();
    for expect in ["a (1).txt", "a (2).txt"] {
        let temp = dir.path().join("t");
        std::fs::write(&temp, "new").unwrap();
        let placed = place(&temp, dir.path(), "a.txt").unwrap();
        assert_eq!(placed.file_name().unwrap(), expect);
        assert!(!temp.exists());
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
        "old"
    );
}

#[test]
fn a_chunk_lands_at_most_a_window_past_those_received_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Receiver::new(dir.path(), 1 << 40).unwrap();
    let mut m = manifest("f");
    m.size = (CHUNKS_AHEAD_MAX + 2) * CHUNK_SIZE as u64;
    r.start(m, None).unwrap();
    assert!(!r.too_far_ahead("f", CHUNKS_AHEAD_MAX - 1));
    assert!(r.too_far_ahead("f", CHUNKS_AHEAD_MAX));
    assert!(!r.too_far_ahead("unknown", CHUNKS_AHEAD_MAX));
    let data = vec![1u8; CHUNK_SIZE];
    // Not written, not counted; the first chunk moves the window on.
    assert_eq!(r.append(&chunk(CHUNKS_AHEAD_MAX), &data).unwrap().0, 0);
    assert!(!r.is_repeat("f", CHUNKS_AHEAD_MAX));
    r.append(&chunk(0), &data).unwrap();
    assert!(!r.too_far_ahead("f", CHUNKS_AHEAD_MAX));
    r.append(&chunk(CHUNKS_AHEAD_MAX), &data).unwrap();
    assert!(r.is_repeat("f", CHUNKS_AHEAD_MAX));
}

#[test]
fn frames_must_name_the_manifests_sender_only_when_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Receiver::new(dir.path(), 1 << 20).unwrap();
    let named = |from: Option<&str>| {
        let mut extra = Map::new();
        if let Some(f) = from {
            extra.insert(MANIFEST_FROM.into(), Value::from(f));
        }
        extra
    };
    // An older or reference sender's manifest: frames cannot be told apart.
    r.start(manifest("old"), Some("bob".into())).unwrap();
    assert!(r.from_its_sender("old", &named(None)));
    assert!(r.from_its_sender("old", &named(Some("mallory"))));
    let mut m = manifest("new");
    m.extra.insert(CHUNKS_NAME_SENDER.into(), Value::Bool(true));
    r.start(m, Some("bob".into())).unwrap();
    assert!(r.from_its_sender("new", &named(Some("bob"))));
    assert!(!r.from_its_sender("new", &named(Some("mallory"))));
    assert!(!r.from_its_sender("new", &named(None)));
    // A manifest that names no sender cannot ask for it.
    let mut m = manifest("anon");
    m.extra.insert(CHUNKS_NAME_SENDER.into(), Value::Bool(true));
    r.start(m, None).unwrap();
    assert!(!r.from_its_sender("anon", &named(None)));
    assert!(r.from_its_sender("unknown", &named(None)));
}
