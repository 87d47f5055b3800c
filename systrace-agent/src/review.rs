//! `review`: a terminal UI over what learning saw (or a running agent's
//! denials), after the fact, in the manner of aa-logprof but without its
//! best-known fault: questions are not one per event. Observations are first
//! coalesced into the rules `generate` would propose (a document root is one
//! item, not forty), and a person decides each: allow, deny, ignore, widen the
//! path one step (`g`) or back (`G`), or edit it (`e`). The right pane shows
//! the evidence and a preview of what the rule would allow on this machine
//! today. `w` adds the decided rules to the policy file, keeping what is in
//! it; an agent running that policy reloads it on its own (it watches the file).
//!
//! The state and its rendering are pure ([`Review::key`], [`Review::render`]),
//! so the host tests drive them through ratatui's test backend.

use std::path::{Path, PathBuf};

use ratatui::{
    layout::{Constraint, Direction, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, List, ListItem, ListState, Paragraph, Wrap},
    Frame,
};

use crate::{
    learn::{
        generate::{self, extension_glob, extension_pattern, Generated, Rule},
        Evidence,
    },
    policy::{parse_pattern, HOME_VARIABLE},
};

/// What a person decided about one proposed rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Undecided,
    Allow,
    Deny,
    Ignore,
}

/// One proposed rule.
#[derive(Debug, Clone)]
pub struct Item {
    /// `file`, `net` or `socket`: the table the rule goes in.
    pub table: &'static str,
    pub rule: Rule,
    /// File rules: the patterns widened from, to step back.
    pub narrower: Vec<String>,
    pub decision: Decision,
}

impl Item {
    fn value(&self, key: &str) -> Option<String> {
        self.rule
            .body
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| serde_json::from_str(v).unwrap_or_else(|_| v.clone()))
    }

    /// The file rule's path pattern.
    pub fn pattern(&self) -> Option<String> {
        (self.table == "file").then(|| self.value("path")).flatten()
    }

    fn set_pattern(&mut self, pattern: &str) {
        for (k, v) in &mut self.rule.body {
            if k == "path" {
                *v = generate::quoted(pattern);
            }
        }
    }

    fn summary(&self) -> String {
        generate::printable(&self.raw_summary())
    }

    fn raw_summary(&self) -> String {
        let mark = match self.decision {
            Decision::Undecided => "[ ]",
            Decision::Allow => "[A]",
            Decision::Deny => "[D]",
            Decision::Ignore => "[-]",
        };
        let what = match self.table {
            "file" => format!("{} {}", self.pattern().unwrap_or_default(), self.value("access").unwrap_or_default()),
            _ => self.rule.body.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        };
        format!("{mark} {:<6} {what}  ({} seen)", self.table, self.rule.evidence.count)
    }
}

/// A key, as the terminal loop passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Enter,
    Esc,
    Backspace,
    Char(char),
}

/// The review's whole state.
pub struct Review {
    pub items: Vec<Item>,
    pub selected: usize,
    pub message: String,
    /// The pattern being edited (`e`), if any.
    pub editing: Option<String>,
    /// `w` was pressed: the caller writes the decided rules.
    pub write: bool,
    pub quit: bool,
    /// `$HOME` of the learned run, to preview `${HOME}` rules.
    pub home: Option<String>,
    pub capabilities: Vec<(String, Evidence)>,
}

/// Where the ladder goes from `pattern`: `a/b/c` -> `a/b/*` -> `a/b/**` -> `a/**`.
pub fn wider(pattern: &str) -> Option<String> {
    if let Some((dir, _)) = extension_pattern(pattern) {
        return Some(format!("{}/*", dir.trim_end_matches('/')));
    }
    let (node, scope) = if let Some(d) = pattern.strip_suffix("/**") {
        (d, 2)
    } else if let Some(d) = pattern.strip_suffix("/*") {
        (d, 1)
    } else {
        (pattern, 0)
    };
    let parent = |p: &str| p.rfind('/').map(|i| p[..i].to_string()).filter(|p| !p.is_empty());
    match scope {
        0 => parent(node).map(|d| format!("{d}/*")),
        1 => Some(format!("{node}/**")),
        _ => parent(node).map(|d| format!("{d}/**")),
    }
    .filter(|w| {
        let depth = w.trim_end_matches("/**").trim_end_matches("/*").split('/').filter(|c| !c.is_empty()).count();
        depth >= 1
    })
}

