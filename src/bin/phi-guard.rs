//! `phi-guard`: the native command line on the same core as the filter.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phi_guard::audit::Verdict;
use phi_guard::audit::{verify_log, AuditKey, KEY_ENV};
use phi_guard::decision::{refusal_reply, DenyReason};
use phi_guard::minimize::{self, ApplyCtx};
use phi_guard::policy::{compile, Policy};
use phi_guard::simulate::{simulate, CredentialError, CredentialInput, Exchange, ExchangeOutcome, Sender, Upstream, DEMO_AUDIT_KEY};
use phi_guard::time::UnixSeconds;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "phi-guard", version, about = "Check phi-guard policies and decisions without a proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a policy; exit 1 with the located error if it is invalid.
    Validate(ValidateArgs),
    /// Print what the filter does with one request (and, with `--upstream-body`, with the
    /// upstream's answer): the decision and why, the released body, the audit event. Exit 2 when
    /// the request or the response is refused.
    Explain(ExplainArgs),
    /// Sign a policy for pull mode: prints the detached signature the policy server sends in
    /// `x-phi-guard-signature`. Validates the policy first.
    Sign(SignArgs),
    /// Write the Envoy ECDS resource that delivers a policy to the filter, atomically (write a
    /// temporary file beside it, then rename), so Envoy's watched directory picks it up.
    /// With `--watch`, rewrite it whenever the policy file changes.
    Ecds(EcdsArgs),
    /// Minimize a response body (stdin) as a route's profile would for a caller; prints the
    /// released JSON on stdout and the profile and withheld paths on stderr. Exit 2 when the
    /// body would be refused (the generic error body is printed instead).
    Minimize(MinimizeArgs),
    /// Mint a signed demo token. Test keys only: never use them outside a demo or test.
    Token(TokenArgs),
    /// Print the policy format's JSON Schema (draft 2020-12), derived from the parser's own
    /// types: `policies/phi-guard-policy.schema.json` is this output (`make schema`).
    Schema,
    /// Work with audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// Arguments of `phi-guard validate`.
#[derive(Args)]
struct ValidateArgs {
    /// Policy JSON file.
    policy: PathBuf,
}

/// Arguments of `phi-guard explain`.
#[derive(Args)]
struct ExplainArgs {
    /// Policy JSON file.
    policy: PathBuf,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path with query, e.g. `/fhir/Observation?patient=123`.
    #[arg(long)]
    path: String,
    /// A compact JWS access token (verified with the policy's keys).
    #[arg(long, conflicts_with_all = ["claims", "authorization"])]
    token: Option<String>,
    /// Token claims as JSON, trusted without a signature (to try a policy before keys exist).
    #[arg(long, conflicts_with = "authorization")]
    claims: Option<String>,
    /// A whole `Authorization` header value, as a client sends it (another scheme, a
    /// malformed bearer).
    #[arg(long)]
    authorization: Option<String>,
    /// An RFC 7662 introspection answer (JSON file) for an opaque `--token`: what its issuer's
    /// introspection endpoint would say.
    #[arg(long, requires = "token")]
    introspection_result: Option<PathBuf>,
    /// JWKS file: the keys of the token's issuer (what a remote-JWKS issuer would fetch).
    #[arg(long, requires = "token")]
    jwks: Option<PathBuf>,
    /// The upstream's response body (file), run through the response phase.
    #[arg(long)]
    upstream_body: Option<PathBuf>,
    /// The upstream's status.
    #[arg(long, default_value_t = 200)]
    upstream_status: u16,
    /// The upstream's content type.
    #[arg(long, default_value = "application/fhir+json")]
    upstream_content_type: String,
    /// Environment variable holding the HMAC key for `hash` transforms.
    #[arg(long)]
    hmac_key_env: Option<String>,
    /// Environment variable holding the audit key (pseudonyms in the event and in privacy
    /// restrictions); when it is not set, the demo key is used and said so.
    #[arg(long, default_value = KEY_ENV)]
    audit_key_env: String,
    /// `x-request-id` to record in the audit event.
    #[arg(long)]
    request_id: Option<String>,
    /// Evaluate at this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
    /// Print the outcome as JSON (the playground's format).
    #[arg(long)]
    json: bool,
    /// A DPoP proof (RFC 9449): sent as the `DPoP` header; a `--token` is then sent as
    /// `Authorization: DPoP <token>`.
    #[arg(long)]
    dpop: Option<String>,
    /// The request's origin, for the DPoP proof's `htu`.
    #[arg(long, default_value = "https://fhir.phi-guard.test")]
    origin: String,
    /// SHA-256 (hex) of the client certificate of a mutual-TLS connection, for a
    /// certificate-bound token (`cnf.x5t#S256`).
    #[arg(long)]
    client_cert_sha256: Option<String>,
}

