//! The one module that turns untrusted text into SQL or `postgresql.conf` text.
//!
//! Role names, database names, passwords and setting values arrive in the spec from the
//! control plane, and some of them are chosen by end users (Neon's own test fixture has a role
//! named `"name";\n select 1;`). Every place that builds SQL or configuration text from such a
//! value must go through a function here, never through `format!` with a bare `{}`: that way
//! there is exactly one implementation of each quoting rule to review and test, and a grep for
//! `quote::` shows every place where outside text meets a parser.
//!
//! The rules (Neon reference §6.5):
//! * [`ident`]: SQL identifier, `"..."` with `"` doubled.
//! * [`literal`]: SQL string literal that means the same whatever `standard_conforming_strings`
//!   is: `'` doubled, and if there is a backslash it is doubled and the literal written `E'...'`.
//! * [`dollar`]: dollar quoting with the shortest tag `x`, `xx`, ... that the body does not
//!   contain, for names embedded in PL/pgSQL `DO` blocks.
//! * [`conf_value`]: a quoted `postgresql.conf` value, `'` and `\` doubled, always `'...'`.
//! * [`conf_name`] and [`conf_raw`]: a setting name and an unquoted setting value cannot be
//!   quoted at all in `postgresql.conf`, so they are checked instead and returned unchanged.
//!
//! PostgreSQL cannot store a NUL byte in any text, so every function that returns a `Result`
//! refuses one; `postgresql.conf` additionally cannot hold a newline inside a value.

/// Text that cannot be quoted safely for the requested context. The message starts with the
/// offending value in Debug form; [`QuoteError::problem`] is the message without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// PostgreSQL stores text as C strings: a NUL byte cannot be represented anywhere.
    #[error("{value:?} {}", QuoteError::NUL)]
    Nul { value: String },
    /// A `postgresql.conf` value ends at the end of the line; a line break cannot be quoted.
    #[error("{value:?} {}", QuoteError::NEWLINE)]
    Newline { value: String },
    /// `""` is not a valid SQL identifier ("zero-length delimited identifier").
    #[error("{value:?} {}", QuoteError::EMPTY_IDENT)]
    EmptyIdent { value: String },
    /// A `postgresql.conf` setting name is written bare, so it must be a plain name.
    #[error("{value:?} {}", QuoteError::NOT_A_NAME)]
    NotAName { value: String },
    /// A value written without quotes must be one bare token.
    #[error("{value:?} {}", QuoteError::NOT_A_TOKEN)]
    NotAToken { value: String },
    /// `pg_hba.conf` has no escape for `"` inside a quoted name.
    #[error("{value:?} {}", QuoteError::NOT_IN_HBA)]
    NotInHba { value: String },
}

impl QuoteError {
    const NUL: &str = "contains a NUL byte, which PostgreSQL cannot store";
    const NEWLINE: &str = "contains a line break, which cannot be written in postgresql.conf";
    const EMPTY_IDENT: &str = "is empty, and an SQL identifier cannot be empty";
    const NOT_A_NAME: &str = "is not a valid name in postgresql.conf (expected letters, \
                              digits and '_', optionally one '.' between two such names, not \
                              starting with a digit)";
    const NOT_A_TOKEN: &str = "cannot be written unquoted in postgresql.conf (allowed: one or \
                               more of A-Z a-z 0-9 _ . + : -)";
    const NOT_IN_HBA: &str = "cannot be named in pg_hba.conf (a double quote or a line break)";

    /// What is wrong, without the value: the message reads `<value> <problem>`.
    pub fn problem(&self) -> &'static str {
        match self {
            QuoteError::Nul { .. } => Self::NUL,
            QuoteError::Newline { .. } => Self::NEWLINE,
            QuoteError::EmptyIdent { .. } => Self::EMPTY_IDENT,
            QuoteError::NotAName { .. } => Self::NOT_A_NAME,
            QuoteError::NotAToken { .. } => Self::NOT_A_TOKEN,
            QuoteError::NotInHba { .. } => Self::NOT_IN_HBA,
        }
    }

    /// The text that was refused.
    pub fn value(&self) -> &str {
        match self {
            QuoteError::Nul { value }
            | QuoteError::Newline { value }
            | QuoteError::EmptyIdent { value }
            | QuoteError::NotAName { value }
            | QuoteError::NotAToken { value }
            | QuoteError::NotInHba { value } => value,
        }
    }
}

