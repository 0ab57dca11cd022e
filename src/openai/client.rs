//! `--model openai:URL`: ask a served model (vLLM, SGLang, llama.cpp's server, TGI, the OpenAI
//! API, `mmlab serve`) every question through its chat completions endpoint.
//!
//! Requests go out `concurrency` at a time. 429s, 5xx, timeouts, dropped connections, malformed
//! JSON and empty `choices` are retried with exponential backoff (a `Retry-After` header is
//! honoured); any other refusal stops the run at once. Either way the answers already received
//! are handed to the harness's cache ([`EvalError::PartlyAnswered`]), so a rerun asks only
//! what is missing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mmlab_eval::{EvalError, Request, Responder, Response};
use serde_json::{json, Value};

use super::wire::{encode_base64, read_answer};

/// How to reach the server and how hard to try.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The API base, e.g. `http://127.0.0.1:8000/v1` (a URL ending in `/chat/completions` is
    /// used as it is).
    pub base_url: String,
    /// The served model's name; `None` asks `/models` and takes the only one.
    pub api_model: Option<String>,
    /// Bearer key sent as `Authorization`.
    pub api_key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Limit on one request, connection to last byte.
    pub timeout: Duration,
    /// Tries after the first, for retryable failures.
    pub retries: u32,
    /// Wait before the first retry; doubles each time, at most 30 s.
    pub backoff: Duration,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
}

impl ClientOptions {
    /// Defaults for `base_url`: 8 in flight, 120 s per request, 4 retries from 1 s, 64 tokens.
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientOptions {
            base_url: base_url.into(),
            api_model: None,
            api_key: None,
            concurrency: 8,
            timeout: Duration::from_secs(120),
            retries: 4,
            backoff: Duration::from_secs(1),
            max_tokens: 64,
        }
    }
}

/// A served model as a [`Responder`].
pub struct OpenAiResponder {
    opts: ClientOptions,
    model: String,
    endpoint: String,
    agent: ureq::Agent,
}

/// Why one attempt failed: worth another try, or not.
enum Failure {
    Retry(String, Option<Duration>),
    Fatal(String),
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    if out.is_empty() {
        "(empty body)".into()
    } else {
        out
    }
}

impl OpenAiResponder {
    /// Connects the options; with no `api_model`, asks the server's `/models` for it.
    pub fn new(opts: ClientOptions) -> anyhow::Result<Self> {
        let base = opts.base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!(
                "openai:{base}: the URL must start with http:// or https:// (e.g. \
                 openai:http://127.0.0.1:8000/v1)"
            );
        }
        let (endpoint, api_base) = match base.strip_suffix("/chat/completions") {
            Some(b) => (base.clone(), b.to_string()),
            None => (format!("{base}/chat/completions"), base.clone()),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(opts.concurrency.max(1))
            .build()
            .into();
        let model = match &opts.api_model {
            Some(m) => m.clone(),
            None => Self::only_model(&agent, &api_base, opts.api_key.as_deref())?,
        };
        Ok(OpenAiResponder {
            opts,
            model,
            endpoint,
            agent,
        })
    }

