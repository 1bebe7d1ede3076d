//! Which model providers egret knows: the wire formats its parsers read
//! ([`Provider`]), the `gen_ai.provider.name` values, and the public API
//! hosts and paths that identify them ([`Target::detect`]).
//!
//! A provider *name* and a wire *format* are different things: Azure
//! OpenAI, Groq or vLLM speak OpenAI's format; Vertex AI serves Gemini's,
//! Anthropic's and OpenAI's formats under one host. egret picks the name
//! from the host (or the route's `provider`) and the format from the path
//! (or the route's `format`), falling back to the name's usual format. The
//! table here is what docs/attributes.md's "Provider table" shows; a unit
//! test keeps the two equal.
//!
//! Pure values: no I/O, nothing else of the crate but [`crate::net`]'s host
//! patterns.
use std::borrow::Cow;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::net::host_matches;

/// A wire format egret parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Anthropic Messages (`/v1/messages`; Vertex `:rawPredict`).
    Anthropic,
    /// OpenAI Chat Completions / Completions / Responses / Embeddings, and
    /// every server that speaks them.
    #[serde(rename = "openai")]
    OpenAi,
    /// Gemini `models/{m}:generateContent` & co (AI Studio and Vertex).
    Google,
    /// Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`;
    /// NDJSON streams).
    Ollama,
    /// An MCP server (Streamable HTTP transport).
    Mcp,
    /// AWS Bedrock Runtime: Converse / ConverseStream, InvokeModel /
    /// InvokeModelWithResponseStream (`/model/{id}/…`; AWS event-stream
    /// framing for streams).
    Bedrock,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Anthropic,
        Provider::OpenAi,
        Provider::Google,
        Provider::Ollama,
        Provider::Mcp,
        Provider::Bedrock,
    ];

    /// The format's name in config (`format:`), accepted by
    /// [`Self::from_name`].
    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
            Provider::Google => "google",
            Provider::Ollama => "ollama",
            Provider::Mcp => "mcp",
            Provider::Bedrock => "bedrock",
        }
    }

    /// A format by its config name (also `gemini`, `gcp.gemini`,
    /// `google-genai` for Google), case-insensitive.
    pub fn from_name(name: &str) -> Option<Provider> {
        let n = name.trim();
        let is = |s: &str| n.eq_ignore_ascii_case(s);
        Provider::ALL
            .into_iter()
            .find(|p| is(p.name()))
            .or_else(|| {
                (is("gemini") || is("gcp.gemini") || is("google-genai")).then_some(Provider::Google)
            })
    }

    /// The `gen_ai.provider.name` of the company whose API this format is
    /// (when nothing better is known); `None` for MCP and Ollama's format
    /// used elsewhere is still Ollama.
    pub fn semconv_name(self) -> Option<&'static str> {
        match self {
            Provider::Anthropic => Some("anthropic"),
            Provider::OpenAi => Some("openai"),
            Provider::Google => Some("gcp.gemini"),
            Provider::Ollama => Some("ollama"),
            Provider::Bedrock => Some("aws.bedrock"),
            Provider::Mcp => None,
        }
    }

    /// The format a path belongs to, when the path says (`None`: the path
    /// is no endpoint egret parses in any format).
    pub fn for_path(path: &str) -> Option<Provider> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_suffix('/').unwrap_or(path);
        let last = path.rsplit('/').next().unwrap_or("");
        if path.ends_with("/v1/messages")
            || (path.contains("/publishers/anthropic/models/")
                && (last.ends_with(":rawPredict") || last.ends_with(":streamRawPredict")))
        {
            Some(Provider::Anthropic)
        } else if [
            "/chat/completions",
            "/completions",
            "/responses",
            "/embeddings",
        ]
        .iter()
        .any(|s| path.ends_with(s))
        {
            Some(Provider::OpenAi)
        } else if [
            "/api/chat",
            "/api/generate",
            "/api/embed",
            "/api/embeddings",
        ]
        .iter()
        .any(|s| path.ends_with(s))
        {
            Some(Provider::Ollama)
        } else if path.contains("models/")
            && [
                ":generateContent",
                ":streamGenerateContent",
                ":embedContent",
                ":batchEmbedContents",
            ]
            .iter()
            .any(|m| last.ends_with(m))
        {
            Some(Provider::Google)
        } else if path.contains("/model/")
            && matches!(
                last,
                "converse" | "converse-stream" | "invoke" | "invoke-with-response-stream"
            )
        {
            Some(Provider::Bedrock)
        } else {
            None
        }
    }
}

