//! File rules: path patterns, includes, and the compiled rule tree.
//!
//! Rules match names, not inodes: the kernel climbs from a file to the root of
//! the caller's mount namespace and descends a tree of path components
//! (`NAME_RULES`), so a rule keeps deciding for whatever file bears its name now.
//! Deny rules also follow the file they name when the policy loads (its inode,
//! `INODE_RULES`), so a hard link or a bind mount made elsewhere cannot expose it.

use std::{
    collections::BTreeMap,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use systrace_common::{
    access, extension, extension_hash, name_hash, node_flags, FileId, FileRule, InodeKey, NameNode, RuleSet,
    MAX_EXTENSION, MAX_RULE_DEPTH,
};

use super::{FileRuleSpec, RuleVerdict};

/// Which names a rule's path matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The file or directory itself.
    Exact,
    /// `/dir/*`: the names directly in the directory.
    Children,
    /// `/dir/**`: everything below the directory.
    Subtree,
    /// `/dir/*.log`: the names directly in the directory with this extension
    /// (what follows their last dot). More specific than `/dir/*`, less than
    /// an exact rule.
    Extension(Extension),
}

/// The extension an extension rule names: 1 to [`MAX_EXTENSION`] bytes, no dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Extension {
    len: u8,
    bytes: [u8; MAX_EXTENSION],
}

impl Extension {
    /// `ext` if a rule can name it.
    pub fn new(ext: &[u8]) -> Option<Extension> {
        if ext.is_empty() || ext.len() > MAX_EXTENSION || ext.contains(&b'.') || ext.contains(&b'/') || ext.contains(&0)
        {
            return None;
        }
        let mut bytes = [0; MAX_EXTENSION];
        bytes[..ext.len()].copy_from_slice(ext);
        Some(Extension { len: ext.len() as u8, bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Whether the file name `name` has this extension.
    pub fn matches(&self, name: &[u8]) -> bool {
        extension(name) == Some(self.as_bytes())
    }
}

impl std::fmt::Display for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// How a rule's anchor and scope are written (`/dir/**`, `/dir/*.log`).
pub fn pattern_text(anchor: &Path, scope: Scope) -> String {
    let dir = anchor.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    match scope {
        Scope::Exact => anchor.to_string_lossy().into_owned(),
        Scope::Children => format!("{dir}/*"),
        Scope::Subtree => format!("{dir}/**"),
        Scope::Extension(ext) => format!("{dir}/*.{ext}"),
    }
}

/// Splits a rule path into its anchor and scope, or says what is wrong and where
/// (a byte offset into the path).
pub fn parse_pattern(path: &str) -> Result<(PathBuf, Scope), (usize, String)> {
    if !path.starts_with('/') {
        return Err((0, "a path must be absolute".into()));
    }
    let (anchor, scope) = if let Some(dir) = path.strip_suffix("/**") {
        (dir, Scope::Subtree)
    } else if let Some(dir) = path.strip_suffix("/*") {
        (dir, Scope::Children)
    } else if let Some((dir, ext)) = path.rsplit_once("/*.") {
        let at = dir.len() + 3;
        if let Some(i) = ext.find(['*', '?', '[', ']', '{', '}', '.']) {
            return Err((
                at + i,
                format!("bad extension in {path:?}: one extension after the last dot, like /dir/*.log"),
            ));
        }
        let Some(ext) = Extension::new(ext.as_bytes()) else {
            return Err((at, format!("bad extension in {path:?}: 1 to {MAX_EXTENSION} bytes after /*.")));
        };
        (dir, Scope::Extension(ext))
    } else {
        (path, Scope::Exact)
    };
    if let Some(i) = anchor.find(['*', '?', '[', ']', '{', '}']) {
        return Err((
            i,
            format!(
                "bad glob {path:?}: wildcards are allowed only as a final /* (direct children), /*.EXT (direct children \
                 with that extension) or /** (whole subtree)"
            ),
        ));
    }
    if anchor.split('/').any(|c| c == ".." || c == ".") {
        return Err((0, format!("path {path:?} has a . or .. component; write it in canonical form")));
    }
    let anchor = if anchor.is_empty() { "/" } else { anchor };
    let depth = anchor.split('/').filter(|c| !c.is_empty()).count();
    if depth > MAX_RULE_DEPTH {
        return Err((0, format!("path {path:?} has {depth} components; a rule may have at most {MAX_RULE_DEPTH}")));
    }
    Ok((PathBuf::from(anchor), scope))
}

/// A set of rules shipped with the agent, pulled in with `include = ["NAME"]`.
pub struct Include {
    pub name: &'static str,
    pub what: &'static str,
    pub rules: &'static [(&'static str, u32)],
}

/// What the system's shared libraries need: ld.so maps them as code after
/// reading them, and reads its cache. `map` is not `exec`: nothing under
/// these directories may be run as a program because of this include.
pub const INCLUDES: &[Include] = &[Include {
    name: "libraries",
    what: "read and map as code the system's shared libraries and ld.so's cache",
    rules: &[
        ("/lib/**", access::READ | access::MAP),
        ("/lib64/**", access::READ | access::MAP),
        ("/lib32/**", access::READ | access::MAP),
        ("/usr/lib/**", access::READ | access::MAP),
        ("/usr/lib64/**", access::READ | access::MAP),
        ("/usr/lib32/**", access::READ | access::MAP),
        ("/usr/local/lib/**", access::READ | access::MAP),
        ("/etc/ld.so.cache", access::READ),
        ("/etc/ld.so.preload", access::READ),
    ],
}];

pub fn include(name: &str) -> Option<&'static Include> {
    INCLUDES.iter().find(|i| i.name == name)
}

