//! The inspector: how a model sees one input. The image with its patch grid and the
//! selected token's attention as a heat map, the fused token stream coloured by modality,
//! the next-token candidates, the answer beside the truth, and a browser of the samples
//! the model got wrong (hallucinations first). The model runs on a worker thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};

use crossterm::event::{KeyCode, KeyEvent};
use mmlab_eval::error::error_chain;
use mmlab_eval::harness::{read_samples, samples_path};
use mmlab_eval::tasks::{load_task_with, DataOptions};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::analysis::{analyze, singular, Analysis, InspectInput};
use super::heat::{normalised, ColourBar, Overlay, Strip, VEIL};
use super::workspace::ResultEntry;
use super::Action;
use crate::fusion::TokenKind;
use crate::model::resolve::load_model;

/// A sample the model got wrong, ready to inspect.
#[derive(Clone, Debug, PartialEq)]
pub struct WrongSample {
    /// The split's task (`pope-adversarial`).
    pub task: String,
    /// What kind of mistake (`hallucination`, `miss`, `count off by 2`, `wrong`).
    pub kind: String,
    /// Sort key: hallucinations first, then misses, then larger count errors.
    pub rank: (u8, i64),
    /// The input, with truth and the recorded answer.
    pub input: InspectInput,
}

fn classify(
    task: &str,
    label: &serde_json::Value,
    parsed: &serde_json::Value,
) -> (String, (u8, i64)) {
    match (
        label.as_str(),
        parsed.as_str(),
        label.as_i64(),
        parsed.as_i64(),
    ) {
        (Some("no"), Some("yes"), _, _) => ("hallucination".into(), (0, 0)),
        (Some("yes"), Some("no"), _, _) => ("miss".into(), (1, 0)),
        (_, _, Some(l), Some(p)) => (format!("count off by {}", p - l), (2, -(p - l).abs())),
        _ if task.contains("count") => ("no count given".into(), (3, 0)),
        _ => ("wrong".into(), (3, 0)),
    }
}

/// Reads the wrong samples of result files, with their media resolved from the question
/// files the runs used (each question file read once). Relative data paths are taken
/// relative to `root`.
pub fn wrong_samples(root: &Path, results: &[&ResultEntry]) -> Result<Vec<WrongSample>, String> {
    let mut out = Vec::new();
    for r in results {
        let res = &r.result;
        let spath = samples_path(&r.path, res).map_err(|e| error_chain(&e))?;
        let samples = read_samples(&spath).map_err(|e| error_chain(&e))?;
        let mut splits: HashMap<String, Vec<mmlab_eval::tasks::Question>> = HashMap::new();
        let data = PathBuf::from(&res.config.data);
        let data = if data.is_relative() {
            root.join(data)
        } else {
            data
        };
        let loaded = load_task_with(&res.task, &data, &DataOptions::default()).map_err(|e| {
            format!(
                "{} (the questions of {}): {}",
                data.display(),
                r.path.display(),
                error_chain(&e)
            )
        })?;
        for s in loaded {
            splits.insert(s.task, s.questions);
        }
        for s in samples.iter().filter(|s| !s.correct) {
            let q = splits.get(&s.task).and_then(|qs| qs.get(s.index));
            let (kind, rank) = classify(&s.task, &s.label, &s.parsed);
            let show = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push(WrongSample {
                task: s.task.clone(),
                kind,
                rank,
                input: InspectInput {
                    image: q.and_then(|q| q.image.clone()),
                    audio: q.and_then(|q| q.audio.clone()),
                    prompt: s.prompt.clone(),
                    truth: Some(show(&s.label)),
                    recorded: Some(s.answer.clone()),
                },
            });
        }
    }
    // Hallucinations first; within a kind, images before sounds.
    out.sort_by_key(|w| (w.rank.0, w.input.audio.is_some(), w.rank.1));
    Ok(out)
}

/// Messages from the worker thread.
enum Reply {
    Ready(Box<Analysis>),
    Failed(String),
}

/// The model thread: loads the model once, then analyses each input it is sent.
struct Worker {
    jobs: Sender<InspectInput>,
    replies: Receiver<Reply>,
}