/// A provider egret knows by name.
#[derive(Debug)]
pub struct Known {
    /// `gen_ai.provider.name` (the semconv well-known value where there is
    /// one).
    pub name: &'static str,
    /// Other names a route's `provider` may use for it.
    pub aliases: &'static [&'static str],
    /// Its usual format (a path in another format wins).
    pub format: Provider,
    /// Its public API hosts ([`host_matches`] patterns); the embedded
    /// default configuration allows exactly these.
    pub hosts: &'static [&'static str],
}

/// Every provider egret knows by name, in docs/attributes.md's order.
pub const KNOWN: &[Known] = &[
    Known {
        name: "openai",
        aliases: &[],
        format: Provider::OpenAi,
        hosts: &["api.openai.com"],
    },
    Known {
        name: "azure.ai.openai",
        aliases: &["azure", "azure-openai"],
        format: Provider::OpenAi,
        hosts: &["*.openai.azure.com", "*.cognitiveservices.azure.com"],
    },
    Known {
        name: "azure.ai.inference",
        aliases: &["azure-ai-inference"],
        format: Provider::OpenAi,
        hosts: &["*.services.ai.azure.com", "*.models.ai.azure.com"],
    },
    Known {
        name: "anthropic",
        aliases: &[],
        format: Provider::Anthropic,
        hosts: &["api.anthropic.com"],
    },
    Known {
        name: "gcp.gemini",
        aliases: &["google", "gemini", "google-genai"],
        format: Provider::Google,
        hosts: &["generativelanguage.googleapis.com"],
    },
    Known {
        name: "gcp.vertex_ai",
        aliases: &["vertex", "vertex_ai", "vertex-ai"],
        format: Provider::Google,
        hosts: &["aiplatform.googleapis.com", "*-aiplatform.googleapis.com"],
    },
    Known {
        name: "aws.bedrock",
        aliases: &["bedrock", "aws-bedrock"],
        format: Provider::Bedrock,
        hosts: &[
            "bedrock-runtime.*.amazonaws.com",
            "bedrock-runtime-fips.*.amazonaws.com",
            "bedrock-runtime.*.amazonaws.com.cn",
        ],
    },
    Known {
        name: "groq",
        aliases: &[],
        format: Provider::OpenAi,
        hosts: &["api.groq.com"],
    },
    Known {
        name: "mistral_ai",
        aliases: &["mistral"],
        format: Provider::OpenAi,
        hosts: &["api.mistral.ai"],
    },
    Known {
        name: "deepseek",
        aliases: &[],
        format: Provider::OpenAi,
        hosts: &["api.deepseek.com"],
    },
    Known {
        name: "x_ai",
        aliases: &["xai"],
        format: Provider::OpenAi,
        hosts: &["api.x.ai"],
    },
    Known {
        name: "perplexity",
        aliases: &[],
        format: Provider::OpenAi,
        hosts: &["api.perplexity.ai"],
    },
    Known {
        name: "openrouter",
        aliases: &[],
        format: Provider::OpenAi,
        hosts: &["openrouter.ai"],
    },
    Known {
        name: "together_ai",
        aliases: &["together"],
        format: Provider::OpenAi,
        hosts: &["api.together.xyz", "api.together.ai"],
    },
    Known {
        name: "fireworks_ai",
        aliases: &["fireworks"],
        format: Provider::OpenAi,
        hosts: &["api.fireworks.ai"],
    },
    Known {
        name: "ollama",
        aliases: &[],
        format: Provider::Ollama,
        hosts: &["ollama.com"],
    },
];

impl Known {
    /// The provider called `name` (its name or an alias), case-insensitive.
    pub fn by_name(name: &str) -> Option<&'static Known> {
        let n = name.trim();
        KNOWN.iter().find(|k| {
            k.name.eq_ignore_ascii_case(n) || k.aliases.iter().any(|a| a.eq_ignore_ascii_case(n))
        })
    }

    /// The provider whose public API `host` (port allowed) is.
    pub fn by_host(host: &str) -> Option<&'static Known> {
        let host = strip_port(host);
        KNOWN
            .iter()
            .find(|k| k.hosts.iter().any(|p| host_matches(p, host)))
    }
}

/// `host` without a `:port` (IPv6 literals in brackets are kept whole).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Who an exchange is with: the format to parse and the
/// `gen_ai.provider.name` to report (`None`: not known — never guessed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub format: Provider,
    pub name: Option<Cow<'static, str>>,
}

