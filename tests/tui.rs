//! The TUI on ratatui's `TestBackend`: snapshots of every screen from the fixed workspace in
//! `tests/fixtures/tui` (made by its `make.sh`), key handling, the model thread, and the
//! attention the inspector shows checked against attention computed here from the weights.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mmlab::fusion::TokenKind;
use mmlab::model::io::{load_dir, LoadedModel};
use mmlab::tui::analysis::{analyze, build_sequence, Analysis, InspectInput};
use mmlab::tui::dashboard::Dashboard;
use mmlab::tui::heat::heat_colour;
use mmlab::tui::inspect::{wrong_samples, Inspector};
use mmlab::tui::workspace::Workspace;
use mmlab::tui::{Action, App, Screen};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use ratatui::{Frame, Terminal};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tui")
}

fn workspace() -> Workspace {
    let ws = Workspace::scan_with(&root(), false);
    assert!(ws.problems.is_empty(), "{:?}", ws.problems);
    ws
}

fn model() -> LoadedModel {
    load_dir(
        &root().join("models/fuyu-tiny-a"),
        &candle_core::Device::Cpu,
    )
    .expect("fixture model")
}

fn image_input() -> InspectInput {
    InspectInput {
        image: Some(root().join("data/shapes/images/000000.png")),
        prompt: "Is there a ring in the image?".into(),
        truth: Some("yes".into()),
        ..Default::default()
    }
}

