//! Unit tests of the contract: paths, error names, and the method and error tables against
//! the introspection XML, the polkit actions file and the docs. May import: the whole crate
//! (through its root's re-exports).
#![allow(clippy::unwrap_used)]

use super::*;
use gpuvirt_types::PciAddress;
use zbus::DBusError;

#[test]
fn paths_follow_the_documented_shape() {
    let a: PciAddress = "0000:41:00.0".parse().unwrap();
    assert_eq!(
        gpu_path(&a).as_str(),
        "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"
    );
    assert_eq!(address_from_gpu_path(gpu_path(&a).as_str()), Some(a));
    assert_eq!(address_from_gpu_path("/org/gpuvirt/GpuVirt1/gpus/x"), None);
    assert_eq!(
        iommu_group_path(66).as_str(),
        "/org/gpuvirt/GpuVirt1/iommu_groups/66"
    );
    assert_eq!(group_id_from_path(iommu_group_path(66).as_str()), Some(66));
    let u: Uuid = "a0b1c2d3-0000-4000-8000-000000000001".parse().unwrap();
    assert_eq!(
        mdev_path(&u).as_str(),
        "/org/gpuvirt/GpuVirt1/mdevs/a0b1c2d3_0000_4000_8000_000000000001"
    );
}

#[test]
fn parent_names_escape_without_collisions() {
    assert_eq!(
        parent_path("mbochs").as_str(),
        "/org/gpuvirt/GpuVirt1/parents/mbochs"
    );
    assert_eq!(
        parent_path("0000:03:00.0").as_str(),
        "/org/gpuvirt/GpuVirt1/parents/0000_03_00_0"
    );
    assert_eq!(escape_path_element("a-b"), "a_2db");
    assert_ne!(escape_path_element("a_b"), escape_path_element("a-b"));
    assert_eq!(escape_path_element(""), "_");
    // Escaped elements are always valid in a path.
    for name in ["x/y", "../..", "ünï", "a b\0c"] {
        assert_ne!(parent_path(name).as_str(), "/", "{name:?}");
    }
}

#[test]
fn error_names_are_the_documented_ones() {
    assert_eq!(
        Error::NoSuchDevice("x".into()).name().as_str(),
        "org.gpuvirt.GpuVirt1.Error.NoSuchDevice"
    );
    assert_eq!(
        Error::DriverBind("x".into()).name().as_str(),
        "org.gpuvirt.GpuVirt1.Error.DriverBind"
    );
    let e = CallError::invalid_arg("address", "not a PCI address");
    assert_eq!(e.name().as_str(), INVALID_ARGS_ERROR);
    assert_eq!(
        e.description(),
        Some("argument 'address': not a PCI address")
    );
}

const XML: &str = include_str!("../../../dbus/org.gpuvirt.GpuVirt1.xml");
const POLICY: &str = include_str!("../../../dbus/org.gpuvirt.GpuVirt1.policy");

/// The value of `attr="..."` in one tag.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let start = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Every (interface, method) of the introspection XML, in its order. The generator writes one
/// tag per line, so a line scan is enough.
fn xml_methods() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut interface = None;
    for line in XML.lines().map(str::trim) {
        if line.starts_with("<interface ") {
            interface = attr(line, "name").map(str::to_owned);
        } else if line.starts_with("</interface>") {
            interface = None;
        } else if line.starts_with("<method ") {
            let i = interface.clone().expect("a method outside an interface");
            out.push((i, attr(line, "name").unwrap().to_owned()));
        }
    }
    out
}

#[test]
fn methods_table_is_the_introspection_xml() {
    let xml = xml_methods();
    assert!(xml.len() >= 19, "the XML scan found only {xml:?}");
    for (interface, name) in &xml {
        assert!(
            method(interface, name).is_some(),
            "{interface}.{name} is in the XML but not in gpuvirt_api::METHODS"
        );
    }
    for m in METHODS {
        assert!(
            xml.iter().any(|(i, n)| i == m.interface && n == m.name),
            "{} is in METHODS but not in the XML",
            m.key()
        );
    }
    let mut keys: Vec<String> = METHODS.iter().map(MethodInfo::key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), METHODS.len(), "a method is listed twice");
}

#[test]
fn every_mutator_has_a_declared_polkit_action_and_no_read_has_one() {
    for m in METHODS {
        match (m.mutating, m.action) {
            (true, Some(action)) => assert!(
                POLICY.contains(&format!("<action id=\"{action}\">")),
                "{}'s action {action} is missing from the polkit actions file",
                m.key()
            ),
            (true, None) => assert_eq!(
                m.interface,
                JOB_INTERFACE,
                "{} mutates but has no polkit action",
                m.key()
            ),
            (false, action) => assert_eq!(action, None, "{} is a read", m.key()),
        }
    }
    assert_eq!(
        action_for("Gpu.AssignPassthrough"),
        Some(ACTION_PASSTHROUGH)
    );
    assert_eq!(action_for("Mdev.Remove"), Some(ACTION_SHARD));
    assert_eq!(action_for("Manager.Reconcile"), Some(ACTION_POLICY));
    assert_eq!(action_for("Manager.GetObjects"), None);
    assert_eq!(action_for("Gpu.Frobnicate"), None);
}

