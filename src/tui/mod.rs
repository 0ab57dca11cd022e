//! `mmlab tui`: the dashboard comparing native and bolted-on models, and the inspector
//! that shows how a model sees an input; `mmlab inspect --out`: the attention overlay as
//! a PNG figure (colour bar, scale and caption).
//!
//! Screens are plain state + `render(&mut Frame)` + `key(KeyEvent) -> Action`, so tests
//! drive them on ratatui's `TestBackend` without a terminal.

pub mod analysis;
pub mod dashboard;
pub mod heat;
pub mod inspect;
pub mod workspace;

use std::io::Stdout;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::ExecutableCommand;
use ratatui::backend::CrosstermBackend;
use ratatui::{Frame, Terminal};

use analysis::{analyze, singular, InspectInput};
use dashboard::Dashboard;
use heat::{figure_png, normalised, Overlay, VEIL};
use inspect::{wrong_samples, Inspector, WrongSample};
use workspace::Workspace;

/// What a key press asks of the application.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Nothing beyond the screen's own change.
    None,
    /// Leave.
    Quit,
    /// Open the inspector on a model.
    Inspect {
        /// The name its results are filed under.
        name: String,
        /// What loads it (preset name or directory).
        spec: String,
    },
    /// Back from the inspector to the dashboard.
    Back,
}

/// What `mmlab tui` opens.
#[derive(Clone, Debug, Default)]
pub struct TuiOptions {
    /// Workspace folder holding `models/`, `runs/`, `results/` and `ablations/` (the global
    /// `--root`, else `$MMLAB_HOME`, else the working directory).
    pub root: PathBuf,
    /// Open the inspector instead of the dashboard.
    pub inspect: bool,
    /// Model to inspect (preset name or model directory).
    pub model: Option<String>,
    /// Image to inspect.
    pub image: Option<PathBuf>,
    /// Audio clip to inspect.
    pub audio: Option<PathBuf>,
    /// Prompt.
    pub prompt: String,
    /// A result file (or its `.samples.jsonl`) whose wrong answers to browse (default: the
    /// model's latest results under `results/`).
    pub samples: Option<PathBuf>,
}

/// What `mmlab inspect` draws.
#[derive(Clone, Debug)]
pub struct InspectOptions {
    /// Preset name or model directory.
    pub model: String,
    /// The image.
    pub image: PathBuf,
    /// Audio clip played after the image, if any.
    pub audio: Option<PathBuf>,
    /// The prompt.
    pub prompt: String,
    /// Layer (1-based; default: mean over layers).
    pub layer: Option<usize>,
    /// Head (1-based; default: mean over heads).
    pub head: Option<usize>,
    /// Sequence position of the query token (default: the last prompt token, which predicts
    /// the answer).
    pub token: Option<usize>,
    /// Q-Former / Flamingo: the query or latent (1-based) whose own attention over the patches
    /// is drawn (default: the token's attention carried through all of them).
    pub slot: Option<usize>,
    /// Where to write the PNG.
    pub out: PathBuf,
    /// Longer side of the PNG in pixels (at least).
    pub size: u32,
}

/// The screen on show.
pub enum Screen {
    /// The dashboard, with an inspector open over it (or not).
    Dashboard(Box<Dashboard>, Option<Box<Inspector>>),
    /// An inspector started from the command line.
    Inspector(Box<Inspector>),
}

/// The application: screens, the workspace folder, and the last error to show.
pub struct App {
    /// What is shown.
    pub screen: Screen,
    /// Workspace folder (for the inspector's sample browser).
    pub root: PathBuf,
    /// When the dashboard last looked for grown training logs.
    pub last_refresh: std::time::Instant,
}

fn is_quit_chord(k: &KeyEvent) -> bool {
    k.modifiers.contains(KeyModifiers::CONTROL) && matches!(k.code, KeyCode::Char('c'))
}

/// The wrong samples of a model's latest results (or of one named result file).
pub fn samples_for(
    ws: &Workspace,
    root: &std::path::Path,
    model: &str,
    file: Option<&std::path::Path>,
) -> Result<Vec<WrongSample>, String> {
    match file {
        Some(f) => {
            let s = f.to_string_lossy();
            let result_path = PathBuf::from(
                s.strip_suffix(".samples.jsonl")
                    .map_or_else(|| s.to_string(), |b| format!("{b}.json")),
            );
            let result = mmlab_eval::harness::load_result(&result_path)
                .map_err(|e| mmlab_eval::error::error_chain(&e))?;
            let entry = workspace::ResultEntry {
                path: result_path,
                result,
            };
            wrong_samples(root, &[&entry])
        }
        None => wrong_samples(root, &ws.results_of(model)),
    }
}

