//! `modules.alias` lookup: which kernel modules claim a PCI modalias (lspci's "Kernel modules").
//!
//! Patterns are fnmatch globs (`*`, `?`, `[...]`), compiled once. A distribution kernel has
//! thousands of `pci:` aliases, and a large host has thousands of functions, so aliases are
//! indexed by their literal vendor and device ids: a lookup only tries the aliases of the
//! function's vendor (and device) plus the few whose vendor is itself a wildcard.
//!
//! May import: crate::error, crate::host::sysfs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::host::sysfs::{ReadError, Reader};

/// modules.alias of a distribution kernel is a few MB; cap to stay safe against junk.
const MODULES_ALIAS_CAP: u64 = 64 * 1024 * 1024;

/// One element of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(u8),
    AnyOne,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

/// A compiled fnmatch pattern (no flags: `*` matches `/` too, matching is case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'*' => {
                    if tokens.last() != Some(&Token::AnyRun) {
                        tokens.push(Token::AnyRun);
                    }
                }
                b'?' => tokens.push(Token::AnyOne),
                b'[' => {
                    if let Some((token, next)) = parse_class(bytes, i) {
                        tokens.push(token);
                        i = next;
                        continue;
                    }
                    // An unterminated `[` is a literal, as fnmatch treats it.
                    tokens.push(Token::Literal(b'['));
                }
                b'\\' if i + 1 < bytes.len() => {
                    i += 1;
                    tokens.push(Token::Literal(bytes[i]));
                }
                b => tokens.push(Token::Literal(b)),
            }
            i += 1;
        }
        Self { tokens }
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text = text.as_bytes();
        let (mut t, mut p) = (0usize, 0usize);
        // Where to resume after the most recent `*`: (pattern index after it, text index).
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                Some(tok) if single_matches(tok, text[t]) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, st)) => {
                    p = sp;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|tok| *tok == Token::AnyRun)
    }
}

fn single_matches(tok: &Token, c: u8) -> bool {
    match tok {
        Token::Literal(l) => *l == c,
        Token::AnyOne => true,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
        Token::AnyRun => false,
    }
}

