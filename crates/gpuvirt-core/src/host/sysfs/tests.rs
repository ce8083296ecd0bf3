//! Unit tests of `host/sysfs.rs`, kept apart so the module file stays readable.
//!
//! May import: the module under test (`super`) and whatever the tests need; nothing imports it.

use super::*;

#[test]
fn resolves_relative_sysfs_links() {
    let p = resolve_link(
        Path::new("bus/pci/devices"),
        Path::new("../../../devices/pci0000:40/0000:40:01.1/0000:41:00.0"),
    )
    .unwrap();
    assert_eq!(p, Path::new("devices/pci0000:40/0000:40:01.1/0000:41:00.0"));
    let p = resolve_link(
        Path::new("bus/pci/devices"),
        Path::new("/sys/devices/pci0000:00/0000:00:02.0"),
    )
    .unwrap();
    assert_eq!(p, Path::new("devices/pci0000:00/0000:00:02.0"));
    assert!(resolve_link(Path::new("bus"), Path::new("../../etc")).is_none());
}

#[test]
fn parses_hex_forms() {
    assert_eq!(parse_hex("0x030200"), Some(0x030200));
    assert_eq!(parse_hex("10DE"), Some(0x10de));
    assert_eq!(parse_hex("0x"), None);
    assert_eq!(parse_hex("zz"), None);
    assert_eq!(parse_hex("123456789"), None);
}

#[test]
fn caps_reads_and_rejects_non_utf8() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("big"),
        vec![b'a'; ATTR_READ_CAP as usize + 1],
    )
    .unwrap();
    std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
    std::fs::write(dir.path().join("ok"), "0x10de\n").unwrap();
    let root = Root::new(dir.path());
    let mut r = Reader::new(&root);
    assert!(matches!(r.read(Path::new("big")), Err(ReadError::TooLarge)));
    assert!(matches!(r.read(Path::new("bin")), Err(ReadError::NotUtf8)));
    assert!(matches!(r.read(Path::new("nope")), Err(ReadError::Missing)));
    assert_eq!(r.read(Path::new("ok")).unwrap(), "0x10de\n");
    assert_eq!(r.stats.files_read, 4);
}

#[test]
fn files_longer_than_the_first_read_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let mut r = Reader::new(&root);
    for len in [
        FIRST_READ - 1,
        FIRST_READ,
        FIRST_READ + 1,
        3 * FIRST_READ + 7,
    ] {
        let text: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        std::fs::write(dir.path().join("f"), &text).unwrap();
        assert_eq!(r.read(Path::new("f")).unwrap(), text, "length {len}");
    }
    let exact = vec![b'z'; ATTR_READ_CAP as usize];
    std::fs::write(dir.path().join("cap"), &exact).unwrap();
    assert_eq!(
        r.read_bytes(Path::new("cap"), ATTR_READ_CAP).unwrap(),
        exact
    );
}