/// Draws with `f` on a `w x h` test terminal; returns the text (one line per row) and cells.
fn draw(w: u16, h: u16, f: impl FnOnce(&mut Frame)) -> (String, Buffer) {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    t.draw(f).expect("draw");
    let buf = t.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..h {
        let line: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    (text, buf)
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn dashboard_tab(tab: usize, w: u16, h: u16) -> String {
    let mut d = Dashboard::new(workspace());
    d.tab = tab;
    draw(w, h, |f| d.render(f, f.area())).0
}

#[test]
fn dashboard_screens_at_80x24() {
    for (i, name) in ["models", "results", "training", "ablations"]
        .iter()
        .enumerate()
    {
        insta::assert_snapshot!(format!("dashboard_{name}_80x24"), dashboard_tab(i, 80, 24));
    }
}

#[test]
fn dashboard_screens_use_a_wide_terminal() {
    for (i, name) in ["models", "results", "ablations"].iter().enumerate() {
        let tab = [0, 1, 3][i];
        insta::assert_snapshot!(
            format!("dashboard_{name}_160x40"),
            dashboard_tab(tab, 160, 40)
        );
    }
}

#[test]
fn a_scaling_study_shows_its_frontier_and_compute_to_target() {
    let ws = workspace();
    assert_eq!(ws.studies.len(), 1);
    for (w, h) in [(80, 24), (160, 40)] {
        let mut d = Dashboard::new(workspace());
        d.tab = 3;
        // The study comes after the ablation.
        d.key(key(KeyCode::Down));
        let screen = draw(w, h, |f| d.render(f, f.area())).0;
        for want in [
            "toy-scaling (2/2)",
            "held-out loss vs FLOPs",
            "POPE 0.8",
            "native",
            "llava",
            "free",
        ] {
            assert!(
                screen.contains(want),
                "{want} missing at {w}x{h}:\n{screen}"
            );
        }
        insta::assert_snapshot!(format!("dashboard_study_{w}x{h}"), screen);
    }
}

#[test]
fn results_group_native_first_and_sort_by_the_chosen_column() {
    let mut d = Dashboard::new(workspace());
    let names: Vec<String> = d.rows.iter().map(|r| r.model.clone()).collect();
    assert_eq!(names, ["fuyu-tiny-a", "llava-tiny-b"], "native first");
    assert_eq!(d.rows[0].design, "native");
    assert_eq!(d.rows[1].design, "llava");
    // The fixture's POPE results are what the result files say.
    let f1 = d.rows[0].values["pope-random:f1"];
    assert!((f1 - 0.5217).abs() < 1e-3, "{f1}");
    let before = d.column;
    d.key(key(KeyCode::Right));
    assert_eq!(d.column, before + 1);
    d.key(key(KeyCode::Left));
    d.key(key(KeyCode::Left));
    assert_eq!(
        d.column,
        mmlab::tui::workspace::COLUMNS.len() - 1,
        "wraps around"
    );
}

#[test]
fn dashboard_keys_switch_tabs_move_and_open_the_inspector() {
    let mut d = Dashboard::new(workspace());
    assert_eq!(d.tab, 1, "opens on Results");
    d.key(key(KeyCode::Tab));
    assert_eq!(d.tab, 2);
    d.key(key(KeyCode::BackTab));
    d.key(key(KeyCode::BackTab));
    assert_eq!(d.tab, 0);
    d.key(key(KeyCode::Char('4')));
    assert_eq!(d.tab, 3);
    // Training: space toggles a log in and out of the overlay; m changes the quantity.
    d.key(key(KeyCode::Char('3')));
    let had = d.overlay.contains(&0);
    d.key(key(KeyCode::Char(' ')));
    assert_eq!(d.overlay.contains(&0), !had);
    d.key(key(KeyCode::Char('m')));
    assert_eq!(d.curve_kind, 1);
    let held_out = draw(80, 24, |f| d.render(f, f.area())).0;
    assert!(held_out.contains("held-out loss"), "{held_out}");
    d.key(key(KeyCode::Char('m')));
    let presence = draw(80, 24, |f| d.render(f, f.area())).0;
    assert!(presence.contains("held-out presence"), "{presence}");
    // Models: down moves, Enter asks to inspect the selected model by its directory.
    d.key(key(KeyCode::Char('1')));
    d.key(key(KeyCode::Down));
    assert_eq!(d.models.selected(), Some(1));
    d.key(key(KeyCode::Down));
    assert_eq!(d.models.selected(), Some(1), "stays on the last row");
    match d.key(key(KeyCode::Enter)) {
        Action::Inspect { name, spec } => {
            assert_eq!(name, "llava-tiny-b");
            assert!(Path::new(&spec).join("config.json").is_file(), "{spec}");
        }
        other => panic!("expected Inspect, got {other:?}"),
    }
    assert_eq!(d.key(key(KeyCode::Char('q'))), Action::Quit);
}

#[test]
fn ctrl_c_and_q_quit_and_esc_returns_from_the_inspector() {
    let mut app = App {
        screen: Screen::Dashboard(Box::new(Dashboard::new(workspace())), None),
        root: root(),
        last_refresh: std::time::Instant::now(),
    };
    assert!(!app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    // Open the inspector from the Models tab; the model runs on its own thread.
    app.key(key(KeyCode::Char('1')));
    assert!(app.key(key(KeyCode::Enter)));
    let t0 = Instant::now();
    loop {
        app.poll();
        if let Screen::Dashboard(_, Some(i)) = &app.screen {
            if i.analysis.is_some() {
                break;
            }
            assert!(
                !i.status.contains("rror"),
                "model thread failed: {}",
                i.status
            );
        } else {
            panic!("the inspector did not open");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no analysis in 60 s"
        );
        // The UI keeps drawing while the model works.
        draw(80, 24, |f| app.render(f));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        app.key(key(KeyCode::Esc)),
        "Esc goes back, it does not quit"
    );
    assert!(matches!(app.screen, Screen::Dashboard(_, None)));
    assert!(!app.key(key(KeyCode::Char('q'))));
}

fn inspector_with(a: Analysis) -> Inspector {
    let ws = workspace();
    let wrong = wrong_samples(&root(), &ws.results_of("fuyu-tiny-a")).expect("samples");
    let mut ins = Inspector::offline("fuyu-tiny-a".into(), a.input.clone(), wrong);
    ins.set_analysis(a);
    ins
}

#[test]
fn inspector_screens() {
    let m = model();
    let mut ins = inspector_with(analyze(&m, &image_input()).expect("analysis"));
    let (text, _) = draw(80, 24, |f| ins.render(f, f.area()));
    insta::assert_snapshot!("inspector_image_80x24", text);
    let (text, _) = draw(160, 40, |f| ins.render(f, f.area()));
    insta::assert_snapshot!("inspector_image_160x40", text);
    ins.key(key(KeyCode::Char('w')));
    assert!(ins.browsing);
    let (text, _) = draw(80, 24, |f| ins.render(f, f.area()));
    insta::assert_snapshot!("inspector_wrong_answers_80x24", text);
    // Audio: the attention strip over frames.
    let audio = InspectInput {
        audio: Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/fusion/whisper_tone.wav"),
        ),
        prompt: "Is there a chirp in the audio?".into(),
        ..Default::default()
    };
    let a = analyze(&m, &audio).expect("audio analysis");
    assert!(!a.audio_slots.is_empty());
    let mut ins = inspector_with(a);
    let (text, _) = draw(80, 24, |f| ins.render(f, f.area()));
    insta::assert_snapshot!("inspector_audio_80x24", text);
}

#[test]
fn wrong_answers_put_hallucinations_first_and_carry_their_media() {
    let ws = workspace();
    let wrong = wrong_samples(&root(), &ws.results_of("fuyu-tiny-a")).expect("samples");
    assert!(!wrong.is_empty());
    let first_other = wrong
        .iter()
        .position(|w| w.kind != "hallucination")
        .unwrap_or(wrong.len());
    assert!(
        first_other > 0,
        "the fixture model hallucinates at least once"
    );
    assert!(wrong[first_other..]
        .iter()
        .all(|w| w.kind != "hallucination"));
    for w in &wrong {
        let img = w.input.image.as_ref().expect("image tasks");
        assert!(img.is_file(), "{}", img.display());
        assert_ne!(w.input.truth, None);
    }
    // A hallucination is a "yes" to an object that is not there.
    assert_eq!(wrong[0].input.truth.as_deref(), Some("no"));
}

fn heat_cells(buf: &Buffer, w: u16, h: u16) -> Vec<Color> {
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| buf[(x, y)].symbol() == "▀")
        .map(|(x, y)| buf[(x, y)].fg)
        .collect()
}

#[test]
fn inspector_keys_change_the_token_layer_head_and_heat_map() {
    let m = model();
    let mut ins = inspector_with(analyze(&m, &image_input()).expect("analysis"));
    let a = ins.analysis.clone().expect("analysis");
    assert_eq!(
        ins.sel,
        a.rows.len() - 1,
        "starts on the token that predicts the answer"
    );
    let heat0 = ins.heat().expect("heat");
    let (text, buf) = draw(80, 24, |f| ins.render(f, f.area()));
    let cells0 = heat_cells(&buf, 80, 24);
    // Under the image, the colour bar: the map from weight 0 to 1 between "0%" and the
    // largest weight in percent.
    let max = format!("{:.1}%", ins.heat_max() * 100.0);
    let y = text
        .lines()
        .position(|l| l.contains(" 0% █") && l.contains(&max))
        .unwrap_or_else(|| panic!("no colour bar ending in {max}:\n{text}")) as u16;
    let bar: Vec<Color> = (0..80)
        .filter(|&x| buf[(x, y)].symbol() == "█")
        .map(|x| buf[(x, y)].fg)
        .collect();
    let grey = |c: [u8; 3]| Color::Rgb(c[0], c[1], c[2]);
    assert_eq!(bar.first(), Some(&grey(heat_colour(0.0))));
    assert_eq!(bar.last(), Some(&grey(heat_colour(1.0))));
    let level = |c: &Color| match c {
        Color::Rgb(r, g, b) if r == g && g == b => *r,
        other => panic!("the bar is grey: {other:?}"),
    };
    assert!(bar.windows(2).all(|w| level(&w[0]) <= level(&w[1])));
    ins.key(key(KeyCode::Left));
    ins.key(key(KeyCode::Left));
    assert_eq!(ins.sel, a.rows.len() - 3);
    let heat1 = ins.heat().expect("heat");
    assert_ne!(heat0, heat1, "another token attends elsewhere");
    let cells1 = heat_cells(&draw(80, 24, |f| ins.render(f, f.area())).1, 80, 24);
    assert_eq!(cells0.len(), cells1.len());
    assert_ne!(cells0, cells1, "the drawn heat map changes with the token");
    ins.key(key(KeyCode::End));
    assert_eq!(ins.sel, a.rows.len() - 1);
    // Layers and heads cycle through each one and the mean.
    assert_eq!((ins.layer, ins.head), (None, None));
    ins.key(key(KeyCode::Char('h')));
    assert_eq!(ins.head, Some(0));
    let head0 = ins.heat();
    ins.key(key(KeyCode::Char('h')));
    assert_eq!(ins.head, Some(1));
    assert_ne!(head0, ins.heat(), "heads differ");
    ins.key(key(KeyCode::Char('h')));
    assert_eq!(ins.head, None, "after the last head: the mean");
    ins.key(key(KeyCode::Char('H')));
    assert_eq!(ins.head, Some(a.heads - 1));
    ins.key(key(KeyCode::Char('l')));
    assert_eq!(ins.layer, Some(0));
    ins.key(key(KeyCode::Char('l')));
    assert_eq!(ins.layer, None);
    // The browser: Enter on a sample asks for it (no model thread here: says so).
    ins.key(key(KeyCode::Char('w')));
    ins.key(key(KeyCode::Down));
    assert_eq!(ins.wrong_sel.selected(), Some(1));
    ins.key(key(KeyCode::Enter));
    assert!(!ins.browsing);
    assert_eq!(ins.input, ins.wrong[1].input);
    assert_eq!(
        ins.key(key(KeyCode::Esc)),
        Action::Quit,
        "started alone: Esc quits"
    );
}

/// LayerNorm over the last `n` values of `x` in place.
fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + 1e-5).sqrt();
    for (i, v) in x.iter_mut().enumerate() {
        *v = (*v - mean) * inv * w[i] + b[i];
    }
}