impl Worker {
    fn spawn(model: String) -> Self {
        let (jobs, rx) = channel::<InspectInput>();
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            let loaded = match load_model(&model) {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Reply::Failed(format!(
                        "loading {model}: {}",
                        error_chain(&e)
                    )));
                    return;
                }
            };
            while let Ok(input) = rx.recv() {
                let reply = match analyze(&loaded, &input) {
                    Ok(a) => Reply::Ready(Box::new(a)),
                    Err(e) => Reply::Failed(format!("{e:#}")),
                };
                if tx.send(reply).is_err() {
                    break;
                }
            }
        });
        Worker { jobs, replies }
    }
}

/// Which layer or head is shown: one of them, or the mean.
fn cycle(cur: Option<usize>, n: usize, forward: bool) -> Option<usize> {
    match (cur, forward) {
        (None, true) => (n > 0).then_some(0),
        (Some(i), true) if i + 1 < n => Some(i + 1),
        (Some(_), true) => None,
        (None, false) => n.checked_sub(1),
        (Some(0), false) => None,
        (Some(i), false) => Some(i - 1),
    }
}

/// The inspector's state.
pub struct Inspector {
    /// The model being inspected.
    pub model: String,
    /// The input last asked for.
    pub input: InspectInput,
    /// The analysis of it, once the worker has answered.
    pub analysis: Option<Analysis>,
    /// What is going on (loading, errors).
    pub status: String,
    /// Selected query row (index into `analysis.rows`).
    pub sel: usize,
    /// Layer shown (`None`: mean over layers).
    pub layer: Option<usize>,
    /// Head shown (`None`: mean over heads).
    pub head: Option<usize>,
    /// For a resampling connector: the slot (query, latent) whose own attention over the
    /// patches is shown (`None`: the token's attention carried through all slots).
    pub slot: Option<usize>,
    /// Samples the model got wrong.
    pub wrong: Vec<WrongSample>,
    /// The browser's selection.
    pub wrong_sel: ListState,
    /// Keys go to the browser.
    pub browsing: bool,
    /// `Esc` returns to the dashboard rather than quitting.
    pub from_dashboard: bool,
    worker: Option<Worker>,
}

impl Inspector {
    /// An inspector whose model runs on a worker thread; `input` is analysed at once when it
    /// has an image, audio or a prompt.
    pub fn spawn(model: String, input: InspectInput, wrong: Vec<WrongSample>) -> Self {
        let mut s = Self::offline(model.clone(), input.clone(), wrong);
        s.worker = Some(Worker::spawn(model));
        let start = if input == InspectInput::default() {
            s.wrong.first().map(|w| w.input.clone())
        } else {
            Some(input)
        };
        match start {
            Some(i) => s.request(i),
            None => {
                s.status = "no input: pass --image/--audio/--prompt, or run an eval first".into()
            }
        }
        s
    }

    /// An inspector with no model thread (analyses are given with [`Inspector::set_analysis`]).
    pub fn offline(model: String, input: InspectInput, wrong: Vec<WrongSample>) -> Self {
        let mut wrong_sel = ListState::default();
        wrong_sel.select((!wrong.is_empty()).then_some(0));
        Inspector {
            model,
            input,
            analysis: None,
            status: String::new(),
            sel: 0,
            layer: None,
            head: None,
            slot: None,
            wrong,
            wrong_sel,
            browsing: false,
            from_dashboard: false,
            worker: None,
        }
    }

    /// Asks the worker to analyse `input`.
    pub fn request(&mut self, input: InspectInput) {
        self.input = input.clone();
        match &self.worker {
            Some(w) if w.jobs.send(input).is_ok() => {
                self.status = format!("running {}…", self.model);
            }
            _ => self.status = "the model thread has stopped".into(),
        }
    }

    /// Takes the worker's answer, if one has arrived.
    pub fn poll(&mut self) {
        let Some(w) = &self.worker else { return };
        let replies: Vec<Reply> = w.replies.try_iter().collect();
        for r in replies {
            match r {
                Reply::Ready(a) => self.set_analysis(*a),
                Reply::Failed(e) => self.status = e,
            }
        }
    }