/// Every `org.gpuvirt.GpuVirt1.Error.<Name>` spelled in `text`.
fn error_names_in(text: &str, found: &mut std::collections::BTreeSet<String>) {
    let prefix = format!("{ERROR_PREFIX}.");
    let mut rest = text;
    while let Some(i) = rest.find(&prefix) {
        rest = &rest[i + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        // `Error.<name>` in prose is a placeholder, not a name.
        if !name.is_empty() {
            found.insert(format!("{prefix}{name}"));
        }
    }
}

fn rust_and_markdown_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "golden" {
                rust_and_markdown_files(&path, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "md" || e == "xml")
        {
            out.push(path);
        }
    }
}

#[test]
fn every_error_name_in_the_tree_is_in_the_list() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["dbus", "docs", "crates"] {
        rust_and_markdown_files(&root.join(dir), &mut files);
    }
    files.push(root.join("README.md"));
    let mut found = std::collections::BTreeSet::new();
    // This file spells a made-up name on purpose (to check that it is refused).
    let this_file = root.join("crates/gpuvirt-api/src/tests.rs");
    for f in files.iter().filter(|f| **f != this_file) {
        if let Ok(text) = std::fs::read_to_string(f) {
            error_names_in(&text, &mut found);
        }
    }
    assert!(found.len() >= 12, "the scan found only {found:?}");
    for name in &found {
        assert!(
            ErrorName::from_dbus_name(name).is_some(),
            "{name} is used in the tree but missing from gpuvirt_api::ErrorName"
        );
    }
}

#[test]
fn error_names_round_trip_and_match_the_error_enum() {
    for n in ErrorName::ALL {
        assert_eq!(ErrorName::from_dbus_name(n.dbus_name()), Some(n));
        assert!(n.dbus_name().ends_with(&format!(".{}", n.short_name())));
        assert!(!n.meaning().is_empty() && !n.meaning().contains('\n'));
        assert!(matches!(n.cli_exit_code(), 1 | 3 | 4), "{n}");
        match n.to_error("m") {
            Some(e) => {
                assert!(n.is_gpuvirt());
                assert_eq!(e.name().as_str(), n.dbus_name());
                assert_eq!(e.error_name(), Some(n));
                assert_eq!(e.description(), Some("m"));
            }
            None => assert!(
                n.dbus_name().starts_with(FDO_ERROR_PREFIX) && !n.is_gpuvirt(),
                "{n}"
            ),
        }
    }
    let mut all = ErrorName::ALL.to_vec();
    all.dedup();
    assert_eq!(all.len(), ErrorName::ALL.len());
    assert_eq!(
        ErrorName::from_dbus_name("org.gpuvirt.GpuVirt1.Error.Nope"),
        None
    );
    assert_eq!(
        ErrorName::from_dbus_name("org.freedesktop.DBus.Error.Failed"),
        None
    );
    // A reply of gpuvirt's own name decodes into its variant, others stay transport errors.
    let reply = |name: &str| {
        zbus::Error::MethodError(
            zbus::names::OwnedErrorName::try_from(name).unwrap(),
            Some("why".into()),
            zbus::message::Message::method_call("/", "X")
                .unwrap()
                .build(&())
                .unwrap(),
        )
    };
    let busy = Error::from(reply(ErrorName::Busy.dbus_name()));
    assert_eq!(busy.error_name(), Some(ErrorName::Busy));
    assert!(Error::from(reply(ErrorName::AccessDenied.dbus_name()))
        .error_name()
        .is_none());
}

#[test]
fn paths_from_what_a_caller_typed_are_the_lookups_answers() {
    let a: PciAddress = "0000:41:00.0".parse().unwrap();
    assert_eq!(
        canonical_pci_address("41:00.0").as_deref(),
        Some("0000:41:00.0")
    );
    assert_eq!(
        canonical_pci_address("0000:0E:00.0").as_deref(),
        Some("0000:0e:00.0")
    );
    assert_eq!(canonical_pci_address("mtty"), None);
    assert_eq!(gpu_path_for("0000:41:00.0"), Some(gpu_path(&a)));
    assert_eq!(gpu_path_for("41:00.0"), Some(gpu_path(&a)));
    assert_eq!(gpu_path_for("../x"), None);
    let u: Uuid = "a0b1c2d3-0000-4000-8000-000000000001".parse().unwrap();
    assert_eq!(
        mdev_path_for("A0B1C2D3-0000-4000-8000-000000000001"),
        Some(mdev_path(&u))
    );
    assert_eq!(mdev_path_for("nope"), None);
    assert_eq!(uuid_from_mdev_path(mdev_path(&u).as_str()), Some(u));
    assert_eq!(
        uuid_from_mdev_path("/org/gpuvirt/GpuVirt1/mdevs/A0B1C2D3_0000_4000_8000_000000000001"),
        None
    );
    assert_eq!(uuid_from_mdev_path("/org/gpuvirt/GpuVirt1/mdevs/x"), None);
    assert_eq!(uuid_from_mdev_path(gpu_path(&a).as_str()), None);
}