pub use generate::covers_sensitive;

/// The names a file pattern (`${HOME}` expanded) covers on this machine now:
/// how many (counting stops near `bound`, and links to directories are not
/// followed) and the first `examples` of them, each directory's names in order.
pub fn covered_now(pattern: &str, examples: usize, bound: usize) -> (usize, Vec<String>) {
    let mut ext = None;
    let (dir, deep) = if let Some(d) = pattern.strip_suffix("/**") {
        (d, true)
    } else if let Some((d, e)) = extension_pattern(pattern) {
        ext = Some(e.as_bytes());
        (d, false)
    } else if let Some(d) = pattern.strip_suffix("/*") {
        (d, false)
    } else {
        return (usize::from(Path::new(pattern).exists()), vec![pattern.to_string()]);
    };
    let mut found = Vec::new();
    let mut count = 0;
    let mut stack = vec![PathBuf::from(if dir.is_empty() { "/" } else { dir })];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let mut entries: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .filter(|e| ext.is_none_or(|x| systrace_common::extension(e.file_name().as_encoded_bytes()) == Some(x)))
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            count += 1;
            if found.len() < examples {
                found.push(p.display().to_string());
            }
            if deep && p.is_dir() && !p.is_symlink() && count < bound {
                stack.push(p);
            }
        }
    }
    (count, found)
}

