//! `redaction`: what is cut out of the bodies (and the attributes read from
//! them) before a record is stored or exported — shapes of secrets egret
//! knows (`builtins`), the operator's regular expressions (`patterns`) and
//! places in JSON bodies (`jsonPointers`). Applied by the recorder
//! (`redact`); checked here, at load.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest rule name (it becomes a metric label and part of the replacement).
const MAX_NAME: usize = 64;
/// Compiled size limit of one pattern (the `regex` crate's default is 10 MiB).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The redaction rules (none by default: nothing is redacted and the
/// recorder does no work for it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RedactionConfig {
    /// Secret shapes egret knows, by name.
    pub builtins: Vec<Builtin>,
    /// The operator's rules: a name and a regular expression (the `regex`
    /// crate's syntax: linear time, no look-around or back-references).
    pub patterns: Vec<PatternRule>,
    /// RFC 6901 JSON pointers into JSON bodies (`/messages/0/content`);
    /// a `*` token matches every member of an object or array.
    pub json_pointers: Vec<String>,
}

impl RedactionConfig {
    /// True when no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.builtins.is_empty() && self.patterns.is_empty() && self.json_pointers.is_empty()
    }

    /// Every text rule, in the order they are applied: the builtins (in
    /// [`Builtin::ALL`]'s order, whatever the file's: `sk-ant-…` is named
    /// by `anthropic_api_key` before `openai_api_key` could take it), then
    /// the patterns: (name, regular expression).
    pub fn text_rules(&self) -> impl Iterator<Item = (&str, &str)> {
        Builtin::ALL
            .into_iter()
            .filter(|b| self.builtins.contains(b))
            .map(|b| (b.name(), b.pattern()))
            .chain(
                self.patterns
                    .iter()
                    .map(|p| (p.name.as_str(), p.regex.as_str())),
            )
    }
}

/// One operator rule of `redaction.patterns`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatternRule {
    /// Shown in the replacement (`[REDACTED:<name>]`), in
    /// `egret.redaction.rules` and as the `rule` label of
    /// `egret_redactions_total`.
    pub name: String,
    /// What to cut out. With a group named `secret`, only that group is
    /// replaced (`token=(?P<secret>\w+)` keeps `token=`).
    pub regex: String,
}

/// The secret shapes egret knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Anthropic API keys (`sk-ant-…`).
    AnthropicApiKey,
    /// OpenAI-style secret keys (`sk-…`, `sk-proj-…`).
    OpenaiApiKey,
    /// AWS access key ids (`AKIA…`, `ASIA…`).
    AwsAccessKeyId,
    /// GitHub tokens (`ghp_…`, `gho_…`, `ghs_…`, `github_pat_…`).
    GithubToken,
    /// Google API keys (`AIza…`).
    GoogleApiKey,
    /// The credential after `Bearer ` (the word itself is kept).
    BearerToken,
    /// JSON Web Tokens (`eyJ….eyJ….…`).
    Jwt,
    /// PEM private key blocks, `BEGIN` to `END` (or to the end of the text
    /// when the end was cut off).
    PrivateKey,
    /// E-mail addresses.
    Email,
}

impl Builtin {
    pub const ALL: [Builtin; 9] = [
        Builtin::AnthropicApiKey,
        Builtin::OpenaiApiKey,
        Builtin::AwsAccessKeyId,
        Builtin::GithubToken,
        Builtin::GoogleApiKey,
        Builtin::BearerToken,
        Builtin::Jwt,
        Builtin::PrivateKey,
        Builtin::Email,
    ];