impl From<Provider> for Target {
    /// The format's own company ([`Provider::semconv_name`]).
    fn from(format: Provider) -> Target {
        Target {
            format,
            name: format.semconv_name().map(Cow::Borrowed),
        }
    }
}

impl Target {
    /// A request to `host` (SNI / `Host`, port allowed) for `path` (query
    /// allowed) at a known provider's public API and one of the endpoints
    /// egret parses: the provider's name and the format the path is in.
    /// `None` for other hosts (the body may still tell:
    /// `genai::Exchange::on_request`) and other paths (plain HTTP).
    pub fn detect(host: &str, path: &str) -> Option<Target> {
        let known = Known::by_host(host)?;
        Some(Target {
            format: Provider::for_path(path)?,
            name: Some(Cow::Borrowed(known.name)),
        })
    }
}

/// What a route's `provider` (and optional `format`) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteProvider {
    /// `http` (the default): found from the host, path and body.
    Auto,
    /// `mcp`: an MCP server.
    Mcp,
    /// A provider by name; `format: None` = by path, else the provider's
    /// usual format.
    Named {
        name: Cow<'static, str>,
        format: Option<Provider>,
        usual: Provider,
    },
}

/// A route's `provider` names nothing egret knows and gives no `format`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteProviderError {
    #[error("provider {0:?} is not one egret knows (see docs/attributes.md, \"Provider table\"): set `format` (anthropic, openai, google, ollama, bedrock) to parse it")]
    Unknown(String),
    #[error("provider {0:?} with a format: name the provider to parse it as {1}")]
    FormatWithoutName(String, &'static str),
}

impl RouteProvider {
    /// Reads a route's `provider` and `format`.
    pub fn parse(
        provider: &str,
        format: Option<Provider>,
    ) -> Result<RouteProvider, RouteProviderError> {
        let p = provider.trim();
        if p.is_empty() || p.eq_ignore_ascii_case("http") {
            return match format {
                None => Ok(RouteProvider::Auto),
                Some(f) => Err(RouteProviderError::FormatWithoutName(
                    p.to_owned(),
                    f.name(),
                )),
            };
        }
        if p.eq_ignore_ascii_case("mcp") || format == Some(Provider::Mcp) {
            return Ok(RouteProvider::Mcp);
        }
        if let Some(k) = Known::by_name(p) {
            return Ok(RouteProvider::Named {
                name: Cow::Borrowed(k.name),
                format,
                usual: k.format,
            });
        }
        match format {
            Some(f) => Ok(RouteProvider::Named {
                name: Cow::Owned(p.to_owned()),
                format: Some(f),
                usual: f,
            }),
            None => Err(RouteProviderError::Unknown(p.to_owned())),
        }
    }

