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

use systrace_common::{access, name_hash, FileRule, NameNode, RuleSet, MAX_RULE_DEPTH};

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
    } else {
        (path, Scope::Exact)
    };
    if let Some(i) = anchor.find(['*', '?', '[', ']', '{', '}']) {
        return Err((
            i,
            format!("bad glob {path:?}: wildcards are allowed only as a final /* (direct children) or /** (whole subtree)"),
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

fn scope_set(rule: &mut FileRule, scope: Scope) -> &mut RuleSet {
    match scope {
        Scope::Exact => &mut rule.exact,
        Scope::Children => &mut rule.children,
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
            let (parent, hash) = tree.node(&mut ids, &mut names, &parts, key)?;
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
            self.entries.entry((parent, hash)).or_insert(NameNode { node: id, _pad: 0, rule: FileRule::default() });
            if depth < parts.len() {
                parent = id;
            }
        }
        Ok((parent, hash))
    }
}

/// The deny rules that also follow inodes: canonical path -> a rule with only
/// deny bits, per scope.
pub fn inode_anchors(rules: &[(PathBuf, Scope, u32, RuleVerdict)]) -> BTreeMap<PathBuf, FileRule> {
    let mut out: BTreeMap<PathBuf, FileRule> = BTreeMap::new();
    for (path, scope, access, verdict) in rules {
        if *verdict == RuleVerdict::Deny {
            scope_set(out.entry(path.clone()).or_default(), *scope).deny |= access;
        }
    }
    out
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
        assert_eq!(parse_pattern("/a/*.log").unwrap_err().0, 3);
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
        let anchors = inode_anchors(&rules);
        assert_eq!(anchors.len(), 2);
        assert_eq!(anchors[Path::new("/etc/shadow")].exact.deny, access::READ);
        assert_eq!(anchors[Path::new("/var/www/private")].subtree.deny, access::READ);
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
