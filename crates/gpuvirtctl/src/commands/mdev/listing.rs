//! `gpuvirtctl mdev list` and `mdev types`: gpuvirtctl's tables, and mdevctl 1.2's own
//! output byte for byte (`list` lines, `list -d`, `-v` attributes, `--dumpjson`, the `types`
//! layout), which mdevctl ends with one extra newline (`println!` of text that already ends
//! in one). May import: crate::client, crate::errors, crate::table, crate::view,
//! mdev/shared.rs.

use gpuvirt_api as api;
use gpuvirt_api::mdevctl::{self, MdevctlConfig};
use gpuvirt_api::{MdevStart, Uuid};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::shared::{configs_of, definitions};
use crate::client::{print_json, Ctx};
use crate::errors::CliError;
use crate::table::print_table;
use crate::view::{MdevView, ShardView};

/// gpuvirtctl's table of active (and known inactive) mdevs, or `--json`.
pub async fn table(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    // Only the mdevs, as typed rows (see view::fetch_mdevs), sorted.
    let mdevs = ctx.mdevs().await?;
    if json {
        return print_json(&mdevs);
    }
    let mut rows = vec![header(&["UUID", "PARENT", "TYPE", "STATE"])];
    for m in mdevs {
        rows.push(vec![
            m.uuid.clone(),
            m.parent.clone(),
            m.type_id.clone(),
            state(m.active).to_owned(),
        ]);
    }
    print_table(&rows)?;
    Ok(())
}

/// gpuvirtctl's table of definitions (`list --defined`), or `--json`.
pub async fn defined_table(ctx: &Ctx<'_>, json: bool) -> Result<(), CliError> {
    let defs = definitions(ctx).await?;
    if json {
        return print_json(&defs);
    }
    let mut rows = vec![header(&[
        "UUID", "PARENT", "TYPE", "START", "OWNER", "STATE",
    ])];
    for d in defs {
        rows.push(vec![
            d.uuid,
            d.parent,
            d.type_id,
            d.start,
            d.owner,
            state(d.active).to_owned(),
        ]);
    }
    print_table(&rows)?;
    Ok(())
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn state(active: bool) -> &'static str {
    if active {
        "active"
    } else {
        "inactive"
    }
}

/// `mdevctl list` (`defined` false) or `mdevctl list -d`, with its filters and forms.
#[derive(Debug, Clone, Default)]
pub struct MdevctlList {
    pub defined: bool,
    pub dumpjson: bool,
    pub verbose: bool,
    pub uuid: Option<Uuid>,
    pub parent: Option<String>,
}

/// One device of mdevctl's listing: its definition's (or, for an undefined active device,
/// a transient's) config, and the marker mdevctl appends.
struct Listed {
    config: MdevctlConfig,
    /// ` (active)` for a definition whose device runs, ` (defined)` for a device with a
    /// definition under its parent.
    marker: bool,
}

/// What mdevctl 1.2 prints for `list [-d] [-v] [--dumpjson] [-u U] [-p P]`.
pub async fn mdevctl_list(ctx: &Ctx<'_>, opts: &MdevctlList) -> Result<(), CliError> {
    let configs = configs_of(&definitions(ctx).await?)?;
    let mdevs = ctx.mdevs().await?;
    out!("{}", render_list(opts, &configs, &mdevs))?;
    Ok(())
}

