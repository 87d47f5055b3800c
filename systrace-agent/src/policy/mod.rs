//! The policy model: parse a policy file, validate it, compile it to map entries.
//!
//! Pure code apart from the [`Resolver`] that canonicalizes paths and the
//! [`Host`] facts parsing needs, so the whole pipeline is tested on the host
//! with fakes. Every error carries file, line and column ([`Diagnostic`]). The
//! language is described in the README.

mod compile;
mod diagnostic;
mod files;
mod model;
mod network;
mod syntax;

pub use compile::*;
pub use diagnostic::*;
pub use files::{
    components, include, parse_pattern, pattern_text, Anchor, Extension, ExtensionDeny, NameTree, Scope, INCLUDES,
    MAX_FOLLOWED,
};
pub use model::*;
pub use network::{
    compile_net, compile_sockets, compile_unix, parse_address, parse_cidr, NetEntryKey, NetRuleSpec, SocketRuleSpec,
    UnixRuleSpec,
};
pub use syntax::*;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use systrace_common::{access, name_hash, net, protect, rule_verdict, RuleSet, SocketKey};

    use super::*;

    const ROOT: &str = "/sys/fs/cgroup";

    fn host() -> Host {
        Host {
            cgroup_root: PathBuf::from(ROOT),
            local_addresses: vec!["10.0.2.15".parse().unwrap()],
            homes: vec![PathBuf::from("/home/alice"), PathBuf::from("/root")],
            default_target: None,
        }
    }

    fn parse_str(text: &str) -> Result<Policy, Diagnostic> {
        parse(Path::new("p.toml"), text, &host())
    }

    fn error_at(text: &str) -> (usize, usize, String) {
        let d = parse_str(text).unwrap_err();
        assert_eq!(d.severity, Severity::Error);
        (d.location.line, d.location.column, d.message)
    }

    const GOOD: &str = r#"
name = "web"
cgroup = "system.slice/nginx.service"
mode = "enforce"
default = "deny"

[[file]]
path = "/etc/nginx/nginx.conf"
access = ["read"]

[[file]]
path = "/var/log/nginx/*"
access = ["append", "create"]
verdict = "audit"

[[file]]
path = "/var/www/**"
access = ["read"]

[[file]]
path = "/var/www/private/**"
access = ["read"]
verdict = "deny"

