//! Unit tests of the control interface. May import: super (host.rs) and what it imports.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn parses_commands_and_rejects_bad_ones() {
    assert_eq!(
        Command::parse("hot-remove 0000:41:00.0").unwrap(),
        Command::HotRemove {
            bdf: "0000:41:00.0".into()
        }
    );
    assert_eq!(
        Command::parse("write sys/x/driver_override vfio-pci extra").unwrap(),
        Command::Write {
            path: "sys/x/driver_override".into(),
            data: "vfio-pci extra".into()
        }
    );
    assert_eq!(
        Command::parse("set-mdev-busy 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 1").unwrap(),
        Command::SetMdevBusy {
            uuid: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into(),
            busy: true
        }
    );
    assert_eq!(
        Command::parse("fail-next-write sys/a ebusy").unwrap(),
        Command::FailNextWrite {
            path: "sys/a".into(),
            errno: libc::EBUSY
        }
    );
    for bad in [
        "",
        "explode",
        "hot-remove",
        "set-mdev-busy u 2",
        "fail-next-write p EWHAT",
        "write p",
    ] {
        let err = Command::parse(bad).unwrap_err();
        assert_eq!(err.errno, libc::EINVAL, "{bad:?}");
    }
}

/// A backend whose writable files just store what is written.
struct Plain(crate::tree::Tree);

impl Backend for Plain {
    fn tree(&self) -> &crate::tree::Tree {
        &self.0
    }
    fn write(&mut self, path: &str, data: &[u8]) -> Result<(), i32> {
        self.0.set_file(path, data.to_vec(), 0o644);
        Ok(())
    }
    fn take_uevents(&mut self) -> Vec<crate::uevent::Uevent> {
        Vec::new()
    }
}

impl HostHooks for Plain {}

#[test]
fn faults_fail_one_write_through_links_and_hooks_default_to_unsupported() {
    let mut tree = crate::tree::Tree::new();
    tree.attr_rw("sys/devices/d/driver_override", "(null)");
    tree.attr("sys/devices/d/vendor", "0x10de");
    tree.link_rel("sys/bus/pci/devices/d", "sys/devices/d");
    let mut b = Faults::new(Plain(tree));
    let run = |b: &mut Faults<Plain>, line: &str| execute(b, &Command::parse(line).unwrap());

    run(
        &mut b,
        "fail-next-write sys/bus/pci/devices/d/driver_override EBUSY",
    )
    .unwrap();
    let err = run(&mut b, "write sys/devices/d/driver_override vfio-pci").unwrap_err();
    assert_eq!(err.errno, libc::EBUSY);
    run(&mut b, "write sys/devices/d/driver_override vfio-pci").unwrap();
    assert_eq!(
        run(&mut b, "read sys/bus/pci/devices/d/driver_override").unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        run(&mut b, "write sys/devices/d/vendor 1")
            .unwrap_err()
            .errno,
        libc::EACCES
    );
    assert_eq!(
        run(&mut b, "fail-next-write sys/nope EIO")
            .unwrap_err()
            .errno,
        libc::ENOENT
    );
    for hook in [
        "hot-remove 0000:41:00.0",
        "load-module vfio_pci",
        "hot-add {}",
    ] {
        assert_eq!(
            run(&mut b, hook).unwrap_err().errno,
            libc::EOPNOTSUPP,
            "{hook}"
        );
    }
}

#[test]
fn answers_name_the_errno() {
    assert_eq!(answer(&Ok(String::new())), "ok");
    assert_eq!(answer(&Ok("pong".into())), "ok pong");
    assert_eq!(
        answer(&Err(HookError::new(libc::EBUSY, "write failed"))),
        "err EBUSY write failed"
    );
    assert_eq!(errno_name(200), "200");
    assert_eq!(parse_errno("19"), Some(libc::ENODEV));
    assert_eq!(parse_errno("0"), None);
}
