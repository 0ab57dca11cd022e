//! `mmlab serve` and `--model openai:URL`: served answers equal direct ones, concurrent clients
//! are kept apart, bad requests are refused in the OpenAI error shape, and the client retries,
//! stops with a clear error and resumes from its cache against a misbehaving server.

mod common;
use common::stdout_ok;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

fn mmlab(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmlab"))
        .args(args)
        .current_dir(cwd)
        .env("MMLAB_LOG", "error")
        .env_remove("MMLAB_HOME")
        .output()
        .expect("running mmlab")
}

/// A running `mmlab serve`, killed when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(cwd: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mmlab"));
    c.args(["serve", "--model", "fuyu-small", "--port", "0"])
        .args(extra)
        .current_dir(cwd)
        .env("MMLAB_LOG", "error")
        .env_remove("MMLAB_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("starting mmlab serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("mmlab serve printed its address");
    let start = line.find("http://").expect("an address in the first line");
    let base = line[start..].split_whitespace().next().unwrap().to_string();
    Served { child, base }
}

/// `(task, question_id) -> answer` of every samples file under `dir`.
fn answers(dir: &Path) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for model in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(model.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if !p.to_string_lossy().ends_with(".samples.jsonl") {
                continue;
            }
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let key = (
                    v["task"].as_str().unwrap().to_string(),
                    v["question_id"].as_str().unwrap().to_string(),
                );
                out.insert(key, v["answer"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

fn data_url(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn post(base: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut req = agent.post(format!("{base}/chat/completions"));
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut resp = req.send_json(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn question(image: &Path, text: &str) -> Value {
    json!({"model": "fuyu-small", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image)}},
        {"type": "text", "text": text}]}], "max_tokens": 8, "temperature": 0})
}

#[test]
fn eval_through_serve_answers_exactly_as_the_model_does_directly() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path(), &[], &[]);
    let url = format!("openai:{}", served.base);
    let via = [
        "eval",
        "pope",
        "--model",
        &url,
        "--limit",
        "300",
        "--results",
        "served",
    ];
    stdout_ok(&mmlab(dir.path(), &via));
    let direct = [
        "eval",
        "pope",
        "--model",
        "fuyu-small",
        "--limit",
        "300",
        "--results",
        "direct",
    ];
    stdout_ok(&mmlab(dir.path(), &direct));
    let (a, b) = (
        answers(&dir.path().join("served")),
        answers(&dir.path().join("direct")),
    );
    assert_eq!(a.len(), 900, "three splits of 300");
    assert_eq!(a, b, "served answers differ from the direct ones");
    // Audio travels as `input_audio` parts.
    let via = [
        "eval",
        "audio-pope",
        "--model",
        &url,
        "--limit",
        "40",
        "--results",
        "served-a",
    ];
    stdout_ok(&mmlab(dir.path(), &via));
    let direct = [
        "eval",
        "audio-pope",
        "--model",
        "fuyu-small",
        "--limit",
        "40",
        "--results",
        "direct-a",
    ];
    stdout_ok(&mmlab(dir.path(), &direct));
    let (a, b) = (
        answers(&dir.path().join("served-a")),
        answers(&dir.path().join("direct-a")),
    );
    assert_eq!(a.len(), 120, "three splits of 40");
    assert_eq!(a, b, "served audio answers differ from the direct ones");
}