[[exec]]
path = "/usr/sbin/nginx"
"#;

    #[test]
    fn parses_a_valid_policy() {
        let p = parse_str(GOOD).unwrap();
        assert_eq!(p.name, "web");
        assert_eq!(p.target, Target::Cgroup("/system.slice/nginx.service".into()));
        assert_eq!((p.target_location.line, p.target_location.column), (3, 10));
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.default, DefaultVerdict::Deny);
        assert_eq!(p.files.len(), 5);
        assert_eq!((p.files[0].scope, p.files[0].access), (Scope::Exact, access::READ));
        assert_eq!(p.files[1].path, PathBuf::from("/var/log/nginx"));
        assert_eq!((p.files[1].scope, p.files[1].verdict), (Scope::Children, RuleVerdict::Audit));
        assert_eq!(p.files[1].access, access::APPEND | access::CREATE);
        assert_eq!((p.files[1].location.line, p.files[1].location.column), (12, 8));
        assert_eq!((p.files[2].scope, p.files[2].path.as_path()), (Scope::Subtree, Path::new("/var/www")));
        assert_eq!(p.files[3].verdict, RuleVerdict::Deny);
        assert_eq!((p.files[4].access, p.files[4].scope), (access::EXEC | access::MAP, Scope::Exact));
    }

    #[test]
    fn units_are_named_not_placed() {
        let p = parse_str("unit = \"nginx.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "nginx.service".into(), user: None });
        let p = parse_str("unit = \"machine.slice\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "machine.slice".into(), user: None });
        let p =
            parse_str("user_unit = \"app.service\"\nuser = 1000\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "app.service".into(), user: Some(Some(1000)) });
        assert_eq!(p.target.manager().as_deref(), Some("user@1000.service"));
        let p = parse_str("user_unit = \"app.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.target, Target::Unit { name: "app.service".into(), user: Some(None) });
        let (line, col, msg) = error_at("unit = \"a/b.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert_eq!((line, col), (1, 8));
        assert!(msg.contains("unit"), "{msg}");
        let (_, _, msg) = error_at("cgroup = \"a\"\nunit = \"x.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("not several"), "{msg}");
        let (_, _, msg) = error_at("unit = \"x.service\"\nuser = 5\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("user_unit"), "{msg}");
        let (_, _, msg) = error_at("mode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains("missing target"), "{msg}");
    }

    #[test]
    fn bad_glob_points_at_the_wildcard() {
        let (line, col, msg) = error_at(
            "cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"/var/x*.log\"\naccess = [\"read\"]\n",
        );
        assert_eq!((line, col), (5, 15));
        assert!(msg.starts_with("bad glob"), "{msg}");
    }

    #[test]
    fn duplicate_targets_point_at_the_second_file() {
        let h = host();
        let a = parse(Path::new("a.toml"), "cgroup = \"x\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        let b = parse(
            Path::new("b.toml"),
            "# again\nmode = \"audit\"\ndefault = \"deny\"\ncgroup = \"/sys/fs/cgroup/x\"\n",
            &h,
        )
        .unwrap();
        let errors = check_conflicts(&[a.clone(), b]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location, Location { file: "b.toml".into(), line: 4, column: 10 });
        assert!(errors[0].message.contains("duplicate target"), "{}", errors[0].message);
        let c = parse(Path::new("c/a.toml"), "cgroup = \"y\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        let errors = check_conflicts(&[a, c]);
        assert!(errors[0].message.contains("duplicate policy name"), "{}", errors[0].message);
        let u1 =
            parse(Path::new("u1.toml"), "unit = \"w.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        let u2 =
            parse(Path::new("u2.toml"), "unit = \"w.service\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &h).unwrap();
        assert!(check_conflicts(&[u1, u2])[0].message.contains("duplicate target"));
    }

    #[test]
    fn name_defaults_to_file_stem() {
        let p = parse(
            Path::new("/etc/systrace/sshd.toml"),
            "cgroup = \"a\"\nmode = \"audit\"\ndefault = \"allow\"\n",
            &host(),
        )
        .unwrap();
        assert_eq!(p.name, "sshd");
    }

    #[test]
    fn unknown_key_points_at_the_key() {
        let (line, col, msg) = error_at("cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\ncolour = 1\n");
        assert_eq!((line, col), (4, 1));
        assert!(msg.contains("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn bad_access_kind_points_at_the_value() {
        let (line, col, msg) = error_at(
            "cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"/x\"\naccess = [\"read\", \"chmodd\"]\n",
        );
        assert_eq!((line, col), (6, 19));
        assert!(msg.contains("chmodd"), "{msg}");
    }

    #[test]
    fn metadata_access_kinds() {
        let p =
            parse_str(&format!("{HEAD}[[file]]\npath = \"/x\"\naccess = [\"chmod\", \"chown\", \"map\"]\n")).unwrap();
        assert_eq!(p.files[0].access, access::CHMOD | access::CHOWN | access::MAP);
    }

    #[test]
    fn includes_expand_and_unknown_ones_are_located() {
        let p = parse_str(&format!("{HEAD}include = [\"libraries\"]\n")).unwrap();
        assert!(p.files.iter().any(|f| f.path == Path::new("/usr/lib")
            && f.scope == Scope::Subtree
            && f.access == access::READ | access::MAP));
        assert!(p.files.iter().all(|f| f.access & access::EXEC == 0), "libraries must not grant exec");
        let (line, col, msg) = error_at(&format!("{HEAD}include = [\"libraries\", \"kitchen-sink\"]\n"));
        assert_eq!((line, col), (4, 25));
        assert!(msg.contains("unknown include"), "{msg}");
    }

    #[test]
    fn bad_mode_and_wrong_type_are_located() {
        let (line, col, msg) = error_at("cgroup = \"a\"\nmode = \"enforcing\"\ndefault = \"deny\"\n");
        assert_eq!((line, col), (2, 8));
        assert!(msg.contains("enforcing"), "{msg}");
        let (line, col, _) = error_at("cgroup = 7\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert_eq!((line, col), (1, 10));
    }

    #[test]
    fn missing_field_is_an_error() {
        let (_, _, msg) = error_at("cgroup = \"a\"\nmode = \"enforce\"\n");
        assert!(msg.contains("default"), "{msg}");
    }

    #[test]
    fn relative_file_path_and_root_cgroup_are_refused() {
        let (line, col, msg) = error_at(
            "cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[file]]\npath = \"etc/x\"\naccess = [\"read\"]\n",
        );
        assert_eq!((line, col), (5, 9));
        assert!(msg.contains("absolute"));
        let (line, _, msg) = error_at("cgroup = \"/sys/fs/cgroup\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert_eq!(line, 1);
        assert!(msg.contains("whole system"), "{msg}");
        let (_, _, msg) = error_at("cgroup = \"a/../..\"\nmode = \"enforce\"\ndefault = \"deny\"\n");
        assert!(msg.contains(".."), "{msg}");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let (line, col, _) = error_at("# é\ncgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n é = 1\n");
        assert_eq!((line, col), (5, 2));
    }

    /// Canonicalizes by a table of symlinked prefixes.
    struct Links(Vec<(PathBuf, PathBuf)>);

    impl Resolver for Links {
        fn canonical(&self, path: &Path) -> PathBuf {
            for (from, to) in &self.0 {
                if let Ok(rest) = path.strip_prefix(from) {
                    return to.join(rest);
                }
            }
            path.to_path_buf()
        }
    }

    const KEY: [u64; 2] = [3, 4];

    #[test]
    fn compile_builds_the_name_tree_and_inode_anchors() {
        let text = r#"
cgroup = "c"
mode = "audit"
default = "allow"
[[file]]
path = "/a"
access = ["read"]
[[file]]
path = "/lib/x/**"
access = ["read"]
[[file]]
path = "/d/**"
access = ["read", "create"]
[[file]]
path = "/d/**"
access = ["create"]
verdict = "deny"
[[file]]
path = "/d/*"
access = ["delete"]
[[exec]]
path = "/a"
verdict = "deny"
"#;
        let policy = parse_str(text).unwrap();
        let links = Links(vec![(PathBuf::from("/lib"), PathBuf::from("/usr/lib"))]);
        let c = compile(&policy, &links, KEY).unwrap();
        assert_eq!(c.info.mode, systrace_common::Mode::Audit as u8);
        assert_eq!(c.info.default, systrace_common::Default::Allow as u8);
        assert_eq!(c.info.denied_somewhere, access::CREATE | access::EXEC | access::MAP);
        let root = c.tree.entries[&(0, 0)].node;
        let a = c.tree.entries[&(root, name_hash(KEY, b"a"))].rule;
        assert_eq!(a.exact, RuleSet { allow: access::READ, deny: access::EXEC | access::MAP, audit: 0 });
        let d = c.tree.entries[&(root, name_hash(KEY, b"d"))].rule;
        // Both rules on /d/** merge; the kernel lets deny win for create.
        assert_eq!(d.subtree, RuleSet { allow: access::READ | access::CREATE, deny: access::CREATE, audit: 0 });
        assert_eq!(d.children, RuleSet { allow: access::DELETE, deny: 0, audit: 0 });
        // The symlinked /lib is matched as the path the kernel sees.
        let usr = c.tree.entries[&(root, name_hash(KEY, b"usr"))].node;
        let lib = c.tree.entries[&(usr, name_hash(KEY, b"lib"))].node;
        assert!(c.tree.entries.contains_key(&(lib, name_hash(KEY, b"x"))));
        assert!(!c.tree.entries.contains_key(&(root, name_hash(KEY, b"lib"))));
        // Deny rules follow the inode too.
        assert_eq!(c.inode_anchors.len(), 2);
        assert_eq!(c.inode_anchors[&Anchor::file("/a")].exact.deny, access::EXEC | access::MAP);
        assert_eq!(c.inode_anchors[&Anchor::file("/d")].subtree.deny, access::CREATE);
    }

    #[test]
    fn net_rules_parse_expand_and_order() {
        let text = r#"
cgroup = "c"
mode = "enforce"
default = "deny"
[[net]]
operations = ["connect"]
address = "127.0.0.0/8"
ports = "8000-8099"
[[net]]
operations = ["connect"]
protocol = "tcp"
address = "127.0.0.1"
ports = 8080
verdict = "deny"
[[net]]
operations = ["bind", "connect"]
family = "inet6"
ports = 443
"#;
        let p = parse_str(text).unwrap();
        // Rule 1: any+tcp+udp; rule 2: tcp; rule 3: 2 operations x any+tcp+udp.
        assert_eq!(p.net.len(), 3 + 1 + 6);
        let c = compile_net(&p.net).unwrap();
        let host = c[&(
            net::OP_CONNECT,
            net::AF_INET,
            net::IPPROTO_TCP,
            [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            32,
        )];
        // The /32 entry carries its own deny first, then the covering /8 allow.
        assert_eq!(host.count, 2);
        assert_eq!((host.ports[0].lo, host.ports[0].hi, host.ports[0].verdict), (8080, 8080, rule_verdict::DENY));
        assert_eq!((host.ports[1].lo, host.ports[1].hi, host.ports[1].verdict), (8000, 8099, rule_verdict::ALLOW));
        let v6 = c.keys().filter(|k| k.1 == net::AF_INET6).count();
        assert_eq!(v6, 6);
        // ICMP, raw sockets: the rules that name no protocol, under their own key.
        let any =
            c[&(net::OP_CONNECT, net::AF_INET, net::PROTO_ANY, [127, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8)];
        assert_eq!((any.count, any.ports[0].verdict), (1, rule_verdict::ALLOW));
    }

    #[test]
    fn loopback_and_local_addresses() {
        let p = parse_str(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"loopback\"\nverdict = \"deny\"\n")).unwrap();
        assert_eq!(p.net.len(), 2);
        assert!(p.net.iter().any(|r| r.family == net::AF_INET && r.prefix == 8));
        assert!(p.net.iter().any(|r| r.family == net::AF_INET6 && r.prefix == 128));
        let p = parse_str(&format!(
            "{HEAD}[[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"local\"\nfamily = \"inet\"\n"
        ))
        .unwrap();
        assert_eq!(p.net.len(), 2, "127.0.0.0/8 and 10.0.2.15: {:?}", p.net);
        let (_, _, msg) =
            error_at(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\naddress = \"::1\"\nfamily = \"inet\"\n"));
        assert!(msg.contains("not of the rule's family"), "{msg}");
    }

    const HEAD: &str = "cgroup = \"c\"\nmode = \"enforce\"\ndefault = \"deny\"\n";

    #[test]
    fn capabilities_list_or_follow_the_default() {
        let p = parse_str(&format!("{HEAD}capabilities = [\"net_bind_service\", \"CAP_CHOWN\"]\n")).unwrap();
        assert_eq!(p.capabilities, Some((1 << 10) | 1));
        assert_eq!(parse_str(HEAD).unwrap().capabilities, None);
        let (line, col, msg) = error_at(&format!("{HEAD}capabilities = [\"chown\", \"fly\"]\n"));
        assert_eq!((line, col), (4, 26));
        assert!(msg.contains("unknown capability"), "{msg}");
        let links = Links(vec![]);
        let deny = compile(&parse_str(HEAD).unwrap(), &links, KEY).unwrap();
        assert_eq!(deny.info.capabilities, 0);
        let allow = compile(&parse_str(&HEAD.replace("deny", "allow")).unwrap(), &links, KEY).unwrap();
        assert_eq!(allow.info.capabilities, u64::MAX);
        assert_eq!(capability_names(allow.info.capabilities), vec!["all"]);
    }

    #[test]
    fn move_check_only_where_a_write_could_reach_a_cgroup_file() {
        let links = Links(vec![]);
        let needs = |text: &str| compile(&parse_str(text).unwrap(), &links, KEY).unwrap().needs_move_check();
        let read = "[[file]]\npath = \"/srv/**\"\naccess = [\"read\"]\n";
        // Enforcing, and nothing may be written anywhere: every write is refused
        // at file_permission before the kernel could move a process.
        assert!(!needs(&format!("{HEAD}{read}")));
        // A deny rule for writes grants nothing.
        assert!(!needs(&format!(
            "{HEAD}{read}[[file]]\npath = \"/etc/**\"\naccess = [\"write\"]\nverdict = \"deny\"\n"
        )));
        // Any grant of write or append, by rule, by audit rule or by default.
        assert!(needs(&format!("{HEAD}[[file]]\npath = \"/var/log/x/*\"\naccess = [\"append\"]\n")));
        assert!(needs(&format!("{HEAD}[[file]]\npath = \"/tmp/**\"\naccess = [\"write\"]\nverdict = \"audit\"\n")));
        assert!(needs(&HEAD.replace("deny", "allow")));
        // Not enforcing: what the rules refuse is let through.
        assert!(needs(&format!("{}{read}", HEAD.replace("enforce", "audit"))));
        assert!(needs(&format!("{}{read}", HEAD.replace("enforce", "learn"))));
        // Moves allowed now, but a write it lets through may still be on its
        // way after a reload switches the protection on.
        let off = "[protection_off]\ncgroup = \"manages its own cgroups\"\n";
        assert!(needs(&format!("{}{off}", HEAD.replace("deny", "allow"))));
        assert!(!needs(&format!("{HEAD}{read}{off}")));
    }

    #[test]
    fn protections_are_on_unless_switched_off_with_a_reason() {
        let p = parse_str(HEAD).unwrap();
        assert_eq!(p.protections, protect::ALL);
        let p = parse_str(&format!("{HEAD}[protection_off]\nmount = \"runs containers\"\n")).unwrap();
        assert_eq!(p.protections, protect::ALL & !protect::MOUNT);
        assert_eq!(p.protections_off, vec![("mount".to_string(), "runs containers".to_string())]);
        let (line, col, msg) = error_at(&format!("{HEAD}[protection_off]\nmount = \" \"\n"));
        assert_eq!((line, col), (5, 9));
        assert!(msg.contains("say why"), "{msg}");
        let (line, col, msg) = error_at(&format!("{HEAD}[protection_off]\nselinux = \"x\"\n"));
        assert_eq!((line, col), (5, 1));
        assert!(msg.contains("unknown protection"), "{msg}");
    }

    #[test]
    fn socket_rules_explicit_and_implied() {
        let text = format!(
            "{HEAD}[[socket]]\nfamily = \"packet\"\nverdict = \"deny\"\n\
             [[socket]]\nfamily = \"inet\"\ntype = \"raw\"\nverdict = \"deny\"\n\
             [[socket]]\nfamily = \"inet6\"\nprotocol = \"sctp\"\nverdict = \"deny\"\n\
             [[net]]\noperations = [\"connect\"]\nprotocol = \"tcp\"\naddress = \"10.0.0.0/8\"\n\
             [[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"/run/x.sock\"\n"
        );
        let p = parse_str(&text).unwrap();
        let s = compile_sockets(&p.sockets, &p.net, &p.unix);
        let any = SocketKey::ANY;
        assert_eq!(s[&(17, any, any)], rule_verdict::DENY);
        assert_eq!(s[&(2, 3, any)], rule_verdict::DENY);
        assert_eq!(s[&(10, 1, 132)], rule_verdict::DENY);
        assert_eq!(s[&(10, 5, 132)], rule_verdict::DENY);
        // tcp to an IPv4 net: TCP (and MPTCP) stream sockets of inet, and of inet6 for mapped addresses.
        assert_eq!(s[&(2, 1, 6)], rule_verdict::ALLOW);
        assert_eq!(s[&(2, 1, 262)], rule_verdict::ALLOW);
        assert_eq!(s[&(10, 1, 6)], rule_verdict::ALLOW);
        assert!(!s.contains_key(&(2, 2, 17)));
        assert_eq!(s[&(1, any, any)], rule_verdict::ALLOW);
        let (_, _, msg) = error_at(&format!("{HEAD}[[socket]]\nfamily = \"appletalk\"\n"));
        assert!(msg.contains("unknown socket family"), "{msg}");
        let (_, _, msg) = error_at(&format!("{HEAD}[[socket]]\nfamily = \"unix\"\nprotocol = \"tcp\"\n"));
        assert!(msg.contains("inet and inet6"), "{msg}");
    }

    #[test]
    fn unix_rules_name_paths_and_abstract_names() {
        let text = format!(
            "{HEAD}[[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"/run/a.sock\"\n\
             [[net]]\noperations = [\"connect\"]\nabstract = \"bus\"\nverdict = \"deny\"\n\
             [[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\nverdict = \"audit\"\n"
        );
        let p = parse_str(&text).unwrap();
        let u = compile_unix(&p.unix);
        let c = net::OP_CONNECT;
        assert_eq!(u[&(c, b"/run/a.sock\0".to_vec())], rule_verdict::ALLOW);
        assert_eq!(u[&(c, b"\0bus".to_vec())], rule_verdict::DENY);
        assert_eq!(u[&(c, Vec::new())], rule_verdict::AUDIT);
        let p =
            parse_str(&format!("{HEAD}[[net]]\noperations = [\"bind\", \"connect\"]\nabstract = \"me\"\n")).unwrap();
        let u = compile_unix(&p.unix);
        assert_eq!(u.len(), 2);
        assert_eq!(u[&(net::OP_BIND, b"\0me".to_vec())], rule_verdict::ALLOW);
        assert!(p.net.is_empty());
        let (line, _, msg) =
            error_at(&format!("{HEAD}[[net]]\noperations = [\"bind\"]\nfamily = \"unix\"\npath = \"/run/a\"\n"));
        assert_eq!(line, 5);
        assert!(msg.contains("[[file]] rules with create"), "{msg}");
        let (_, _, msg) =
            error_at(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\nfamily = \"unix\"\npath = \"run/a\"\n"));
        assert!(msg.contains("absolute"), "{msg}");
        let (_, _, msg) =
            error_at(&format!("{HEAD}[[net]]\noperations = [\"connect\"]\nfamily = \"inet\"\npath = \"/run/a\"\n"));
        assert!(msg.contains("family must be unix"), "{msg}");
    }

    #[test]
    fn port_range_errors_are_located() {
        let (line, col, msg) = error_at("cgroup = \"a\"\nmode = \"enforce\"\ndefault = \"deny\"\n[[net]]\noperations = [\"connect\"]\nports = \"90-80\"\n");
        assert_eq!((line, col), (6, 9));
        assert!(msg.contains("backwards"), "{msg}");
    }

    #[test]
    fn canonical_prefix_keeps_what_does_not_exist() {
        let canon = |p: &Path| (p == Path::new("/lib")).then(|| PathBuf::from("/usr/lib"));
        assert_eq!(canonical_prefix(Path::new("/lib/x/y"), canon), PathBuf::from("/usr/lib/x/y"));
        assert_eq!(canonical_prefix(Path::new("/none/x"), |_| None), PathBuf::from("/none/x"));
    }

    #[test]
    fn device_numbers_convert_to_the_kernel_encoding() {
        let user = libc::makedev(8, 1);
        assert_eq!(kernel_dev(user), (8 << 20) | 1);
        assert_eq!(format_kernel_dev(kernel_dev(libc::makedev(259, 70000))), "259:70000");
    }

    #[test]
    fn access_names_follow_bits() {
        assert_eq!(access_names(access::READ | access::EXEC), vec!["read", "exec"]);
        assert_eq!(access_names(access::CREATE | access::RENAME | access::CHMOD), vec!["create", "rename", "chmod"]);
        assert!(access_names(0).is_empty());
    }
}
