//! The JSON both sides speak: chat completion requests with media parts, answers, and the
//! OpenAI error shape.

use base64::Engine;
use serde_json::{json, Value};

/// A user turn read from a chat completion request: its text and at most one image and one
/// audio clip, still encoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Turn {
    /// The text parts, joined with a space.
    pub text: String,
    /// The image's bytes (decoded from its data URL).
    pub image: Option<Vec<u8>>,
    /// The audio clip's bytes and its declared format (`wav`, `mp3`, …).
    pub audio: Option<(Vec<u8>, String)>,
}

/// A request the server refuses, with the HTTP status and the OpenAI error `type` / `param`.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// OpenAI error type (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// What was wrong, for the user.
    pub message: String,
}

impl Refusal {
    /// A 400 `invalid_request_error`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Refusal {
            status: 400,
            kind: "invalid_request_error",
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// The OpenAI error body.
    pub fn body(&self) -> Value {
        error_body(self.kind, self.param.as_deref(), &self.message)
    }
}

/// `{"error": {"message", "type", "param", "code"}}`, as the OpenAI API writes errors.
pub fn error_body(kind: &str, param: Option<&str>, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": Value::Null}})
}

/// The base64 payload of a `data:<mime>;base64,<payload>` URL, decoded. Remote URLs are refused:
/// nothing is fetched.
pub fn decode_data_url(url: &str, param: &str) -> Result<Vec<u8>, Refusal> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https:/") {
        return Err(Refusal::invalid(
            param,
            "image URLs are not fetched (this server reaches no network): send the image as a \
             base64 data URL, data:image/png;base64,…",
        ));
    }
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(Refusal::invalid(
            param,
            "expected a data URL (data:image/png;base64,…)",
        ));
    };
    let Some((meta, payload)) = rest.split_once(',') else {
        return Err(Refusal::invalid(
            param,
            "data URL has no ',' before its payload",
        ));
    };
    if !meta.ends_with(";base64") {
        return Err(Refusal::invalid(
            param,
            "data URL is not base64 (expected ';base64,')",
        ));
    }
    decode_base64(payload, param)
}

/// Standard base64 (padding optional, whitespace ignored).
pub fn decode_base64(payload: &str, param: &str) -> Result<Vec<u8>, Refusal> {
    use base64::engine::{
        general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose,
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    LENIENT
        .decode(cleaned)
        .map_err(|e| Refusal::invalid(param, format!("invalid base64: {e}")))
}

/// Standard base64 with padding.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads the last user message of a chat completion request. System and earlier turns are
/// refused rather than silently dropped: mmlab's models answer one question about one input.
pub fn read_turn(req: &Value) -> Result<Turn, Refusal> {
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return Err(Refusal::invalid(
            "messages",
            "`messages` must be a non-empty array",
        ));
    };
    let Some(last) = messages.last() else {
        return Err(Refusal::invalid("messages", "`messages` is empty"));
    };
    if messages.len() > 1 {
        return Err(Refusal::invalid(
            "messages",
            format!(
                "{} messages sent; this server answers a single user message (one question \
                 about one image or clip), with no system prompt or history",
                messages.len()
            ),
        ));
    }
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return Err(Refusal::invalid(
            "messages[0].role",
            "the message must have role \"user\"",
        ));
    }
    let mut turn = Turn::default();
    let mut texts = Vec::new();
    match last.get("content") {
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                let param = format!("messages[0].content[{i}]");
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "text" => match part.get("text").and_then(Value::as_str) {
                        Some(t) => texts.push(t.to_string()),
                        None => return Err(Refusal::invalid(param, "text part without `text`")),
                    },
                    "image_url" => {
                        let url = part
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                Refusal::invalid(&param, "image_url part without `image_url.url`")
                            })?;
                        if turn.image.is_some() {
                            return Err(Refusal::invalid(
                                param,
                                "more than one image: these models take one image per question",
                            ));
                        }
                        turn.image = Some(decode_data_url(url, &param)?);
                    }
                    "input_audio" => {
                        let a = part.get("input_audio").ok_or_else(|| {
                            Refusal::invalid(&param, "input_audio part without `input_audio`")
                        })?;
                        let data = a.get("data").and_then(Value::as_str).ok_or_else(|| {
                            Refusal::invalid(&param, "input_audio without base64 `data`")
                        })?;
                        let format = a
                            .get("format")
                            .and_then(Value::as_str)
                            .unwrap_or("wav")
                            .to_ascii_lowercase();
                        if turn.audio.is_some() {
                            return Err(Refusal::invalid(
                                param,
                                "more than one audio clip: these models take one clip per question",
                            ));
                        }
                        turn.audio = Some((decode_base64(data, &param)?, format));
                    }
                    other => {
                        return Err(Refusal::invalid(
                            param,
                            format!(
                                "unsupported content part type {other:?} (text, image_url and \
                                 input_audio are read)"
                            ),
                        ))
                    }
                }
            }
        }
        _ => {
            return Err(Refusal::invalid(
                "messages[0].content",
                "`content` must be a string or an array of parts",
            ))
        }
    }
    turn.text = texts.join(" ");
    Ok(turn)
}

/// The assistant's text of a chat completion response, or what was wrong with the response.
pub fn read_answer(resp: &Value) -> Result<String, String> {
    let choices = resp
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("no `choices` array")?;
    let first = choices.first().ok_or("`choices` is empty")?;
    let content = first
        .get("message")
        .and_then(|m| m.get("content"))
        .ok_or("choices[0] has no `message.content`")?;
    match content {
        Value::String(s) => Ok(s.clone()),
        // Some servers send content as parts.
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("")),
        Value::Null => Err("choices[0].message.content is null".into()),
        other => Err(format!("choices[0].message.content is not text: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_url() -> String {
        format!("data:image/png;base64,{}", encode_base64(b"\x89PNG fake"))
    }

    #[test]
    fn a_turn_reads_text_image_and_audio_parts() {
        let req = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_url()}},
            {"type": "input_audio", "input_audio": {"data": encode_base64(b"RIFF"), "format": "WAV"}},
            {"type": "text", "text": "Is there a cat?"}
        ]}]});
        let t = read_turn(&req).unwrap();
        assert_eq!(t.text, "Is there a cat?");
        assert_eq!(t.image.as_deref(), Some(&b"\x89PNG fake"[..]));
        assert_eq!(t.audio, Some((b"RIFF".to_vec(), "wav".to_string())));
    }

    #[test]
    fn remote_urls_history_and_bad_base64_are_refused_naming_the_part() {
        let remote = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]});
        let e = read_turn(&remote).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        assert!(e.message.contains("not fetched"), "{}", e.message);
        let history = json!({"messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "q"}]});
        assert!(read_turn(&history)
            .unwrap_err()
            .message
            .contains("single user message"));
        let bad = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]});
        assert!(read_turn(&bad)
            .unwrap_err()
            .message
            .contains("invalid base64"));
    }

    #[test]
    fn answers_are_read_or_said_missing() {
        let ok = json!({"choices": [{"message": {"role": "assistant", "content": "Yes."}}]});
        assert_eq!(read_answer(&ok).unwrap(), "Yes.");
        assert_eq!(
            read_answer(&json!({"choices": []})).unwrap_err(),
            "`choices` is empty"
        );
        assert!(read_answer(&json!({"id": 1})).is_err());
    }
}
