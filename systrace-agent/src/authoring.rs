//! The policy-authoring commands: `generate`, `review` and `replay`, thin
//! layers over [`systrace_agent::learn`] and [`systrace_agent::review`].
//! Nothing here touches the kernel.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use serde_json::json;
use systrace_agent::{
    learn::{self, generate::Generated},
    policy::{self, Policy},
};

use crate::{host_for, read_and_parse, NO_TARGET};

fn read_observations(files: &[PathBuf], from_denials: bool) -> Result<learn::Observations, String> {
    let mut obs = learn::Observations { include_denied: from_denials, ..Default::default() };
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
        obs.read(&text);
    }
    Ok(obs)
}

/// Keeps the observations a policy refuses by its default: what it allows
/// needs no rule, and what its deny rules refuse stays refused (a generated
/// allow, being more specific, would override the person's deny).
fn keep_what_the_default_refuses(policy: &Policy, obs: &mut learn::Observations) {
    let mut denied = 0;
    obs.seen.retain(|seen, ev| match learn::replay::decide(policy, seen, ev) {
        learn::replay::Decision::Refused(_) => true,
        learn::replay::Decision::Denied(_) => {
            denied += 1;
            false
        }
        learn::replay::Decision::Allowed => false,
    });
    if denied > 0 {
        eprintln!(
            "systrace-agent: {denied} observed accesses are refused by deny rules of {}; no rule is proposed for them",
            policy.name
        );
    }
}

/// What `generate` and `review` start from: the observations the policy at
/// `output` (if there is one yet) does not already decide, and its text.
struct Proposal {
    obs: learn::Observations,
    options: learn::generate::Options,
    existing: Option<String>,
}

fn propose(
    files: &[PathBuf],
    output: &Path,
    name: Option<String>,
    collapse: usize,
    from_denials: bool,
) -> Result<Proposal, String> {
    let mut obs = read_observations(files, from_denials)?;
    let name =
        name.unwrap_or_else(|| output.file_stem().map_or("learned".into(), |s| s.to_string_lossy().into_owned()));
    let mut sensitive = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        sensitive.push(exe.display().to_string());
    }
    let options = learn::generate::Options { collapse, name, target: None, sensitive };
    let existing = match std::fs::read_to_string(output) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("systrace-agent: {}: cannot read: {e}", output.display())),
    };
    if let Some(old) = &existing {
        // The policy's ${HOME} is the learned one here.
        let host = host_for(obs.home().map(PathBuf::from), Some(policy::Target::Cgroup(NO_TARGET.into())));
        let current = policy::parse(output, old, &host)
            .map_err(|d| format!("{d}\nsystrace-agent: {} left as it was", output.display()))?;
        keep_what_the_default_refuses(&current, &mut obs);
    }
    Ok(Proposal { obs, options, existing })
}

/// Writes `rules` into the policy at `output`: merged into its text when it
/// exists (keeping every byte of it), else after a generated header.
fn write(output: &Path, p: &Proposal, rules: &Generated) -> Result<(), String> {
    let text = match &p.existing {
        Some(old) => learn::merge::merge(old, rules),
        None => learn::merge::merge(&learn::generate::render(&Generated::default(), &p.obs, &p.options), rules),
    }
    .map_err(|e| format!("systrace-agent: {}: {e}; left as it was", output.display()))?;
    learn::merge::write_policy(output, &text).map_err(|e| format!("systrace-agent: writing {}: {e}", output.display()))
}

fn fail(message: String) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

pub fn generate(
    files: &[PathBuf],
    output: &Path,
    name: Option<String>,
    collapse: usize,
    from_denials: bool,
) -> ExitCode {
    let p = match propose(files, output, name, collapse, from_denials) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let generated = learn::generate::generalize(&p.obs, &p.options);
    let result = match &p.existing {
        // A new file: the whole policy, in the generator's own order.
        None => learn::merge::write_policy(output, &learn::generate::render(&generated, &p.obs, &p.options))
            .map_err(|e| format!("systrace-agent: writing {}: {e}", output.display())),
        Some(_) if generated.is_empty() => {
            eprintln!("systrace-agent: {} already allows everything observed; left as it was", output.display());
            return ExitCode::SUCCESS;
        }
        Some(_) => write(output, &p, &generated),
    };
    if let Err(e) = result {
        return fail(e);
    }
    eprintln!("systrace-agent: wrote {} ({} distinct accesses to allow)", output.display(), p.obs.seen.len());
    ExitCode::SUCCESS
}

pub fn review(files: &[PathBuf], output: &Path, collapse: usize, from_denials: bool) -> ExitCode {
    let p = match propose(files, output, None, collapse, from_denials) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let proposed = learn::generate::generalize(&p.obs, &p.options);
    let mut review = systrace_agent::review::Review::new(&proposed, p.obs.home().map(String::from));
    if review.items.is_empty() {
        eprintln!("systrace-agent: nothing to review: the policy allows everything observed");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = systrace_agent::review::run_terminal(&mut review) {
        return fail(format!("systrace-agent: the terminal: {e}"));
    }
    if !review.write {
        eprintln!("systrace-agent: left without writing");
        return ExitCode::SUCCESS;
    }
    let decided = review.decided();
    if let Err(e) = write(output, &p, &decided) {
        return fail(e);
    }
    let n = decided.files.len() + decided.net.len() + decided.sockets.len();
    eprintln!("systrace-agent: added {n} rules to {} (an agent running it reloads it now)", output.display());
    ExitCode::SUCCESS
}

pub fn replay(policy_file: &Path, files: &[PathBuf]) -> ExitCode {
    let obs = match read_observations(files, true) {
        Ok(o) => o,
        Err(e) => return fail(format!("systrace-agent: {e}")),
    };
    let host = host_for(obs.home().map(PathBuf::from), Some(policy::Target::Cgroup(NO_TARGET.into())));
    let policy = match read_and_parse(policy_file, &host) {
        Ok(p) => p,
        Err(d) => return fail(d.to_string()),
    };
    let mut refused = 0;
    for (seen, ev) in &obs.seen {
        if let Some(why) = learn::replay::decide(&policy, seen, ev).why() {
            refused += 1;
            println!(
                "{}",
                json!({"type": "would-deny", "access": format!("{seen:?}"), "why": why, "count": ev.count, "programs": ev.programs})
            );
        }
    }
    eprintln!(
        "systrace-agent: {} would refuse {refused} of {} distinct recorded accesses",
        policy.name,
        obs.seen.len()
    );
    if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