fn render_list(opts: &MdevctlList, configs: &[MdevctlConfig], mdevs: &[MdevView]) -> String {
    let live = |c: &MdevctlConfig| {
        mdevs.iter().any(|m| {
            m.active
                && m.uuid.parse::<Uuid>().ok() == Some(c.uuid)
                && m.parent == c.parent
                && m.type_id == c.mdev_type
        })
    };
    let mut listed: Vec<Listed> = if opts.defined {
        configs
            .iter()
            .map(|c| Listed {
                config: c.clone(),
                marker: live(c),
            })
            .collect()
    } else {
        mdevs
            .iter()
            .filter(|m| m.active)
            .filter_map(|m| {
                let uuid = m.uuid.parse::<Uuid>().ok()?;
                // mdevctl reads the definition under the device's parent, if any: its start
                // mode, attrs and type are shown.
                let defined = configs
                    .iter()
                    .find(|c| c.uuid == uuid && c.parent == m.parent);
                Some(match defined {
                    Some(c) => Listed {
                        config: c.clone(),
                        marker: true,
                    },
                    None => Listed {
                        config: MdevctlConfig {
                            uuid,
                            parent: m.parent.clone(),
                            mdev_type: m.type_id.clone(),
                            start: MdevStart::Manual,
                            attrs: Vec::new(),
                        },
                        marker: false,
                    },
                })
            })
            .collect()
    };
    listed.retain(|l| {
        opts.uuid.is_none_or(|u| l.config.uuid == u)
            && opts.parent.as_deref().is_none_or(|p| l.config.parent == p)
    });
    listed
        .sort_by(|a, b| (&a.config.parent, a.config.uuid).cmp(&(&b.config.parent, b.config.uuid)));
    let mut out = String::new();
    if opts.dumpjson {
        if opts.uuid.is_some() && listed.len() <= 1 {
            // A single device prints as its config file would hold it; none as `[]`.
            out.push_str(&match listed.first() {
                Some(l) => l.config.to_json(),
                None => "[]".to_owned(),
            });
        } else {
            let all: Vec<MdevctlConfig> = listed.into_iter().map(|l| l.config).collect();
            out.push_str(&mdevctl::dump_json(&all));
        }
    } else {
        for l in &listed {
            let c = &l.config;
            let start = match c.start {
                MdevStart::Auto => "auto",
                MdevStart::Manual => "manual",
            };
            let marker = match (l.marker, opts.defined) {
                (false, _) => "",
                (true, true) => " (active)",
                (true, false) => " (defined)",
            };
            out.push_str(&format!(
                "{} {} {} {start}{marker}\n",
                c.uuid.hyphenated(),
                c.parent,
                c.mdev_type
            ));
            if opts.verbose && !c.attrs.is_empty() {
                out.push_str("  Attrs:\n");
                for (i, (k, v)) in c.attrs.iter().enumerate() {
                    out.push_str(&format!("    @{{{i}}}: {{\"{k}\":\"{v}\"}}\n"));
                }
            }
        }
    }
    out.push('\n');
    out
}

/// What mdevctl 1.2 prints for `types [-p P] [--dumpjson]`: the parents of
/// `/sys/class/mdev_bus` (gpuvirt's mdev-backed parents) in name order, their types in id
/// order.
pub async fn mdevctl_types(
    ctx: &Ctx<'_>,
    parent: Option<&str>,
    dumpjson: bool,
) -> Result<(), CliError> {
    let host = ctx
        .objects(&[api::GPU_INTERFACE, api::SHARD_PARENT_INTERFACE])
        .await?;
    let mut parents: Vec<&ShardView> = host
        .gpus
        .iter()
        .filter_map(|g| g.shard.as_ref())
        .chain(host.other_parents.iter())
        .filter(|p| p.backend == "mdev" && parent.is_none_or(|want| p.name == want))
        .collect();
    parents.sort_by(|a, b| a.name.cmp(&b.name));
    out!("{}", render_types(&parents, dumpjson))?;
    Ok(())
}

/// One type as `mdevctl types --dumpjson` writes it: keys in this order, `name` and
/// `description` only when not empty.
#[derive(Serialize)]
struct TypeJson<'a> {
    available_instances: u32,
    device_api: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: String,
}

/// mdevctl joins a multi-line description's lines with ", ".
fn description(text: &str) -> String {
    text.trim().replace('\n', ", ")
}