    /// The target of a request for `path` to `host` on this route.
    pub fn target(&self, host: &str, path: &str) -> Option<Target> {
        match self {
            RouteProvider::Auto => Target::detect(host, path),
            RouteProvider::Mcp => Some(Target::from(Provider::Mcp)),
            RouteProvider::Named {
                name,
                format,
                usual,
            } => Some(Target {
                format: format.unwrap_or_else(|| Provider::for_path(path).unwrap_or(*usual)),
                name: Some(name.clone()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Provider::*;
    use super::*;

    fn detect(host: &str, path: &str) -> Option<(Provider, String)> {
        Target::detect(host, path).map(|t| (t.format, t.name.unwrap().into_owned()))
    }

    #[test]
    fn hosts_name_the_provider_and_paths_the_format() {
        type Case<'a> = (&'a str, &'a str, Option<(Provider, &'a str)>);
        let cases: &[Case] = &[
            ("api.openai.com", "/v1/chat/completions", Some((OpenAi, "openai"))),
            ("API.OpenAI.com:443", "/v1/responses", Some((OpenAi, "openai"))),
            (
                "egret-test.openai.azure.com",
                "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                Some((OpenAi, "azure.ai.openai")),
            ),
            (
                "egret.cognitiveservices.azure.com",
                "/openai/v1/chat/completions",
                Some((OpenAi, "azure.ai.openai")),
            ),
            ("api.anthropic.com", "/v1/messages", Some((Anthropic, "anthropic"))),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.0-flash:generateContent",
                Some((Google, "gcp.gemini")),
            ),
            (
                "us-central1-aiplatform.googleapis.com",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                Some((Google, "gcp.vertex_ai")),
            ),
            (
                "us-east5-aiplatform.googleapis.com",
                "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict",
                Some((Anthropic, "gcp.vertex_ai")),
            ),
            (
                "aiplatform.googleapis.com",
                "/v1/projects/p/locations/global/endpoints/openapi/chat/completions",
                Some((OpenAi, "gcp.vertex_ai")),
            ),
            ("api.groq.com", "/openai/v1/chat/completions", Some((OpenAi, "groq"))),
            ("openrouter.ai", "/api/v1/chat/completions", Some((OpenAi, "openrouter"))),
            ("api.mistral.ai", "/v1/chat/completions", Some((OpenAi, "mistral_ai"))),
            ("ollama.com", "/api/chat", Some((Ollama, "ollama"))),
            // Anthropic's and Gemini's OpenAI-compatible endpoints.
            ("api.anthropic.com", "/v1/chat/completions", Some((OpenAi, "anthropic"))),
            // A known host, a path that is no endpoint egret parses.
            ("api.openai.com", "/v1/models", None),
            ("api.anthropic.com", "/v1/messages/count_tokens", None),
            ("example.com", "/v1/chat/completions", None),
            ("api.openai.com.evil.example", "/v1/chat/completions", None),
            ("openai.azure.com", "/openai/v1/chat/completions", None),
        ];
        for (host, path, want) in cases {
            let want = want.map(|(f, n)| (f, n.to_owned()));
            assert_eq!(detect(host, path), want, "{host}{path}");
        }
    }

    #[test]
    fn routes_name_providers_and_formats() {
        let p = |name: &str, f: Option<Provider>| RouteProvider::parse(name, f);
        assert_eq!(p("http", None), Ok(RouteProvider::Auto));
        assert_eq!(p("", None), Ok(RouteProvider::Auto));
        assert_eq!(p("mcp", None), Ok(RouteProvider::Mcp));
        // The format names of before are provider names.
        let t = p("google", None)
            .unwrap()
            .target("x", "/v1beta/models/m:generateContent");
        assert_eq!(t, Some(Target::from(Google)));
        let t = p("openai", None)
            .unwrap()
            .target("x", "/v1/chat/completions");
        assert_eq!(t, Some(Target::from(OpenAi)));
        let t = p("groq", None)
            .unwrap()
            .target("10.0.0.1", "/openai/v1/chat/completions");
        assert_eq!(t.unwrap().name.as_deref(), Some("groq"));
        let t = p("vertex", None).unwrap().target(
            "h",
            "/v1/projects/p/locations/l/publishers/anthropic/models/c:rawPredict",
        );
        assert_eq!(
            t,
            Some(Target {
                format: Anthropic,
                name: Some("gcp.vertex_ai".into())
            })
        );
        let vllm = p("vllm", Some(OpenAi)).unwrap();
        assert_eq!(
            vllm.target("vllm.internal:8000", "/v1/chat/completions"),
            Some(Target {
                format: OpenAi,
                name: Some("vllm".into())
            })
        );
        assert!(matches!(
            p("vllm", None),
            Err(RouteProviderError::Unknown(_))
        ));
        assert!(matches!(
            p("http", Some(OpenAi)),
            Err(RouteProviderError::FormatWithoutName(..))
        ));
        for f in Provider::ALL {
            assert_eq!(Provider::from_name(f.name()), Some(f));
        }
        assert_eq!(Provider::from_name("Gemini"), Some(Google));
    }

    /// docs/attributes.md's provider table is [`KNOWN`], row by row.
    #[test]
    fn the_provider_table_is_documented() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/attributes.md"),
        )
        .unwrap();
        let start = doc.find("### Provider table").expect("the section");
        let ticks = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let rows: Vec<(String, Vec<String>, Vec<String>, String)> = doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| `gen_ai.provider.name`"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let c: Vec<&str> = l.split('|').map(str::trim).collect();
                (
                    ticks(c[1]).concat(),
                    ticks(c[2]),
                    ticks(c[3]),
                    c[4].to_owned(),
                )
            })
            .collect();
        let want: Vec<(String, Vec<String>, Vec<String>, String)> = KNOWN
            .iter()
            .map(|k| {
                (
                    k.name.to_owned(),
                    k.aliases.iter().map(|a| (*a).to_owned()).collect(),
                    k.hosts.iter().map(|h| (*h).to_owned()).collect(),
                    k.format.name().to_owned(),
                )
            })
            .collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn every_known_name_and_alias_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in KNOWN {
            for n in std::iter::once(&k.name).chain(k.aliases) {
                assert!(seen.insert(n.to_ascii_lowercase()), "{n} twice");
            }
        }
    }
}
