//! Adds newly learned rules to a policy someone may have edited, keeping every
//! byte they wrote: comments, order, formatting (`toml_edit`). What the policy
//! already allows is filtered out before generalizing (see the CLI), so a
//! second learning run that saw nothing new leaves the file as it was.

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use super::generate::{evidence_comment, Generated, Rule};

fn array<'a>(doc: &'a mut DocumentMut, key: &str) -> Result<&'a mut Array, String> {
    if !doc.contains_key(key) {
        doc[key] = toml_edit::value(Array::new());
    }
    doc[key].as_array_mut().ok_or_else(|| format!("{key} is not an array"))
}

fn tables<'a>(doc: &'a mut DocumentMut, key: &str) -> Result<&'a mut ArrayOfTables, String> {
    if !doc.contains_key(key) {
        doc[key] = Item::ArrayOfTables(ArrayOfTables::new());
    }
    doc[key].as_array_of_tables_mut().ok_or_else(|| format!("{key} is not a list of [[{key}]] tables"))
}

fn add_rules(doc: &mut DocumentMut, key: &str, rules: &[Rule]) -> Result<(), String> {
    let list = tables(doc, key)?;
    for rule in rules {
        let mut table = Table::new();
        for (k, v) in &rule.body {
            let value: Value = v.parse().map_err(|e| format!("generated value {v}: {e}"))?;
            table.insert(k, toml_edit::value(value));
        }
        table.decor_mut().set_prefix(format!("\n{}\n", evidence_comment(rule)));
        list.push(table);
    }
    Ok(())
}

/// Replaces the policy file with `text`: written next to it and renamed over
/// it, so a reader (a watching agent) never sees half a policy. The temporary
/// file is made anew (`O_EXCL`: a link planted in its place is not followed).
pub fn write_policy(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("toml.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `text` with `g`'s rules added. Errors name what in the file is in the way.
pub fn merge(text: &str, g: &Generated) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    if g.libraries {
        let include = array(&mut doc, "include")?;
        if !include.iter().any(|v| v.as_str() == Some("libraries")) {
            include.push("libraries");
        }
    }
    if !g.capabilities.is_empty() {
        let caps = array(&mut doc, "capabilities")?;
        for c in g.capabilities.keys() {
            if !caps.iter().any(|v| v.as_str() == Some(c)) {
                caps.push(c.as_str());
            }
        }
    }
    add_rules(&mut doc, "file", &g.files)?;
    add_rules(&mut doc, "net", &g.net)?;
    add_rules(&mut doc, "socket", &g.sockets)?;
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{
        generate::{generalize, Options},
        Observations,
    };

    #[test]
    fn keeps_edits_and_comments_and_appends_with_evidence() {
        let edited = "# my web server, reviewed by hand\nname = \"web\"\nmode = \"enforce\"\ndefault = \"deny\"\n\n\
                      # the pages\n[[file]]\npath = \"/srv/www/**\"   # all of them\naccess = [\"read\"]\n";
        let mut o = Observations::default();
        o.read(r#"{"type":"event","verdict":"learned","hook":"file_open","time":"t1","comm":"httpd","path":"/var/log/httpd.log","requested":["append"]}"#);
        let merged = merge(edited, &generalize(&o, &Options::default())).unwrap();
        assert!(merged.starts_with(edited), "{merged}");
        assert!(
            merged.ends_with(
                "\n# seen 1 time by httpd, first t1\n[[file]]\npath = \"/var/log/httpd.log\"\naccess = [\"append\"]\n"
            ),
            "{merged}"
        );
    }
}
