//! `phi-guard`: the native command line on the same core as the filter.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phi_guard::auth::check_claims;
use phi_guard::decision::{decide, decide_with, refusal_reply, Decision, DenyReason, Request};
use phi_guard::minimize::{self, ApplyCtx};
use phi_guard::policy::{compile, Policy};
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
    Validate {
        /// Policy JSON file.
        policy: PathBuf,
    },
    /// Print the decision for one request and why.
    Explain {
        /// Policy JSON file.
        policy: PathBuf,
        /// HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request path with query, e.g. `/fhir/Observation?patient=123`.
        #[arg(long)]
        path: String,
        /// A compact JWS access token (verified with the policy's keys).
        #[arg(long, conflicts_with = "claims")]
        token: Option<String>,
        /// Token claims as JSON, trusted without a signature (to try a policy before keys exist).
        #[arg(long)]
        claims: Option<String>,
        /// Evaluate at this Unix time instead of now.
        #[arg(long)]
        now: Option<u64>,
    },
    /// Minimize a response body (stdin) as a route's profile would for a caller; prints the
    /// released JSON on stdout and the profile and withheld paths on stderr. Exit 2 when the
    /// body would be refused (the generic error body is printed instead).
    Minimize {
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
    },
    /// Mint a signed demo token. Test keys only: never use them outside a demo or test.
    Token {
        /// PEM private key (PKCS#8).
        #[arg(long, default_value = "tests/keys/demo-rs256.key.pem")]
        key: PathBuf,
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
    },
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
        Command::Validate { policy } => {
            let p = load(&policy)?;
            println!("ok: policy `{}` revision {} ({} routes, {} issuers)", p.name, p.revision, p.routes.len(), p.issuers.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { policy, method, path, token, claims, now: at } => {
            let p = load(&policy)?;
            let at = at.unwrap_or_else(now);
            let header = token.as_ref().map(|t| format!("Bearer {t}")).or(claims.as_ref().map(|_| "Bearer claims".to_owned()));
            let auth: Vec<&str> = header.iter().map(String::as_str).collect();
            let req = Request { method: &method, path: &path, authorization: &auth };
            let decision = match &claims {
                Some(c) => {
                    let value: Value = serde_json::from_str(c).map_err(|e| format!("--claims: {e}"))?;
                    decide_with(&p, &req, |_| check_claims(&value, &p.issuers, at).map(Rc::new))
                }
                None => decide(&p, &mut phi_guard::auth::TokenCache::new(0), &req, at),
            };
            print_decision(&p, &decision);
            Ok(match decision {
                Decision::Allow(_) => ExitCode::SUCCESS,
                Decision::Deny(_) => ExitCode::from(2),
            })
        }
        Command::Minimize { policy, route, scopes, purpose, hmac_key_env, now: at, pretty } => {
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
            let ctx = ApplyCtx { hmac_key: key.as_deref(), now: at.unwrap_or_else(now) };
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
        Command::Token { key, alg, kid, iss, aud, sub, client_id, scope, patient, ttl, claims } => {
            let alg: Algorithm = alg.parse().map_err(|_| format!("unknown algorithm `{alg}`"))?;
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
            let issued = now();
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
    }
}

fn print_decision(policy: &Policy, d: &Decision) {
    println!("policy:   {} ({})", policy.name, policy.revision);
    match d {
        Decision::Allow(g) => {
            println!("decision: ALLOW");
            println!("route:    {}", g.route_id);
            if let Some(f) = &g.fhir {
                println!("fhir:     {} {}", f.interaction.name(), f.resource_type.unwrap_or("(system)"));
            }
            match &g.principal {
                Some(p) => println!(
                    "token:    iss={} sub={} client={} patient={} scopes=[{}]",
                    p.issuer,
                    p.subject.as_deref().unwrap_or("-"),
                    p.client_id.as_deref().unwrap_or("-"),
                    p.patient.as_deref().unwrap_or("-"),
                    p.scopes.join(" ")
                ),
                None => println!("token:    not required (public route)"),
            }
            for c in &g.response.checks {
                println!("response: checked before release: {c:?}");
            }
            if let Some(m) = &g.response.minimize {
                println!("response: minimized by profile `{}`{}", m.name, if m.shadow { " (shadow)" } else { "" });
            }
        }
        Decision::Deny(r) => {
            let reply = refusal_reply(r.reason, r.status, r.fhir_route, r.required_scope.as_deref());
            println!("decision: DENY {} {}", r.status, r.reason.code());
            println!("why:      {}", r.reason.message());
            println!("route:    {}", r.route_id.as_deref().unwrap_or("(none matched)"));
            if let Some(f) = &r.fhir {
                println!("fhir:     {} {}", f.interaction.name(), f.resource_type.unwrap_or("(system)"));
            }
            if let Some(s) = &r.required_scope {
                println!("needs:    {s}");
            }
            for (k, v) in &reply.headers {
                if *k == "www-authenticate" {
                    println!("header:   WWW-Authenticate: {v}");
                }
            }
        }
    }
}