    /// The one model a server lists at `/models`.
    fn only_model(agent: &ureq::Agent, base: &str, key: Option<&str>) -> anyhow::Result<String> {
        let url = format!("{base}/models");
        let mut req = agent.get(&url);
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = req
            .call()
            .map_err(|e| anyhow::anyhow!("{url}: {e} (name the model with --api-model)"))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            anyhow::bail!(
                "{url}: HTTP {status}: {}; name the model with --api-model",
                excerpt(&body)
            );
        }
        let v: Value = serde_json::from_str(&body)
            .map_err(|_| anyhow::anyhow!("{url}: not JSON: {}", excerpt(&body)))?;
        let ids: Vec<String> = v
            .get("data")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(|m| m.get("id").and_then(Value::as_str).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => anyhow::bail!("{url} lists no model; name one with --api-model"),
            many => anyhow::bail!(
                "{url} serves {} models ({}); name one with --api-model",
                many.len(),
                many.join(", ")
            ),
        }
    }

    /// The chat completion body for one question.
    fn body(&self, r: &Request) -> Result<Value, EvalError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                EvalError::responder(
                    self.identity(),
                    format!("question {}: reading {}: {e}", r.question_id, p.display()),
                )
            })
        };
        let mut parts = Vec::new();
        if let Some(p) = &r.image {
            let bytes = read(p)?;
            let mime = image::guess_format(&bytes)
                .map(|f| f.to_mime_type())
                .map_err(|_| {
                    EvalError::responder(
                        self.identity(),
                        format!(
                            "question {}: {} is not an image format this client knows",
                            r.question_id,
                            p.display()
                        ),
                    )
                })?;
            parts.push(json!({"type": "image_url", "image_url": {
                "url": format!("data:{mime};base64,{}", encode_base64(&bytes))}}));
        }
        if let Some(p) = &r.audio {
            let bytes = read(p)?;
            let format = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("wav")
                .to_ascii_lowercase();
            parts.push(json!({"type": "input_audio", "input_audio": {
                "data": encode_base64(&bytes), "format": format}}));
        }
        parts.push(json!({"type": "text", "text": r.prompt}));
        Ok(json!({
            "model": self.model,
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": self.opts.max_tokens,
            "temperature": 0,
        }))
    }

    /// One request, no retries.
    fn attempt(&self, body: &Value) -> Result<String, Failure> {
        let mut req = self.agent.post(&self.endpoint);
        if let Some(k) = &self.opts.api_key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = match req.send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                return Err(Failure::Retry(
                    format!("no answer within {} s", self.opts.timeout.as_secs_f32()),
                    None,
                ))
            }
            Err(e) => return Err(Failure::Retry(format!("{e}"), None)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(60.0)));
        let text = match resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
        {
            Ok(t) => t,
            Err(ureq::Error::Timeout(_)) => {
                return Err(Failure::Retry(
                    format!(
                        "answer not finished within {} s",
                        self.opts.timeout.as_secs_f32()
                    ),
                    None,
                ))
            }
            Err(e) => return Err(Failure::Retry(format!("reading the answer: {e}"), None)),
        };
        if status == 429 || status >= 500 {
            return Err(Failure::Retry(
                format!("HTTP {status}: {}", excerpt(&text)),
                retry_after,
            ));
        }
        if !(200..300).contains(&status) {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .unwrap_or_else(|| excerpt(&text));
            return Err(Failure::Fatal(format!("refused, HTTP {status}: {msg}")));
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| Failure::Retry(format!("malformed JSON: {}", excerpt(&text)), None))?;
        read_answer(&v).map_err(|why| Failure::Retry(format!("{why}: {}", excerpt(&text)), None))
    }

    /// One question, with retries; the error names the question and what came back.
    fn ask(&self, r: &Request) -> Result<String, EvalError> {
        let body = self.body(r)?;
        let mut wait = self.opts.backoff;
        let tries = self.opts.retries + 1;
        for k in 1..=tries {
            match self.attempt(&body) {
                Ok(a) => return Ok(a),
                Err(Failure::Fatal(why)) => {
                    return Err(EvalError::responder(
                        self.identity(),
                        format!("question {} ({}): {why}", r.question_id, r.task),
                    ))
                }
                Err(Failure::Retry(why, after)) => {
                    if k == tries {
                        return Err(EvalError::responder(
                            self.identity(),
                            format!(
                                "question {} ({}): no usable answer after {tries} attempts; \
                                 the last: {why}",
                                r.question_id, r.task
                            ),
                        ));
                    }
                    tracing::warn!(
                        "{}: question {}: {why}; retrying ({k}/{})",
                        self.endpoint,
                        r.question_id,
                        tries - 1
                    );
                    std::thread::sleep(after.unwrap_or(wait));
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}

impl Responder for OpenAiResponder {
    fn identity(&self) -> String {
        format!("openai:{}#{}", self.endpoint, self.model)
    }

    fn name(&self) -> String {
        format!("openai-{}", self.model)
    }

    fn batch_size(&self) -> usize {
        self.opts.concurrency.max(1) * 4
    }

    fn settings(&self) -> Value {
        json!({"api": "openai-chat", "max_tokens": self.opts.max_tokens, "temperature": 0})
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError> {
        if let Some(r) = batch.iter().find(|r| r.candidates.is_some()) {
            return Err(EvalError::responder(
                self.identity(),
                format!(
                    "question {}: --score needs candidate log-likelihoods, which a chat \
                     completions server does not give; run without --score",
                    r.question_id
                ),
            ));
        }
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let got: Mutex<Vec<Option<Result<String, EvalError>>>> =
            Mutex::new((0..batch.len()).map(|_| None).collect());
        let workers = self.opts.concurrency.max(1).min(batch.len());
        let this = &*self;
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(r) = batch.get(i) else { return };
                    let a = this.ask(r);
                    if a.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    got.lock().expect("no worker panics holding the lock")[i] = Some(a);
                });
            }
        });
        let got = got.into_inner().expect("workers have finished");
        let mut answered = Vec::with_capacity(batch.len());
        let mut first_error = None;
        for g in got {
            match g {
                Some(Ok(a)) => answered.push(Some(Response::text(a))),
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                    answered.push(None);
                }
                None => answered.push(None),
            }
        }
        match first_error {
            None => Ok(answered
                .into_iter()
                .map(|a| a.expect("all answered"))
                .collect()),
            Some(error) => Err(EvalError::PartlyAnswered {
                answered,
                error: Box::new(error),
            }),
        }
    }
}