fn linear(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let out = b.len();
    (0..out)
        .map(|o| b[o] + (0..x.len()).map(|i| w[o * x.len() + i] * x[i]).sum::<f32>())
        .collect()
}

#[test]
fn inspector_attention_is_the_models_own_attention() {
    let m = model();
    let input = image_input();
    let a = analyze(&m, &input).expect("analysis");
    let seq = build_sequence(&m, &input).expect("sequence");
    let cfg = &m.config.model;
    assert_eq!(
        cfg.n_layers, 1,
        "fuyu-tiny has one layer; this test recomputes layer 0"
    );
    // The weights, read straight from the file.
    let w = weights(&root().join("models/fuyu-tiny-a"));
    let g = |k: &str| {
        w.get(k)
            .unwrap_or_else(|| panic!("no tensor {k}"))
            .1
            .as_slice()
    };
    let (d, nh) = (cfg.d_model, cfg.n_heads);
    let hd = d / nh;
    let t = seq.tokens.len();
    // Embeddings: token rows, and the linear patch embedding at patch positions.
    let mut x: Vec<Vec<f32>> = seq
        .tokens
        .iter()
        .map(|&id| g("embed_tokens.weight")[id as usize * d..(id as usize + 1) * d].to_vec())
        .collect();
    for (k, &pos) in seq.patch_positions.iter().enumerate() {
        let p = &seq.patches[k * seq.patch_dim..(k + 1) * seq.patch_dim];
        x[pos] = linear(p, g("vision_embed.weight"), g("vision_embed.bias"));
    }
    let pre = "layers.0.self_attn.";
    let rot = (hd as f64 * cfg.partial_rotary_factor) as usize;
    let mut q = vec![vec![vec![0f32; hd]; t]; nh];
    let mut k = vec![vec![vec![0f32; hd]; t]; nh];
    for (i, xi) in x.iter().enumerate() {
        let mut h = xi.clone();
        layer_norm(
            &mut h,
            g("layers.0.input_layernorm.weight"),
            g("layers.0.input_layernorm.bias"),
        );
        let qa = linear(
            &h,
            g(&format!("{pre}q_proj.weight")),
            g(&format!("{pre}q_proj.bias")),
        );
        let ka = linear(
            &h,
            g(&format!("{pre}k_proj.weight")),
            g(&format!("{pre}k_proj.bias")),
        );
        let pos = seq.positions[i] as f64;
        for head in 0..nh {
            for (dst, src, norm) in [(&mut q, &qa, "q_layernorm"), (&mut k, &ka, "k_layernorm")] {
                let mut v = src[head * hd..(head + 1) * hd].to_vec();
                layer_norm(
                    &mut v,
                    g(&format!("{pre}{norm}.weight")),
                    g(&format!("{pre}{norm}.bias")),
                );
                // GPT-NeoX rotary on the first `rot` channels.
                let half = rot / 2;
                let mut r = v.clone();
                for j in 0..half {
                    let inv = 1.0 / cfg.rope_theta.powf((2 * j) as f64 / rot as f64);
                    let (s, c) = (pos * inv).sin_cos();
                    let (a1, a2) = (v[j] as f64, v[j + half] as f64);
                    r[j] = (a1 * c - a2 * s) as f32;
                    r[j + half] = (a2 * c + a1 * s) as f32;
                }
                dst[head][i] = r;
            }
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let mut worst = 0f32;
    let mut mean_worst = 0f32;
    for (r, &qi) in a.rows.iter().enumerate() {
        let mut mean = vec![0f32; t];
        for head in 0..nh {
            let scores: Vec<f32> = (0..=qi)
                .map(|kj| {
                    scale
                        * q[head][qi]
                            .iter()
                            .zip(&k[head][kj])
                            .map(|(x, y)| x * y)
                            .sum::<f32>()
                })
                .collect();
            let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - mx).exp()).collect();
            let z: f32 = e.iter().sum();
            let mut want = vec![0f32; t];
            for (kj, v) in e.iter().enumerate() {
                want[kj] = v / z;
            }
            let got = a.attention(r, Some(0), Some(head));
            for (x, y) in got.iter().zip(&want) {
                worst = worst.max((x - y).abs());
            }
            for (m, v) in mean.iter_mut().zip(&want) {
                *m += v / nh as f32;
            }
        }
        for (x, y) in a.attention(r, None, None).iter().zip(&mean) {
            mean_worst = mean_worst.max((x - y).abs());
        }
    }
    assert!(worst <= 1e-5, "max abs difference {worst}");
    assert!(
        mean_worst <= 1e-5,
        "mean over heads: max abs difference {mean_worst}"
    );
    // The heat map is the selected row's attention at the patch positions.
    let img = a.image.as_ref().expect("image");
    assert!(img.per_patch);
    assert_eq!(img.slots.len(), img.rows * img.cols);
    for &p in &img.slots {
        assert_eq!(seq.modality[p], TokenKind::ImagePatch);
    }
    let row = a.last_row();
    let full = a.attention(row, None, None);
    let on_image = a.image_attention(row, None, None).expect("image attention");
    assert_eq!(
        on_image,
        img.slots.iter().map(|&p| full[p]).collect::<Vec<_>>()
    );
}

