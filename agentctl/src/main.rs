//! `agentctl`: inspect and steer Agent System's queue over the orchestrator's HTTP API (never
//! over Redis), with tables for people and `--json` for scripts.
//!
//! Exit codes scripts can rely on: 0 success; 1 the API refused the request (a 4xx other than
//! 404: a conflict, a validation error, a missing token); 2 a usage error; 3 not found (404);
//! 4 the service is unreachable, timed out or failed (5xx, 503 `store_unavailable`, ...).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const EXIT_CODES: &str = "Exit codes: 0 success; 1 the API refused the request (a 4xx other than \
                          404, e.g. 409 conflict, 422 validation, 401 unauthorized); 2 usage \
                          error; 3 not found (404); 4 unreachable, timed out or a server error \
                          (5xx).";

/// Inspect and steer an Agent System queue through its HTTP API.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, after_help = EXIT_CODES)]
struct Cli {
    /// The orchestrator's base URL.
    #[arg(
        long,
        env = "AGENT_URL",
        default_value = "http://localhost:8001",
        global = true
    )]
    url: String,
    /// Bearer token, when the orchestrator has AUTH_TOKENS set.
    #[arg(long, env = "AGENT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for an answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Queue depth, oldest age and pause state per priority, in flight, workers, dead letters.
    Stats {
        /// Refresh until interrupted (Ctrl-C).
        #[arg(long)]
        watch: bool,
        /// Time between refreshes with --watch.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// List the tasks in one status, a page at a time.
    Ls {
        /// queued, scheduled, running, retrying, dead, succeeded or cancelled.
        #[arg(long)]
        status: String,
        /// Only this priority (1-10).
        #[arg(long)]
        priority: Option<u8>,
        /// Tasks examined per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start where a previous page ended (its next cursor).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow the cursors to the end of the listing.
        #[arg(long)]
        all: bool,
    },
    /// One task's record.
    Show {
        /// Task id.
        id: String,
    },
    /// Submit a task.
    Submit {
        /// What to do.
        description: String,
        /// 1 (most urgent) to 10.
        #[arg(long)]
        priority: Option<u8>,
        /// Start after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "run_at")]
        delay: Option<Duration>,
        /// Start at this RFC 3339 time.
        #[arg(long)]
        run_at: Option<String>,
        /// Execution deadline (e.g. 90s).
        #[arg(long = "task-timeout", value_parser = humantime::parse_duration)]
        task_timeout: Option<Duration>,
        /// Idempotency-Key: a retry with the same key never creates a second task.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Cancel a task that has not started.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Queue a dead or cancelled task again.
    Retry {
        /// Task id.
        id: String,
    },
    /// Pause a priority level: its queued tasks are not started.
    Pause {
        /// Priority level, 1-10.
        priority: u8,
    },
    /// Resume a paused priority level.
    Resume {
        /// Priority level, 1-10.
        priority: u8,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: 4,
            message: message.into(),
        }
    }

    /// From an error answer: its `{"error": {"code", "message"}}` when it has one.
    fn from_answer(status: StatusCode, body: &Value) -> Self {
        let code = match status.as_u16() {
            404 => 3,
            400..=499 => 1,
            _ => 4,
        };
        let error = &body["error"];
        let message = match (error["code"].as_str(), error["message"].as_str()) {
            (Some(kind), Some(text)) => format!("{status}: {kind}: {text}"),
            _ => format!("{status}: {body}"),
        };
        Self { code, message }
    }
}

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(cli: &Cli) -> Result<Self, Failure> {
        let http = reqwest::Client::builder()
            .timeout(cli.timeout)
            .build()
            .map_err(|e| Failure::unavailable(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            base: cli.url.trim_end_matches('/').to_owned(),
            token: cli.token.clone().filter(|t| !t.is_empty()),
            http,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else {
                "unreachable"
            };
            Failure::unavailable(format!("{url}: {why}: {e}"))
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::unavailable(format!("{url}: reading the answer: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(body)
        } else {
            Err(Failure::from_answer(status, &body))
        }
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.call(Method::GET, path, query, None, &[]).await
    }

    async fn post(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::POST, path, &[], None, &[]).await
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn stats_table(stats: &Value) -> String {
    let paused: Vec<u64> = stats["paused"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "priority",
        "queued",
        "in flight",
        "oldest (ms)",
        "paused",
    ]);
    for p in 1..=10u64 {
        let key = p.to_string();
        table.add_row(vec![
            key.clone(),
            text(&stats["queued"][&key]),
            text(&stats["in_flight_by_priority"][&key]),
            text(&stats["oldest_queued_age_ms"][&key]),
            if paused.contains(&p) { "yes" } else { "" }.to_owned(),
        ]);
    }
    let mut out = format!(
        "{table}\nqueued {}  in flight {}  scheduled {}  retrying {}  dead {}  live workers {}\n",
        text(&stats["queued_total"]),
        text(&stats["in_flight"]),
        text(&stats["scheduled"]),
        text(&stats["retry_scheduled"]),
        text(&stats["dead_lettered"]),
        text(&stats["live_workers"]),
    );
    if let Some(letters) = stats["dead_letters"].as_array().filter(|a| !a.is_empty()) {
        let mut table = Table::new();
        table
            .load_preset(UTF8_BORDERS_ONLY)
            .set_header(vec!["dead letter", "at", "error"]);
        for letter in letters {
            table.add_row(vec![
                text(&letter["id"]),
                text(&letter["at"]),
                text(&letter["error"]),
            ]);
        }
        out.push_str(&format!("{table}\n"));
    }
    out
}

fn tasks_table(tasks: &[Value]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "id",
        "status",
        "priority",
        "attempts",
        "created",
        "description",
    ]);
    for task in tasks {
        let mut description = text(&task["description"]);
        if description.chars().count() > 40 {
            description = description.chars().take(39).collect::<String>() + "…";
        }
        table.add_row(vec![
            text(&task["id"]),
            text(&task["status"]),
            text(&task["priority"]),
            format!(
                "{}/{}",
                text(&task["attempts"]),
                text(&task["max_attempts"])
            ),
            text(&task["created_at"]),
            description,
        ]);
    }
    table.to_string()
}