    /// Shows an analysis, selecting the last prompt token (the one that predicts the answer).
    pub fn set_analysis(&mut self, a: Analysis) {
        self.sel = a.last_row();
        self.layer = self.layer.filter(|&l| l < a.layers);
        self.head = self.head.filter(|&h| h < a.heads);
        self.slot = self
            .slot
            .filter(|&s| a.slots.as_ref().is_some_and(|v| s < v.n));
        self.status.clear();
        self.analysis = Some(a);
    }

    /// The raw heat map over the image's patches of the current selection: the token's
    /// attention over them, directly or through a resampler's slots (see
    /// [`Analysis::patch_heat`]).
    pub fn heat_raw(&self) -> Option<Vec<f32>> {
        self.analysis
            .as_ref()?
            .patch_heat(self.sel, self.layer, self.head, self.slot)
    }

    /// The normalised heat map over image patches of the current selection.
    pub fn heat(&self) -> Option<Vec<f32>> {
        self.heat_raw().map(|w| normalised(&w))
    }

    /// The largest raw weight of the heat map (a share of the token's attention), drawn as the
    /// map's top colour; 0 without an image.
    pub fn heat_max(&self) -> f32 {
        self.heat_raw()
            .map_or(0.0, |w| w.iter().copied().fold(0f32, f32::max))
    }