#[test]
fn inspect_writes_the_overlay_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("attn.png");
    let args = mmlab::tui::InspectOptions {
        model: root().join("models/fuyu-tiny-a").display().to_string(),
        image: root().join("data/shapes/images/000000.png"),
        audio: None,
        prompt: "Is there a circle in the image?".into(),
        layer: Some(1),
        head: None,
        token: None,
        slot: None,
        out: out.clone(),
        size: 240,
    };
    mmlab::tui::run_inspect(&args).expect("inspect");
    let img = image::open(&out).expect("png").to_rgb8();
    assert!(img.width() >= 240 || img.height() >= 240);
    // The overlay's height: the image as the model saw it, scaled to at least 240 px.
    let a = analyze(&model(), &image_input()).expect("analysis");
    let seen = &a.image.as_ref().expect("image").pixels;
    let s = 240u32.div_ceil(seen.width().max(seen.height()));
    let overlay_h = seen.height() * s;
    // Under the image, a colour bar: a row whose pixels run through the map, weight 0 to 1,
    // over most of the width.
    let bar_row = (overlay_h..img.height()).find(|&y| {
        let row: Vec<[u8; 3]> = (0..img.width()).map(|x| img.get_pixel(x, y).0).collect();
        let start = row.iter().position(|&p| p == heat_colour(0.0));
        start.is_some_and(|x0| {
            let run: Vec<[u8; 3]> = row[x0..]
                .iter()
                .copied()
                .take_while(|p| p[0] == p[1] && p[1] == p[2] && p[0] >= 64)
                .collect();
            run.windows(2).all(|w| w[1][0] >= w[0][0])
                && run.last() == Some(&heat_colour(1.0))
                && run.len() as u32 >= img.width() * 3 / 4
        })
    });
    let bar_row = bar_row.expect("a colour bar under the image");
    // And under the bar, the scale and the caption: at least 3 lines of dark text.
    let ink = (bar_row..img.height())
        .filter(|&y| (0..img.width()).any(|x| img.get_pixel(x, y).0[0] < 100))
        .count();
    assert!(ink >= 30, "{ink} rows with text under the bar");
    assert!(
        img.height() > overlay_h + 3 * 14,
        "the caption makes the figure taller"
    );
    // A layer the model does not have is a clear error.
    let bad = mmlab::tui::InspectOptions {
        layer: Some(9),
        ..args
    };
    let e = mmlab::tui::run_inspect(&bad).unwrap_err().to_string();
    assert!(e.contains("--layer 9"), "{e}");
}

#[test]
fn a_named_samples_file_is_browsed_and_a_broken_one_is_a_clear_error() {
    let ws = workspace();
    let entry = ws
        .results_of("fuyu-tiny-a")
        .into_iter()
        .find(|r| r.result.task == "pope")
        .expect("pope result");
    let samples = entry.path.with_extension("samples.jsonl");
    assert!(samples.is_file(), "{}", samples.display());
    let from_file =
        mmlab::tui::samples_for(&ws, &root(), "ignored", Some(&samples)).expect("samples");
    let all = wrong_samples(&root(), &[entry]).expect("samples");
    assert_eq!(from_file, all, "the samples file names the same result");
    // A samples file with a corrupt line names the file and the line.
    let dir = tempfile::tempdir().unwrap();
    for name in ["r.json", "r.samples.jsonl"] {
        let from = if name.ends_with(".json") {
            entry.path.clone()
        } else {
            samples.clone()
        };
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    let mut result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    result["samples_file"] = "r.samples.jsonl".into();
    result["config"]["data"] = root().join("data/shapes").display().to_string().into();
    std::fs::write(dir.path().join("r.json"), result.to_string()).unwrap();
    let bad = dir.path().join("r.samples.jsonl");
    let mut text = std::fs::read_to_string(&bad).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&bad, text).unwrap();
    let e = mmlab::tui::samples_for(&ws, &root(), "x", Some(&bad)).unwrap_err();
    assert!(e.contains("r.samples.jsonl"), "{e}");
}

/// A workspace in `dir` with the fixture's results of `results` (model folders) and the shipped
/// `eval-metrics.json` fixture in `models/<m>` for each of `shipped` (with `tier`).
fn shipped_workspace(dir: &Path, results: &[&str], shipped: &[(&str, &str)]) -> Workspace {
    for m in results {
        let to = dir.join("results").join(m);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(root().join("results").join(m)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tui-shipped/eval-metrics.json");
    for (m, tier) in shipped {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&fixture).unwrap()).unwrap();
        v["tier"] = (*tier).into();
        let d = dir.join("models").join(m);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("eval-metrics.json"), v.to_string()).unwrap();
    }
    Workspace::scan_with(dir, false)
}