const SECURITY: &str = include_str!("../../../docs/security.md");

/// The methods docs/security.md lists per polkit action: `(action, ["Gpu.ReturnToHost", ...])`,
/// from its table rows; `Manager.DefineMdev`/`UndefineMdev` names two Manager methods.
fn documented_actions() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in SECURITY.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", action, methods, default, others, ""
        let (Some(action), Some(methods)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(action) = action
            .strip_prefix('`')
            .and_then(|a| a.strip_suffix('`'))
            .filter(|a| a.starts_with("org.gpuvirt.GpuVirt1."))
        else {
            continue;
        };
        let mut interface = String::new();
        let mut keys = Vec::new();
        // The code spans are every other piece between backticks.
        for span in methods.split('`').skip(1).step_by(2) {
            match span.split_once('.') {
                Some((i, m)) => {
                    interface = i.to_owned();
                    keys.push(format!("{i}.{m}"));
                }
                None => keys.push(format!("{interface}.{span}")),
            }
        }
        out.push((action.to_owned(), keys));
    }
    out
}

#[test]
fn every_mutator_is_documented_under_its_polkit_action() {
    let documented = documented_actions();
    assert_eq!(documented.len(), 3, "the scan found {documented:?}");
    for (action, keys) in &documented {
        for key in keys {
            let m = METHODS.iter().find(|m| m.key() == *key);
            assert!(
                m.is_some_and(|m| m.mutating && m.action == Some(action.as_str())),
                "docs/security.md puts {key} under {action}, gpuvirt_api::METHODS has {m:?}"
            );
        }
    }
    for m in METHODS.iter().filter(|m| m.mutating) {
        let Some(action) = m.action else { continue };
        assert!(
            documented
                .iter()
                .any(|(a, keys)| a == action && keys.contains(&m.key())),
            "{} mutates under {action} but docs/security.md does not list it there",
            m.key()
        );
    }
}

#[test]
fn every_method_has_a_typed_proxy_call() {
    let proxies = include_str!("proxies.rs");
    for m in METHODS {
        let mut snake = String::new();
        for (i, c) in m.name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        assert!(
            proxies.contains(&format!("fn {snake}(")),
            "{} has no typed call `{snake}` in gpuvirt-api's proxies",
            m.key()
        );
    }
}

/// The property names of `interface` in the introspection XML.
fn xml_properties(interface: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in XML.lines().map(str::trim) {
        if line.starts_with("<interface ") {
            inside = attr(line, "name") == Some(interface);
        } else if inside && line.starts_with("<property ") {
            out.push(attr(line, "name").unwrap().to_owned());
        }
    }
    out.sort();
    out
}

/// The D-Bus names a property struct (de)serialises, as `GetAll` carries them.
fn struct_properties<T: serde::Serialize + zbus::zvariant::Type>(props: &T) -> Vec<String> {
    use zbus::zvariant::serialized::Context;
    let bytes = zbus::zvariant::to_bytes(Context::new_dbus(zbus::zvariant::LE, 0), props).unwrap();
    let map: std::collections::HashMap<String, zbus::zvariant::OwnedValue> =
        bytes.deserialize().unwrap().0;
    let mut names: Vec<String> = map.into_keys().collect();
    names.sort();
    names
}

#[test]
fn property_structs_carry_the_introspection_xml_properties() {
    assert_eq!(
        struct_properties(&ManagerProps::default()),
        xml_properties(MANAGER_INTERFACE)
    );
    assert_eq!(
        struct_properties(&GpuProps::default()),
        xml_properties(GPU_INTERFACE)
    );
    assert_eq!(
        struct_properties(&ShardParentProps::default()),
        xml_properties(SHARD_PARENT_INTERFACE)
    );
    assert_eq!(
        struct_properties(&IommuGroupProps::default()),
        xml_properties(IOMMU_GROUP_INTERFACE)
    );
    assert_eq!(
        struct_properties(&MdevProps::default()),
        xml_properties(MDEV_INTERFACE)
    );
    // The contract test puts a finished job's interface into the XML.
    assert_eq!(
        struct_properties(&JobProps::default()),
        xml_properties(JOB_INTERFACE)
    );
}