    /// Handles a key.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        let rows = self.analysis.as_ref().map_or(0, |a| a.rows.len());
        let (layers, heads) = self
            .analysis
            .as_ref()
            .map_or((0, 0), |a| (a.layers, a.heads));
        let slots = self
            .analysis
            .as_ref()
            .and_then(|a| a.slots.as_ref())
            .map_or(0, |v| v.n);
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if self.browsing => self.browsing = false,
            KeyCode::Esc if self.from_dashboard => return Action::Back,
            KeyCode::Esc => return Action::Quit,
            KeyCode::Char('w') | KeyCode::Tab => {
                self.browsing = !self.browsing && !self.wrong.is_empty()
            }
            KeyCode::Up if self.browsing => {
                let i = self.wrong_sel.selected().unwrap_or(0);
                self.wrong_sel.select(Some(i.saturating_sub(1)));
            }
            KeyCode::Down if self.browsing => {
                let i = self.wrong_sel.selected().unwrap_or(0);
                self.wrong_sel
                    .select(Some((i + 1).min(self.wrong.len().saturating_sub(1))));
            }
            KeyCode::Enter if self.browsing => {
                if let Some(w) = self.wrong_sel.selected().and_then(|i| self.wrong.get(i)) {
                    let input = w.input.clone();
                    self.browsing = false;
                    self.request(input);
                }
            }
            KeyCode::Left => self.sel = self.sel.saturating_sub(1),
            KeyCode::Right => self.sel = (self.sel + 1).min(rows.saturating_sub(1)),
            KeyCode::Home => self.sel = 0,
            KeyCode::End => self.sel = rows.saturating_sub(1),
            KeyCode::Char('l') => self.layer = cycle(self.layer, layers, true),
            KeyCode::Char('L') => self.layer = cycle(self.layer, layers, false),
            KeyCode::Char('h') => self.head = cycle(self.head, heads, true),
            KeyCode::Char('H') => self.head = cycle(self.head, heads, false),
            KeyCode::Char('s') => self.slot = cycle(self.slot, slots, true),
            KeyCode::Char('S') => self.slot = cycle(self.slot, slots, false),
            _ => {}
        }
        Action::None
    }

    fn which(&self) -> String {
        let (layers, heads) = self
            .analysis
            .as_ref()
            .map_or((0, 0), |a| (a.layers, a.heads));
        let l = self
            .layer
            .map_or(format!("mean/{layers}"), |l| format!("{}/{layers}", l + 1));
        let h = self
            .head
            .map_or(format!("mean/{heads}"), |h| format!("{}/{heads}", h + 1));
        format!("layer {l} · head {h}")
    }

    /// Draws the inspector.
    pub fn render(&mut self, f: &mut Frame, area: Rect) {
        let [main, help] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
        let has_slots = self
            .analysis
            .as_ref()
            .is_some_and(|a| a.slots.is_some() && a.image.is_some());
        let keys = match (self.browsing, self.from_dashboard, has_slots) {
            (true, _, _) => " ↑↓ sample  Enter inspect  w/Tab/Esc back  q quit",
            (false, true, false) => {
                " ←→ token  l/L layer  h/H head  w wrong answers  Esc dashboard  q quit"
            }
            (false, false, false) => " ←→ token  l/L layer  h/H head  w wrong answers  q quit",
            (false, true, true) => {
                " ←→ token  l/L layer  h/H head  s/S slot  w wrong  Esc back  q quit"
            }
            (false, false, true) => {
                " ←→ token  l/L layer  h/H head  s/S slot  w wrong answers  q quit"
            }
        };
        f.render_widget(
            Paragraph::new(keys).style(Style::new().fg(Color::Black).bg(Color::Gray)),
            help,
        );
        let wide = main.width >= 120;
        let [left, right] = Layout::horizontal([
            Constraint::Percentage(if wide { 40 } else { 45 }),
            Constraint::Fill(1),
        ])
        .areas(main);
        self.render_media(f, left);
        if self.browsing {
            self.render_browser(f, right);
            return;
        }
        let Some(a) = &self.analysis else {
            let title = format!(" {} ", self.model);
            f.render_widget(
                Paragraph::new(self.status.clone())
                    .wrap(Wrap { trim: false })
                    .block(Block::default().borders(Borders::ALL).title(title)),
                right,
            );
            return;
        };
        let grid_rows = a
            .image
            .as_ref()
            .filter(|i| (i.per_patch || a.slots.is_some()) && wide)
            .map_or(0, |i| i.rows as u16 + 2);
        let [stream, grid, cands, answer] = Layout::vertical([
            Constraint::Fill(1),
            Constraint::Length(grid_rows),
            Constraint::Length(super::analysis::TOP_K as u16 + 2),
            Constraint::Length(4),
        ])
        .areas(right);
        if grid_rows > 0 {
            self.render_grid(f, grid);
        }
        // The token stream, coloured by modality, the selected token highlighted.
        let sel_pos = a.rows.get(self.sel).copied();
        let mut spans = Vec::new();
        for (i, t) in a.tokens.iter().enumerate() {
            let style = match t.kind {
                TokenKind::Text => Style::new().fg(Color::White),
                TokenKind::ImagePatch => Style::new().fg(Color::Cyan),
                TokenKind::ImageNewline => Style::new().fg(Color::Blue),
                TokenKind::AudioFrame => Style::new().fg(Color::Magenta),
                _ => Style::new().fg(Color::DarkGray),
            };
            let style = if Some(i) == sel_pos {
                style
                    .bg(Color::Yellow)
                    .fg(Color::Black)
                    .add_modifier(Modifier::BOLD)
            } else {
                style
            };
            let sep = if t.kind == TokenKind::Text { " " } else { "" };
            spans.push(Span::styled(t.text.clone(), style));
            spans.push(Span::raw(sep));
        }
        let gates = a.cross.as_ref().map_or(String::new(), |x| {
            let g: Vec<String> = x.gates.iter().map(|g| format!("{g:.2}")).collect();
            format!("· x-attn gates {} ", g.join(" "))
        });
        let title = format!(" {} tokens · {} {gates}", a.tokens.len(), self.which());
        f.render_widget(
            Paragraph::new(Line::from(spans))
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(title)),
            stream,
        );
        // Next-token candidates after the selected token.
        let tok = sel_pos
            .and_then(|p| a.tokens.get(p))
            .map(|t| t.text.clone())
            .unwrap_or_default();
        let bar_w = cands.width.saturating_sub(22) as f32;
        // Training puts loss only on answer tokens: the prompt's last token (which predicts the
        // answer) is the one place whose next-token guesses were trained; elsewhere they are
        // shown greyed, with a word that they mean little.
        let trained = sel_pos.is_some_and(|p| p + 1 == a.tokens.len());
        let bar = if trained {
            Color::Green
        } else {
            Color::DarkGray
        };
        let lines: Vec<Line> = a
            .topk
            .get(self.sel)
            .map(|k| {
                k.iter()
                    .map(|(t, p)| {
                        Line::from(vec![
                            Span::raw(format!(" {t:<10.10} {p:>5.3} ")),
                            Span::styled(
                                "█".repeat((p * bar_w).round() as usize),
                                Style::new().fg(bar),
                            ),
                        ])
                    })
                    .collect()
            })
            .unwrap_or_default();
        let title = if trained {
            format!(" next token after {tok:?} ")
        } else {
            format!(" after {tok:?} · never trained here ")
        };
        f.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
            cands,
        );
        // The answer beside the truth.
        let mut l = vec![Line::from(vec![
            Span::raw(" model: "),
            Span::styled(a.answer.clone(), Style::new().add_modifier(Modifier::BOLD)),
        ])];
        if let Some(t) = &a.input.truth {
            let ok = answer_ok(&a.answer, t);
            l[0].spans.push(Span::raw("   truth: "));
            l[0].spans.push(Span::styled(
                format!("{t} {}", if ok { "✓" } else { "✗" }),
                Style::new().fg(if ok { Color::Green } else { Color::Red }),
            ));
        }
        if let Some(r) = &a.input.recorded {
            l.push(Line::from(format!(" eval run answered: {r}")));
        }
        f.render_widget(
            Paragraph::new(l).block(Block::default().borders(Borders::ALL).title(format!(
                " {} · {} ",
                self.model,
                truncate(&a.input.prompt, 40)
            ))),
            answer,
        );
    }

    /// The selected token's attention per patch (directly or through the slots), in percent
    /// of its whole attention row.
    fn render_grid(&self, f: &mut Frame, area: Rect) {
        let Some(a) = &self.analysis else { return };
        let (Some(img), Some(w)) = (&a.image, self.heat_raw()) else {
            return;
        };
        let max = w
            .iter()
            .copied()
            .fold(0f32, f32::max)
            .max(f32::MIN_POSITIVE);
        let lines: Vec<Line> = (0..img.rows)
            .map(|r| {
                Line::from(
                    (0..img.cols)
                        .map(|c| {
                            let v = w[r * img.cols + c];
                            let col = super::heat::heat_colour(v / max);
                            Span::styled(
                                format!("{:>5.1}", v * 100.0),
                                Style::new().fg(Color::Rgb(col[0], col[1], col[2])),
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let total: f32 = w.iter().sum();
        let title = match (&a.slots, self.slot) {
            (Some(v), Some(s)) => format!(
                " {} {}/{}'s attention per patch, % (total {:.1}%) ",
                singular(v.what),
                s + 1,
                v.n,
                total * 100.0
            ),
            (Some(v), None) => format!(
                " attention per patch through the {} {}, % (total {:.1}%) ",
                v.n,
                v.what,
                total * 100.0
            ),
            (None, _) => format!(
                " attention per patch, % (image total {:.1}%) ",
                total * 100.0
            ),
        };
        f.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
            area,
        );
    }

    fn render_media(&self, f: &mut Frame, area: Rect) {
        let block = Block::default().borders(Borders::ALL);
        let Some(a) = &self.analysis else {
            f.render_widget(block.title(" input "), area);
            return;
        };
        let title = a
            .input
            .image
            .as_ref()
            .or(a.input.audio.as_ref())
            .and_then(|p| p.file_name())
            .map(|n| format!(" {} ", n.to_string_lossy()))
            .unwrap_or_else(|| " text only ".into());
        let inner = block.inner(area);
        f.render_widget(block.title(title), area);
        let has_audio = !a.audio_slots.is_empty();
        let has_image = a.image.is_some();
        let [img_area, caption, bar, strip] = Layout::vertical([
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Length(if has_image { 1 } else { 0 }),
            Constraint::Length(if has_audio { 3 } else { 0 }),
        ])
        .areas(inner);
        if let Some(img) = &a.image {
            let heat = self.heat();
            if img.per_patch {
                f.render_widget(
                    Overlay {
                        pixels: &img.pixels,
                        patch: img.patch,
                        heat: heat.as_deref(),
                        alpha: VEIL,
                    },
                    img_area,
                );
                f.render_widget(
                    Paragraph::new(format!(
                        " {}×{} patches of {}px · attention",
                        img.rows, img.cols, img.patch
                    )),
                    caption,
                );
            } else {
                // Resampling connectors: the image reaches the decoder through a fixed number
                // of slots. The map carries the token's weights on the slots onto the patches
                // each slot looks at; the strip under it is the weights on the slots.
                let [pic, strip_area] =
                    Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(img_area);
                f.render_widget(
                    Overlay {
                        pixels: &img.pixels,
                        patch: img.patch,
                        heat: heat.as_deref(),
                        alpha: if heat.is_some() { VEIL } else { 0.0 },
                    },
                    pic,
                );
                let weights = a.slot_weights(self.sel, self.layer, self.head);
                if let Some(w) = &weights {
                    f.render_widget(
                        Strip {
                            weights: &normalised(w),
                        },
                        strip_area,
                    );
                }
                f.render_widget(Paragraph::new(self.slot_caption(a)), caption);
            }
            if heat.is_some() {
                f.render_widget(
                    ColourBar {
                        max: self.heat_max(),
                    },
                    bar,
                );
            }
        }
        if has_audio {
            let raw = a.audio_attention(self.sel, self.layer, self.head);
            let max = raw.iter().copied().fold(0f32, f32::max);
            let w = normalised(&raw);
            let [label, line, scale] = Layout::vertical([Constraint::Length(1); 3]).areas(strip);
            f.render_widget(
                Paragraph::new(format!(" attention over {} audio slots", w.len())),
                label,
            );
            f.render_widget(Strip { weights: &w }, line);
            f.render_widget(ColourBar { max }, scale);
        }
    }

    /// One line under a resampling design's image: what the map and the strip show.
    fn slot_caption(&self, a: &Analysis) -> String {
        let Some(v) = &a.slots else {
            return format!(
                " image as {} slots",
                a.image.as_ref().map_or(0, |i| i.slots.len())
            );
        };
        let gate = a
            .cross
            .as_ref()
            .map(|x| {
                let open = match self.layer {
                    Some(l) => x.blocks.iter().position(|&b| b == l).map(|i| x.gates[i]),
                    None => Some(
                        x.gates.iter().map(|g| g.abs()).sum::<f32>() / x.gates.len().max(1) as f32,
                    ),
                };
                open.map_or(" · no x-attn here".into(), |g| format!(" · gate {g:.2}"))
            })
            .unwrap_or_default();
        match self.slot {
            Some(s) => format!(" {} {}/{} over patches", singular(v.what), s + 1, v.n),
            None => format!(" via {} {}{gate}", v.n, v.what),
        }
    }

    fn render_browser(&mut self, f: &mut Frame, area: Rect) {
        let items: Vec<ListItem> = self
            .wrong
            .iter()
            .map(|w| {
                let colour = if w.kind == "hallucination" {
                    Color::Red
                } else {
                    Color::Yellow
                };
                ListItem::new(vec![
                    Line::from(vec![
                        Span::styled(format!("{} ", w.kind), Style::new().fg(colour)),
                        Span::raw(format!(
                            "{} (truth {}) ",
                            w.input.recorded.clone().unwrap_or_default(),
                            w.input.truth.clone().unwrap_or_default()
                        )),
                        Span::styled(w.task.clone(), Style::new().fg(Color::DarkGray)),
                    ]),
                    Line::from(format!("  {}", w.input.prompt)),
                ])
            })
            .collect();
        let title = format!(" {} wrong answers, hallucinations first ", self.wrong.len());
        f.render_stateful_widget(
            List::new(items)
                .block(Block::default().borders(Borders::ALL).title(title))
                .highlight_style(Style::new().bg(Color::Blue).fg(Color::White)),
            area,
            &mut self.wrong_sel,
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Whether an answer matches the truth by the eval harness's parsing rules.
pub fn answer_ok(answer: &str, truth: &str) -> bool {
    match truth {
        "yes" => mmlab_eval::parse_yes_no(answer).yes,
        "no" => !mmlab_eval::parse_yes_no(answer).yes,
        t => match t.parse::<u32>() {
            Ok(n) => mmlab_eval::parse_count(answer) == Some(n),
            Err(_) => answer.trim() == t,
        },
    }
}