/// Arguments of `phi-guard sign`.
#[derive(Args)]
struct SignArgs {
    /// Policy JSON file (signed byte for byte).
    policy: PathBuf,
    /// PEM private key (PKCS#8), Ed25519 or P-256.
    #[arg(long)]
    key: PathBuf,
    /// `EdDSA` or `ES256`.
    #[arg(long, default_value = "EdDSA")]
    alg: String,
}

/// Arguments of `phi-guard ecds`.
#[derive(Args)]
struct EcdsArgs {
    /// Policy JSON file.
    policy: PathBuf,
    /// The filter's `.wasm` as Envoy should load it.
    #[arg(long)]
    wasm: PathBuf,
    /// ECDS file to write (JSON), inside the directory Envoy watches.
    #[arg(long)]
    out: PathBuf,
    /// Environment variables Envoy passes to the VM from its own environment.
    #[arg(long = "host-env", default_values_t = ["PHI_GUARD_HMAC_KEY".to_owned(), "PHI_GUARD_AUDIT_KEY".to_owned()])]
    host_env: Vec<String>,
    /// Keep running and rewrite the resource when the policy changes (polls every 250 ms).
    #[arg(long)]
    watch: bool,
}

/// Arguments of `phi-guard minimize`.
#[derive(Args)]
struct MinimizeArgs {
    /// Policy JSON file.
    policy: PathBuf,
    /// Route id whose `minimize` profiles apply.
    #[arg(long)]
    route: String,
    /// The caller's space-separated scopes (select the profile).
    #[arg(long, default_value = "")]
    scopes: String,
    /// The caller's purpose-of-use code (repeatable).
    #[arg(long)]
    purpose: Vec<String>,
    /// Environment variable holding the HMAC key for `hash` transforms.
    #[arg(long)]
    hmac_key_env: Option<String>,
    /// Evaluate at this Unix time instead of now (birth-year age checks).
    #[arg(long)]
    now: Option<u64>,
    /// Pretty-print the released JSON.
    #[arg(long)]
    pretty: bool,
}

/// Arguments of `phi-guard token`.
#[derive(Args)]
struct TokenArgs {
    /// PEM private key (PKCS#8); default the demo key for `--alg` in tests/keys/.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Signature algorithm (RS256, PS256, ES256, EdDSA, ...).
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// Key id; default derived from the algorithm (`demo-rs256`, `demo-es256`, `demo-eddsa`).
    #[arg(long)]
    kid: Option<String>,
    /// Issuer.
    #[arg(long, default_value = "https://idp.phi-guard.test")]
    iss: String,
    /// Audience.
    #[arg(long, default_value = "https://fhir.phi-guard.test")]
    aud: String,
    /// Subject.
    #[arg(long, default_value = "demo-user")]
    sub: String,
    /// OAuth client id.
    #[arg(long, default_value = "demo-app")]
    client_id: String,
    /// Space-separated scopes (claim `scope`).
    #[arg(long, default_value = "")]
    scope: String,
    /// Patient in context (claim `patient`).
    #[arg(long)]
    patient: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Extra claims as a JSON object, merged last (may override any claim; `null` removes).
    #[arg(long)]
    claims: Option<String>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every stream's chain in a log; exit 1 naming the first bad line.
    Verify {
        /// Envoy log, collector JSON-lines file, or OTLP/JSON export (`-` for stdin).
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print the pseudonym of a patient id (or of another value: `--of`), to search a log for it.
    Pseudonym {
        /// The value: a patient's FHIR logical id by default.
        #[arg(long)]
        id: String,
        /// What the value is: a resource type (`Patient`, `Observation`, ...) for a logical id,
        /// or `sub`, `jti`, `x-request-id`, `operation` (see docs/AUDIT.md).
        #[arg(long, default_value = "Patient")]
        of: String,
        #[command(flatten)]
        key: KeyArgs,
    },
}

/// Where the audit secret comes from.
#[derive(Args)]
struct KeyArgs {
    /// Environment variable holding the audit secret.
    #[arg(long, default_value = KEY_ENV, conflicts_with = "key_file")]
    key_env: String,
    /// File holding the audit secret (surrounding whitespace ignored).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> Result<AuditKey, String> {
        let secret = match &self.key_file {
            Some(f) => std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?,
            None => std::env::var_os(&self.key_env)
                .ok_or_else(|| format!("environment variable `{}` is not set (or use --key-file)", self.key_env))?
                .into_encoded_bytes(),
        };
        AuditKey::from_secret(&secret).map_err(|e| e.to_string())
    }
}

