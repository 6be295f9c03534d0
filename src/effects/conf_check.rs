//! Postgres's verdict on the configuration files as they are on disk, asked before a reload.
//!
//! - `pg_file_settings`, read over a connection, re-reads the files as the running server
//!   would apply them on a reload: every line it could not apply, with its file and line. A
//!   changed setting that needs a restart is listed there (`setting could not be applied`), and
//!   so is a bad value, in the same words; a line that does not parse or names an unknown
//!   parameter says so.
//! - Only when it lists something, `postgres -D <pgdata> -C port` reads the files as a
//!   starting postmaster would (every setting settable, every value parsed and checked) and
//!   says why it refuses them, in Postgres's words: `syntax error in file
//!   "…/postgresql.conf" line 3, near token "="`, `invalid value for parameter "work_mem":
//!   "lots"`. It needs no connection and is safe on a running server (about 30 ms). It does
//!   not load `shared_preload_libraries`, so it cannot check an extension's settings: a value
//!   of those that the server cannot apply is refused in `pg_file_settings`' words.
//!
//! A line that only needs a restart is a warning (the running value is kept); anything else
//! is a rejection.

use std::process::Stdio;

use anyhow::{Context, bail};
use sqlx::{Connection, Row};

use super::{process, sql};
use crate::node::Node;

const APPLICATION_NAME: &str = "compute_ctl:check_config";

/// What `pg_file_settings` reports for a setting Postgres could not take: a changed setting
/// that needs a restart, or a value it refused.
const NOT_APPLIED: &str = "setting could not be applied";

/// Check the configuration files on disk. `Ok` with the lines the running Postgres will not
/// take until a restart (warnings); an error with Postgres's words when it rejects the files,
/// or when it could not be asked.
pub async fn check(node: &Node) -> anyhow::Result<Vec<String>> {
    let options = sql::options(node, node.default_database(), APPLICATION_NAME);
    let mut conn = sql::connect(&options, sql::connect_timeout(node))
        .await
        .context("connecting to postgres to check the configuration")?;
    let checked = check_on(node, &mut conn).await;
    conn.close().await.ok();
    checked
}

/// [`check`] on a session of compute_ctl's that is open already.
pub async fn check_on(node: &Node, conn: &mut sqlx::PgConnection) -> anyhow::Result<Vec<String>> {
    let rows = file_settings(conn).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let refusal = startup_check(node).await?;
    verdict(&refusal, &rows).map_err(anyhow::Error::msg)
}

/// Run `postgres -C port` on PGDATA: Postgres's messages if it refuses the files, else none.
async fn startup_check(node: &Node) -> anyhow::Result<Vec<String>> {
    let output = process::output(
        process::command(node, &node.postgres)
            .arg("-D")
            .arg(&node.pgdata)
            .args(["-C", "port"])
            .stdin(Stdio::null()),
    )
    .await
    .with_context(|| format!("running {} -C port", node.postgres.display()))?;
    if output.status.success() {
        return Ok(Vec::new());
    }
    let messages = messages(&String::from_utf8_lossy(&output.stderr));
    if messages.is_empty() {
        bail!(
            "{} -C port failed ({}) without a message",
            node.postgres.display(),
            output.status
        );
    }
    Ok(messages)
}

/// Postgres's messages from its stderr, without the log line prefix; a `DETAIL` or `HINT`
/// goes with the message before it.
fn messages(stderr: &str) -> Vec<String> {
    const LEVELS: [&str; 6] = [
        "FATAL:  ",
        "ERROR:  ",
        "WARNING:  ",
        "LOG:  ",
        "DETAIL:  ",
        "HINT:  ",
    ];
    let mut out: Vec<String> = Vec::new();
    for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let found = LEVELS
            .iter()
            .filter_map(|level| line.find(level).map(|at| (at, *level)))
            .min();
        match found {
            Some((at, level @ ("DETAIL:  " | "HINT:  "))) if !out.is_empty() => {
                let text = line[at + level.len()..].trim();
                let last = out.last_mut().expect("not empty");
                last.push_str(&format!(
                    " ({}: {text})",
                    level.trim_end_matches([':', ' '])
                ));
            }
            Some((at, level)) => out.push(line[at + level.len()..].trim().to_owned()),
            None => out.push(line.to_owned()),
        }
    }
    out
}

