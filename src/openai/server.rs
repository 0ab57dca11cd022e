//! `mmlab serve`: a model behind an OpenAI-compatible `/v1/chat/completions` and `/v1/models`.
//!
//! The HTTP side (axum on a small tokio runtime) reads, checks and decodes each request (key, body size, JSON shape, data URLs,
//! image size from the header alone), write its media to a private folder named by content,
//! and queue it. One model thread takes whatever is queued (up to `max_batch`), answers it in
//! one batch through the same [`ModelResponder`] `mmlab eval` uses, and hands each answer back to
//! its own connection. A request the model cannot take fails alone: its batch is answered
//! again one by one, so other clients' work is never dropped.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mmlab_eval::{Request, Responder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::wire::{read_turn, Refusal};
use crate::model::responder::ModelResponder;

/// Settings of `mmlab serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on (127.0.0.1 unless the user says otherwise).
    pub host: String,
    /// Port (0: any free one; the chosen one is printed).
    pub port: u16,
    /// Bearer key every request must carry, when set.
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Largest image, in pixels, read from its header before any decoding.
    pub max_pixels: u64,
    /// Most questions answered in one model batch.
    pub max_batch: usize,
    /// How long the model thread waits for more requests to join a batch.
    pub batch_wait: Duration,
    /// Most tokens generated per answer (a request's `max_tokens` may ask fewer).
    pub max_new_tokens: usize,
    /// Threads of the HTTP runtime.
    pub http_threads: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            max_body: 32 << 20,
            max_pixels: 4096 * 4096,
            max_batch: 32,
            batch_wait: Duration::from_millis(3),
            max_new_tokens: 8,
            http_threads: 2,
        }
    }
}

/// One question waiting for the model.
struct Job {
    req: Request,
    max_new: usize,
    reply: oneshot::Sender<Result<String, String>>,
}

/// What the HTTP threads share.
struct Shared {
    name: String,
    opts: ServeOptions,
    media: PathBuf,
    queue: mpsc::Sender<Job>,
    ids: AtomicU64,
}

/// Serves `model` as `name` until the process is stopped. `ready` is called with the address
/// once the socket listens.
pub fn serve(
    model: ModelResponder,
    name: String,
    opts: ServeOptions,
    ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let media = tempfile::Builder::new().prefix("mmlab-serve-").tempdir()?;
    let (tx, rx) = mpsc::channel::<Job>();
    let shared = Arc::new(Shared {
        name,
        opts: opts.clone(),
        media: media.path().to_path_buf(),
        queue: tx,
        ids: AtomicU64::new(0),
    });
    let worker_opts = opts.clone();
    std::thread::Builder::new()
        .name("model".into())
        .spawn(move || model_loop(model, rx, &worker_opts))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.http_threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        ready(listener.local_addr()?);
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/models", get(models))
            .route("/v1/chat/completions", post(chat_route))
            .route("/chat/completions", post(chat_route))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .fallback(no_route)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(shared);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })?;
    drop(media);
    Ok(())
}

