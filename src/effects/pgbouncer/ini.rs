//! The text of pgbouncer.ini: the operator's file (`--pgbouncer-ini`) with compute_ctl's keys
//! put into its `[pgbouncer]` section. Pure text; everything else in the file (other sections,
//! comments, `%include` lines, the order of lines) is kept as the operator wrote it.
//!
//! An overridden key is not edited in place: each line that sets it in `[pgbouncer]` is
//! commented out (`;compute_ctl: <line>`) and compute_ctl's lines are appended at the end of
//! the section. pgbouncer's parser takes the last value of a key, so this holds whatever the
//! operator's file does; the file says where each value comes from.

/// What compute_ctl puts before a line of the operator's it overrides.
const OVERRIDDEN: &str = ";compute_ctl: ";
/// The comment that opens compute_ctl's own block.
const BLOCK: &str = "; set by compute_ctl (its own keys, then the spec's pgbouncer_settings)";

/// The operator's pgbouncer.ini, as read at startup.
#[derive(Debug, Clone)]
pub struct Ini {
    text: String,
}

/// `[name]` when the line is a section header.
fn section(line: &str) -> Option<&str> {
    let line = line.trim();
    line.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

/// `(key, value)` when the line sets a key (not a comment, header or directive).
fn key_value(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with([';', '#', '%', '[']) {
        return None;
    }
    let (key, value) = line.split_once('=')?;
    Some((key.trim(), value.trim()))
}

impl Ini {
    pub fn new(text: String) -> Self {
        Self { text }
    }

    /// The value the file gives `key` in `[pgbouncer]` (the last one, as pgbouncer reads it).
    pub fn get(&self, key: &str) -> Option<String> {
        let mut in_section = false;
        let mut found = None;
        for line in self.text.lines() {
            if let Some(name) = section(line) {
                in_section = name.eq_ignore_ascii_case("pgbouncer");
            } else if in_section
                && let Some((k, v)) = key_value(line)
                && k.eq_ignore_ascii_case(key)
            {
                found = Some(v.to_owned());
            }
        }
        found
    }

    /// The file with `settings` (in order; a repeated key keeps its last value) as the values
    /// of `[pgbouncer]`. A file without that section gets one at its end.
    pub fn with(&self, settings: &[(String, String)]) -> String {
        let overridden = |key: &str| settings.iter().any(|(k, _)| k.eq_ignore_ascii_case(key));
        let block = {
            let mut block = format!("{BLOCK}\n");
            for (key, value) in settings {
                block.push_str(&format!("{key} = {value}\n"));
            }
            block
        };
        let mut out = String::with_capacity(self.text.len() + block.len() + 64);
        let mut in_section = false;
        let mut placed = false;
        for line in self.text.lines() {
            if let Some(name) = section(line) {
                if in_section && !placed {
                    out.push_str(&block);
                    placed = true;
                }
                in_section = name.eq_ignore_ascii_case("pgbouncer");
            } else if in_section
                && let Some((key, _)) = key_value(line)
                && overridden(key)
            {
                out.push_str(OVERRIDDEN);
                out.push_str(line);
                out.push('\n');
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        if !placed {
            if !in_section {
                out.push_str("\n[pgbouncer]\n");
            }
            out.push_str(&block);
        }
        out
    }
}

/// Value lists of pgbouncer (`admin_users`, `listen_addr`): comma-separated, spaces allowed.
pub fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// The lines of an `auth_file` without those of `user`: the file compute_ctl writes is the
/// operator's with its own user's line in place of any the operator had.
pub fn auth_file_without(text: &str, user: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if first_quoted(line).as_deref() == Some(user) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A line of an `auth_file`: `"user" "password"`, a `"` inside doubled.
pub fn auth_file_line(user: &str, password: &str) -> String {
    format!(
        "\"{}\" \"{}\"\n",
        user.replace('"', "\"\""),
        password.replace('"', "\"\"")
    )
}

/// The first `"…"` of an auth_file line, undoubled.
fn first_quoted(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
                out.push('"');
            } else {
                return Some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "\
; the operator's comment
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_port = 6432
default_pool_size = 20 ; inline
admin_users = ops
%include /etc/pgbouncer/extra.ini

[users]
x = pool_mode=session
";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_are_read_from_the_pgbouncer_section_only() {
        let ini = Ini::new(OPERATOR.into());
        assert_eq!(ini.get("listen_port").as_deref(), Some("6432"));
        assert_eq!(ini.get("LISTEN_PORT").as_deref(), Some("6432"));
        assert_eq!(ini.get("x"), None);
        assert_eq!(ini.get("pool_mode"), None);
    }

    #[test]
    fn overrides_go_at_the_end_of_the_section_and_the_rest_stays() {
        let ini = Ini::new(OPERATOR.into());
        let text = ini.with(&pairs(&[("default_pool_size", "42"), ("auth_user", "a")]));
        assert_eq!(
            text,
            "\
; the operator's comment
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_port = 6432
;compute_ctl: default_pool_size = 20 ; inline
admin_users = ops
%include /etc/pgbouncer/extra.ini

; set by compute_ctl (its own keys, then the spec's pgbouncer_settings)
default_pool_size = 42
auth_user = a
[users]
x = pool_mode=session
"
        );
        let again = Ini::new(text);
        assert_eq!(again.get("default_pool_size").as_deref(), Some("42"));
        assert_eq!(again.get("admin_users").as_deref(), Some("ops"));
    }

    #[test]
    fn a_file_without_the_section_gets_one() {
        let ini = Ini::new("[databases]\n* = port=1\n".into());
        let text = ini.with(&pairs(&[("listen_port", "7")]));
        assert!(text.ends_with("[pgbouncer]\n; set by compute_ctl (its own keys, then the spec's pgbouncer_settings)\nlisten_port = 7\n"), "{text}");
        assert_eq!(Ini::new(text).get("listen_port").as_deref(), Some("7"));
    }

    #[test]
    fn auth_file_lines() {
        let text = "\"ops\" \"secret\"\n\"me\" \"old\"\n\"a\"\"b\" \"x\"\n";
        assert_eq!(
            auth_file_without(text, "me"),
            "\"ops\" \"secret\"\n\"a\"\"b\" \"x\"\n"
        );
        assert_eq!(
            auth_file_without(text, "a\"b"),
            "\"ops\" \"secret\"\n\"me\" \"old\"\n"
        );
        assert_eq!(auth_file_line("u\"", "p"), "\"u\"\"\" \"p\"\n");
        assert_eq!(list(" a, b ,,c").collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