fn audit(command: AuditCommand) -> Result<ExitCode, String> {
    match command {
        AuditCommand::Verify { file, key } => {
            let key = key.load()?;
            let log = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| format!("stdin: {e}"))?;
                buf
            } else {
                std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?
            };
            match verify_log(&log, &key) {
                Ok(s) if s.events == 0 => {
                    println!("FAILED: {}: no audit records found ({} other lines)", file.display(), s.skipped_lines);
                    Ok(ExitCode::FAILURE)
                }
                Ok(s) => {
                    println!("ok: {} events in {} streams ({} other lines skipped)", s.events, s.streams.len(), s.skipped_lines);
                    for st in &s.streams {
                        println!("stream {}: seq 0..={} last mac {}", st.stream, st.events.saturating_sub(1), st.last_mac);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("FAILED: {}: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Pseudonym { id, of, key } => {
            println!("{}", key.load()?.pseudonym_of(&of, &id));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The wall clock, or `--now` (Unix seconds) when given.
fn now_or(at: Option<u64>) -> UnixSeconds {
    UnixSeconds::new(at.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())))
}

fn load(path: &PathBuf) -> Result<Policy, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    compile(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Audit { command } => audit(command),
        Command::Validate(args) => validate(args),
        Command::Explain(args) => explain(args),
        Command::Sign(args) => sign(args),
        Command::Ecds(args) => ecds(args),
        Command::Minimize(args) => minimize(args),
        Command::Token(args) => token(args),
        Command::Schema => {
            print!("{}", phi_guard::schema::json_schema::policy_schema_text());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `phi-guard validate`.
fn validate(args: ValidateArgs) -> Result<ExitCode, String> {
    let ValidateArgs { policy } = args;
    // Whatever Envoy's `configuration` / Istio's `pluginConfig` may carry: a policy, or a
    // pull-mode `policySource`.
    let bytes = std::fs::read(&policy).map_err(|e| format!("{}: {e}", policy.display()))?;
    match phi_guard::policy::source::parse_plugin_config(&bytes).map_err(|e| format!("{}: {e}", policy.display()))? {
        phi_guard::policy::source::PluginConfig::Inline(p) => {
            println!("ok: policy `{}` revision {} ({} routes, {} issuers)", p.name, p.revision, p.routes.len(), p.issuers.len());
        }
        phi_guard::policy::source::PluginConfig::Pull(c) => {
            println!(
                "ok: pull-mode source: cluster `{}` path `{}`, {:?} signatures, every {} s",
                c.cluster, c.path, c.alg, c.poll_interval
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `phi-guard explain`.
fn explain(args: ExplainArgs) -> Result<ExitCode, String> {
    let ExplainArgs {
        policy,
        method,
        path,
        token,
        claims,
        authorization,
        jwks,
        upstream_body,
        upstream_status,
        upstream_content_type,
        hmac_key_env,
        audit_key_env,
        request_id,
        now: at,
        json,
        dpop,
        origin,
        client_cert_sha256,
        introspection_result,
    } = args;
    let introspection_text =
        introspection_result.as_ref().map(|f| std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))).transpose()?;
    let (scheme, authority) = origin.split_once("://").ok_or_else(|| format!("--origin: `{origin}` is not `scheme://host`"))?;
    let mut p = load(&policy)?;
    let jwks_text = jwks.as_ref().map(|f| std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))).transpose()?;
    let input = CredentialInput {
        token: token.as_deref(),
        claims: claims.as_deref(),
        authorization: authorization.as_deref(),
        jwks: jwks_text.as_deref(),
        introspection: introspection_text.as_deref(),
    };
    let prepared = input.prepare(&mut p).map_err(|e| match (&e, &jwks) {
        (CredentialError::Jwks(_), Some(f)) => format!("{}: {e}", f.display()),
        (CredentialError::Claims(_), _) => format!("--{e}"),
        _ => e.to_string(),
    })?;
    let body = upstream_body.as_ref().map(|f| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))).transpose()?;
    let hmac = hmac_key_env
        .as_ref()
        .map(|v| std::env::var(v).map(String::into_bytes).map_err(|_| format!("--hmac-key-env: `{v}` is not set")))
        .transpose()?;
    let audit_key = match std::env::var_os(&audit_key_env) {
        Some(secret) => AuditKey::from_secret(&secret.into_encoded_bytes()).map_err(|e| format!("{audit_key_env}: {e}"))?,
        None => {
            eprintln!("note: `{audit_key_env}` is not set: pseudonyms are under the demo audit key");
            AuditKey::from_secret(DEMO_AUDIT_KEY).map_err(|e| e.to_string())?
        }
    };
    let credential = prepared.credential();
    let upstream = body.as_deref().map(|b| Upstream {
        status: upstream_status,
        content_type: Some(&upstream_content_type),
        content_encoding: None,
        body: b,
    });
    let x = Exchange {
        method: &method,
        path: &path,
        credential,
        upstream,
        now: now_or(at),
        hmac_key: hmac.as_deref(),
        audit_key: &audit_key,
        request_id: request_id.as_deref(),
        sender: Sender { dpop: dpop.as_deref(), scheme, authority, client_certificate_sha256: client_cert_sha256.as_deref() },
    };
    let out = simulate(&p, &x);
    if json {
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    } else {
        print_outcome(&p, &out);
    }
    Ok(if out.reason.is_some() && out.enforced { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// `phi-guard sign`.
fn sign(args: SignArgs) -> Result<ExitCode, String> {
    let SignArgs { policy, key, alg } = args;
    load(&policy)?;
    let bytes = std::fs::read(&policy).map_err(|e| format!("{}: {e}", policy.display()))?;
    let pem = std::fs::read(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let (alg, enc) = match alg.as_str() {
        "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem)),
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)),
        a => return Err(format!("`{a}` must be EdDSA or ES256")),
    };
    let enc = enc.map_err(|e| format!("{}: {e}", key.display()))?;
    let sig = jsonwebtoken::crypto::sign(&bytes, &enc, alg).map_err(|e| format!("signing failed: {e}"))?;
    println!("{sig}");
    Ok(ExitCode::SUCCESS)
}

/// `phi-guard ecds`.
fn ecds(args: EcdsArgs) -> Result<ExitCode, String> {
    let EcdsArgs { policy, wasm, out, host_env, watch } = args;
    let mut last = None;
    loop {
        let modified = std::fs::metadata(&policy).and_then(|m| m.modified()).ok();
        if last.is_none() || modified != last {
            last = modified;
            match write_ecds(&policy, &wasm, &out, &host_env) {
                Ok(msg) => println!("{msg}"),
                Err(e) if watch => eprintln!("error: {e}"),
                Err(e) => return Err(e),
            }
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `phi-guard minimize`.
fn minimize(args: MinimizeArgs) -> Result<ExitCode, String> {
    let MinimizeArgs { policy, route, scopes, purpose, hmac_key_env, now: at, pretty } = args;
    let p = load(&policy)?;
    let r = p.routes.iter().find(|r| r.id == route).ok_or_else(|| format!("no route `{route}` in {}", policy.display()))?;
    let set = r.minimize.as_ref().ok_or_else(|| format!("route `{route}` does not minimize responses"))?;
    let key = match &hmac_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| format!("--hmac-key-env: `{var}` is not set"))?.into_bytes()),
        None => None,
    };
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).map_err(|e| format!("stdin: {e}"))?;
    let scopes: Vec<String> = scopes.split_whitespace().map(str::to_owned).collect();
    let fhir = matches!(r.access, phi_guard::policy::Access::Fhir(_));
    let refuse = |reason: DenyReason| {
        let reply = refusal_reply(reason, reason.status(), fhir, None);
        println!("{}", reply.body);
        eprintln!("refused:  {} {} ({})", reason.status(), reason.code(), reason.message());
        ExitCode::from(2)
    };
    let Some(profile) = set.select(&scopes, &purpose) else {
        return Ok(refuse(DenyReason::NoMinimizationProfile));
    };
    if profile.requires_hmac_key() && !key.as_deref().is_some_and(minimize::hmac_key_ok) {
        return Err(format!(
            "profile `{}` hashes or pseudonymizes values: pass --hmac-key-env with a variable holding a key of at least {} bytes",
            profile.name,
            minimize::MIN_HMAC_KEY_BYTES
        ));
    }
    let ctx = ApplyCtx { hmac_key: key.as_deref(), now: now_or(at), pseudonyms: None };
    let applied = match minimize::apply(&profile, &body, &ctx, p.limits.max_response_bytes) {
        Ok(a) => a,
        Err(reason) => return Ok(refuse(reason)),
    };
    let out = applied.body.as_deref().unwrap_or(&body);
    let out = if pretty {
        let v: Value = serde_json::from_slice(out).map_err(|e| format!("output: {e}"))?;
        serde_json::to_vec_pretty(&v).map_err(|e| format!("output: {e}"))?
    } else {
        out.to_vec()
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out).and_then(|()| stdout.write_all(b"\n")).map_err(|e| format!("stdout: {e}"))?;
    eprintln!("profile:  {}{}", profile.name, if applied.shadow { " (shadow: body released unchanged)" } else { "" });
    eprintln!("withheld: {} values at {} paths", applied.count, applied.withheld.len());
    for path in &applied.withheld {
        eprintln!("  {path}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `phi-guard token`.
fn token(args: TokenArgs) -> Result<ExitCode, String> {
    let TokenArgs { key, alg, kid, iss, aud, sub, client_id, scope, patient, ttl, claims } = args;
    let alg: Algorithm = alg.parse().map_err(|_| format!("unknown algorithm `{alg}`"))?;
    let key = key.unwrap_or_else(|| {
        PathBuf::from(match alg {
            Algorithm::ES256 | Algorithm::ES384 => "tests/keys/demo-es256.key.pem",
            Algorithm::EdDSA => "tests/keys/demo-eddsa.key.pem",
            _ => "tests/keys/demo-rs256.key.pem",
        })
    });
    let pem = std::fs::read(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let (enc, default_kid) = match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
            (EncodingKey::from_rsa_pem(&pem), "demo-rs256")
        }
        Algorithm::ES256 | Algorithm::ES384 => (EncodingKey::from_ec_pem(&pem), "demo-es256"),
        Algorithm::EdDSA => (EncodingKey::from_ed_pem(&pem), "demo-eddsa"),
        _ => return Err(format!("`{alg:?}` is not an asymmetric signature algorithm")),
    };
    let enc = enc.map_err(|e| format!("{}: {e}", key.display()))?;
    let issued = now_or(None).as_secs();
    let mut body = json!({
        "iss": iss, "aud": aud, "sub": sub, "client_id": client_id, "scope": scope,
        "iat": issued, "exp": issued + ttl, "jti": format!("demo-{issued}-{}", std::process::id()),
    });
    if let Some(p) = patient {
        body["patient"] = json!(p);
    }
    if let Some(extra) = claims {
        let extra: Value = serde_json::from_str(&extra).map_err(|e| format!("--claims: {e}"))?;
        let extra = extra.as_object().ok_or("--claims must be a JSON object")?;
        for (k, v) in extra {
            match v {
                Value::Null => {
                    if let Some(o) = body.as_object_mut() {
                        o.remove(k);
                    }
                }
                v => body[k] = v.clone(),
            }
        }
    }
    let mut header = Header::new(alg);
    header.typ = Some("JWT".into());
    header.kid = Some(kid.unwrap_or_else(|| default_kid.to_owned()));
    let t = jsonwebtoken::encode(&header, &body, &enc).map_err(|e| format!("signing failed: {e}"))?;
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// The ECDS `TypedExtensionConfig` for the filter carrying `policy` as its configuration.
fn ecds_resource(policy_text: &str, wasm: &std::path::Path, host_env: &[String]) -> Value {
    json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "phi-guard",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "phi-guard",
                    "root_id": "phi-guard",
                    // Never fail open: a crashed VM answers 503 and is restarted.
                    "failure_policy": "FAIL_RELOAD",
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": policy_text},
                    "vm_config": {
                        "vm_id": "phi-guard",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm.display().to_string()}},
                        "environment_variables": {"host_env_keys": host_env},
                    },
                },
            },
        }]
    })
}