/// The model thread: batches of queued questions, grouped by answer length.
fn model_loop(mut model: ModelResponder, rx: mpsc::Receiver<Job>, opts: &ServeOptions) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let until = Instant::now() + opts.batch_wait;
        while jobs.len() < opts.max_batch.max(1) {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        while !jobs.is_empty() {
            // One answer length per model call: the longest-waiting job's.
            let m = jobs[0].max_new;
            let (group, rest): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.max_new == m);
            jobs = rest;
            model.opts.max_new_tokens = m;
            let reqs: Vec<Request> = group.iter().map(|j| j.req.clone()).collect();
            match model.respond(&reqs) {
                Ok(out) => {
                    for (j, r) in group.into_iter().zip(out) {
                        let _ = j.reply.send(Ok(r.answer));
                    }
                }
                // One bad input fails the batch: answer each alone so only it fails.
                Err(_) if group.len() > 1 => {
                    for j in group {
                        let one = model
                            .respond(std::slice::from_ref(&j.req))
                            .map(|mut o| o.remove(0).answer)
                            .map_err(|e| mmlab_eval::error::error_chain(&e));
                        let _ = j.reply.send(one);
                    }
                }
                Err(e) => {
                    for j in group {
                        let _ = j.reply.send(Err(mmlab_eval::error::error_chain(&e)));
                    }
                }
            }
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

/// Whether two byte strings are equal, in time independent of where they differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a request without the server's key, when it has one.
fn check_key(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(key) = &shared.opts.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if same_key(given, format!("Bearer {key}").as_bytes()) {
        Ok(())
    } else {
        Err(Refusal {
            status: 401,
            kind: "authentication_error",
            param: None,
            message: "missing or wrong API key (send Authorization: Bearer <key>)".into(),
        })
    }
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_key(&shared, &headers) {
        return r.into_response();
    }
    Json(json!({"object": "list", "data": [{
        "id": shared.name, "object": "model", "created": 0, "owned_by": "mmlab"}]}))
    .into_response()
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    Refusal {
        status: 404,
        kind: "invalid_request_error",
        param: None,
        message: format!(
            "no route {method} {}: this server has POST /v1/chat/completions and GET /v1/models",
            uri.path()
        ),
    }
    .into_response()
}

async fn chat_route(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = check_key(&shared, &headers) {
        return r.into_response();
    }
    let body = match read_body(&shared, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let rx = match queue(&shared, &body) {
        Ok(rx) => rx,
        Err(r) => return r.into_response(),
    };
    match answer(&shared, rx).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

/// The body as JSON, refused past `max_body` before it is read (or as soon as it passes it).
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Value, Refusal> {
    let max = shared.opts.max_body;
    let too_big = |n: String| Refusal {
        status: 413,
        kind: "invalid_request_error",
        param: None,
        message: format!("request body of {n} bytes is over this server's limit of {max} bytes"),
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > max as u64) {
        return Err(too_big(n.to_string()));
    }
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_big(format!("more than {max}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::invalid("body", format!("the body is not valid JSON: {e}")))
}

/// Checks a chat completion request and queues its question; the receiver gets the answer.
fn queue(
    shared: &Shared,
    body: &Value,
) -> Result<(u64, oneshot::Receiver<Result<String, String>>), Refusal> {
    if let Some(m) = body.get("model").and_then(Value::as_str) {
        if m != shared.name {
            return Err(Refusal {
                status: 404,
                kind: "invalid_request_error",
                param: Some("model".into()),
                message: format!(
                    "the model `{m}` does not exist here; this server has `{}`",
                    shared.name
                ),
            });
        }
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(Refusal::invalid(
            "stream",
            "streaming is not supported; send stream: false",
        ));
    }
    if body
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n != 1)
    {
        return Err(Refusal::invalid("n", "one answer per request (n = 1)"));
    }
    if body
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t != 0.0)
    {
        return Err(Refusal::invalid(
            "temperature",
            "this server decodes greedily: send temperature 0 or leave it out",
        ));
    }
    let cap = shared.opts.max_new_tokens;
    let max_new = match body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
    {
        None | Some(Value::Null) => cap,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => (n as usize).min(cap),
            _ => {
                return Err(Refusal::invalid(
                    "max_tokens",
                    "max_tokens must be a positive integer",
                ))
            }
        },
    };
    let turn = read_turn(body)?;
    let image = turn
        .image
        .as_deref()
        .map(|b| save_image(shared, b))
        .transpose()?;
    let audio = turn
        .audio
        .as_ref()
        .map(|(b, f)| save_audio(shared, b, f))
        .transpose()?;
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    let req = Request {
        task: "serve".into(),
        question_id: id.to_string(),
        prompt: turn.text,
        image,
        audio,
        candidates: None,
    };
    let (tx, rx) = oneshot::channel();
    let job = Job {
        req,
        max_new,
        reply: tx,
    };
    shared.queue.send(job).map_err(|_| gone())?;
    Ok((id, rx))
}

fn gone() -> Refusal {
    Refusal {
        status: 503,
        kind: "server_error",
        param: None,
        message: "the model thread has stopped".into(),
    }
}

/// Waits for a queued question's answer and writes the chat completion.
async fn answer(
    shared: &Shared,
    (id, rx): (u64, oneshot::Receiver<Result<String, String>>),
) -> Result<Value, Refusal> {
    let answer = rx.await.map_err(|_| gone())?.map_err(|e| Refusal {
        status: 400,
        kind: "invalid_request_error",
        param: Some("messages".into()),
        message: format!("the model could not take this input: {e}"),
    })?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(json!({
        "id": format!("chatcmpl-mmlab-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": shared.name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "finish_reason": "stop",
        }],
    }))
}

/// The media folder's file for `bytes`, named by their hash so equal inputs share a file (and
/// the model's prefix cache).
fn media_path(shared: &Shared, bytes: &[u8], ext: &str) -> Result<PathBuf, Refusal> {
    let name = format!("{}.{ext}", hex::encode(Sha256::digest(bytes)));
    let path = shared.media.join(name);
    if !path.exists() {
        // Written under a unique name and renamed, so a reader never sees half a file.
        let part = shared.media.join(format!(
            ".part-{}",
            shared.ids.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&part, bytes)
            .and_then(|_| std::fs::rename(&part, &path))
            .map_err(|e| Refusal {
                status: 500,
                kind: "server_error",
                param: None,
                message: format!(
                    "cannot store the input under {}: {e}",
                    shared.media.display()
                ),
            })?;
    }
    Ok(path)
}

fn save_image(shared: &Shared, bytes: &[u8]) -> Result<PathBuf, Refusal> {
    let param = "messages[0].content (image)";
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Refusal::invalid(param, format!("unreadable image: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(Refusal::invalid(
            param,
            "not an image (format not recognised)",
        ));
    };
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Refusal::invalid(param, format!("unreadable image header: {e}")))?;
    if w as u64 * h as u64 > shared.opts.max_pixels || w == 0 || h == 0 {
        return Err(Refusal::invalid(
            param,
            format!(
                "image is {w}×{h}; this server takes images of 1 to {} pixels",
                shared.opts.max_pixels
            ),
        ));
    }
    let ext = format.extensions_str().first().copied().unwrap_or("img");
    media_path(shared, bytes, ext)
}

fn save_audio(shared: &Shared, bytes: &[u8], format: &str) -> Result<PathBuf, Refusal> {
    const KNOWN: [&str; 4] = ["wav", "mp3", "flac", "ogg"];
    if !KNOWN.contains(&format) {
        return Err(Refusal::invalid(
            "messages[0].content (input_audio.format)",
            format!("audio format {format:?} is not one of {}", KNOWN.join(", ")),
        ));
    }
    media_path(shared, bytes, format)
}