#[test]
fn serve_keeps_eight_concurrent_clients_apart_and_refuses_bad_requests_alone() {
    let dir = tempfile::tempdir().unwrap();
    // The direct answers, and the default test set they come from.
    stdout_ok(&mmlab(
        dir.path(),
        &[
            "eval",
            "pope-random",
            "--model",
            "fuyu-small",
            "--limit",
            "96",
            "--results",
            "direct",
        ],
    ));
    let expected = answers(&dir.path().join("direct"));
    let data = dir.path().join("data/eval-1000000007/shapes");
    let images: HashMap<String, PathBuf> =
        std::fs::read_to_string(data.join("questions/pope-random.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let id = v["question_id"].to_string();
                (id, data.join("images").join(v["image"].as_str().unwrap()))
            })
            .collect();
    let prompts: HashMap<String, String> = std::fs::read_dir(dir.path().join("direct/fuyu-small"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".samples.jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    (
                        v["question_id"].as_str().unwrap().to_string(),
                        v["prompt"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let served = serve(dir.path(), &["--api-key-env", "KEY"], &[("KEY", "sesame")]);
    let work: Vec<(String, String)> = expected
        .iter()
        .map(|((_, id), ans)| (id.clone(), ans.clone()))
        .collect();
    let wrong = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for client in 0..8 {
            let (work, images, prompts, wrong, base) =
                (&work, &images, &prompts, wrong.clone(), &served.base);
            s.spawn(move || {
                for (k, (id, want)) in work.iter().enumerate() {
                    if k % 8 != client {
                        continue;
                    }
                    // Every other client also sends a request the server must refuse, between
                    // its good ones: the refusals must not touch anyone's answers.
                    if client % 2 == 0 {
                        let bad = json!({"messages": [{"role": "user", "content": [
                            {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}},
                            {"type": "text", "text": "Is there a ring?"}]}]});
                        let (st, body) = post(base, &bad, Some("sesame"));
                        assert_eq!(st, 400, "{body}");
                    }
                    let (st, body) =
                        post(base, &question(&images[id], &prompts[id]), Some("sesame"));
                    assert_eq!(st, 200, "{body}");
                    let got = body["choices"][0]["message"]["content"].as_str().unwrap();
                    if got != want {
                        wrong
                            .lock()
                            .unwrap()
                            .push((id.clone(), got.to_string(), want.clone()));
                    }
                }
            });
        }
    });
    assert_eq!(work.len(), 96);
    assert!(
        wrong.lock().unwrap().is_empty(),
        "wrong or mixed-up answers: {:?}",
        wrong.lock().unwrap()
    );

    // Refusals, each in the OpenAI error shape.
    let img = images.values().next().unwrap();
    let (st, body) = post(
        &served.base,
        &question(img, "Is there a ring?"),
        Some("wrong"),
    );
    assert_eq!(st, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    let (st, body) = post(&served.base, &question(img, "Is there a ring?"), None);
    assert_eq!(st, 401, "{body}");
    let mut other = question(img, "Is there a ring?");
    other["model"] = json!("llava-small");
    let (st, body) = post(&served.base, &other, Some("sesame"));
    assert_eq!(st, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llava-small"),
        "{body}"
    );
    // A body declared past the 32 MiB limit is refused from its header, before any of it is
    // sent (the socket carries only the request head here).
    let hostport = served
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    let mut conn = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        40u64 << 20
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = [0u8; 512];
    let n = conn.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("over this server's limit"), "{head}");
    // A PNG header claiming 100000 x 100000 pixels: refused from the header, never decoded.
    let mut bomb = std::fs::read(img).unwrap();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let big = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&bomb))}},
        {"type": "text", "text": "Is there a ring?"}]}]});
    let (st, body) = post(&served.base, &big, Some("sesame"));
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100000×100000"),
        "{body}"
    );
    // Malformed JSON.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(format!("{}/chat/completions", served.base))
        .header("Authorization", "Bearer sesame")
        .header("Content-Type", "application/json")
        .send("{\"messages\": [")
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{body}"
    );
    // The model list.
    let mut resp = agent
        .get(format!("{}/models", served.base))
        .header("Authorization", "Bearer sesame")
        .call()
        .unwrap();
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["data"][0]["id"], "fuyu-small");
}

/// How the stub server treats each chat completion it receives.
#[derive(Clone, Copy, PartialEq)]
enum Mood {
    /// Each question's first attempt fails (a 500, a hang past the client's timeout, malformed
    /// JSON, or empty choices, in turn); its second is answered.
    Flaky,
    /// Questions asked before `limit` distinct ones are answered; after that, 500s.
    DiesAfter(usize),
    /// Every request is answered.
    Fine,
}