/// Parses `[...]` starting at `bytes[start] == b'['`; returns the token and the index after `]`.
fn parse_class(bytes: &[u8], start: usize) -> Option<(Token, usize)> {
    let mut i = start + 1;
    let negated = matches!(bytes.get(i), Some(b'!') | Some(b'^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *bytes.get(i)?;
        if c == b']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if bytes.get(i + 1) == Some(&b'-') && bytes.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = bytes[i + 2];
            ranges.push((c.min(hi), c.max(hi)));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

/// The `pci:` aliases of one kernel, indexed by literal vendor/device id.
#[derive(Debug, Default)]
pub struct ModuleAliases {
    aliases: Vec<(Glob, u32)>,
    modules: Vec<String>,
    by_vendor: HashMap<u32, VendorAliases>,
    /// Aliases whose vendor field is not a literal id (class-based drivers: nvme, xhci, …).
    any_vendor: Vec<u32>,
}

#[derive(Debug, Default)]
struct VendorAliases {
    by_device: HashMap<u32, Vec<u32>>,
    any_device: Vec<u32>,
}

impl ModuleAliases {
    /// Loads `lib/modules/<release>/modules.alias`; an absent file gives an empty table.
    pub fn load(reader: &mut Reader<'_>, release: &str) -> Self {
        let rel: PathBuf = Path::new("lib/modules").join(release).join("modules.alias");
        match reader.read_capped(&rel, MODULES_ALIAS_CAP) {
            Ok(text) => Self::parse(&text),
            Err(ReadError::Missing) => Self::default(),
            Err(e) => {
                reader.warn(
                    &rel,
                    format!("kernel module aliases not used: {}", crate::error_chain(&e)),
                );
                Self::default()
            }
        }
    }

    /// Parses modules.alias text, keeping only `pci:` aliases.
    pub fn parse(text: &str) -> Self {
        let mut table = Self::default();
        let mut module_ids: HashMap<&str, u32> = HashMap::new();
        for line in text.lines() {
            let mut words = line.split_ascii_whitespace();
            let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Some(ids) = pattern.strip_prefix("pci:") else {
                continue;
            };
            let module_id = *module_ids.entry(module).or_insert_with(|| {
                table.modules.push(module.to_string());
                (table.modules.len() - 1) as u32
            });
            let index = table.aliases.len() as u32;
            table.aliases.push((Glob::new(pattern), module_id));
            let (vendor, device) = literal_ids(ids);
            match vendor {
                None => table.any_vendor.push(index),
                Some(v) => {
                    let entry = table.by_vendor.entry(v).or_default();
                    match device {
                        Some(d) => entry.by_device.entry(d).or_default().push(index),
                        None => entry.any_device.push(index),
                    }
                }
            }
        }
        table
    }

    pub fn len(&self) -> usize {
        self.aliases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
    }

    /// The modules whose aliases match `modalias`, deduplicated, in modules.alias order.
    pub fn modules_for(&self, modalias: &str) -> Vec<String> {
        let Some(ids) = modalias.strip_prefix("pci:") else {
            return Vec::new();
        };
        let (vendor, device) = literal_ids(ids);
        let mut candidates: Vec<u32> = self.any_vendor.clone();
        if let Some(v) = vendor.and_then(|v| self.by_vendor.get(&v)) {
            candidates.extend_from_slice(&v.any_device);
            if let Some(list) = device.and_then(|d| v.by_device.get(&d)) {
                candidates.extend_from_slice(list);
            }
        }
        // File order decides the module order, as kmod reports it.
        candidates.sort_unstable();
        let mut out: Vec<String> = Vec::new();
        let mut seen: Vec<u32> = Vec::new();
        for index in candidates {
            let Some((glob, module)) = self.aliases.get(index as usize) else {
                continue;
            };
            if !seen.contains(module) && glob.matches(modalias) {
                seen.push(*module);
                if let Some(name) = self.modules.get(*module as usize) {
                    out.push(name.clone());
                }
            }
        }
        out
    }
}

/// The literal vendor and device ids of `v0000XXXXd0000YYYY…` (the part after `pci:`), when
/// they contain no glob characters.
fn literal_ids(ids: &str) -> (Option<u32>, Option<u32>) {
    let hex8 = |s: Option<&str>| -> Option<u32> {
        let s = s?;
        if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Kernel modaliases and alias files both use upper case; normalising keeps a
            // lower-case alias in the right bucket.
            u32::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    let vendor = ids.strip_prefix('v').and_then(|r| hex8(r.get(..8)));
    let device = vendor.and_then(|_| {
        let rest = ids.get(9..)?;
        hex8(rest.strip_prefix('d').and_then(|r| r.get(..8)))
    });
    (vendor, device)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_question_and_classes() {
        assert!(Glob::new("pci:v000010DEd*sv*sd*bc03sc*i*")
            .matches("pci:v000010DEd00001DB4sv000010DEsd00001214bc03sc02i00"));
        assert!(!Glob::new("pci:v000010DEd*sv*sd*bc04sc*i*")
            .matches("pci:v000010DEd00001DB4sv000010DEsd00001214bc03sc02i00"));
        assert!(Glob::new("a?c").matches("abc"));
        assert!(!Glob::new("a?c").matches("ac"));
        assert!(Glob::new("x[0-9A-F]y").matches("xBy"));
        assert!(!Glob::new("x[!0-9]y").matches("x5y"));
        assert!(Glob::new("x[!0-9]y").matches("xay"));
        assert!(Glob::new("x[]]y").matches("x]y"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a*b*c").matches("aXXbYYbc"));
        assert!(!Glob::new("a*b*c").matches("aXXbYYb"));
        assert!(Glob::new("[ab").matches("[ab"));
    }

    const ALIASES: &str = "\
# Aliases extracted from modules themselves.
alias usb:v1D6Bp0002d*dc*dsc*dp*ic*isc*ip*in* usbcore
alias pci:v000010DEd*sv*sd*bc03sc02i00* nvidiafb
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v000010DEd00001DB4sv*sd*bc*sc*i* nvidia
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v000015B3d0000101Dsv*sd*bc*sc*i* mlx5_core
alias pci:v0000100[0-9]d*sv*sd*bc*sc*i* weird_range
";

    #[test]
    fn resolves_modules_in_file_order_without_duplicates() {
        let t = ModuleAliases::parse(ALIASES);
        assert_eq!(t.len(), 7);
        assert_eq!(
            t.modules_for("pci:v000010DEd00001DB4sv000010DEsd00001214bc03sc02i00"),
            ["nvidiafb", "nouveau", "nvidia"]
        );
        assert_eq!(
            t.modules_for("pci:v0000144Dd0000A824sv0000144Dsd0000A801bc01sc08i02"),
            ["nvme"]
        );
        assert_eq!(
            t.modules_for("pci:v00001005d00000001sv00000000sd00000000bc02sc00i00"),
            ["weird_range"]
        );
        assert!(t.modules_for("usb:v1D6Bp0002").is_empty());
        assert!(t
            .modules_for("pci:v00008086d00001234sv00000000sd00000000bc02sc00i00")
            .is_empty());
    }
}