/// Runs the review in the terminal until `w` or `q`.
pub fn run_terminal(review: &mut Review) -> std::io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let mut terminal = ratatui::init();
    let result = (|| {
        while !review.write && !review.quit {
            terminal.draw(|f| review.render(f))?;
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let key = match k.code {
                    KeyCode::Up => Key::Up,
                    KeyCode::Down => Key::Down,
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Backspace => Key::Backspace,
                    KeyCode::Char(c) => Key::Char(c),
                    _ => continue,
                };
                review.key(key);
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

impl Review {
    pub fn new(g: &Generated, home: Option<String>) -> Self {
        let mut items = Vec::new();
        for (table, rules) in [("file", &g.files), ("net", &g.net), ("socket", &g.sockets)] {
            for rule in rules {
                items.push(Item { table, rule: rule.clone(), narrower: Vec::new(), decision: Decision::Undecided });
            }
        }
        let capabilities = g.capabilities.iter().map(|(c, e)| (c.clone(), e.clone())).collect();
        Review {
            items,
            selected: 0,
            message: String::new(),
            editing: None,
            write: false,
            quit: false,
            home,
            capabilities,
        }
    }

    fn decide(&mut self, d: Decision) {
        if let Some(item) = self.items.get_mut(self.selected) {
            item.decision = d;
            if self.selected + 1 < self.items.len() {
                self.selected += 1;
            }
        }
    }

    pub fn key(&mut self, key: Key) {
        self.message.clear();
        if let Some(text) = &mut self.editing {
            match key {
                Key::Char(c) => text.push(c),
                Key::Backspace => {
                    text.pop();
                }
                Key::Esc => self.editing = None,
                Key::Enter => {
                    let text = text.clone();
                    let checked =
                        text.strip_prefix(HOME_VARIABLE).map_or(text.clone(), |rest| format!("/home/x{rest}"));
                    match parse_pattern(&checked) {
                        Ok(_) => {
                            if let Some(item) = self.items.get_mut(self.selected) {
                                let old = item.pattern().unwrap_or_default();
                                item.narrower.push(old);
                                item.set_pattern(&text);
                            }
                            self.editing = None;
                        }
                        Err((_, why)) => self.message = format!("not a path pattern: {why}"),
                    }
                }
                _ => {}
            }
            return;
        }
        match key {
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') if self.selected + 1 < self.items.len() => {
                self.selected += 1;
            }
            Key::Char('a') => self.decide(Decision::Allow),
            Key::Char('d') => self.decide(Decision::Deny),
            Key::Char('i') => self.decide(Decision::Ignore),
            Key::Char('g') => self.widen(),
            Key::Char('G') => {
                if let Some(item) = self.items.get_mut(self.selected) {
                    match item.narrower.pop() {
                        Some(p) => item.set_pattern(&p),
                        None => self.message = "already the narrowest".into(),
                    }
                }
            }
            Key::Char('x') => self.by_extension(),
            Key::Char('e') => {
                if let Some(p) = self.items.get(self.selected).and_then(Item::pattern) {
                    self.editing = Some(p);
                } else {
                    self.message = "only file rules have a path to edit".into();
                }
            }
            Key::Char('w') => {
                if self.items.iter().any(|i| matches!(i.decision, Decision::Allow | Decision::Deny)) {
                    self.write = true;
                } else {
                    self.message = "nothing decided yet: a allows, d denies".into();
                }
            }
            Key::Char('q') | Key::Esc => self.quit = true,
            _ => {}
        }
    }

    /// `DIR/name.ext` -> `DIR/*.ext` (AppArmor's glob with extension), from
    /// the name the item was learned with.
    fn by_extension(&mut self) {
        let Some(item) = self.items.get_mut(self.selected) else { return };
        let Some(p) = item.pattern() else {
            self.message = "only file rules have an extension".into();
            return;
        };
        let learned = item.narrower.first().cloned().unwrap_or_else(|| p.clone());
        match extension_glob(&learned) {
            None => {
                self.message = format!("{learned} has no extension a rule can name (1 to 15 bytes after its last dot)")
            }
            Some(w) if w == p => self.message = "already by extension".into(),
            Some(w) => match covers_sensitive(&w) {
                Some(s) => self.message = format!("{w} would cover {s}: not widened (edit with e to insist)"),
                None => {
                    item.narrower.push(p);
                    item.set_pattern(&w);
                }
            },
        }
    }

    fn widen(&mut self) {
        let Some(item) = self.items.get_mut(self.selected) else { return };
        let Some(p) = item.pattern() else {
            self.message = "only file rules widen".into();
            return;
        };
        match wider(&p) {
            None => self.message = "no wider pattern below the top of the tree".into(),
            Some(w) => match covers_sensitive(&w) {
                Some(s) => self.message = format!("{w} would cover {s}: not widened (edit with e to insist)"),
                None => {
                    item.narrower.push(p);
                    item.set_pattern(&w);
                }
            },
        }
    }

    /// What a file pattern allows on this machine now (see [`covered_now`]).
    pub fn preview(&self, pattern: &str, limit: usize) -> (usize, Vec<String>) {
        let expanded = match (&self.home, pattern.strip_prefix(HOME_VARIABLE)) {
            (Some(h), Some(rest)) => format!("{h}{rest}"),
            _ => pattern.to_string(),
        };
        covered_now(&expanded, limit, 100_000)
    }

    pub fn render(&self, f: &mut Frame) {
        let rows = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(1), Constraint::Min(5), Constraint::Length(3)])
            .split(f.area());
        let decided = self.items.iter().filter(|i| i.decision != Decision::Undecided).count();
        f.render_widget(
            Paragraph::new(format!("systrace review: {} proposed rules, {decided} decided", self.items.len())),
            rows[0],
        );
        let cols = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
            .split(rows[1]);
        let list: Vec<ListItem> = self.items.iter().map(|i| ListItem::new(i.summary())).collect();
        let mut state = ListState::default();
        state.select(Some(self.selected));
        f.render_stateful_widget(
            List::new(list)
                .block(Block::default().borders(Borders::ALL).title("rules"))
                .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
                .highlight_symbol("> "),
            cols[0],
            &mut state,
        );
        let mut detail: Vec<Line> = Vec::new();
        if let Some(item) = self.items.get(self.selected) {
            detail.push(Line::from(generate::evidence_comment(&item.rule)));
            detail.push(Line::from(format!("[[{}]]", item.table)));
            for (k, v) in &item.rule.body {
                detail.push(Line::from(format!("{k} = {v}")));
            }
            if let Some(p) = item.pattern() {
                let (count, paths) = self.preview(&p, 12);
                detail.push(Line::from(""));
                detail.push(Line::from(format!("would allow {count} existing names now:")));
                detail.extend(paths.into_iter().map(|p| Line::from(format!("  {p}"))));
            }
        }
        if !self.capabilities.is_empty() {
            detail.push(Line::from(""));
            let caps: Vec<&str> = self.capabilities.iter().map(|(c, _)| c.as_str()).collect();
            detail.push(Line::from(format!("capabilities used: {}", caps.join(", "))));
        }
        f.render_widget(
            Paragraph::new(detail)
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title("rule")),
            cols[1],
        );
        let help = match &self.editing {
            Some(text) => format!("path: {text}_   (Enter: keep, Esc: cancel)"),
            None => "a allow  d deny  i ignore  g widen  G narrow  e edit  x by extension  w write  q quit".into(),
        };
        f.render_widget(
            Paragraph::new(vec![Line::from(help), Line::from(self.message.clone())])
                .block(Block::default().borders(Borders::TOP)),
            rows[2],
        );
    }

    /// The decided rules, as a [`Generated`] to merge (denials carry `verdict = "deny"`).
    pub fn decided(&self) -> Generated {
        let mut g = Generated::default();
        for item in &self.items {
            let mut rule = item.rule.clone();
            match item.decision {
                Decision::Allow => {}
                Decision::Deny => rule.body.push(("verdict".into(), "\"deny\"".into())),
                _ => continue,
            }
            match item.table {
                "file" => g.files.push(rule),
                "net" => g.net.push(rule),
                _ => g.sockets.push(rule),
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::learn::{
        generate::{generalize, Options},
        Observations,
    };

    fn observed() -> Observations {
        let mut o = Observations::default();
        for (p, a) in [
            ("/srv/www/index.html", "read"),
            ("/srv/www/about.html", "read"),
            ("/srv/www/docs/a.html", "read"),
            ("/var/log/web/access.log", "append"),
        ] {
            o.read(&format!(
                r#"{{"type":"event","verdict":"learned","hook":"file_open","time":"t","comm":"web","path":"{p}","requested":["{a}"]}}"#
            ));
        }
        o
    }

    fn screen(r: &Review) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
        t.draw(|f| r.render(f)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn coalesced_items_decided_widened_and_written() {
        let g = generalize(&observed(), &Options::default());
        let mut r = Review::new(&g, None);
        // Two proposals, not four events: the document root is one.
        assert_eq!(r.items.len(), 2, "{:?}", r.items.iter().map(Item::summary).collect::<Vec<_>>());
        assert!(screen(&r).contains("/srv/www/** [\"read\"]"), "{}", screen(&r));
        r.key(Key::Char('a'));
        // The log: widened once, then back, then once again, and denied.
        assert_eq!(r.selected, 1);
        r.key(Key::Char('g'));
        assert_eq!(r.items[1].pattern().as_deref(), Some("/var/log/web/*"));
        r.key(Key::Char('g'));
        r.key(Key::Char('G'));
        assert_eq!(r.items[1].pattern().as_deref(), Some("/var/log/web/*"));
        r.key(Key::Char('d'));
        r.key(Key::Char('w'));
        assert!(r.write);
        let d = r.decided();
        assert_eq!(d.files.len(), 2);
        assert!(d.files[1].body.contains(&("verdict".to_string(), "\"deny\"".to_string())));
        let merged =
            crate::learn::merge::merge("name = \"web\"\nmode = \"enforce\"\ndefault = \"deny\"\n", &d).unwrap();
        assert!(merged.contains("path = \"/var/log/web/*\"\naccess = [\"append\"]\nverdict = \"deny\"\n"), "{merged}");
    }

    #[test]
    fn never_widens_over_sensitive_paths_and_edits_are_checked() {
        let mut o = Observations::default();
        o.read(r#"{"type":"event","verdict":"learned","hook":"file_open","time":"t","comm":"x","path":"/etc/passwd","requested":["read"]}"#);
        let mut r = Review::new(&generalize(&o, &Options::default()), None);
        r.key(Key::Char('g'));
        assert_eq!(r.items[0].pattern().as_deref(), Some("/etc/passwd"));
        assert!(r.message.contains("/etc/shadow"), "{}", r.message);
        r.key(Key::Char('e'));
        for _ in 0.."passwd".len() {
            r.key(Key::Backspace);
        }
        for c in "pass*d".chars() {
            r.key(Key::Char(c));
        }
        r.key(Key::Enter);
        assert!(r.message.starts_with("not a path pattern"), "{}", r.message);
        r.key(Key::Esc);
        assert_eq!(r.items[0].pattern().as_deref(), Some("/etc/passwd"));
    }

    #[test]
    fn ladder() {
        assert_eq!(wider("/a/b/c").as_deref(), Some("/a/b/*"));
        assert_eq!(wider("/a/b/*").as_deref(), Some("/a/b/**"));
        assert_eq!(wider("/a/b/**").as_deref(), Some("/a/**"));
        assert_eq!(wider("/a/**"), None);
        assert_eq!(wider("/a/b/*.log").as_deref(), Some("/a/b/*"));
        assert_eq!(extension_glob("/a/b/x.tar.gz").as_deref(), Some("/a/b/*.gz"));
        assert_eq!(extension_glob("/a/b/README"), None);
        assert_eq!(extension_glob("/x.log").as_deref(), Some("/*.log"));
    }

    #[test]
    fn glob_by_extension_from_the_learned_name() {
        let mut o = Observations::default();
        o.read(r#"{"type":"event","verdict":"learned","hook":"file_open","time":"t","comm":"x","path":"/var/log/web/access.log","requested":["append"]}"#);
        o.read(r#"{"type":"event","verdict":"learned","hook":"file_open","time":"t","comm":"x","path":"/etc/ssh/ssh_host_ed25519_key.pub","requested":["read"]}"#);
        let mut r = Review::new(&generalize(&o, &Options::default()), None);
        let log = r.items.iter().position(|i| i.pattern().as_deref() == Some("/var/log/web/access.log")).unwrap();
        r.selected = log;
        r.key(Key::Char('g'));
        r.key(Key::Char('x'));
        assert_eq!(r.items[log].pattern().as_deref(), Some("/var/log/web/*.log"));
        r.key(Key::Char('x'));
        assert_eq!(r.message, "already by extension");
        r.key(Key::Char('G'));
        assert_eq!(r.items[log].pattern().as_deref(), Some("/var/log/web/*"));
        r.key(Key::Char('G'));
        r.key(Key::Char('x'));
        assert_eq!(r.items[log].pattern().as_deref(), Some("/var/log/web/*.log"));
        // Never over keys.
        r.selected =
            r.items.iter().position(|i| i.pattern().as_deref() == Some("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
        r.key(Key::Char('x'));
        assert!(r.message.contains("would cover"), "{}", r.message);
        let dir = std::env::temp_dir().join(format!("systrace-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["a.log", "b.log", "c.txt"] {
            std::fs::write(dir.join(n), "").unwrap();
        }
        let (count, names) = covered_now(&format!("{}/*.log", dir.display()), 10, 100);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(count, 2);
        assert!(names[0].ends_with("/a.log") && names[1].ends_with("/b.log"), "{names:?}");
    }
}