/// A line of the configuration files that Postgres cannot apply (`pg_file_settings`).
#[derive(Debug, Clone, PartialEq)]
struct FileError {
    file: Option<String>,
    line: Option<i32>,
    /// `None` for a line that does not parse.
    name: Option<String>,
    setting: Option<String>,
    error: String,
    /// The setting can only change at a restart.
    postmaster: bool,
}

async fn file_settings(conn: &mut sqlx::PgConnection) -> anyhow::Result<Vec<FileError>> {
    let rows = sqlx::query(
        "SELECT f.sourcefile, f.sourceline, f.name, f.setting, f.error, \
         coalesce(s.context = 'postmaster', false) \
         FROM pg_catalog.pg_file_settings f \
         LEFT JOIN pg_catalog.pg_settings s ON s.name = f.name \
         WHERE f.error IS NOT NULL ORDER BY f.seqno",
    )
    .fetch_all(conn)
    .await
    .context("reading pg_file_settings")?;
    rows.iter()
        .map(|row| {
            Ok(FileError {
                file: row.try_get(0)?,
                line: row.try_get(1)?,
                name: row.try_get(2)?,
                setting: row.try_get(3)?,
                error: row.try_get(4)?,
                postmaster: row.try_get(5)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("reading pg_file_settings")
}

/// The warnings, or why Postgres rejects the files. `refusal` holds the messages of
/// `postgres -C` (empty when it accepted them), `rows` what `pg_file_settings` could not apply.
fn verdict(refusal: &[String], rows: &[FileError]) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let mut rejected = Vec::new();
    for row in rows {
        // Postgres's own messages about this line: they name the parameter, or the file and
        // line of a syntax error.
        let about: Vec<&String> = refusal
            .iter()
            .filter(|m| match (&row.name, row.line) {
                (Some(name), _) => m.contains(&format!("parameter \"{name}\"")),
                (None, Some(line)) => says_line(m, line),
                (None, None) => false,
            })
            .collect();
        let restart_only =
            row.name.is_some() && row.error == NOT_APPLIED && row.postmaster && about.is_empty();
        let setting = row.setting.as_deref().unwrap_or_default();
        if restart_only {
            let name = row.name.as_deref().unwrap_or_default();
            warnings.push(format!(
                "{name} = {setting:?} needs a restart of Postgres to take effect ({}); \
                 the running value is kept",
                row.error
            ));
            continue;
        }
        let line = row.line.unwrap_or_default();
        let place = format!(
            "\"{}\" line {line}",
            row.file.as_deref().unwrap_or("postgresql.conf")
        );
        let what = match (about.is_empty(), &row.name) {
            (false, _) => about
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            (true, Some(name)) => format!("{name} = {setting:?}: {}", row.error),
            (true, None) => row.error.clone(),
        };
        // A syntax error's message already says where it is.
        if says_line(&what, line) {
            rejected.push(what);
        } else {
            rejected.push(format!("{place}: {what}"));
        }
    }
    if !rejected.is_empty() {
        return Err(format!(
            "postgres rejects the configuration files: {}",
            rejected.join("; ")
        ));
    }
    if !refusal.is_empty() {
        return Err(format!(
            "postgres rejects the configuration files: {}",
            refusal.join("; ")
        ));
    }
    Ok(warnings)
}

/// Whether `message` names line `line` (`line 8` but not `line 81`).
fn says_line(message: &str, line: i32) -> bool {
    let needle = format!("line {line}");
    message
        .match_indices(&needle)
        .any(|(at, _)| !message[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "/d/postgresql.conf";

    fn row(
        line: i32,
        name: Option<&str>,
        setting: Option<&str>,
        error: &str,
        pm: bool,
    ) -> FileError {
        FileError {
            file: Some(CONF.into()),
            line: Some(line),
            name: name.map(Into::into),
            setting: setting.map(Into::into),
            error: error.into(),
            postmaster: pm,
        }
    }

    #[test]
    fn messages_lose_their_prefix_and_keep_details() {
        let stderr = "\
2026-12-04 20:43:55.105 GMT [22705] LOG:  syntax error in file \"/d/postgresql.conf\" line 818, near token \"=\"
2026-12-04 20:43:55.105 GMT [22705] FATAL:  configuration file \"/d/postgresql.conf\" contains errors
2026-12-04 20:43:55.185 UTC [22711] LOG:  invalid value for parameter \"wal_level\": \"x\"
2026-12-04 20:43:55.185 UTC [22711] HINT:  Available values: minimal, replica, logical.
";
        assert_eq!(
            messages(stderr),
            [
                "syntax error in file \"/d/postgresql.conf\" line 818, near token \"=\"",
                "configuration file \"/d/postgresql.conf\" contains errors",
                "invalid value for parameter \"wal_level\": \"x\" (HINT: Available values: minimal, replica, logical.)",
            ]
        );
    }

    #[test]
    fn a_change_that_needs_a_restart_is_a_warning() {
        let rows = [row(
            9,
            Some("max_connections"),
            Some("77"),
            NOT_APPLIED,
            true,
        )];
        let warnings = verdict(&[], &rows).unwrap();
        assert_eq!(
            warnings,
            [
                "max_connections = \"77\" needs a restart of Postgres to take effect (setting could not be applied); the running value is kept"
            ]
        );
    }

    #[test]
    fn a_syntax_error_is_rejected_with_postgres_words() {
        let refusal = vec![
            format!("syntax error in file \"{CONF}\" line 818, near token \"=\""),
            format!("configuration file \"{CONF}\" contains errors"),
        ];
        let rows = [row(818, None, None, "syntax error", false)];
        let error = verdict(&refusal, &rows).unwrap_err();
        assert_eq!(
            error,
            format!("postgres rejects the configuration files: {}", refusal[0])
        );
        // Without the startup check's words: the file, the line and pg_file_settings' error.
        let error = verdict(&[], &rows).unwrap_err();
        assert!(
            error.ends_with(&format!("\"{CONF}\" line 818: syntax error")),
            "{error}"
        );
    }

    #[test]
    fn bad_values_are_rejected_and_restarts_told_apart() {
        let refusal = vec![
            "invalid value for parameter \"work_mem\": \"lots\"".to_owned(),
            "invalid value for parameter \"shared_buffers\": \"x\"".to_owned(),
            format!("configuration file \"{CONF}\" contains errors"),
        ];
        let rows = [
            row(5, Some("work_mem"), Some("lots"), NOT_APPLIED, false),
            row(6, Some("shared_buffers"), Some("x"), NOT_APPLIED, true),
            row(7, Some("max_connections"), Some("77"), NOT_APPLIED, true),
        ];
        let error = verdict(&refusal, &rows).unwrap_err();
        assert_eq!(
            error,
            format!(
                "postgres rejects the configuration files: \"{CONF}\" line 5: {}; \"{CONF}\" line 6: {}",
                refusal[0], refusal[1]
            )
        );
        // A value the startup check cannot see (an extension's): pg_file_settings' words.
        let rows = [row(
            4,
            Some("pg_stat_statements.track"),
            Some("x"),
            NOT_APPLIED,
            false,
        )];
        let error = verdict(&[], &rows).unwrap_err();
        assert!(
            error.ends_with(&format!(
                "\"{CONF}\" line 4: pg_stat_statements.track = \"x\": setting could not be applied"
            )),
            "{error}"
        );
    }

    #[test]
    fn lines_are_named_exactly() {
        assert!(says_line("in file \"x\" line 8, near", 8));
        assert!(says_line("in file \"x\" line 8", 8));
        assert!(!says_line("in file \"x\" line 81", 8));
    }

    #[test]
    fn a_refusal_without_rows_is_still_a_rejection() {
        let refusal = vec!["could not open configuration file \"x\"".to_owned()];
        let error = verdict(&refusal, &[]).unwrap_err();
        assert!(
            error.ends_with("could not open configuration file \"x\""),
            "{error}"
        );
        assert_eq!(verdict(&[], &[]).unwrap(), Vec::<String>::new());
    }
}