impl App {
    /// Handles one key; returns false when the application should end.
    pub fn key(&mut self, k: KeyEvent) -> bool {
        if is_quit_chord(&k) {
            return false;
        }
        let action = match &mut self.screen {
            Screen::Dashboard(_, Some(i)) | Screen::Inspector(i) => i.key(k),
            Screen::Dashboard(d, None) => d.key(k),
        };
        match action {
            Action::None => {}
            Action::Quit => return false,
            Action::Back => {
                if let Screen::Dashboard(_, i) = &mut self.screen {
                    *i = None;
                }
            }
            Action::Inspect { name, spec } => {
                if let Screen::Dashboard(d, i) = &mut self.screen {
                    let (wrong, note) = match samples_for(&d.ws, &self.root, &name, None) {
                        Ok(w) => (w, None),
                        Err(e) => (Vec::new(), Some(e)),
                    };
                    let mut ins = Inspector::spawn(spec, InspectInput::default(), wrong);
                    if let Some(e) = note {
                        ins.status = format!("{}\nsample browser: {e}", ins.status);
                    }
                    ins.from_dashboard = true;
                    *i = Some(Box::new(ins));
                }
            }
        }
        true
    }

    /// Takes answers from model threads.
    pub fn poll(&mut self) {
        if let Screen::Dashboard(_, Some(i)) | Screen::Inspector(i) = &mut self.screen {
            i.poll();
        }
        // Runs in progress: their logs are looked at twice a second.
        if let Screen::Dashboard(d, _) = &mut self.screen {
            if self.last_refresh.elapsed() >= std::time::Duration::from_millis(500) {
                self.last_refresh = std::time::Instant::now();
                d.refresh();
            }
        }
    }

    /// Draws the current screen.
    pub fn render(&mut self, f: &mut Frame) {
        let area = f.area();
        match &mut self.screen {
            Screen::Dashboard(_, Some(i)) | Screen::Inspector(i) => i.render(f, area),
            Screen::Dashboard(d, None) => d.render(f, area),
        }
    }
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = std::io::stdout().execute(LeaveAlternateScreen);
    let _ = std::io::stdout().execute(crossterm::cursor::Show);
}