#[test]
fn shipped_results_show_until_the_user_has_a_result_with_the_same_identity() {
    let aligned = "aligned 48x48 cell 12px";
    // A fresh clone: no results of the user's, one model with shipped results.
    let dir = tempfile::tempdir().unwrap();
    let ws = shipped_workspace(dir.path(), &[], &[("qformer-tiny-c", aligned)]);
    assert!(ws.problems.is_empty(), "{:?}", ws.problems);
    let rows = ws.result_rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert!(r.shipped);
    assert_eq!(
        (r.model.as_str(), r.tier.as_str(), r.run.as_str()),
        ("qformer-tiny-c", aligned, "shipped: default test set")
    );
    assert_eq!(r.design, "qformer?");
    assert_eq!(r.values.get("pope-random:f1"), Some(&0.6078740157480313));
    assert_eq!(r.values.get("count:acc"), Some(&0.2985714285714286));
    let col = |h: &str| {
        *mmlab::tui::workspace::COLUMNS
            .iter()
            .find(|c| c.header == h)
            .unwrap()
    };
    assert_eq!(r.value(&col("aPOPE")), Some(0.6112572166424565));
    assert_eq!(r.value(&col("aCount")), Some(0.364));
    let mut d = Dashboard::new(ws);
    d.tab = 1;
    let wide = draw(160, 40, |f| d.render(f, f.area())).0;
    assert!(wide.contains("shipped: default test set"), "{wide}");
    let narrow = draw(80, 24, |f| d.render(f, f.area())).0;
    assert!(
        narrow.contains("│†qformer-tiny-") && narrow.contains("† shipped"),
        "{narrow}"
    );
    // The user's own result of the same model and tier replaces the shipped one.
    let dir = tempfile::tempdir().unwrap();
    let ws = shipped_workspace(
        dir.path(),
        &["llava-tiny-b"],
        &[("llava-tiny-b", "unknown (old result)")],
    );
    let rows = ws.result_rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(!rows[0].shipped);
    let own = workspace()
        .result_rows()
        .into_iter()
        .find(|r| r.model == "llava-tiny-b")
        .expect("the fixture's llava-tiny-b row");
    assert_eq!((&rows[0].values, &rows[0].run), (&own.values, &own.run));
    // On another tier it does not: both are shown.
    let dir = tempfile::tempdir().unwrap();
    let ws = shipped_workspace(dir.path(), &["llava-tiny-b"], &[("llava-tiny-b", aligned)]);
    let rows = ws.result_rows();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.shipped).count(), 1);
    // A shipped file that does not say what it was measured on is a problem naming it.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("models/m");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("eval-metrics.json"),
        r#"{"data": "x", "pope_random_f1": 0.5}"#,
    )
    .unwrap();
    let ws = Workspace::scan_with(dir.path(), false);
    assert!(ws.shipped.is_empty());
    assert_eq!(ws.problems.len(), 1);
    assert!(
        ws.problems[0].contains("models/m/eval-metrics.json") && ws.problems[0].contains("tier"),
        "{:?}",
        ws.problems
    );
}

/// What a new user sees: a workspace holding only the repository's shipped `models/` (no
/// results or runs of their own).
fn fresh_clone_tab(tab: usize) -> String {
    fresh_clone_tab_sized(tab, 80, 24)
}

fn fresh_clone_tab_sized(tab: usize, w: u16, h: u16) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"),
        dir.path().join("models"),
    )
    .unwrap();
    let ws = Workspace::scan(dir.path());
    assert!(ws.problems.is_empty(), "{:?}", ws.problems);
    let mut d = Dashboard::new(ws);
    d.tab = tab;
    draw(w, h, |f| d.render(f, f.area())).0
}

#[test]
fn a_fresh_clone_shows_the_shipped_models_side_by_side() {
    // Wide enough for whole names; the 80x24 snapshot below is what a small terminal shows.
    let wide = fresh_clone_tab_sized(1, 140, 30);
    for m in [
        "fuyu-small",
        "native-3e13",
        "llava-3e13",
        "llava-small",
        "qformer-small",
        "flamingo-small",
    ] {
        assert!(wide.contains(m), "{m} missing from Results:\n{wide}");
    }
    let results = fresh_clone_tab(1);
    insta::assert_snapshot!("fresh_clone_results_80x24", results);
    let training = fresh_clone_tab(2);
    for m in ["fuyu-small", "llava-small"] {
        assert!(
            training.contains(m),
            "{m} missing from Training:\n{training}"
        );
    }
    insta::assert_snapshot!("fresh_clone_training_80x24", training);
}

#[test]
fn next_token_guesses_are_marked_untrained_away_from_the_answer() {
    let m = model();
    let mut ins = inspector_with(analyze(&m, &image_input()).expect("analysis"));
    let at_answer = draw(80, 24, |f| ins.render(f, f.area())).0;
    assert!(
        at_answer.contains("next token after \"<boa>\""),
        "{at_answer}"
    );
    assert!(!at_answer.contains("never trained"), "{at_answer}");
    ins.key(key(KeyCode::Left));
    let before = draw(80, 24, |f| ins.render(f, f.area())).0;
    assert!(before.contains("never trained here"), "{before}");
}

#[test]
fn a_growing_training_log_updates_in_place_with_its_rate_eta_and_a_nan_alarm() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("runs/live-run");
    std::fs::create_dir_all(&run).unwrap();
    let model = mmlab::model::io::read_config(&root_fixture_model()).unwrap();
    let cfg = mmlab::train::TrainConfig::new(model, 1000, 8, 1e-3, 0);
    std::fs::write(run.join("run.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let line = |step: u64, loss: &str| {
        format!(
            "{{\"step\":{step},\"loss\":{loss},\"lr\":0.001,\"grad_norm\":1.0,\"tokens\":{},\"seconds\":{}}}\n",
            step * 100,
            step as f64 / 10.0
        )
    };
    let log = run.join("train.jsonl");
    std::fs::write(
        &log,
        [line(10, "2.5"), line(20, "2.0"), line(30, "1.5")].concat(),
    )
    .unwrap();
    let mut d = Dashboard::new(Workspace::scan_with(root.path(), false));
    d.tab = 2;
    let before = draw(80, 24, |f| d.render(f, f.area())).0;
    // 10 steps a second, 970 steps to go.
    assert!(before.contains("live 30/1000 · 10.0/s"), "{before}");
    assert!(before.contains("ETA 1m37s"), "{before}");
    assert!(!before.contains('⚠'), "{before}");

    // The run goes on, then its loss turns NaN (JSON writes it as null): no rescan, no restart.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    use std::io::Write;
    f.write_all([line(40, "1.2"), line(50, "null")].concat().as_bytes())
        .unwrap();
    drop(f);
    d.refresh();
    let after = draw(80, 24, |f| d.render(f, f.area())).0;
    assert!(after.contains("live 50/1000"), "{after}");
    assert!(after.contains("loss not finite at step 50"), "{after}");
    insta::assert_snapshot!("dashboard_training_live_alarm_80x24", after);

    // The run finishes: no longer live.
    std::fs::copy(
        root_fixture_model().join("config.json"),
        run.join("config.json"),
    )
    .unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(line(1000, "0.5").as_bytes()).unwrap();
    drop(f);
    d.refresh();
    let done = draw(80, 24, |f| d.render(f, f.area())).0;
    assert!(!done.contains("live "), "{done}");
}