/// Validate (report only: the filter itself refuses a bad policy and keeps the old one) and
/// write the ECDS file atomically.
fn write_ecds(policy: &PathBuf, wasm: &std::path::Path, out: &std::path::Path, host_env: &[String]) -> Result<String, String> {
    let text = std::fs::read_to_string(policy).map_err(|e| format!("{}: {e}", policy.display()))?;
    let verdict = match compile(text.as_bytes()) {
        Ok(p) => format!("policy `{}` revision {}", p.name, p.revision),
        Err(e) => format!("INVALID policy ({e}); the filter will refuse it and keep the previous one"),
    };
    let body = serde_json::to_vec_pretty(&ecds_resource(&text, wasm, host_env)).map_err(|e| e.to_string())?;
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", out.file_name().and_then(|n| n.to_str()).unwrap_or("ecds")));
    std::fs::write(&tmp, body).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(format!("wrote {}: {verdict}", out.display()))
}

fn print_outcome(policy: &Policy, o: &ExchangeOutcome) {
    println!("policy:   {} ({}){}", policy.name, policy.revision, if o.enforced { "" } else { " SHADOW MODE: refusals are not enforced" });
    match (o.decision, o.reason) {
        (Verdict::Allow, None) => println!("decision: ALLOW"),
        (Verdict::Allow, Some(r)) => println!("decision: ALLOW, then the RESPONSE IS WITHHELD: {r}"),
        (_, r) => println!("decision: DENY {} {}", o.status.unwrap_or(0), r.unwrap_or("")),
    }
    if let Some(m) = o.message {
        println!("why:      {m}");
    }
    println!("route:    {}", o.route.as_deref().unwrap_or("(none matched)"));
    if let Some(f) = &o.fhir {
        println!("fhir:     {} {}", f.interaction, f.resource_type.unwrap_or("(system)"));
    }
    match &o.caller {
        Some(c) => println!(
            "token:    iss={} sub={} client={} patient={} scopes=[{}]",
            c.issuer,
            c.subject.as_deref().unwrap_or("-"),
            c.client_id.as_deref().unwrap_or("-"),
            c.patient.as_deref().unwrap_or("-"),
            c.scopes.join(" ")
        ),
        None if o.decision == Verdict::Allow => println!("token:    not required (public route)"),
        None => {}
    }
    if let Some(n) = &o.needs {
        if let Some(s) = &n.scope {
            println!("needs:    {s}");
        }
        if let Some(a) = &n.acr_values {
            println!("needs:    acr at or above: {a}");
        }
        if let Some(m) = n.max_age {
            println!("needs:    authentication within the last {m} s");
        }
    }
    if let Some(w) = &o.www_authenticate {
        println!("header:   WWW-Authenticate: {w}");
    }
    if let Some(b) = &o.break_glass {
        println!("emergency: BREAK-GLASS `{b}` (audited at high severity)");
    }
    if let Some(p) = &o.profile {
        println!("profile:  {p}: withheld {} values at {} paths", o.withheld_count, o.withheld.len());
        for path in &o.withheld {
            println!("  {path}");
        }
    }
    if let Some(s) = o.status {
        println!("status:   {s}{}", if o.body_changed { " (body replaced by the filter)" } else { "" });
    }
    if let Some(b) = &o.body {
        println!("body:     {b}");
    }
    if let Ok(ev) = serde_json::to_string(&o.audit) {
        println!("audit:    {ev}");
    }
}