/// Adds a rule to a rule set. Within one set deny wins over allow at run time, and
/// audit is an allow that reports.
pub fn merge(set: &mut RuleSet, access: u32, verdict: RuleVerdict) {
    match verdict {
        RuleVerdict::Allow => set.allow |= access,
        RuleVerdict::Deny => set.deny |= access,
        RuleVerdict::Audit => {
            set.allow |= access;
            set.audit |= access;
        }
    }
}

/// The set a scope's rules go to: an extension rule's node keeps them in
/// `children`, and an inode rule for each file it names in `exact`.
fn scope_set(rule: &mut FileRule, scope: Scope) -> &mut RuleSet {
    match scope {
        Scope::Exact => &mut rule.exact,
        Scope::Children | Scope::Extension(_) => &mut rule.children,
        Scope::Subtree => &mut rule.subtree,
    }
}

/// The components of an absolute, canonical path.
pub fn components(path: &Path) -> Vec<Vec<u8>> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// The rule tree of one policy, ready for `NAME_RULES`: (parent node, name
/// hash) -> the node and its rules. The root is (0, 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTree {
    pub entries: BTreeMap<(u32, u64), NameNode>,
    /// Node id -> its path, for messages.
    pub paths: BTreeMap<u32, PathBuf>,
}

impl NameTree {
    /// Builds the tree from (canonical anchor, scope, access, verdict) rules,
    /// hashing names with `key`. Two names whose hashes collide under one
    /// parent are an error (with a random 128-bit key, never in practice).
    pub fn build(rules: &[(PathBuf, Scope, u32, RuleVerdict)], key: [u64; 2]) -> Result<NameTree, String> {
        let mut tree = NameTree::default();
        let mut ids: BTreeMap<Vec<Vec<u8>>, u32> = BTreeMap::new();
        let mut names: BTreeMap<(u32, u64), Vec<u8>> = BTreeMap::new();
        tree.node(&mut ids, &mut names, &[], key)?;
        for (path, scope, access, verdict) in rules {
            let parts = components(path);
            let (mut parent, mut hash) = tree.node(&mut ids, &mut names, &parts, key)?;
            if let Scope::Extension(ext) = scope {
                let dir = tree.entries.get_mut(&(parent, hash)).expect("node just made");
                dir.flags |= node_flags::EXTENSIONS;
                parent = dir.node;
                hash = extension_hash(key, ext.as_bytes());
                // A name cannot hold a '/': the marker is no file's name.
                let marker = format!("/*.{ext}").into_bytes();
                match names.insert((parent, hash), marker.clone()) {
                    Some(other) if other != marker => {
                        return Err(format!(
                            "the name {:?} and the extension {ext} hash alike; restart the agent to draw another key",
                            String::from_utf8_lossy(&other)
                        ))
                    }
                    _ => {}
                }
                // Extension entries are leaves: the kernel never descends into one.
                tree.entries.entry((parent, hash)).or_insert(NameNode { node: 0, flags: 0, rule: FileRule::default() });
            }
            let node = tree.entries.get_mut(&(parent, hash)).expect("node just made");
            merge(scope_set(&mut node.rule, *scope), *access, *verdict);
        }
        for (path, id) in ids {
            let mut p = PathBuf::from("/");
            for c in path {
                p.push(std::ffi::OsStr::from_bytes(&c));
            }
            tree.paths.insert(id, p);
        }
        Ok(tree)
    }