fn root_fixture_model() -> PathBuf {
    root().join("models/fuyu-tiny-a")
}

#[test]
fn a_studys_runs_table_puts_settings_beside_results_sorted_by_the_chosen_column() {
    let ws = workspace();
    let runs = &ws.studies[0].runs;
    assert!(runs.len() >= 8, "{} runs in the fixture", runs.len());
    let mut d = Dashboard::new(workspace());
    d.tab = 3;
    d.key(key(KeyCode::Down));
    d.key(key(KeyCode::Char('r')));
    insta::assert_snapshot!(
        "dashboard_study_runs_80x24",
        draw(80, 24, |f| d.render(f, f.area())).0
    );
    // Tall enough for every run.
    let screen = draw(100, 40, |f| d.render(f, f.area())).0;
    assert!(screen.contains("toy-scaling · 18 runs"), "{screen}");
    assert!(screen.contains("loss▼"), "{screen}");
    // Data rows start under the header; the first has the lowest held-out loss, the last the
    // highest.
    let rows: Vec<&str> = screen
        .lines()
        .skip(5)
        .filter(|l| l.contains(" d32 ") || l.contains(" d48 "))
        .collect();
    assert_eq!(rows.len(), runs.len(), "{screen}");
    let best = runs
        .iter()
        .map(|r| r.val.image_loss)
        .fold(f64::INFINITY, f64::min);
    assert!(rows[0].contains(&format!("{best:.3}")), "{screen}");
    let worst = runs.iter().map(|r| r.val.image_loss).fold(0.0, f64::max);
    assert!(
        rows[rows.len() - 1].contains(&format!("{worst:.3}")),
        "{screen}"
    );
    // → sorts by POPE accuracy, highest first.
    d.key(key(KeyCode::Right));
    let screen = draw(100, 40, |f| d.render(f, f.area())).0;
    assert!(screen.contains("POPE▼"), "{screen}");
    let top = runs
        .iter()
        .filter_map(|r| r.test("pope_accuracy"))
        .fold(f64::NEG_INFINITY, f64::max);
    let first = screen
        .lines()
        .skip(5)
        .find(|l| l.contains(" d32 ") || l.contains(" d48 "))
        .unwrap();
    assert!(first.contains(&format!("{top:.3}")), "{screen}");
    // r goes back to the frontier.
    d.key(key(KeyCode::Char('r')));
    let screen = draw(80, 24, |f| d.render(f, f.area())).0;
    assert!(screen.contains("held-out loss vs FLOPs"), "{screen}");
}

/// A seeded `preset` model (Flamingo's gates opened to tanh(0.5)) saved in `dir` and loaded
/// back, as the inspector loads any model directory.
fn seeded_model(preset: &str, dir: &Path) -> LoadedModel {
    let tok = mmlab::fusion::TextTokenizer::builtin().expect("builtin tokenizer");
    let mut cfg = mmlab::model::presets::preset(preset).unwrap().config;
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    let (_, vm) = mmlab::train::init_model(&cfg, 3, &candle_core::Device::Cpu).unwrap();
    for (name, var) in mmlab::train::named_vars(&vm) {
        if name.ends_with("_gate") {
            var.set(&candle_core::Tensor::new(&[0.5f32], &candle_core::Device::Cpu).unwrap())
                .unwrap();
        }
    }
    mmlab::model::io::save_dir(dir, &cfg, &vm, candle_core::DType::F32, &tok).unwrap();
    load_dir(dir, &candle_core::Device::Cpu).expect("seeded model")
}

/// The tensors of a model directory's weights file, as f32.
fn weights(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let f: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (v.shape().to_vec(), f))
        })
        .collect()
}