#[derive(Default)]
struct Seen {
    /// Attempts per question text + image (a question's identity on the wire).
    attempts: HashMap<String, usize>,
    answered: usize,
}

/// A minimal HTTP/1.1 server on a loopback port, one thread per connection.
fn stub(mood: Arc<Mutex<Mood>>, seen: Arc<Mutex<Seen>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (mood, seen) = (mood.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let (head_end, len) = loop {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                let key = body["messages"].to_string();
                let (attempt, distinct) = {
                    let mut s = seen.lock().unwrap();
                    let a = s.attempts.entry(key).or_insert(0);
                    *a += 1;
                    (*a, s.attempts.len())
                };
                let good = json!({"choices": [{"index": 0, "message":
                    {"role": "assistant", "content": "Yes, there is."}}]})
                .to_string();
                let mood = *mood.lock().unwrap();
                let (status, text) = match mood {
                    Mood::Fine => (200, good),
                    Mood::DiesAfter(limit) if distinct > limit => (
                        500,
                        "{\"error\": {\"message\": \"backend died\"}}".to_string(),
                    ),
                    Mood::DiesAfter(_) => (200, good),
                    Mood::Flaky if attempt >= 2 => (200, good),
                    Mood::Flaky => match distinct % 4 {
                        0 => (500, "internal error".to_string()),
                        1 => {
                            std::thread::sleep(Duration::from_millis(2500));
                            (200, good)
                        }
                        2 => (200, "{\"choices\": [{\"message\": ".to_string()),
                        _ => (200, "{\"choices\": []}".to_string()),
                    },
                };
                if status == 200 && text.contains("there is") {
                    seen.lock().unwrap().answered += 1;
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
    format!("http://{addr}/v1")
}

#[test]
fn the_client_retries_a_flaky_server_stops_clearly_on_a_dead_one_and_resumes_from_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mood = Arc::new(Mutex::new(Mood::Flaky));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let base = stub(mood.clone(), seen.clone());
    let url = format!("openai:{base}");
    let args = |results: &'static str| {
        vec![
            "eval",
            "pope-random",
            "--model",
            url.as_str(),
            "--api-model",
            "stub",
            "--limit",
            "12",
            "--results",
            results,
            "--timeout",
            "1",
            "--retries",
            "1",
            "--backoff",
            "0.05",
            "--concurrency",
            "4",
        ]
    };
    // Flaky: every question fails once in one of four ways, then is answered.
    let out = stdout_ok(&mmlab(dir.path(), &args("flaky")));
    assert!(out.contains("12 fresh"), "{out}");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.attempts.len(), 12);
        assert!(s.attempts.values().all(|&a| a == 2), "{:?}", s.attempts);
    }

    // Dies after 5 distinct questions: a clear error naming a question and what came back.
    *seen.lock().unwrap() = Seen::default();
    *mood.lock().unwrap() = Mood::DiesAfter(5);
    let out = mmlab(dir.path(), &args("dead"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("question "), "{err}");
    assert!(
        err.contains("HTTP 500") && err.contains("backend died"),
        "{err}"
    );
    assert!(err.contains("after 2 attempts"), "{err}");
    let answered_before = seen.lock().unwrap().answered;
    assert_eq!(answered_before, 5);

    // Back up: the rerun asks only what was not answered, and nothing twice.
    *seen.lock().unwrap() = Seen::default();
    *mood.lock().unwrap() = Mood::Fine;
    let out = stdout_ok(&mmlab(dir.path(), &args("dead")));
    assert!(out.contains("5 cached, 7 fresh"), "{out}");
    let s = seen.lock().unwrap();
    assert_eq!(s.attempts.len(), 7);
    assert!(s.attempts.values().all(|&a| a == 1));
}