    /// The key of the node for `parts`, made (with its ancestors) if new.
    fn node(
        &mut self,
        ids: &mut BTreeMap<Vec<Vec<u8>>, u32>,
        names: &mut BTreeMap<(u32, u64), Vec<u8>>,
        parts: &[Vec<u8>],
        key: [u64; 2],
    ) -> Result<(u32, u64), String> {
        let mut parent = 0u32;
        let mut hash = 0u64;
        for depth in 0..=parts.len() {
            let prefix = parts[..depth].to_vec();
            if depth > 0 {
                hash = name_hash(key, &parts[depth - 1]);
                match names.get(&(parent, hash)) {
                    Some(name) if *name != parts[depth - 1] => {
                        return Err(format!(
                            "the names {:?} and {:?} hash alike; restart the agent to draw another key",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(&parts[depth - 1])
                        ))
                    }
                    _ => {}
                }
                names.insert((parent, hash), parts[depth - 1].clone());
            }
            let next_id = ids.len() as u32 + 1;
            let id = *ids.entry(prefix).or_insert(next_id);
            self.entries.entry((parent, hash)).or_insert(NameNode { node: id, flags: 0, rule: FileRule::default() });
            if depth < parts.len() {
                parent = id;
            }
        }
        Ok((parent, hash))
    }
}

/// What an inode rule follows: the file at `path`; or, with `extension` (an
/// [`extension_hash`]) not 0, the deny rules by that extension of the
/// directory at `path`, which the kernel looks up when it passes the
/// directory as the root of a mount (a bind mount of it elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Anchor {
    pub path: PathBuf,
    pub extension: u64,
}

impl Anchor {
    pub fn file(path: impl Into<PathBuf>) -> Anchor {
        Anchor { path: path.into(), extension: 0 }
    }

    /// The `INODE_RULES` key for this anchor, once its path has the identity `id`.
    pub fn key(&self, policy: u32, id: FileId) -> InodeKey {
        let key = InodeKey { policy, generation: id.generation, dev: id.dev, ino: id.ino };
        if self.extension == 0 {
            key
        } else {
            key.for_extension(self.extension)
        }
    }
}

/// Files a deny rule by extension follows by identity, at most, each time the
/// agent looks: the names decide for any number of them; identities are for
/// other names (hard links) someone else makes, and a directory filled with
/// empty files must not fill the kernel's map.
pub const MAX_FOLLOWED: usize = 256;

/// A deny rule by extension, as the agent follows the files it covers: the
/// files in `dir` with extension `ext` now, for the `deny` bits that no exact
/// rule of theirs decides (`exact`: file name -> the bits its exact rules name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionDeny {
    pub dir: PathBuf,
    pub ext: Extension,
    pub deny: u32,
    pub exact: BTreeMap<std::ffi::OsString, u32>,
}

impl ExtensionDeny {
    /// The files among `names` (a listing of `dir`, symlinks left out: a
    /// link's target is not what the rule names) to follow, with their deny
    /// bits, in name order, at most [`MAX_FOLLOWED`]; and how many were left out.
    pub fn followed(&self, names: impl IntoIterator<Item = std::ffi::OsString>) -> (Vec<(PathBuf, u32)>, usize) {
        let mut names: Vec<std::ffi::OsString> = names.into_iter().filter(|n| self.ext.matches(n.as_bytes())).collect();
        names.sort();
        let mut out = Vec::new();
        let mut left_out = 0;
        for name in names {
            let bits = self.deny & !self.exact.get(&name).copied().unwrap_or(0);
            if bits == 0 {
                continue;
            }
            if out.len() == MAX_FOLLOWED {
                left_out += 1;
                continue;
            }
            out.push((self.dir.join(&name), bits));
        }
        (out, left_out)
    }
}