fn event_loop(term: &mut Terminal<CrosstermBackend<Stdout>>, app: &mut App) -> anyhow::Result<()> {
    loop {
        app.poll();
        term.draw(|f| app.render(f))?;
        if event::poll(Duration::from_millis(100))? {
            if let Event::Key(k) = event::read()? {
                if k.kind == KeyEventKind::Press && !app.key(k) {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs `mmlab tui`.
pub fn run(args: &TuiOptions) -> anyhow::Result<()> {
    let ws = Workspace::scan(&args.root);
    let screen = if args.inspect {
        let model = args
            .model
            .clone()
            .context("--inspect needs --model (a preset name or model directory)")?;
        // Fail before the terminal is taken over when the model cannot be found.
        crate::model::resolve::locate_in(&model, &args.root)?;
        let wrong = samples_for(&ws, &args.root, &model, args.samples.as_deref())
            .map_err(anyhow::Error::msg)?;
        let input = InspectInput {
            image: args.image.clone(),
            audio: args.audio.clone(),
            prompt: args.prompt.clone(),
            ..Default::default()
        };
        Screen::Inspector(Box::new(Inspector::spawn(model, input, wrong)))
    } else {
        Screen::Dashboard(Box::new(Dashboard::new(ws)), None)
    };
    let mut app = App {
        screen,
        root: args.root.clone(),
        last_refresh: std::time::Instant::now(),
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        hook(info);
    }));
    enable_raw_mode().context("the terminal does not support raw mode")?;
    std::io::stdout().execute(EnterAlternateScreen)?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let out = event_loop(&mut term, &mut app);
    restore();
    out
}

/// A model's name for a caption: a preset name as given, a model directory by its last part.
fn model_label(model: &str) -> String {
    let p = std::path::Path::new(model);
    if p.is_dir() {
        p.file_name()
            .map_or(model.to_string(), |n| n.to_string_lossy().into_owned())
    } else {
        model.to_string()
    }
}

/// `1 layer`, `2 layers`.
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Runs `mmlab inspect`: writes the attention overlay of one query token as a PNG, with a
/// colour bar and its scale and a caption naming the model, layer, head, token and prompt,
/// and prints what it shows.
pub fn run_inspect(args: &InspectOptions) -> anyhow::Result<()> {
    let m = crate::model::resolve::load_model(&args.model)?;
    let input = InspectInput {
        image: Some(args.image.clone()),
        audio: args.audio.clone(),
        prompt: args.prompt.clone(),
        ..Default::default()
    };
    let a = analyze(&m, &input)?;
    let pick = |v: Option<usize>, n: usize, what: &str| -> anyhow::Result<Option<usize>> {
        match v {
            None => Ok(None),
            Some(i) if (1..=n).contains(&i) => Ok(Some(i - 1)),
            Some(i) => anyhow::bail!("--{what} {i}: the model has {what}s 1..={n}"),
        }
    };
    let layer = pick(args.layer, a.layers, "layer")?;
    let head = pick(args.head, a.heads, "head")?;
    let slot = match (&a.slots, args.slot) {
        (_, None) => None,
        (Some(v), Some(s)) if (1..=v.n).contains(&s) => Some(s - 1),
        (Some(v), Some(s)) => anyhow::bail!(
            "--slot {s}: the model has {} {} per image, 1..={}",
            v.n,
            v.what,
            v.n
        ),
        (None, Some(_)) => anyhow::bail!(
            "--slot: {} gives the decoder one token per patch; it has no queries or latents",
            args.model
        ),
    };
    let row = match args.token {
        None => a.last_row(),
        Some(p) => a.rows.iter().position(|&r| r == p).with_context(|| {
            format!(
                "--token {p}: not a text position of this input (text positions: {:?})",
                a.rows
            )
        })?,
    };
    let img = a
        .image
        .as_ref()
        .with_context(|| format!("{}: no image in the sequence", args.image.display()))?;
    let raw = a.patch_heat(row, layer, head, slot);
    let heat = raw.as_deref().map(normalised);
    let max = raw
        .as_deref()
        .map_or(0.0, |w| w.iter().copied().fold(0f32, f32::max));
    if raw.is_none() {
        match (&a.cross, layer) {
            (Some(_), Some(l)) => eprintln!(
                "no cross-attention layer runs before decoder layer {}: the PNG shows the image and grid only",
                l + 1
            ),
            _ => eprintln!(
                "this design gives the image {} slots and no map from them to patches; the PNG shows the image and grid only",
                img.slots.len()
            ),
        }
    }
    let pos = a.rows[row];
    let which = |v: Option<usize>, n: usize, what: &str| match v {
        Some(i) => format!("{what} {} of {n}", i + 1),
        None => format!("{what}: mean of {n}"),
    };
    // Flamingo's text reaches the latents through its cross-attention layers, which run
    // before some decoder layers: the layer picked names the one before it.
    let layer_words = match &a.cross {
        Some(x) => match layer {
            Some(l) => format!("x-attn before layer {}", l + 1),
            None => format!("x-attn: mean of {}", plural(x.blocks.len(), "layer")),
        },
        None => which(layer, a.layers, "layer"),
    };
    let mut caption = vec![
        format!(
            "{} · {} · {}",
            model_label(&args.model),
            layer_words,
            which(head, a.heads, "head")
        ),
        match (&a.slots, slot) {
            _ if img.per_patch => format!(
                "token {pos} {:?} attending over {}x{} patches of {} px",
                a.tokens[pos].text, img.rows, img.cols, img.patch
            ),
            (Some(v), Some(s)) => format!(
                "{} {} of {} over {}x{} patches (mean of {}, {})",
                singular(v.what),
                s + 1,
                v.n,
                img.rows,
                img.cols,
                plural(v.heads, "head"),
                plural(v.layers, "layer")
            ),
            (Some(v), None) => format!(
                "token {pos} {:?} through {} {} onto {}x{} patches",
                a.tokens[pos].text, v.n, v.what, img.rows, img.cols
            ),
            (None, _) => format!(
                "token {pos} {:?} · image as {} slots: no heat map",
                a.tokens[pos].text,
                img.slots.len()
            ),
        },
        format!("prompt: {}", args.prompt),
    ];
    if let Some(x) = &a.cross {
        let g: Vec<String> = x
            .blocks
            .iter()
            .zip(&x.gates)
            .map(|(b, g)| format!("before layer {}: {g:.3}", b + 1))
            .collect();
        caption.push(format!("cross-attention gates tanh(a): {}", g.join(", ")));
    }
    let scale = match (&a.slots, slot) {
        (Some(v), Some(_)) => format!("share of the {}'s attention", singular(v.what)),
        _ => "share of the token's attention".to_string(),
    };
    let (png, _) = figure_png(
        &Overlay {
            pixels: &img.pixels,
            patch: img.patch,
            heat: heat.as_deref(),
            alpha: VEIL,
        },
        args.size,
        max,
        &scale,
        &caption,
    )?;
    png.save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let route = match (&a.slots, slot) {
        (Some(v), Some(s)) => format!("{} {}'s attention", singular(v.what), s + 1),
        (Some(v), None) => format!(
            "attention of token {pos} {:?} through {} {}",
            a.tokens[pos].text, v.n, v.what
        ),
        (None, _) => format!("attention of token {pos} {:?}", a.tokens[pos].text),
    };
    println!(
        "{}: {route} over {}x{} patches, layer {}, head {} -> {}",
        args.model,
        img.rows,
        img.cols,
        layer.map_or("mean".into(), |l| (l + 1).to_string()),
        head.map_or("mean".into(), |h| (h + 1).to_string()),
        args.out.display()
    );
    println!("answer: {}", a.answer);
    if let Some(k) = a.topk.get(row) {
        let c: Vec<String> = k.iter().map(|(t, p)| format!("{t} {p:.3}")).collect();
        println!("next token: {}", c.join(", "));
    }
    Ok(())
}
