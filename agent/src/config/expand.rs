//! `${NAME}` references in config values, expanded from the environment.
//!
//! The one grammar of every value that says it expands (ClickHouse
//! `user`/`password`, OTLP `endpoint`/`headers`):
//!
//! - `${NAME}` and `${env:NAME}` are the value of the environment variable
//!   `NAME` (blanks around `NAME` are ignored);
//! - `NAME` is ASCII letters, digits, `_`, `.` and `-`, not starting with a
//!   digit;
//! - `$$` is a literal `$`; a `$` followed by anything else is kept as is
//!   (`cost $5` stays `cost $5`).
//!
//! An unset variable, a `${` without its `}` and a malformed name are
//! errors: a credential is never silently empty.

/// Why [`expand_env`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("environment variable {0} (referenced as ${{{0}}}) is not set")]
    Unset(String),
    #[error("unterminated ${{ (expected ${{NAME}} or ${{env:NAME}})")]
    Unterminated,
    #[error("malformed ${{{0}}} (expected ${{NAME}} or ${{env:NAME}})")]
    BadName(String),
}

/// Expands `text` with `env` as the environment (see the module docs).
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or(ExpandError::Unterminated)?;
            let raw = &tail[..end];
            let name = raw.strip_prefix("env:").unwrap_or(raw).trim();
            if !valid_name(name) {
                return Err(ExpandError::BadName(raw.to_owned()));
            }
            let value = env(name).ok_or_else(|| ExpandError::Unset(name.to_owned()))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand_env`] with the process environment.
pub fn expand_process_env(text: &str) -> Result<String, ExpandError> {
    expand_env(text, &|name| std::env::var(name).ok())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "PW").then(|| "s3cret".to_owned());
        assert_eq!(expand_env("${PW}", &env).unwrap(), "s3cret");
        assert_eq!(expand_env("a-${PW}-b", &env).unwrap(), "a-s3cret-b");
        assert_eq!(expand_env("cost $5 $$", &env).unwrap(), "cost $5 $");
        assert_eq!(expand_env("plain", &env).unwrap(), "plain");
        assert_eq!(
            expand_env("${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert!(matches!(
            expand_env("${PW", &env),
            Err(ExpandError::Unterminated)
        ));
    }

    #[test]
    fn header_env_expansion() {
        let env = |n: &str| match n {
            "HONEYCOMB_API_KEY" => Some("k3y".to_owned()),
            "U" => Some("u".to_owned()),
            _ => None,
        };
        assert_eq!(expand_env("${HONEYCOMB_API_KEY}", &env).unwrap(), "k3y");
        assert_eq!(
            expand_env("Basic ${env:U}:$${x} $5", &env).unwrap(),
            "Basic u:${x} $5"
        );
        assert_eq!(
            expand_env("${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert_eq!(expand_env("${U", &env), Err(ExpandError::Unterminated));
        assert_eq!(
            expand_env("${1A}", &env),
            Err(ExpandError::BadName("1A".into()))
        );
    }

    #[test]
    fn both_forms_blanks_and_kubernetes_names() {
        let env = |n: &str| match n {
            "A" => Some("a".to_owned()),
            "my.var-1" => Some("k".to_owned()),
            _ => None,
        };
        assert_eq!(
            expand_env("${A}${env:A}${ A }${env: A }", &env).unwrap(),
            "aaaa"
        );
        assert_eq!(expand_env("${my.var-1}", &env).unwrap(), "k");
        assert_eq!(expand_env("$", &env).unwrap(), "$");
        assert_eq!(expand_env("a$", &env).unwrap(), "a$");
        assert_eq!(expand_env("$$$$", &env).unwrap(), "$$");
        assert_eq!(expand_env("$${A}", &env).unwrap(), "${A}");
        // The value is not expanded again.
        let env2 = |n: &str| (n == "X").then(|| "${A}".to_owned());
        assert_eq!(expand_env("${X}", &env2).unwrap(), "${A}");
        for bad in ["${}", "${env:}", "${ }", "${a b}", "${a}b}x${", "${x=y}"] {
            assert!(expand_env(bad, &env).is_err(), "{bad}");
        }
        assert_eq!(
            expand_env("${env:NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
    }

    #[test]
    fn unset_message_names_the_variable() {
        let err = expand_env("${CH_PW}", &|_| None).unwrap_err().to_string();
        assert_eq!(
            err,
            "environment variable CH_PW (referenced as ${CH_PW}) is not set"
        );
    }
}