    /// The rule's name (as written in the config).
    pub fn name(self) -> &'static str {
        match self {
            Builtin::AnthropicApiKey => "anthropic_api_key",
            Builtin::OpenaiApiKey => "openai_api_key",
            Builtin::AwsAccessKeyId => "aws_access_key_id",
            Builtin::GithubToken => "github_token",
            Builtin::GoogleApiKey => "google_api_key",
            Builtin::BearerToken => "bearer_token",
            Builtin::Jwt => "jwt",
            Builtin::PrivateKey => "private_key",
            Builtin::Email => "email",
        }
    }

    /// Its regular expression (ASCII classes: the fast engines stay on).
    pub fn pattern(self) -> &'static str {
        match self {
            Builtin::AnthropicApiKey => r"sk-ant-[A-Za-z0-9_\-]{20,}",
            Builtin::OpenaiApiKey => r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
            Builtin::AwsAccessKeyId => r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}",
            Builtin::GithubToken => r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
            Builtin::GoogleApiKey => r"AIza[0-9A-Za-z_\-]{35}",
            Builtin::BearerToken => r"(?i:bearer)[ \t]+(?P<secret>[A-Za-z0-9\-._~+/]{8,}=*)",
            Builtin::Jwt => r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
            Builtin::PrivateKey => {
                r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z ]*PRIVATE KEY-----|\z)"
            }
            Builtin::Email => {
                r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
            }
        }
    }
}

/// One token of a parsed JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointerToken {
    /// An object member's name, or an array index when it is one.
    Key(String),
    /// `*`: every member or element.
    Any,
}

/// Why a `redaction` section is refused.
#[derive(Debug, thiserror::Error)]
pub enum RedactionError {
    #[error("redaction.patterns[{index}].name {name:?}: letters, digits, '.', '_' or '-', 1 to {MAX_NAME} characters")]
    Name { index: usize, name: String },
    #[error("redaction: duplicate rule name {0:?}")]
    Duplicate(String),
    #[error("redaction.patterns[{index}] ({name}): bad regex: {message}")]
    Regex {
        index: usize,
        name: String,
        message: String,
    },
    #[error("redaction.patterns[{index}] ({name}): the regex matches the empty string")]
    MatchesEmpty { index: usize, name: String },
    #[error("redaction.jsonPointers[{index}] {pointer:?}: {why}")]
    Pointer {
        index: usize,
        pointer: String,
        why: &'static str,
    },
}

/// Parses an RFC 6901 pointer (`~0` is `~`, `~1` is `/`; `*` alone is
/// [`PointerToken::Any`]). The empty pointer (the whole body) is refused.
pub fn parse_pointer(p: &str) -> Result<Vec<PointerToken>, &'static str> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(if p.is_empty() {
            "the empty pointer is the whole body: use content: metadata instead"
        } else {
            "must start with '/'"
        });
    };
    rest.split('/')
        .map(|t| {
            if t == "*" {
                return Ok(PointerToken::Any);
            }
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err("'~' must be followed by 0 or 1"),
                    },
                }
            }
            Ok(PointerToken::Key(out))
        })
        .collect()
}

/// Compiles `pattern` as every redaction rule is compiled (size-limited).
pub fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