fn softmax(s: &[f32]) -> Vec<f32> {
    let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = s.iter().map(|v| (v - mx).exp()).collect();
    let z: f32 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

/// Per-head attention probabilities of queries `q` over keys `k` (rows of width `heads * hd`).
fn head_probs(q: &[Vec<f32>], k: &[Vec<f32>], heads: usize, h: usize) -> Vec<Vec<f32>> {
    let hd = q[0].len() / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    q.iter()
        .map(|qi| {
            let s: Vec<f32> = k
                .iter()
                .map(|kj| scale * (h * hd..(h + 1) * hd).map(|c| qi[c] * kj[c]).sum::<f32>())
                .collect();
            softmax(&s)
        })
        .collect()
}

#[test]
fn flamingo_cross_attention_and_the_latents_view_are_the_models_own() {
    let dir = tempfile::tempdir().unwrap();
    let m = seeded_model("flamingo-tiny", dir.path());
    let input = image_input();
    let a = analyze(&m, &input).expect("analysis");
    let w = weights(dir.path());
    let g = |k: &str| -> &[f32] {
        &w.get(k)
            .unwrap_or_else(|| panic!("no tensor {k}; have {:?}", w.keys().collect::<Vec<_>>()))
            .1
    };
    let (slots, cross) = (
        a.slots.as_ref().expect("slot view"),
        a.cross.as_ref().expect("cross view"),
    );
    assert_eq!(slots.what, "latents");
    for gate in &cross.gates {
        assert!((gate - 0.5f32.tanh()).abs() < 1e-6, "gate {gate}");
    }
    // The batch the analysis ran on, and what the model makes of it before the decoder.
    let seq = build_sequence(&m, &input).expect("sequence");
    let batch = mmlab::fusion::collate(
        std::slice::from_ref(&seq),
        m.tokenizer.specials.pad,
        mmlab::fusion::PadSide::Right,
    )
    .unwrap();
    let mmlab::model::Model::Bolted(bolted) = &m.model else {
        panic!("flamingo is bolted-on")
    };
    let patches = candle_core::Tensor::from_slice(
        &batch.patches,
        (batch.patches.len() / batch.patch_dim, batch.patch_dim),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let enc = bolted
        .vision_encoder()
        .forward(&patches, &batch.images)
        .unwrap();
    let feats = enc.feats.get(0).unwrap().to_vec2::<f32>().unwrap();
    let p = slots.patches;
    // Perceiver layer 0, by hand: latents (layer-normed) attend to [normed features, latents].
    let pre = "connector.layers.0.";
    let ln = |x: &[f32], name: &str| {
        let mut v = x.to_vec();
        layer_norm(
            &mut v,
            g(&format!("{name}.weight")),
            g(&format!("{name}.bias")),
        );
        v
    };
    let d = feats[0].len();
    let lat: Vec<Vec<f32>> = g("connector.latents")
        .chunks(d)
        .map(|r| ln(r, &format!("{pre}latent_layernorm")))
        .collect();
    let mut kv: Vec<Vec<f32>> = feats[..p]
        .iter()
        .map(|f| ln(f, &format!("{pre}feat_layernorm")))
        .collect();
    kv.extend(lat.iter().cloned());
    let proj = |x: &[Vec<f32>], name: &str| -> Vec<Vec<f32>> {
        x.iter()
            .map(|r| linear(r, g(&format!("{name}.weight")), g(&format!("{name}.bias"))))
            .collect()
    };
    let q = proj(&lat, &format!("{pre}attn.q_proj"));
    let k = proj(&kv, &format!("{pre}attn.k_proj"));
    let mut worst = 0f32;
    for h in 0..slots.heads {
        let probs = head_probs(&q, &k, slots.heads, h);
        for (s, row) in probs.iter().enumerate() {
            let o = (h * slots.n + s) * p;
            for (x, y) in slots.attn[o..o + p].iter().zip(&row[..p]) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    assert!(
        worst <= 1e-5,
        "perceiver layer 0: max abs difference {worst}"
    );
    // The first gated cross-attention layer, by hand: the embeddings (layer-normed) attend to
    // the latents of the image before them; tokens before the image see nothing.
    let (x, ctx) = m.model.embed_with_context(&batch).unwrap();
    let ctx = ctx.expect("flamingo's latents");
    let x = x.get(0).unwrap().to_vec2::<f32>().unwrap();
    let latents = ctx.latents.get(0).unwrap().to_vec2::<f32>().unwrap();
    let xl = cross.blocks[0];
    let xpre = format!("xattn.{xl}.");
    let qx: Vec<Vec<f32>> = a
        .rows
        .iter()
        .map(|&r| ln(&x[r], &format!("{xpre}attn_layernorm")))
        .collect();
    let q = proj(&qx, &format!("{xpre}attn.q_proj"));
    let k = proj(&latents[..cross.m], &format!("{xpre}attn.k_proj"));
    let image_pos = seq.patch_positions[0];
    let mut worst = 0f32;
    let n = a.rows.len();
    for h in 0..cross.heads {
        let probs = head_probs(&q, &k, cross.heads, h);
        for (ri, row) in probs.iter().enumerate() {
            let sees = a.rows[ri] >= image_pos;
            let o = (h * n + ri) * cross.m;
            for (x, y) in cross.attn[o..o + cross.m].iter().zip(row) {
                let want = if sees { *y } else { 0.0 };
                worst = worst.max((x - want).abs());
            }
        }
    }
    assert!(
        worst <= 1e-5,
        "cross-attention layer 0: max abs difference {worst}"
    );
    // The map through the latents: the row's weights on the latents carried onto the patches.
    let r = a.last_row();
    let wts = a
        .slot_weights(r, None, None)
        .expect("weights on the latents");
    assert!((wts.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    let heat = a.patch_heat(r, None, None, None).expect("heat");
    for (pi, v) in heat.iter().enumerate() {
        let want: f32 = (0..slots.n)
            .map(|s| wts[s] * slots.slot_over_patches(s)[pi])
            .sum();
        assert!((v - want).abs() < 1e-6);
    }
    assert_eq!(
        a.patch_heat(r, None, None, Some(2)).unwrap(),
        slots.slot_over_patches(2)
    );
    // A decoder layer with no cross-attention layer before it has no map.
    let bare = (0..a.layers).find(|l| !cross.blocks.contains(l));
    if let Some(l) = bare {
        assert!(a.patch_heat(r, Some(l), None, None).is_none());
    }
    // The inspector shows it: the map, the strip over the latents and the gates; `s` picks a
    // latent and its own map.
    let mut ins = Inspector::offline("flamingo-tiny".into(), input, Vec::new());
    ins.set_analysis(a.clone());
    let (text, _) = draw(80, 24, |f| ins.render(f, f.area()));
    insta::assert_snapshot!("inspector_flamingo_80x24", text);
    assert!(text.contains("via 4 latents · gate 0.46"), "{text}");
    // `mmlab inspect --slot`: a latent's own map, and clear errors for a slot out of range or
    // a design without slots.
    let png = dir.path().join("latent.png");
    let opts = |model: String, slot: usize| mmlab::tui::InspectOptions {
        model,
        image: root().join("data/shapes/images/000000.png"),
        audio: None,
        prompt: "Is there a ring in the image?".into(),
        layer: None,
        head: None,
        token: None,
        slot: Some(slot),
        out: png.clone(),
        size: 120,
    };
    let here = dir.path().display().to_string();
    mmlab::tui::run_inspect(&opts(here.clone(), 2)).expect("latent 2's map");
    assert!(png.is_file());
    let err = format!("{:#}", mmlab::tui::run_inspect(&opts(here, 9)).unwrap_err());
    assert!(
        err.contains("--slot 9: the model has 4 latents per image, 1..=4"),
        "{err}"
    );
    let fuyu = root().join("models/fuyu-tiny-a").display().to_string();
    let err = format!("{:#}", mmlab::tui::run_inspect(&opts(fuyu, 1)).unwrap_err());
    assert!(
        err.contains("one token per patch; it has no queries or latents"),
        "{err}"
    );
    let before = ins.heat().expect("heat");
    ins.key(key(KeyCode::Char('s')));
    assert_eq!(ins.slot, Some(0));
    assert_ne!(ins.heat().expect("latent 1's map"), before);
    let (text, _) = draw(160, 40, |f| ins.render(f, f.area()));
    insta::assert_snapshot!("inspector_flamingo_latent_160x40", text);
    assert!(text.contains("latent 1/4"), "{text}");
}

#[test]
fn a_q_former_tokens_map_runs_through_its_queries() {
    let dir = tempfile::tempdir().unwrap();
    let m = seeded_model("qformer-tiny", dir.path());
    let a = analyze(&m, &image_input()).expect("analysis");
    let slots = a.slots.as_ref().expect("slot view");
    assert_eq!(slots.what, "queries");
    assert!(a.cross.is_none());
    let img = a.image.as_ref().unwrap();
    assert!(!img.per_patch);
    assert_eq!(slots.n, img.slots.len());
    // Each query's attention over the patches is a distribution (no padding in one image).
    for s in 0..slots.n {
        let total: f32 = slots.slot_over_patches(s).iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "query {s}: {total}");
    }
    // The token's decoder attention on the query slots, carried onto the patches.
    let r = a.last_row();
    let on_slots = a.image_attention(r, Some(0), Some(1)).unwrap();
    assert_eq!(a.slot_weights(r, Some(0), Some(1)).unwrap(), on_slots);
    let heat = a.patch_heat(r, Some(0), Some(1), None).unwrap();
    let total: f32 = heat.iter().sum();
    assert!((total - on_slots.iter().sum::<f32>()).abs() < 1e-5);
}

#[test]
fn the_models_table_puts_settings_beside_results_with_counted_flops_and_sorts() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    // A run made now: `mmlab train` logs the FLOPs it counts and writes its settings.
    let mut cfg = common::tiny_train_config(3);
    cfg.optim.lr = 2e-3;
    common::train_quietly(&cfg, &models.join("counted"));
    // A model whose log predates the count (the fixture's).
    let old = models.join("estimated");
    std::fs::create_dir_all(&old).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train.jsonl",
    ] {
        std::fs::copy(root().join("models/fuyu-tiny-a").join(f), old.join(f)).unwrap();
    }
    let ws = Workspace::scan_with(tmp.path(), false);
    assert!(ws.problems.is_empty(), "{:?}", ws.problems);
    let m = |n: &str| ws.models.iter().find(|m| m.name == n).unwrap().clone();
    let (counted, estimated) = (m("counted"), m("estimated"));
    assert!(counted.counted() && !estimated.counted());
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(models.join("counted/train.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(counted.flops(), last["flops"].as_f64());
    assert_ne!(
        counted.flops(),
        Some(counted.flops_at(last["tokens"].as_f64().unwrap()))
    );
    assert_eq!(
        estimated.flops(),
        Some(estimated.flops_at(estimated.tokens().unwrap() as f64))
    );
    assert_eq!(counted.peak_lr(), Some(2e-3));
    assert_eq!(
        counted.trained_on.as_deref(),
        Some("aligned 48x48 cell 12px")
    );
    let mut d = Dashboard::new(ws);
    d.tab = 0;
    let screen = draw(80, 24, |f| d.render(f, f.area())).0;
    let row = |name: &str| {
        screen
            .lines()
            .find(|l| l.contains(&format!("│{name} ")))
            .unwrap_or_else(|| panic!("no row {name}: {screen}"))
            .to_string()
    };
    assert!(
        !row("counted").contains('≈') && row("counted").contains("aligned 48x48"),
        "{screen}"
    );
    assert!(row("counted").contains("2.0e-3"), "{screen}");
    assert!(row("estimated").contains('≈') && row("estimated").contains("3.0e-3"));
    // ←→ sort: by params (ascending), then FLOPs, then peak LR; the header marks the column.
    let order = |d: &mut Dashboard| {
        let s = draw(80, 24, |f| d.render(f, f.area())).0;
        let rows: Vec<String> = s
            .lines()
            .filter_map(|l| {
                ["counted", "estimated"]
                    .into_iter()
                    .find(|n| l.contains(&format!("│{n} ")))
                    .map(String::from)
            })
            .collect();
        (s, rows)
    };
    d.key(key(KeyCode::Right));
    d.key(key(KeyCode::Right));
    d.key(key(KeyCode::Right));
    let (s, rows) = order(&mut d);
    assert!(s.contains("peak LR▲"), "{s}");
    assert_eq!(rows, ["counted", "estimated"], "2e-3 before 3e-3: {s}");
    d.key(key(KeyCode::Right));
    d.key(key(KeyCode::Right));
    let (s, _) = order(&mut d);
    assert!(s.contains("count▼"), "{s}");
    // Enter opens the model under the cursor in display order.
    d.key(key(KeyCode::Left));
    d.key(key(KeyCode::Left));
    d.key(key(KeyCode::Down));
    match d.key(key(KeyCode::Enter)) {
        Action::Inspect { name, .. } => assert_eq!(name, "estimated"),
        _ => panic!("Enter should open the inspector"),
    }
    // A run started after the dashboard opened joins the table at the next look.
    let late = tmp.path().join("runs/late");
    std::fs::create_dir_all(&late).unwrap();
    for f in ["run.json", "train.jsonl"] {
        std::fs::copy(models.join("counted").join(f), late.join(f)).unwrap();
    }
    d.refresh();
    let s = draw(80, 24, |f| d.render(f, f.area())).0;
    assert!(s.contains("│late "), "{s}");
    assert!(s.contains(" 3 models "), "{s}");
}