/// The deny rules that also follow inodes, with only deny bits, per scope; a
/// deny rule by extension follows its directory (see [`Anchor`]), and the
/// files it covers through the [`ExtensionDeny`] returned for it.
pub fn inode_anchors(
    rules: &[(PathBuf, Scope, u32, RuleVerdict)],
    key: [u64; 2],
) -> (BTreeMap<Anchor, FileRule>, Vec<ExtensionDeny>) {
    let mut out: BTreeMap<Anchor, FileRule> = BTreeMap::new();
    let mut by_extension: BTreeMap<(PathBuf, Extension), u32> = BTreeMap::new();
    for (path, scope, access, verdict) in rules {
        if *verdict != RuleVerdict::Deny {
            continue;
        }
        if let Scope::Extension(ext) = scope {
            let anchor = Anchor { path: path.clone(), extension: extension_hash(key, ext.as_bytes()) };
            out.entry(anchor).or_default().children.deny |= access;
            *by_extension.entry((path.clone(), *ext)).or_default() |= access;
            continue;
        }
        scope_set(out.entry(Anchor::file(path.clone())).or_default(), *scope).deny |= access;
    }
    let denies = by_extension
        .into_iter()
        .map(|((dir, ext), deny)| {
            let mut exact = BTreeMap::new();
            for (path, scope, access, _) in rules {
                if *scope == Scope::Exact && path.parent() == Some(dir.as_path()) {
                    if let Some(name) = path.file_name() {
                        *exact.entry(name.to_os_string()).or_default() |= access;
                    }
                }
            }
            ExtensionDeny { dir, ext, deny, exact }
        })
        .collect();
    (out, denies)
}