fn task_table(task: &Value) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    if let Some(fields) = task.as_object() {
        for (name, value) in fields {
            table.add_row(vec![name.clone(), text(value)]);
        }
    }
    table.to_string()
}

/// Prints `value` as JSON with `--json`, else as `human`.
fn show(json_out: bool, value: &Value, human: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{}", human(value).trim_end());
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let api = Api::new(&cli)?;
    match &cli.command {
        Command::Stats { watch, interval } => {
            if !watch {
                let stats = api.get("/stats", &[]).await?;
                show(cli.json, &stats, stats_table);
                return Ok(());
            }
            let terminal = std::io::stdout().is_terminal() && !cli.json;
            loop {
                let block = match api.get("/stats", &[]).await {
                    Ok(stats) if cli.json => format!("{stats}\n"),
                    Ok(stats) => stats_table(&stats),
                    // keep watching through an outage, and say so
                    Err(failure) => format!("{}\n", failure.message),
                };
                let mut out = std::io::stdout().lock();
                let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                let written = if terminal {
                    // clear the screen and redraw in place
                    write!(out, "\x1b[2J\x1b[H{stamp}  {}\n{block}", api.base)
                } else if cli.json {
                    write!(out, "{block}")
                } else {
                    write!(out, "{stamp}\n{block}\n")
                };
                if written.and_then(|()| out.flush()).is_err() {
                    return Ok(()); // the reader went away (a pipe closed)
                }
                drop(out);
                tokio::select! {
                    () = tokio::time::sleep(*interval) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        Command::Ls {
            status,
            priority,
            limit,
            cursor,
            all,
        } => {
            let mut cursor = cursor.clone();
            let mut listed = Vec::new();
            loop {
                let mut query = vec![("status", status.clone()), ("limit", limit.to_string())];
                if let Some(p) = priority {
                    query.push(("priority", p.to_string()));
                }
                if let Some(c) = &cursor {
                    query.push(("cursor", c.clone()));
                }
                let page = api.get("/tasks", &query).await?;
                let next = page["next_cursor"].as_str().map(str::to_owned);
                if !all {
                    show(cli.json, &page, |page| {
                        let tasks = page["tasks"].as_array().cloned().unwrap_or_default();
                        let mut out = tasks_table(&tasks);
                        if let Some(next) = &next {
                            out.push_str(&format!("\nmore: --cursor {next}"));
                        }
                        out
                    });
                    return Ok(());
                }
                listed.extend(page["tasks"].as_array().cloned().unwrap_or_default());
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            let all_tasks = json!({ "tasks": listed, "next_cursor": null });
            show(cli.json, &all_tasks, |v| {
                tasks_table(v["tasks"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
            Ok(())
        }
        Command::Show { id } => {
            let task = api.get(&format!("/tasks/{id}"), &[]).await?;
            show(cli.json, &task, task_table);
            Ok(())
        }
        Command::Submit {
            description,
            priority,
            delay,
            run_at,
            task_timeout,
            idempotency_key,
        } => {
            let mut body = json!({ "description": description });
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            if let Some(delay) = delay {
                body["delay_ms"] = json!(delay.as_millis() as u64);
            }
            if let Some(at) = run_at {
                body["run_at"] = json!(at);
            }
            if let Some(timeout) = task_timeout {
                body["timeout_ms"] = json!(timeout.as_millis() as u64);
            }
            let headers: Vec<(&str, String)> = idempotency_key
                .iter()
                .map(|k| ("Idempotency-Key", k.clone()))
                .collect();
            let task = api
                .call(Method::POST, "/tasks", &[], Some(body), &headers)
                .await?;
            show(cli.json, &task, task_table);
            Ok(())
        }
        Command::Cancel { id } => {
            let task = api
                .call(Method::DELETE, &format!("/tasks/{id}"), &[], None, &[])
                .await?;
            show(cli.json, &task, task_table);
            Ok(())
        }
        Command::Retry { id } => {
            let task = api.post(&format!("/tasks/{id}/retry")).await?;
            show(cli.json, &task, task_table);
            Ok(())
        }
        Command::Pause { priority } | Command::Resume { priority } => {
            let action = if matches!(cli.command, Command::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            let state = api
                .post(&format!("/priorities/{priority}/{action}"))
                .await?;
            show(cli.json, &state, |s| {
                let verb = if s["paused"] == true {
                    "paused"
                } else {
                    "running"
                };
                format!("priority {}: {verb}", text(&s["priority"]))
            });
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "agentctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // clap exits with 2 on a usage error
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("agentctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn error_answers_map_to_the_documented_exit_codes() {
        let body = json!({"error": {"code": "conflict", "message": "task x is queued"}});
        for (status, code) in [
            (StatusCode::NOT_FOUND, 3),
            (StatusCode::CONFLICT, 1),
            (StatusCode::UNPROCESSABLE_ENTITY, 1),
            (StatusCode::UNAUTHORIZED, 1),
            (StatusCode::SERVICE_UNAVAILABLE, 4),
            (StatusCode::INTERNAL_SERVER_ERROR, 4),
        ] {
            let failure = Failure::from_answer(status, &body);
            assert_eq!(failure.code, code, "{status}");
            assert!(failure.message.contains("conflict: task x is queued"));
        }
    }
}
