//! What `${HOME}` in a policy stands for: every user's home directory, as
//! AppArmor's `@{HOME}` covers `/home/*/` and `/root/`. System accounts
//! (below uid 1000, apart from root) are left out: their "homes" are service
//! directories such as `/var/www` or `/nonexistent`.

use std::path::PathBuf;

/// Home directories named in passwd-format `text`, plus `extra` (the `$HOME`
/// of a command run by `exec`, which need not be anyone's passwd entry).
pub fn homes(text: &str, extra: Option<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let uid: u32 = f.get(2)?.parse().ok()?;
            let home = *f.get(5)?;
            let person = uid == 0 || (1000..65534).contains(&uid);
            (person && home.starts_with('/') && home != "/" && home != "/nonexistent").then(|| PathBuf::from(home))
        })
        .chain(extra.filter(|h| h.is_absolute() && h.as_os_str() != "/"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// This system's homes (from `/etc/passwd`) and `extra`.
pub fn system_homes(extra: Option<PathBuf>) -> Vec<PathBuf> {
    homes(&std::fs::read_to_string("/etc/passwd").unwrap_or_default(), extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_only() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n\
                      alice:x:1000:1000::/home/alice:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(
            homes(passwd, Some("/tmp/h".into())),
            [PathBuf::from("/home/alice"), PathBuf::from("/root"), PathBuf::from("/tmp/h")]
        );
    }
}