fn refuse_nul(value: &str) -> Result<(), QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul {
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A role name in `pg_hba.conf`: double-quoted, so that no name is read as a keyword (`all`),
/// a group (`+name`) or a file (`@name`). Postgres reads no escape inside the quotes: a name
/// with `"` or a line break is refused.
pub fn hba_name(name: &str) -> Result<String, QuoteError> {
    refuse_nul(name)?;
    if name.contains(['"', '\n', '\r']) {
        return Err(QuoteError::NotInHba {
            value: name.to_owned(),
        });
    }
    Ok(format!("\"{name}\""))
}

/// An SQL identifier: `"` + `name` with every `"` doubled + `"`.
///
/// Always quotes, so the name keeps its case and may be a keyword. It does not truncate: names
/// longer than 63 bytes are refused by spec validation, because PostgreSQL would silently cut
/// them and then refer to a different object.
pub fn ident(name: &str) -> Result<String, QuoteError> {
    refuse_nul(name)?;
    if name.is_empty() {
        return Err(QuoteError::EmptyIdent {
            value: name.to_owned(),
        });
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// An SQL string literal that is read the same whatever `standard_conforming_strings` is.
///
/// `'` is doubled. Without a backslash the result is `'...'`, which both settings read
/// literally. With a backslash, backslashes are doubled too and the result is `E'...'`, which
/// always processes escapes, so `\\` always means one backslash.
pub fn literal(value: &str) -> Result<String, QuoteError> {
    refuse_nul(value)?;
    let has_backslash = value.contains('\\');
    let mut out = String::with_capacity(value.len() + 3);
    if has_backslash {
        out.push('E');
    }
    out.push('\'');
    push_escaped(&mut out, value);
    out.push('\'');
    Ok(out)
}

/// A `postgresql.conf` string value: `'` doubled, `\` doubled, wrapped in `'...'`.
///
/// The configuration file lexer reads a quoted value up to the end of the line and processes
/// backslash escapes, so a backslash must be doubled; a line break cannot be inside a value at
/// all, so it is refused rather than escaped (Neon does not escape it either).
pub fn conf_value(value: &str) -> Result<String, QuoteError> {
    refuse_nul(value)?;
    if value.contains(['\n', '\r']) {
        return Err(QuoteError::Newline {
            value: value.to_owned(),
        });
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    push_escaped(&mut out, value);
    out.push('\'');
    Ok(out)
}

fn is_conf_ident(part: &str) -> bool {
    let mut chars = part.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A `postgresql.conf` setting name, returned unchanged if it can be written bare.
///
/// The file's lexer accepts a name `[A-Za-z_][A-Za-z0-9_]*`, optionally followed by one `.`
/// and a second such name (custom settings like `neon.safekeepers`); anything else is a syntax
/// error that stops the server from starting, so it is refused here instead.
pub fn conf_name(name: &str) -> Result<String, QuoteError> {
    refuse_nul(name)?;
    let ok = match name.split_once('.') {
        None => is_conf_ident(name),
        Some((class, rest)) => is_conf_ident(class) && is_conf_ident(rest),
    };
    if !ok {
        return Err(QuoteError::NotAName {
            value: name.to_owned(),
        });
    }
    Ok(name.to_owned())
}

/// A `postgresql.conf` value written without quotes (booleans, enums, numbers), returned
/// unchanged if it is one bare token `[A-Za-z0-9_.+:-]+`.
///
/// Whitespace, `#`, `'`, `=` or a line break would let the value end early, start a comment or
/// start another setting, so such values are refused: the caller must quote them with
/// [`conf_value`] or reject them.
pub fn conf_raw(value: &str) -> Result<String, QuoteError> {
    refuse_nul(value)?;
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | ':' | '-'));
    if !ok {
        return Err(QuoteError::NotAToken {
            value: value.to_owned(),
        });
    }
    Ok(value.to_owned())
}

/// Dollar quoting: `$tag$body$tag$` with the shortest tag `x`, `xx`, ... not contained in the
/// body, so the body cannot contain the closing delimiter.
///
/// The body is not otherwise checked: callers pass names that spec validation has already
/// checked for NUL bytes. An enclosing block should use a tag one `x` longer than the one used
/// here (see [`dollar_tag`]).
pub fn dollar(body: &str) -> String {
    let tag = dollar_tag(body);
    format!("${tag}${body}${tag}$")
}

/// The tag [`dollar`] uses for `body`: the shortest run of `x` that `body` does not contain.
pub fn dollar_tag(body: &str) -> String {
    let mut tag = String::from("x");
    while body.contains(tag.as_str()) {
        tag.push('x');
    }
    tag
}

/// `'` doubled and `\` doubled: the escaping shared by SQL `E'…'` literals and
/// postgresql.conf values.
fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECTION: &str = "\"name\";\n select 1;";

    #[test]
    fn ident_doubles_double_quotes() {
        assert_eq!(ident("postgres").unwrap(), r#""postgres""#);
        assert_eq!(ident(r#"zenith "new""#).unwrap(), r#""zenith ""new""""#);
        assert_eq!(ident(INJECTION).unwrap(), "\"\"\"name\"\";\n select 1;\"");
        assert_eq!(ident(r#"""#).unwrap(), r#""""""#);
    }

    #[test]
    fn ident_keeps_everything_else() {
        for name in [
            "MyRole",
            "a'b",
            "$x$",
            "back\\slash",
            "tab\there",
            "🐘 émoji",
            "select",
        ] {
            let quoted = ident(name).unwrap();
            assert_eq!(quoted, format!("\"{name}\""), "{name:?}");
        }
        let long = "a".repeat(63);
        assert_eq!(ident(&long).unwrap().len(), 65);
    }

    #[test]
    fn ident_refuses_empty_and_nul() {
        assert_eq!(
            ident(""),
            Err(QuoteError::EmptyIdent {
                value: String::new()
            })
        );
        let err = ident("a\0b").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""a\0b" contains a NUL byte, which PostgreSQL cannot store"#
        );
    }

    /// The quoted identifier, read back the way PostgreSQL's lexer reads it, is the name.
    #[test]
    fn ident_round_trips() {
        for name in [INJECTION, r#"""""#, "a\"b\"", "🐘", "$x$"] {
            let quoted = ident(name).unwrap();
            let inner = &quoted[1..quoted.len() - 1];
            assert!(!inner.replace("\"\"", "").contains('"'), "{quoted}");
            assert_eq!(inner.replace("\"\"", "\""), name);
        }
    }

    #[test]
    fn literal_plain_and_escaped() {
        assert_eq!(literal("").unwrap(), "''");
        assert_eq!(literal("C").unwrap(), "'C'");
        assert_eq!(literal("it's").unwrap(), "'it''s'");
        assert_eq!(literal("''").unwrap(), "''''''");
        assert_eq!(literal(r"a\b").unwrap(), r"E'a\\b'");
        assert_eq!(
            literal(r"\'; drop table x; --").unwrap(),
            r"E'\\''; drop table x; --'"
        );
        assert_eq!(literal(r"\").unwrap(), r"E'\\'");
        assert_eq!(
            literal("md56b1d16b78004bbd51fa06af9eda75972").unwrap(),
            "'md56b1d16b78004bbd51fa06af9eda75972'"
        );
    }

    #[test]
    fn literal_keeps_newlines_tabs_and_unicode() {
        assert_eq!(literal(INJECTION).unwrap(), "'\"name\";\n select 1;'");
        assert_eq!(literal("a\tb\r\nc").unwrap(), "'a\tb\r\nc'");
        assert_eq!(literal("🐘'").unwrap(), "'🐘'''");
        assert_eq!(literal("$x$").unwrap(), "'$x$'");
    }

    #[test]
    fn literal_refuses_nul() {
        assert!(matches!(literal("x\0"), Err(QuoteError::Nul { .. })));
    }

    #[test]
    fn conf_value_matches_neon() {
        let value = "here's a backslash \\ and a quote ' and a double-quote \" hooray";
        assert_eq!(
            conf_value(value).unwrap(),
            r#"'here''s a backslash \\ and a quote '' and a double-quote " hooray'"#
        );
        assert_eq!(conf_value("").unwrap(), "''");
        assert_eq!(conf_value("1MB").unwrap(), "'1MB'");
        assert_eq!(conf_value("a\tb #c").unwrap(), "'a\tb #c'");
        assert_eq!(conf_value("🐘").unwrap(), "'🐘'");
        assert_eq!(conf_value("$x$").unwrap(), "'$x$'");
    }

    #[test]
    fn conf_value_refuses_line_breaks_and_nul() {
        let err = conf_value("on'\nport = 1").unwrap_err();
        assert_eq!(
            err,
            QuoteError::Newline {
                value: "on'\nport = 1".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#""on'\nport = 1" contains a line break, which cannot be written in postgresql.conf"#
        );
        assert!(matches!(
            conf_value("a\rb"),
            Err(QuoteError::Newline { .. })
        ));
        assert!(matches!(conf_value("a\0b"), Err(QuoteError::Nul { .. })));
        assert!(matches!(
            conf_value(INJECTION),
            Err(QuoteError::Newline { .. })
        ));
    }

    #[test]
    fn conf_name_accepts_plain_and_qualified() {
        for name in ["fsync", "neon.safekeepers", "_a1", "test.escaping", "A.b_2"] {
            assert_eq!(conf_name(name).unwrap(), name);
        }
    }

    #[test]
    fn conf_name_refuses_what_the_lexer_rejects() {
        let bad = [
            "", "1a", "a b", "a=b", "a.b.c", "a.", ".a", "a..b", "a#", "a\nb", "a'", "é", "a-b",
        ];
        for name in bad {
            assert!(conf_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn conf_raw_accepts_tokens() {
        for value in [
            "on", "off", "32768", "-1", "1MB", "0.5", "1e-3", "+3", "a:b", "logical",
        ] {
            assert_eq!(conf_raw(value).unwrap(), value);
        }
    }

    #[test]
    fn conf_raw_refuses_injection() {
        let bad = [
            "",
            "on\nport = 1",
            "on # comment",
            "on'",
            "a b",
            "a\tb",
            "a=b",
            "'x'",
            "a\0",
            "🐘",
        ];
        for value in bad {
            assert!(
                matches!(
                    conf_raw(value),
                    Err(QuoteError::NotAToken { .. } | QuoteError::Nul { .. })
                ),
                "{value:?}"
            );
        }
    }

    #[test]
    fn dollar_picks_the_shortest_absent_tag() {
        assert_eq!(dollar("name"), "$x$name$x$");
        assert_eq!(dollar("x"), "$xx$x$xx$");
        assert_eq!(dollar("$x$"), "$xx$$x$$xx$");
        assert_eq!(dollar("xx $xxx$"), "$xxxx$xx $xxx$$xxxx$");
        assert_eq!(dollar(""), "$x$$x$");
        assert_eq!(dollar(INJECTION), "$x$\"name\";\n select 1;$x$");
        assert_eq!(dollar("a'b\\c🐘"), "$x$a'b\\c🐘$x$");
        assert_eq!(dollar_tag("name"), "x");
        assert_eq!(dollar_tag("xxx"), "xxxx");
    }

    /// The body can never contain the closing delimiter.
    #[test]
    fn dollar_body_never_contains_the_delimiter() {
        for body in [
            "$x$",
            "x$x$xx",
            "$xx$ $x$",
            "xxxxxxxx",
            "\"name\";\n select 1;",
        ] {
            let tag = dollar_tag(body);
            assert!(!body.contains(&format!("${tag}$")), "{body:?}");
        }
    }
}