impl RedactionConfig {
    /// The rules a `redaction` section must satisfy: names, unique names,
    /// regexes that compile and cannot match nothing, pointers that parse.
    pub fn validate(&self) -> Result<(), RedactionError> {
        let mut names = std::collections::HashSet::new();
        for b in &self.builtins {
            if !names.insert(b.name()) {
                return Err(RedactionError::Duplicate(b.name().to_owned()));
            }
        }
        for (index, p) in self.patterns.iter().enumerate() {
            let ok = !p.name.is_empty()
                && p.name.len() <= MAX_NAME
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(RedactionError::Name {
                    index,
                    name: p.name.clone(),
                });
            }
            if !names.insert(p.name.as_str()) {
                return Err(RedactionError::Duplicate(p.name.clone()));
            }
            let re = compile(&p.regex).map_err(|e| RedactionError::Regex {
                index,
                name: p.name.clone(),
                message: e.to_string(),
            })?;
            if re.is_match("") {
                return Err(RedactionError::MatchesEmpty {
                    index,
                    name: p.name.clone(),
                });
            }
        }
        for (index, p) in self.json_pointers.iter().enumerate() {
            parse_pointer(p).map_err(|why| RedactionError::Pointer {
                index,
                pointer: p.clone(),
                why,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a section gives, if any.
    fn error(yaml: &str) -> Option<String> {
        match serde_norway::from_str::<RedactionConfig>(yaml) {
            Err(e) => Some(e.to_string()),
            Ok(c) => c.validate().err().map(|e| e.to_string()),
        }
    }

    #[test]
    fn builtins_compile_and_match_their_shapes() {
        let samples = [
            (
                Builtin::AnthropicApiKey,
                "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx",
            ),
            (Builtin::OpenaiApiKey, "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx"),
            (Builtin::AwsAccessKeyId, "AKIAIOSFODNN7EXAMPLE"),
            (
                Builtin::GithubToken,
                "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            ),
            (
                Builtin::GoogleApiKey,
                "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            ),
            (Builtin::BearerToken, "Authorization: Bearer abc.def-ghi_jkl"),
            (
                Builtin::Jwt,
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            ),
            (
                Builtin::PrivateKey,
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            ),
            (Builtin::Email, "write to bob.smith+x@mail.example.co.uk"),
        ];
        assert_eq!(samples.len(), Builtin::ALL.len());
        for (b, text) in samples {
            let re = compile(b.pattern()).unwrap();
            assert!(re.is_match(text), "{b:?} on {text}");
            assert!(!re.is_match(""), "{b:?} matches nothing");
            assert!(!re.is_match("an ordinary sentence, 42 tokens"), "{b:?}");
        }
        let all = format!("builtins: [{}]", Builtin::ALL.map(|b| b.name()).join(", "));
        assert_eq!(error(&all), None);
    }

    #[test]
    fn bad_rules_are_refused_with_clear_errors() {
        assert_eq!(error("patterns: [{name: ticket, regex: 'TCK-[0-9]{6}'}]\njsonPointers: ['/messages/*/content', '/a~1b/0']\n"), None);
        for (yaml, why) in [
            ("builtins: [passwords]", "unknown variant `passwords`"),
            (
                "patterns: [{name: x, regex: '(unclosed'}]",
                "redaction.patterns[0] (x): bad regex",
            ),
            (
                "patterns: [{name: x, regex: 'a*'}]",
                "matches the empty string",
            ),
            (
                "patterns: [{name: 'a b', regex: 'x'}]",
                "patterns[0].name \"a b\"",
            ),
            (
                "patterns: [{name: email, regex: 'x'}]\nbuiltins: [email]",
                "duplicate rule name \"email\"",
            ),
            (
                "patterns: [{name: x, regex: 'x', bogus: 1}]",
                "unknown field `bogus`",
            ),
            ("patterns: [{name: x, regex: 'x{1000}{1000}'}]", "bad regex"),
            ("jsonPointers: ['messages/0']", "must start with '/'"),
            ("jsonPointers: ['']", "the empty pointer"),
            ("jsonPointers: ['/a~2']", "'~' must be followed by 0 or 1"),
            ("bogus: []", "unknown field `bogus`"),
        ] {
            let err = error(yaml).unwrap_or_else(|| panic!("{yaml} accepted"));
            assert!(err.contains(why), "{yaml}: {err}");
        }
    }

    #[test]
    fn pointers_unescape_and_know_wildcards() {
        assert_eq!(
            parse_pointer("/a~1b/~0c/*/0").unwrap(),
            vec![
                PointerToken::Key("a/b".into()),
                PointerToken::Key("~c".into()),
                PointerToken::Any,
                PointerToken::Key("0".into()),
            ]
        );
        assert_eq!(
            parse_pointer("/").unwrap(),
            vec![PointerToken::Key(String::new())]
        );
    }
}