fn render_types(parents: &[&ShardView], dumpjson: bool) -> String {
    let mut out = String::new();
    if dumpjson {
        struct ByType<'a>(&'a str, TypeJson<'a>);
        impl Serialize for ByType<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(self.0, &self.1)?;
                map.end()
            }
        }
        struct ByParent<'a>(Vec<(&'a str, Vec<ByType<'a>>)>);
        impl Serialize for ByParent<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(p, list)| (p, list)))
            }
        }
        let doc: Vec<ByParent<'_>> = if parents.is_empty() {
            Vec::new()
        } else {
            vec![ByParent(
                parents
                    .iter()
                    .map(|p| {
                        let types = p
                            .types
                            .iter()
                            .map(|t| {
                                ByType(
                                    &t.id,
                                    TypeJson {
                                        available_instances: t.available_instances,
                                        device_api: &t.device_api,
                                        name: &t.name,
                                        description: description(&t.description),
                                    },
                                )
                            })
                            .collect();
                        (p.name.as_str(), types)
                    })
                    .collect(),
            )]
        };
        // Serialising strings, numbers and lists cannot fail.
        out.push_str(&serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        for p in parents {
            out.push_str(&format!("{}\n", p.name));
            for t in &p.types {
                out.push_str(&format!("  {}\n", t.id));
                out.push_str(&format!(
                    "    Available instances: {}\n",
                    t.available_instances
                ));
                out.push_str(&format!("    Device API: {}\n", t.device_api));
                if !t.name.is_empty() {
                    out.push_str(&format!("    Name: {}\n", t.name));
                }
                let d = description(&t.description);
                if !d.is_empty() {
                    out.push_str(&format!("    Description: {d}\n"));
                }
            }
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const U1: &str = "bc127e23-aaaa-4d06-a7aa-88db2dd538e0";
    const U2: &str = "1360ce4b-2ed2-4f63-abb6-8cdb92100085";

    fn config(uuid: &str, start: MdevStart, attrs: &[(&str, &str)]) -> MdevctlConfig {
        MdevctlConfig {
            uuid: uuid.parse().unwrap(),
            parent: "0000:41:00.0".into(),
            mdev_type: "nvidia-300".into(),
            start,
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn active(uuid: &str) -> MdevView {
        MdevView {
            path: String::new(),
            uuid: uuid.into(),
            parent: "0000:41:00.0".into(),
            type_id: "nvidia-300".into(),
            type_name: String::new(),
            active: true,
            driver: String::new(),
            iommu_group: None,
        }
    }

    /// The runbook's `mdevctl list -d` lines (mdevctl sorts by UUID), with its trailing blank
    /// line, and the `-v` attribute lines of mdevctl's `to_text`.
    #[test]
    fn list_lines_are_mdevctls() {
        let configs = [
            config(U1, MdevStart::Manual, &[("a", "1")]),
            config(U2, MdevStart::Auto, &[]),
        ];
        let mdevs = [active(U1), active(U2)];
        let defined = MdevctlList {
            defined: true,
            ..MdevctlList::default()
        };
        assert_eq!(
            render_list(&defined, &configs, &mdevs),
            format!(
                "{U2} 0000:41:00.0 nvidia-300 auto (active)\n{U1} 0000:41:00.0 nvidia-300 manual (active)\n\n"
            )
        );
        let verbose = MdevctlList {
            verbose: true,
            ..MdevctlList::default()
        };
        assert_eq!(
            render_list(&verbose, &configs[..1], &mdevs),
            format!(
                "{U2} 0000:41:00.0 nvidia-300 manual\n{U1} 0000:41:00.0 nvidia-300 manual (defined)\n  Attrs:\n    @{{0}}: {{\"a\":\"1\"}}\n\n"
            )
        );
        assert_eq!(render_list(&verbose, &[], &[]), "\n");
        let one = MdevctlList {
            dumpjson: true,
            uuid: Some(U2.parse().unwrap()),
            ..MdevctlList::default()
        };
        assert_eq!(
            render_list(&one, &[], &mdevs),
            "{\n  \"mdev_type\": \"nvidia-300\",\n  \"start\": \"manual\",\n  \"attrs\": []\n}\n"
        );
    }
}
