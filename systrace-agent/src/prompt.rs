//! `systrace-agent prompt`: answers an `exec --ask` agent's questions in the
//! terminal, one key and Enter per question. Any number of prompts may be
//! connected; the first answer counts. The protocol is JSON lines over the
//! agent's unix socket (see [`crate::ask`]), so other clients can answer too.

use std::{path::PathBuf, process::ExitCode};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::ask::{Answer, Question, SOCKET_DIR};

/// The newest agent socket.
fn newest_socket() -> Option<PathBuf> {
    std::fs::read_dir(SOCKET_DIR)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn show(q: &Question) {
    println!();
    println!("systrace: {} (pid {}) wants to {} {} ({})", q.comm, q.pid, q.operation, q.path, q.access.join(", "));
    println!("  o  permit once");
    println!("  a  permit always: {}", q.path);
    for (key, c) in ["g", "G"].iter().zip(q.choices.iter().skip(1)) {
        let examples = if c.examples.is_empty() { String::new() } else { format!(": {}", c.examples.join(" ")) };
        println!("  {key}  permit always: {} (covers {} names now{examples})", c.path, c.covers);
    }
    println!("  d  deny once");
    println!("  D  deny always: {}", q.path);
    println!("(denied in {} s without an answer)", q.timeout_s);
    print!("answer> ");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// The answer a key stands for.
fn answer_for(q: &Question, key: &str) -> Option<Answer> {
    let (answer, path) = match key {
        "o" => ("permit-once", None),
        "a" => ("permit-always", Some(q.path.clone())),
        "g" => ("permit-always", Some(q.choices.get(1)?.path.clone())),
        "G" => ("permit-always", Some(q.choices.get(2)?.path.clone())),
        "d" => ("deny-once", None),
        "D" => ("deny-always", Some(q.path.clone())),
        _ => return None,
    };
    Some(Answer { kind: "answer".into(), id: q.id, answer: answer.into(), path })
}

pub fn main(socket: Option<PathBuf>) -> ExitCode {
    let Some(socket) = socket.or_else(newest_socket) else {
        eprintln!("systrace-agent: no agent is asking (nothing in {SOCKET_DIR}); start one with `exec --ask`");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("systrace-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(socket.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("systrace-agent: {}: {e:#}", socket.display());
            ExitCode::FAILURE
        }
    }
}

async fn run(socket: PathBuf) -> anyhow::Result<()> {
    let stream = tokio::net::UnixStream::connect(&socket).await?;
    let (read, mut write) = stream.into_split();
    let mut from_agent = BufReader::new(read).lines();
    let mut keys = BufReader::new(tokio::io::stdin()).lines();
    println!(
        "systrace: answering for {} (o: permit once, a/g/G: permit always, d: deny once, D: deny always)",
        socket.display()
    );
    let mut current: Option<Question> = None;
    loop {
        tokio::select! {
            line = from_agent.next_line() => {
                let Some(line) = line? else {
                    println!("\nsystrace: the agent has gone");
                    return Ok(());
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                match v["type"].as_str() {
                    Some("ask") => {
                        if let Ok(q) = serde_json::from_value::<Question>(v) {
                            show(&q);
                            current = Some(q);
                        }
                    }
                    Some("done")
                        if current.as_ref().is_some_and(|q| v["id"] == q.id) => {
                            println!("\nsystrace: {} -> {}", current.as_ref().map_or("", |q| q.path.as_str()), v["result"].as_str().unwrap_or("?"));
                            current = None;
                        }
                    _ => {}
                }
            }
            key = keys.next_line() => {
                let Some(key) = key? else { return Ok(()) };
                let Some(q) = &current else { continue };
                match answer_for(q, key.trim()) {
                    Some(a) => {
                        let mut line = serde_json::to_string(&a)?;
                        line.push('\n');
                        write.write_all(line.as_bytes()).await?;
                    }
                    None => {
                        print!("o, a, g, G, d or D> ");
                        use std::io::Write;
                        let _ = std::io::stdout().flush();
                    }
                }
            }
        }
    }
}