/// Access bits some deny rule names.
pub fn denied_somewhere(specs: &[FileRuleSpec]) -> u32 {
    specs.iter().filter(|s| s.verdict == RuleVerdict::Deny).fold(0, |bits, s| bits | s.access)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u64; 2] = [7, 9];

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("/a/b").unwrap(), (PathBuf::from("/a/b"), Scope::Exact));
        assert_eq!(parse_pattern("/a/*").unwrap(), (PathBuf::from("/a"), Scope::Children));
        assert_eq!(parse_pattern("/a/**").unwrap(), (PathBuf::from("/a"), Scope::Subtree));
        assert_eq!(parse_pattern("/**").unwrap(), (PathBuf::from("/"), Scope::Subtree));
        assert_eq!(parse_pattern("/a/**/b").unwrap_err().0, 3);
        let log = Extension::new(b"log").unwrap();
        assert_eq!(parse_pattern("/a/*.log").unwrap(), (PathBuf::from("/a"), Scope::Extension(log)));
        assert_eq!(parse_pattern("/*.log").unwrap(), (PathBuf::from("/"), Scope::Extension(log)));
        assert_eq!(parse_pattern("/a/*.tar.gz").unwrap_err().0, 8);
        assert_eq!(parse_pattern("/a/*.l*g").unwrap_err().0, 6);
        assert!(parse_pattern("/a/*.").is_err());
        assert!(parse_pattern("/a/*.0123456789abcdef").unwrap_err().1.contains("1 to 15"));
        assert_eq!(parse_pattern("/a*/*.log").unwrap_err().0, 2);
        assert_eq!(parse_pattern("/a/x*.log").unwrap_err().0, 4);
        assert_eq!(pattern_text(Path::new("/a"), Scope::Extension(log)), "/a/*.log");
        assert_eq!(pattern_text(Path::new("/"), Scope::Extension(log)), "/*.log");
        assert_eq!(pattern_text(Path::new("/"), Scope::Subtree), "/**");
        assert!(parse_pattern("/a/../b").is_err());
        assert!(parse_pattern("a/b").is_err());
        let deep = "/d".repeat(MAX_RULE_DEPTH + 1);
        assert!(parse_pattern(&deep).unwrap_err().1.contains("at most"));
        assert!(parse_pattern(&"/d".repeat(MAX_RULE_DEPTH)).is_ok());
    }

    #[test]
    fn tree_has_a_node_per_prefix_and_rules_at_anchors() {
        let rules = vec![
            (PathBuf::from("/var/www"), Scope::Subtree, access::READ, RuleVerdict::Allow),
            (PathBuf::from("/var/www/private"), Scope::Subtree, access::READ, RuleVerdict::Deny),
            (PathBuf::from("/etc/shadow"), Scope::Exact, access::READ, RuleVerdict::Deny),
            (PathBuf::from("/"), Scope::Children, access::READ, RuleVerdict::Allow),
        ];
        let tree = NameTree::build(&rules, KEY).unwrap();
        // root, var, www, private, etc, shadow
        assert_eq!(tree.entries.len(), 6);
        let root = tree.entries[&(0, 0)];
        assert_eq!(root.rule.children.allow, access::READ);
        let var = tree.entries[&(root.node, name_hash(KEY, b"var"))];
        let www = tree.entries[&(var.node, name_hash(KEY, b"www"))];
        assert_eq!(www.rule.subtree.allow, access::READ);
        assert_eq!(var.rule, FileRule::default());
        let private = tree.entries[&(www.node, name_hash(KEY, b"private"))];
        assert_eq!(private.rule.subtree.deny, access::READ);
        let etc = tree.entries[&(root.node, name_hash(KEY, b"etc"))];
        let shadow = tree.entries[&(etc.node, name_hash(KEY, b"shadow"))];
        assert_eq!(shadow.rule.exact.deny, access::READ);
        assert_eq!(tree.paths[&shadow.node], PathBuf::from("/etc/shadow"));
        // Every id is distinct.
        let mut ids: Vec<u32> = tree.entries.values().map(|n| n.node).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6);
        let (anchors, _) = inode_anchors(&rules, KEY);
        assert_eq!(anchors.len(), 2);
        assert_eq!(anchors[&Anchor::file("/etc/shadow")].exact.deny, access::READ);
        assert_eq!(anchors[&Anchor::file("/var/www/private")].subtree.deny, access::READ);
    }

    #[test]
    fn extension_rules_hang_under_their_directory() {
        let log = Extension::new(b"log").unwrap();
        let rules = vec![
            (PathBuf::from("/var/log"), Scope::Extension(log), access::READ, RuleVerdict::Deny),
            (PathBuf::from("/var/log"), Scope::Children, access::READ, RuleVerdict::Allow),
            (PathBuf::from("/var/log/d.log"), Scope::Exact, access::READ, RuleVerdict::Allow),
            (PathBuf::from("/var/log/e.log"), Scope::Exact, access::WRITE, RuleVerdict::Allow),
        ];
        let tree = NameTree::build(&rules, KEY).unwrap();
        let root = tree.entries[&(0, 0)];
        let var = tree.entries[&(root.node, name_hash(KEY, b"var"))];
        let dir = tree.entries[&(var.node, name_hash(KEY, b"log"))];
        assert_eq!((dir.flags, dir.rule.children.allow), (node_flags::EXTENSIONS, access::READ));
        let ext = tree.entries[&(dir.node, extension_hash(KEY, b"log"))];
        assert_eq!(ext.rule.children.deny, access::READ);
        assert_eq!(var.flags, 0);
        let (anchors, denies) = inode_anchors(&rules, KEY);
        // The directory, for bind mounts of it.
        let dir = Anchor { path: "/var/log".into(), extension: extension_hash(KEY, b"log") };
        assert_eq!(anchors.keys().collect::<Vec<_>>(), [&dir]);
        assert_eq!(anchors[&dir].children.deny, access::READ);
        // The files there now, but d.log, whose exact rule decides read.
        let listing = ["e.log", "a.log", "b.log.1", "c.txt", "d.log"].map(std::ffi::OsString::from);
        let (files, left_out) = denies[0].followed(listing);
        assert_eq!(
            files,
            [(PathBuf::from("/var/log/a.log"), access::READ), (PathBuf::from("/var/log/e.log"), access::READ)]
        );
        assert_eq!(left_out, 0);
        let many = (0..MAX_FOLLOWED + 5).map(|i| std::ffi::OsString::from(format!("{i:04}.log")));
        let (files, left_out) = denies[0].followed(many);
        assert_eq!((files.len(), left_out), (MAX_FOLLOWED, 5));
        let id = FileId { dev: 1, ino: 2, generation: 3, _pad: 0 };
        assert_eq!(dir.key(9, id).ino, 2 ^ extension_hash(KEY, b"log"));
        assert_eq!(Anchor::file("/x").key(9, id), InodeKey { policy: 9, generation: 3, dev: 1, ino: 2 });
    }

    #[test]
    fn same_tree_from_same_rules() {
        let rules = vec![
            (PathBuf::from("/a/b"), Scope::Exact, access::READ, RuleVerdict::Allow),
            (PathBuf::from("/a/c"), Scope::Exact, access::WRITE, RuleVerdict::Audit),
        ];
        assert_eq!(NameTree::build(&rules, KEY).unwrap(), NameTree::build(&rules, KEY).unwrap());
    }
}
