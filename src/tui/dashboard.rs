//! The dashboard: models, results (native vs bolted-on grouped), training curves and
//! ablation tables, one tab each.

use std::collections::{BTreeMap, BTreeSet};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Bar, BarChart, BarGroup, Block, Borders, Cell, Chart, Dataset, GraphType, List, ListItem,
    Paragraph, Row, Table, TableState, Tabs,
};
use ratatui::Frame;

use super::workspace::{ResultRow, Workspace, COLUMNS};
use super::Action;
use crate::ablate::METRICS;

/// Tab titles.
pub const TABS: [&str; 4] = ["Models", "Results", "Training", "Ablations"];

/// What the training chart plots.
const CURVES: [&str; 4] = [
    "training loss",
    "held-out loss",
    "held-out presence",
    "held-out counting",
];

/// One marker per overlaid model (with its colour), drawn at a few points along its line, so
/// curves stay apart in print and for colour-blind readers; the list beside the chart is the
/// legend, so none covers the data.
const MARKERS: [(symbols::Marker, &str); 3] = [
    (symbols::Marker::Dot, "•"),
    (symbols::Marker::Bar, "▄"),
    (symbols::Marker::Block, "█"),
];

/// Markers drawn along each curve.
const MARKS_PER_CURVE: usize = 6;

/// `12.3 s`, `4m05s`, `2h13m`.
fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Most points drawn per curve (longer logs are thinned evenly).
const MAX_POINTS: usize = 400;

/// The dashboard's state.
pub struct Dashboard {
    /// What was found on disk.
    pub ws: Workspace,
    /// The shown tab.
    pub tab: usize,
    /// Models tab selection.
    pub models: TableState,
    /// Results rows in display order.
    pub rows: Vec<ResultRow>,
    /// Results tab selection.
    pub results: TableState,
    /// Column the results are sorted by and the bar chart shows.
    pub column: usize,
    /// Models with training logs (indices into `ws.models`).
    pub curves: Vec<usize>,
    /// Training tab cursor (index into `curves`).
    pub curve_sel: usize,
    /// Curves overlaid on the chart (indices into `curves`).
    pub overlay: BTreeSet<usize>,
    /// Which quantity the chart plots (index into `CURVES`).
    pub curve_kind: usize,
    /// Ablations tab selection.
    pub ablation: usize,
    /// On a study: its runs table (settings beside results) instead of the frontier.
    pub study_runs: bool,
    /// Column the runs table is sorted by (index into `RUN_COLUMNS`).
    pub run_sort: usize,
    /// Runs table selection.
    pub runs_table: TableState,
    /// Column the models table is sorted by (index into `MODEL_COLUMNS`; past its end: the
    /// order found on disk).
    pub model_sort: usize,
    /// The models table's rows in display order (indices into `ws.models`).
    pub model_order: Vec<usize>,
    /// Each model's POPE random F1 and counting accuracy on [`Dashboard::headline_tier`]
    /// (its newest result there, or the one it ships with), indexed as `ws.models`.
    pub model_results: Vec<(Option<f64>, Option<f64>)>,
    /// The tier most result rows were measured on: the one the models table quotes.
    pub headline_tier: Option<String>,
}

/// What the models table shows of a model for sorting: its index in `ws.models`.
type ModelValue = fn(&Dashboard, usize) -> Option<f64>;
/// The models table's sortable columns: (header, value, ascending).
const MODEL_COLUMNS: [(&str, ModelValue, bool); 5] = [
    ("params", |d, i| Some(d.ws.models[i].params as f64), true),
    ("FLOPs", |d, i| d.ws.models[i].flops(), true),
    ("peak LR", |d, i| d.ws.models[i].peak_lr(), true),
    ("F1 rnd", |d, i| d.model_results[i].0, false),
    ("count", |d, i| d.model_results[i].1, false),
];

/// The study runs table: (header, value of a run, best first when sorted: lowest or highest).
type RunValue = fn(&super::workspace::StudyRun) -> Option<f64>;
const RUN_COLUMNS: [(&str, RunValue, bool); 8] = [
    ("params", |r| Some(r.parameters as f64), false),
    ("budget", |r| Some(r.settings.key.budget), false),
    ("LR", |r| Some(r.settings.key.lr), false),
    ("loss", |r| Some(r.val.image_loss), false),
    ("POPE", |r| r.test("pope_accuracy"), true),
    ("F1", |r| r.test("pope_f1"), true),
    ("count", |r| r.test("count_accuracy"), true),
    ("secs", |r| Some(r.train_seconds), false),
];

fn fmt_count(v: f64) -> String {
    match v.abs() {
        x if x >= 1e12 => format!(
            "{:.2}e{}",
            v / 10f64.powi(v.log10() as i32),
            v.log10() as i32
        ),
        x if x >= 1e9 => format!("{:.1}G", v / 1e9),
        x if x >= 1e6 => format!("{:.1}M", v / 1e6),
        x if x >= 1e3 => format!("{:.1}k", v / 1e3),
        _ => format!("{v:.0}"),
    }
}

fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let step = points.len() as f64 / MAX_POINTS as f64;
    (0..MAX_POINTS)
        .map(|i| points[(i as f64 * step) as usize])
        .chain(points.last().copied())
        .collect()
}

const PALETTE: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::LightRed,
    Color::LightBlue,
];

impl Dashboard {
    /// A dashboard over a scanned workspace (which read the training logs).
    pub fn new(ws: Workspace) -> Self {
        let curves: Vec<usize> = (0..ws.models.len())
            .filter(|&i| !ws.models[i].curve.is_empty())
            .collect();
        // Runs in progress first (they are what one watches), then the first logs.
        let mut overlay = BTreeSet::new();
        let live = (0..curves.len()).filter(|&k| ws.models[curves[k]].planned_steps.is_some());
        for k in live.chain(0..curves.len()) {
            if overlay.len() == 3 {
                break;
            }
            overlay.insert(k);
        }
        let mut d = Dashboard {
            ws,
            tab: 1,
            models: TableState::default().with_selected(Some(0)),
            rows: Vec::new(),
            results: TableState::default().with_selected(Some(0)),
            column: 0,
            overlay,
            curves,
            curve_sel: 0,
            curve_kind: 0,
            ablation: 0,
            study_runs: false,
            run_sort: 3,
            runs_table: TableState::default().with_selected(Some(0)),
            model_sort: MODEL_COLUMNS.len(),
            model_order: Vec::new(),
            model_results: Vec::new(),
            headline_tier: None,
        };
        d.sort();
        d
    }

    /// Orders the models table by its sort column (ascending for settings, best first for
    /// results; models without the value last), keeping the selection on the same model.
    pub fn sort_models(&mut self) {
        let selected = self
            .models
            .selected()
            .and_then(|k| self.model_order.get(k).copied());
        let mut order: Vec<usize> = (0..self.ws.models.len()).collect();
        if let Some(&(_, value, ascending)) = MODEL_COLUMNS.get(self.model_sort) {
            order.sort_by(|&a, &b| match (value(self, a), value(self, b)) {
                (Some(x), Some(y)) if ascending => x.total_cmp(&y),
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
        }
        if let Some(m) = selected {
            self.models
                .select(order.iter().position(|&i| i == m).or(Some(0)));
        }
        self.model_order = order;
    }

    /// Each model's headline results for the models table (see [`Dashboard::model_results`]).
    fn collect_model_results(&mut self) {
        let mut tiers: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in &self.rows {
            *tiers.entry(r.tier.as_str()).or_default() += 1;
        }
        let tier = tiers
            .iter()
            .max_by_key(|(t, n)| (**n, std::cmp::Reverse(**t)))
            .map(|(t, _)| t.to_string());
        let f1 = COLUMNS[0];
        let count = COLUMNS
            .iter()
            .find(|c| c.keys == ["count:acc"])
            .copied()
            .unwrap_or(COLUMNS[0]);
        self.model_results = self
            .ws
            .models
            .iter()
            .map(|m| {
                // The user's own results first, then what the model ships with.
                let mut rows: Vec<&ResultRow> = self
                    .rows
                    .iter()
                    .filter(|r| r.model == m.name && Some(&r.tier) == tier.as_ref())
                    .collect();
                rows.sort_by_key(|r| r.shipped);
                let pick = |c: &super::workspace::Column| rows.iter().find_map(|r| r.value(c));
                (pick(&f1), pick(&count))
            })
            .collect();
        self.headline_tier = tier;
    }

    /// Orders the results rows: native first, then bolted-on, then others; within a group
    /// best first by the selected column (rows without it last), then by name.
    pub fn sort(&mut self) {
        let c = COLUMNS[self.column];
        let mut rows = self.ws.result_rows();
        rows.sort_by(|a, b| {
            let key = |r: &ResultRow| r.value(&c).map(|v| c.best.score(v));
            a.group()
                .cmp(&b.group())
                .then_with(|| match (key(a), key(b)) {
                    (Some(x), Some(y)) => y.total_cmp(&x),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
                .then_with(|| a.model.cmp(&b.model))
        });
        self.rows = rows;
        self.collect_model_results();
        self.sort_models();
    }

    /// The marker of an overlaid curve: by its place among the overlaid ones, so the curves on
    /// the chart never share one while there are no more than [`MARKERS`].
    fn marker_of(&self, curve: usize) -> usize {
        self.overlay.iter().position(|&k| k == curve).unwrap_or(0) % MARKERS.len()
    }

    /// Picks up training logs that grew since the last look (runs in progress); keeps the
    /// overlay and the cursor on the same models.
    pub fn refresh(&mut self) {
        if self.ws.refresh_curves().is_empty() {
            return;
        }
        let old: Vec<usize> = self.curves.clone();
        let curves: Vec<usize> = (0..self.ws.models.len())
            .filter(|&i| !self.ws.models[i].curve.is_empty())
            .collect();
        let pos = |m: usize| curves.iter().position(|&c| c == m);
        self.overlay = self
            .overlay
            .iter()
            .filter_map(|&k| old.get(k).and_then(|&m| pos(m)))
            .collect();
        // A run that just wrote its first lines joins the overlay while there is room.
        for (k, &m) in curves.iter().enumerate() {
            if !old.contains(&m) && self.overlay.len() < 3 {
                self.overlay.insert(k);
            }
        }
        self.curve_sel = old.get(self.curve_sel).and_then(|&m| pos(m)).unwrap_or(0);
        self.curves = curves;
        // New models and grown FLOPs: the models table's rows and order.
        self.sort();
    }

    fn move_sel(state: &mut TableState, n: usize, down: bool) {
        let i = state.selected().unwrap_or(0);
        let j = if down {
            (i + 1).min(n.saturating_sub(1))
        } else {
            i.saturating_sub(1)
        };
        state.select(Some(j));
    }

    /// Handles a key.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Tab => self.tab = (self.tab + 1) % TABS.len(),
            KeyCode::BackTab => self.tab = (self.tab + TABS.len() - 1) % TABS.len(),
            KeyCode::Char(c @ '1'..='4') => self.tab = c as usize - '1' as usize,
            _ => return self.tab_key(k),
        }
        Action::None
    }

    fn tab_key(&mut self, k: KeyEvent) -> Action {
        let down = matches!(k.code, KeyCode::Down | KeyCode::Char('j'));
        let up = matches!(k.code, KeyCode::Up | KeyCode::Char('k'));
        match self.tab {
            0 => {
                if up || down {
                    Self::move_sel(&mut self.models, self.ws.models.len(), down);
                } else if matches!(k.code, KeyCode::Left | KeyCode::Char('h')) {
                    self.model_sort =
                        (self.model_sort + MODEL_COLUMNS.len()) % (MODEL_COLUMNS.len() + 1);
                    self.sort_models();
                } else if matches!(
                    k.code,
                    KeyCode::Right | KeyCode::Char('l') | KeyCode::Char('s')
                ) {
                    self.model_sort = (self.model_sort + 1) % (MODEL_COLUMNS.len() + 1);
                    self.sort_models();
                } else if matches!(k.code, KeyCode::Enter | KeyCode::Char('i')) {
                    let picked = self.models.selected().and_then(|k| self.model_order.get(k));
                    if let Some(m) = picked.and_then(|&i| self.ws.models.get(i)) {
                        if m.weights.is_some() {
                            return Action::Inspect {
                                name: m.name.clone(),
                                spec: m.spec.clone(),
                            };
                        }
                    }
                }
            }
            1 => match k.code {
                _ if up || down => Self::move_sel(&mut self.results, self.rows.len(), down),
                KeyCode::Left | KeyCode::Char('h') => {
                    self.column = (self.column + COLUMNS.len() - 1) % COLUMNS.len();
                    self.sort();
                }
                KeyCode::Right | KeyCode::Char('l') | KeyCode::Char('s') => {
                    self.column = (self.column + 1) % COLUMNS.len();
                    self.sort();
                }
                KeyCode::Enter | KeyCode::Char('i') => {
                    let row = self.results.selected().and_then(|i| self.rows.get(i));
                    let model = row.and_then(|r| self.ws.models.iter().find(|m| m.name == r.model));
                    if let Some(m) = model.filter(|m| m.weights.is_some()) {
                        return Action::Inspect {
                            name: m.name.clone(),
                            spec: m.spec.clone(),
                        };
                    }
                }
                _ => {}
            },
            2 => match k.code {
                _ if up => self.curve_sel = self.curve_sel.saturating_sub(1),
                _ if down => {
                    self.curve_sel = (self.curve_sel + 1).min(self.curves.len().saturating_sub(1))
                }
                KeyCode::Char(' ')
                    if !self.overlay.remove(&self.curve_sel)
                        && self.curve_sel < self.curves.len() =>
                {
                    self.overlay.insert(self.curve_sel);
                }
                KeyCode::Char('m') => self.curve_kind = (self.curve_kind + 1) % CURVES.len(),
                _ => {}
            },
            _ if self.on_study() && k.code == KeyCode::Char('r') => {
                self.study_runs = !self.study_runs;
            }
            _ if self.on_study() && self.study_runs => {
                let n = self.study_run_order().len();
                match k.code {
                    _ if up || down => Self::move_sel(&mut self.runs_table, n, down),
                    KeyCode::Left | KeyCode::Char('h') => {
                        self.run_sort =
                            (self.run_sort + RUN_COLUMNS.len()) % (RUN_COLUMNS.len() + 1);
                    }
                    KeyCode::Right | KeyCode::Char('l') | KeyCode::Char('s') => {
                        self.run_sort = (self.run_sort + 1) % (RUN_COLUMNS.len() + 1);
                    }
                    KeyCode::Enter => self.study_runs = false,
                    _ => {}
                }
            }
            _ => {
                if up {
                    self.ablation = self.ablation.saturating_sub(1);
                } else if down {
                    let n = self.ws.ablations.len() + self.ws.studies.len();
                    self.ablation = (self.ablation + 1).min(n.saturating_sub(1));
                }
            }
        }
        Action::None
    }

    /// Draws the dashboard.
    pub fn render(&mut self, f: &mut Frame, area: Rect) {
        let [top, body, help] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(5),
            Constraint::Length(1),
        ])
        .areas(area);
        let problems = if self.ws.problems.is_empty() {
            String::new()
        } else {
            format!(
                " {} unreadable files (see bottom of Models) ",
                self.ws.problems.len()
            )
        };
        f.render_widget(
            Tabs::new(
                TABS.iter()
                    .enumerate()
                    .map(|(i, t)| format!("{} {t}", i + 1)),
            )
            .select(self.tab)
            .highlight_style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" mmlab · native vs bolted-on ")
                    .title_bottom(Line::from(problems).style(Style::new().fg(Color::Red))),
            ),
            top,
        );
        let keys = match self.tab {
            0 => " Tab/1-4 tabs  ↑↓ model  ←→ sort column  Enter inspect  q quit",
            1 => " Tab/1-4 tabs  ↑↓ model  ←→ sort column / chart  Enter inspect  q quit",
            2 => " Tab/1-4 tabs  ↑↓ model  Space overlay  m quantity  q quit",
            _ if self.on_study() && self.study_runs => {
                " Tab/1-4 tabs  ↑↓ run  ←→ sort column  r frontier  q quit"
            }
            _ if self.on_study() => " Tab/1-4 tabs  ↑↓ ablation  r runs table  q quit",
            _ => " Tab/1-4 tabs  ↑↓ ablation  q quit",
        };
        f.render_widget(
            Paragraph::new(keys).style(Style::new().fg(Color::Black).bg(Color::Gray)),
            help,
        );
        match self.tab {
            0 => self.render_models(f, body),
            1 => self.render_results(f, body),
            2 => self.render_training(f, body),
            _ => self.render_ablations(f, body),
        }
    }

    fn render_models(&mut self, f: &mut Frame, area: Rect) {
        let wide = area.width >= 120;
        let sorted = |h: &'static str| -> String {
            match MODEL_COLUMNS.get(self.model_sort) {
                Some(&(c, _, asc)) if c == h => format!("{h}{}", if asc { "▲" } else { "▼" }),
                _ => h.to_string(),
            }
        };
        let mut head: Vec<String> = vec!["model".into(), "design".into(), sorted("params")];
        if wide {
            head.push("tokens".into());
        }
        head.extend([
            sorted("FLOPs"),
            sorted("peak LR"),
            "trained on".into(),
            sorted("F1 rnd"),
            sorted("count"),
        ]);
        if wide {
            head.push("weights".into());
        }
        let header = Row::new(head).style(Style::new().add_modifier(Modifier::BOLD));
        let rows: Vec<Row> = self
            .model_order
            .iter()
            .map(|&i| {
                let m = &self.ws.models[i];
                let colour = if m.native() {
                    Color::Cyan
                } else {
                    Color::Magenta
                };
                let (f1, count) = self.model_results.get(i).copied().unwrap_or_default();
                let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
                // Short at 80 columns: the tier and size, without the cell.
                let trained = m.trained_on.as_deref().map_or("-".to_string(), |t| {
                    if wide {
                        t.to_string()
                    } else {
                        t.split(" cell").next().unwrap_or(t).to_string()
                    }
                });
                let mut cells = vec![
                    Cell::from(m.name.clone()).style(Style::new().fg(colour)),
                    Cell::from(m.design.to_string()),
                    Cell::from(format!("{:>7}", m.params)),
                ];
                if wide {
                    cells.push(Cell::from(
                        m.tokens().map_or("-".into(), |t| fmt_count(t as f64)),
                    ));
                }
                cells.extend([
                    Cell::from(m.flops().map_or("-".into(), |f| {
                        format!("{}{}", if m.counted() { "" } else { "≈" }, fmt_count(f))
                    })),
                    Cell::from(m.peak_lr().map_or("-".into(), |l| format!("{l:.1e}"))),
                    Cell::from(trained),
                    Cell::from(num(f1)),
                    Cell::from(num(count)),
                ]);
                if wide {
                    cells.push(Cell::from(
                        m.weights.as_ref().map_or("-".into(), |p| self.ws.rel(p)),
                    ));
                }
                Row::new(cells)
            })
            .collect();
        // 78 columns inside the border at 80: every header fits with its sort mark.
        let mut widths = vec![
            if wide {
                Constraint::Length(20)
            } else {
                Constraint::Fill(1)
            },
            Constraint::Length(8),
            Constraint::Length(7),
        ];
        if wide {
            widths.push(Constraint::Length(8));
        }
        widths.extend([
            Constraint::Length(if wide { 10 } else { 8 }),
            Constraint::Length(8),
            Constraint::Length(if wide { 24 } else { 13 }),
            Constraint::Length(7),
            Constraint::Length(6),
        ]);
        if wide {
            widths.push(Constraint::Fill(1));
        }
        let [table, problems] = Layout::vertical([
            Constraint::Fill(1),
            Constraint::Length(if self.ws.problems.is_empty() {
                0
            } else {
                (self.ws.problems.len() as u16 + 2).min(6)
            }),
        ])
        .areas(area);
        f.render_stateful_widget(
            Table::new(rows, widths)
                .header(header)
                .row_highlight_style(Style::new().bg(Color::Blue))
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(
                            " {} models (cyan native, magenta bolted-on; ≈ FLOPs: 6·N·tokens, not logged) ",
                            self.ws.models.len()
                        ))
                        .title_bottom(format!(
                            " results: {} ",
                            self.headline_tier.as_deref().unwrap_or("none yet")
                        )),
                ),
            table,
            &mut self.models,
        );
        if !self.ws.problems.is_empty() {
            f.render_widget(
                List::new(self.ws.problems.iter().map(|p| ListItem::new(p.as_str())))
                    .style(Style::new().fg(Color::Red))
                    .block(Block::default().borders(Borders::ALL).title(" unreadable ")),
                problems,
            );
        }
    }

    fn render_results(&mut self, f: &mut Frame, area: Rect) {
        // The best value of each column among the rows of each tier: results measured on
        // different scenes are not ranked against each other.
        let mut best: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
        for r in &self.rows {
            best.entry(r.tier.as_str()).or_insert_with(|| {
                COLUMNS
                    .iter()
                    .map(|c| {
                        self.rows
                            .iter()
                            .filter(|o| o.tier == r.tier)
                            .filter_map(|o| o.value(c).map(|v| c.best.score(v)))
                            .max_by(f64::total_cmp)
                    })
                    .collect()
            });
        }
        let wide = area.width >= 100;
        let mut header = vec![Cell::from("model")];
        if wide {
            header.push(Cell::from("design"));
        }
        if wide {
            header.push(Cell::from("tier"));
            header.push(Cell::from("run"));
        }
        // Narrow: one tier for the whole table goes in its title; otherwise each name says its
        // tier. A run of part of the data is always marked.
        let tier_word = |r: &ResultRow| r.tier.split(' ').next().unwrap_or("?").to_string();
        let tier_initial = |r: &ResultRow| tier_word(r).chars().next().unwrap_or('?');
        // Narrow, several tiers: what each initial stands for, in the title.
        let mut legend: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("·{} {}", tier_initial(r), tier_word(r)))
            .collect();
        legend.sort();
        legend.dedup();
        let one_tier = self
            .rows
            .first()
            .map(|r| r.tier.clone())
            .filter(|t| self.rows.iter().all(|r| &r.tier == t));
        for (i, c) in COLUMNS.iter().enumerate() {
            let h = if i == self.column {
                Cell::from(format!("{}▼", c.header))
                    .style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD))
            } else {
                Cell::from(c.header)
            };
            header.push(h);
        }
        let any_shipped = self.rows.iter().any(|r| r.shipped);
        let mut rows = Vec::new();
        let mut last_group = None;
        let mut sel_map = Vec::new();
        for (ri, r) in self.rows.iter().enumerate() {
            if last_group != Some(r.group()) {
                let label = ["── native", "── bolted-on", "── other"][r.group() as usize];
                rows.push(
                    Row::new(vec![Cell::from(label)]).style(Style::new().fg(Color::DarkGray)),
                );
                sel_map.push(None);
                last_group = Some(r.group());
            }
            let colour = match r.group() {
                0 => Color::Cyan,
                1 => Color::Magenta,
                _ => Color::White,
            };
            // Shipped results (`eval-metrics.json`) are marked `†` before the name (the run
            // column says so too when there is room).
            let name = if wide {
                r.model.clone()
            } else {
                let mut n = if r.shipped {
                    format!("†{}", r.model)
                } else {
                    r.model.clone()
                };
                if one_tier.is_none() {
                    // The tier's initial stays visible: the name gives way to it.
                    let room = (area.width as usize).saturating_sub(2 + COLUMNS.len() * 8 + 3);
                    if n.chars().count() > room {
                        n = n.chars().take(room.saturating_sub(1)).collect::<String>() + "…";
                    }
                    n.push_str(&format!(" ·{}", tier_initial(r)));
                }
                if !r.shipped && r.run != "all" {
                    n.push_str(" (part)");
                }
                n
            };
            let mut cells = vec![Cell::from(name).style(Style::new().fg(colour))];
            if wide {
                cells.push(Cell::from(r.design.clone()));
                cells.push(Cell::from(r.tier.clone()));
                cells.push(Cell::from(r.run.clone()));
            }
            for (c, b) in COLUMNS.iter().zip(&best[r.tier.as_str()]) {
                cells.push(match r.value(c) {
                    Some(v) if Some(c.best.score(v)) == *b => Cell::from(format!("{v:.3}*"))
                        .style(Style::new().fg(Color::Green).add_modifier(Modifier::BOLD)),
                    Some(v) => Cell::from(format!("{v:.3}")),
                    None => Cell::from("  -"),
                });
            }
            rows.push(Row::new(cells));
            sel_map.push(Some(ri));
        }
        // Map the selected result row to its display row (group labels are extra rows).
        let shown = self
            .results
            .selected()
            .and_then(|s| sel_map.iter().position(|m| *m == Some(s)));
        let mut state = TableState::default().with_selected(shown);
        let name_w = self
            .rows
            .iter()
            .map(|r| r.model.chars().count())
            .max()
            .unwrap_or(5);
        let mut widths = vec![if wide {
            Constraint::Length(name_w.clamp(10, 40) as u16 + 1)
        } else {
            Constraint::Fill(1)
        }];
        if wide {
            widths.push(Constraint::Length(9));
            let w = |f: fn(&ResultRow) -> usize| self.rows.iter().map(f).max().unwrap_or(4);
            widths.push(Constraint::Length(
                w(|r| r.tier.chars().count()).clamp(4, 28) as u16,
            ));
            widths.push(Constraint::Length(
                w(|r| r.run.chars().count()).clamp(3, 30) as u16,
            ));
        }
        widths.extend(std::iter::repeat_n(Constraint::Length(7), COLUMNS.len()));
        let n = rows.len() as u16;
        let [table, chart] = Layout::vertical([
            Constraint::Length((n + 4).min(area.height / 2 + 2)),
            Constraint::Fill(1),
        ])
        .areas(area);
        f.render_stateful_widget(
            Table::new(rows, widths)
                .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
                .row_highlight_style(Style::new().bg(Color::Blue))
                .block(Block::default().borders(Borders::ALL).title(
                    match (&one_tier, wide, any_shipped) {
                        (Some(t), false, false) => {
                            format!(" newest per model, data and run · tier {t} (* best) ")
                        }
                        (Some(t), false, true) => {
                            format!(" newest per model · tier {t} (* best, † shipped) ")
                        }
                        (None, false, true) => format!(
                            " newest per model and run (* best of its tier, † shipped; {}) ",
                            legend.join(", ")
                        ),
                        (None, false, false) => format!(
                            " newest per model, data and run (* best of its tier; {}) ",
                            legend.join(", ")
                        ),
                        _ => " newest result per model, data and run (* best) ".to_string(),
                    },
                )),
            table,
            &mut state,
        );
        let c = COLUMNS[self.column];
        let bars: Vec<Bar> = self
            .rows
            .iter()
            .filter_map(|r| {
                let v = r.value(&c)?;
                let colour = if r.group() == 0 {
                    Color::Cyan
                } else {
                    Color::Magenta
                };
                Some(
                    Bar::default()
                        .value((v * 1000.0).round().max(0.0) as u64)
                        .text_value(format!("{v:.3}"))
                        .label(Line::from(if one_tier.is_some() {
                            r.model.clone()
                        } else {
                            format!("{} {}", r.model, tier_word(r))
                        }))
                        .style(Style::new().fg(colour)),
                )
            })
            .collect();
        let n = bars.len().max(1) as u16;
        let inner_w = chart.width.saturating_sub(2);
        let bar_w = ((inner_w / n).saturating_sub(1)).clamp(3, 16);
        f.render_widget(
            BarChart::default()
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" {} ", c.title)),
                )
                .data(BarGroup::default().bars(&bars))
                .bar_width(bar_w)
                .bar_gap(1),
            chart,
        );
    }

    fn render_training(&mut self, f: &mut Frame, area: Rect) {
        let [list, chart] =
            Layout::horizontal([Constraint::Length(28), Constraint::Fill(1)]).areas(area);
        let items: Vec<ListItem> = self
            .curves
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let model = &self.ws.models[m];
                let on = self.overlay.contains(&i);
                let colour = if on {
                    PALETTE[i % PALETTE.len()]
                } else {
                    Color::Gray
                };
                let mark = if on {
                    MARKERS[self.marker_of(i)].1
                } else {
                    " "
                };
                let mut style = Style::new().fg(colour);
                if i == self.curve_sel {
                    style = style.add_modifier(Modifier::REVERSED);
                }
                // ≈: FLOPs estimated as 6·N·tokens (the log does not count them).
                let mut lines = vec![Line::from(format!(
                    "[{}] {mark} {}{}",
                    if on { "x" } else { " " },
                    if model.counted() { "" } else { "≈" },
                    model.name
                ))
                .style(style)];
                if let Some(p) = model.diverged_at() {
                    lines.push(
                        Line::from(format!("  ⚠ not finite at step {}", p.step))
                            .style(Style::new().fg(Color::White).bg(Color::Red)),
                    );
                }
                if model.planned_steps.is_some() {
                    let step = model.curve.last().map_or(0, |p| p.step);
                    let plan = model.planned_steps.unwrap_or(0);
                    let rate = model
                        .step_rate()
                        .map_or("…".to_string(), |r| format!("{r:.1}/s"));
                    let eta = model
                        .eta_seconds()
                        .map_or(String::new(), |e| format!("ETA {}", fmt_duration(e)));
                    let live = Style::new().fg(Color::Green);
                    lines.push(Line::from(format!("  live {step}/{plan} · {rate}")).style(live));
                    if !eta.is_empty() {
                        lines.push(Line::from(format!("  {eta}")).style(live));
                    }
                }
                ListItem::new(lines)
            })
            .collect();
        f.render_widget(
            List::new(items).block(Block::default().borders(Borders::ALL).title(" logs ")),
            list,
        );
        let series: Vec<(usize, Vec<(f64, f64)>)> = self
            .overlay
            .iter()
            .filter_map(|&i| {
                let model = &self.ws.models[*self.curves.get(i)?];
                let pts: Vec<(f64, f64)> = model
                    .curve
                    .iter()
                    .filter_map(|p| {
                        let y = match self.curve_kind {
                            0 => p.loss,
                            1 => p.eval_loss,
                            2 => p.presence,
                            _ => p.count,
                        }?;
                        let x = model.flops_of(p);
                        (x > 0.0).then_some((x, y))
                    })
                    .collect();
                Some((i, thin(pts)))
            })
            .collect();
        let losses = self.curve_kind <= 1;
        // Logs that differ more than tenfold in length (or losses that span a decade) are
        // drawn on log axes, so the short runs are not squeezed into one column.
        let range = |v: &mut dyn Iterator<Item = f64>| {
            v.filter(|x| x.is_finite() && *x > 0.0)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                    (a.min(x), b.max(x))
                })
        };
        let (xlo, xhi) = range(&mut series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)));
        // The loss starts near ln(vocab); its first steps would flatten the rest of the curve.
        let (ylo, yhi) = range(&mut series.iter().flat_map(|(_, s)| {
            let skip = if losses { s.len() / 20 } else { 0 };
            s.iter().skip(skip).map(|p| p.1)
        }));
        let log_x = xlo.is_finite() && xhi / xlo > 10.0;
        let log_y = losses && ylo.is_finite() && yhi / ylo > 10.0;
        let tx = |x: f64| if log_x { x.log10() } else { x };
        let ty = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
        let series: Vec<(usize, Vec<(f64, f64)>)> = series
            .into_iter()
            .map(|(i, s)| (i, s.into_iter().map(|(x, y)| (tx(x), ty(y))).collect()))
            .collect();
        let (x0, x1) = if xlo.is_finite() {
            if log_x {
                (xlo.log10().floor(), xhi.log10().ceil())
            } else {
                (0.0, xhi)
            }
        } else {
            (0.0, 1.0)
        };
        let (y0, y1) = match (losses, ylo.is_finite()) {
            (true, true) if log_y => (ylo.log10().floor(), yhi.log10().ceil()),
            (true, true) => (0.0, yhi.max(1e-9)),
            _ => (0.0, 1.0),
        };
        // Each curve's marks: a few of its points, evenly spaced along it.
        let marks: Vec<(usize, Vec<(f64, f64)>)> = series
            .iter()
            .map(|(i, s)| {
                let n = s.len();
                let picked = (1..=MARKS_PER_CURVE)
                    .filter_map(|k| s.get((k * n / (MARKS_PER_CURVE + 1)).min(n.saturating_sub(1))))
                    .copied()
                    .collect();
                (*i, picked)
            })
            .collect();
        let mut datasets: Vec<Dataset> = series
            .iter()
            .map(|(i, s)| {
                Dataset::default()
                    .name(self.ws.models[self.curves[*i]].name.clone())
                    .marker(symbols::Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(Style::new().fg(PALETTE[i % PALETTE.len()]))
                    .data(s)
            })
            .collect();
        datasets.extend(marks.iter().map(|(i, s)| {
            Dataset::default()
                .marker(MARKERS[self.marker_of(*i)].0)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(PALETTE[i % PALETTE.len()]))
                .data(s)
        }));
        let fmt_x = |v: f64| {
            let f = if log_x { 10f64.powf(v) } else { v };
            format!("{f:.0e}")
        };
        let fmt_y = |v: f64| {
            let f = if log_y { 10f64.powf(v) } else { v };
            if log_y {
                format!("{f:.0e}")
            } else {
                format!("{f:.2}")
            }
        };
        let labels = |lo: f64, hi: f64, fmt: &dyn Fn(f64) -> String| {
            vec![
                Span::raw(fmt(lo)),
                Span::raw(fmt((lo + hi) / 2.0)),
                Span::raw(fmt(hi)),
            ]
        };
        let alarm = self
            .overlay
            .iter()
            .filter_map(|&i| self.curves.get(i))
            .find_map(|&m| {
                let model = &self.ws.models[m];
                model.diverged_at().map(|p| (model.name.clone(), p.step))
            });
        // One rule for FLOPs: what the training counted where its log says, else 6·N·tokens
        // (marked ≈ in the list).
        let estimated = self
            .overlay
            .iter()
            .filter_map(|&i| self.curves.get(i))
            .any(|&m| !self.ws.models[m].counted());
        let mut block = Block::default().borders(Borders::ALL).title(format!(
            " {} vs FLOPs ({}){}{} ",
            CURVES[self.curve_kind],
            if estimated { "≈ 6ND" } else { "counted" },
            if log_x { ", log x" } else { "" },
            if log_y { ", log y" } else { "" },
        ));
        if let Some((name, step)) = alarm {
            block = block.title_bottom(
                Line::from(format!(" ⚠ {name}: loss not finite at step {step} "))
                    .style(Style::new().fg(Color::White).bg(Color::Red)),
            );
        }
        f.render_widget(
            Chart::new(datasets)
                .block(block)
                .hidden_legend_constraints((Constraint::Length(0), Constraint::Length(0)))
                .x_axis(
                    Axis::default()
                        .bounds([x0, x1])
                        .labels(labels(x0, x1, &fmt_x)),
                )
                .y_axis(
                    Axis::default()
                        .bounds([y0, y1])
                        .labels(labels(y0, y1, &fmt_y)),
                ),
            chart,
        );
    }

    /// The study shown on the Ablations tab, if the selection is one.
    fn study_index(&self) -> Option<usize> {
        self.ablation
            .checked_sub(self.ws.ablations.len())
            .filter(|&k| k < self.ws.studies.len())
    }

    fn on_study(&self) -> bool {
        self.study_index().is_some()
    }

    /// The shown study's runs in table order: by the sort column, best first, runs without
    /// the value last; column `RUN_COLUMNS.len()` sorts by run id.
    fn study_run_order(&self) -> Vec<usize> {
        let Some(st) = self.study_index().map(|k| &self.ws.studies[k]) else {
            return Vec::new();
        };
        let key = |r: &super::workspace::StudyRun| r.settings.key.id();
        let mut order: Vec<usize> = (0..st.runs.len()).collect();
        match RUN_COLUMNS.get(self.run_sort) {
            None => order.sort_by_key(|&i| key(&st.runs[i])),
            Some(&(_, value, higher_better)) => order.sort_by(|&a, &b| {
                let (x, y) = (value(&st.runs[a]), value(&st.runs[b]));
                match (x, y) {
                    (Some(x), Some(y)) if higher_better => y.total_cmp(&x),
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                }
                .then_with(|| key(&st.runs[a]).cmp(&key(&st.runs[b])))
            }),
        }
        order
    }

    /// The hparams view of a study: every finished run, its settings beside its results.
    fn render_study_runs(&mut self, f: &mut Frame, area: Rect, k: usize) {
        let order = self.study_run_order();
        let st = &self.ws.studies[k];
        let mark = |c: usize, name: &str| {
            if c == self.run_sort {
                format!("{name}▼")
            } else {
                name.to_string()
            }
        };
        let mut header = vec![Cell::from(mark(RUN_COLUMNS.len(), "run"))];
        header.extend(
            RUN_COLUMNS
                .iter()
                .enumerate()
                .map(|(c, (n, _, _))| Cell::from(mark(c, n))),
        );
        let rows: Vec<Row> = order
            .iter()
            .map(|&i| {
                let r = &st.runs[i];
                let k = &r.settings.key;
                // Budget and LR have their own columns.
                // Short enough for 80 columns: `al.` aligned tier, `free`, `swp` the LR sweep.
                let place = match k.phase {
                    crate::ablate::study::Phase::Sweep => "swp",
                    crate::ablate::study::Phase::Grid if st.spec.tiers.first() == Some(&k.tier) => {
                        "al."
                    }
                    crate::ablate::study::Phase::Grid => "free",
                };
                let mut cells = vec![Cell::from(format!("{place} {} d{}", k.design, k.width))];
                for (c, (_, value, _)) in RUN_COLUMNS.iter().enumerate() {
                    cells.push(Cell::from(match value(r) {
                        None => "-".to_string(),
                        Some(v) => match c {
                            0 => fmt_count(v),
                            1 | 2 => format!("{v:.1e}"),
                            7 => format!("{v:.0}"),
                            _ => format!("{v:.3}"),
                        },
                    }));
                }
                let style = if r.settings.key.design == "native" {
                    Style::new().fg(Color::Cyan)
                } else {
                    Style::new().fg(Color::Magenta)
                };
                Row::new(cells).style(style)
            })
            .collect();
        let widths = [
            Constraint::Fill(1),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
        ];
        f.render_stateful_widget(
            Table::new(rows, widths)
                .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
                .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
                .block(Block::default().borders(Borders::ALL).title(format!(
                    " {} · {} runs · loss: held-out, validation seed · POPE acc., F1, count: \
                     test seed · al. aligned, swp LR sweep ",
                    st.spec.name,
                    st.runs.len()
                ))),
            area,
            &mut self.runs_table,
        );
    }

    fn render_ablations(&mut self, f: &mut Frame, area: Rect) {
        if let Some(k) = self.study_index() {
            return if self.study_runs {
                self.render_study_runs(f, area, k)
            } else {
                self.render_study(f, area, k)
            };
        }
        let Some(ab) = self.ws.ablations.get(self.ablation) else {
            f.render_widget(
                Paragraph::new(" no ablation results found (run `mmlab ablate FILE.toml`)")
                    .block(Block::default().borders(Borders::ALL)),
                area,
            );
            return;
        };
        let r = &ab.results;
        let wide = area.width >= 120;
        // At 80 columns show the POPE F1 metrics, counting and audio; wide screens show all.
        let shown: Vec<(&str, &str)> = METRICS
            .iter()
            .copied()
            .filter(|(k, _)| wide || !k.ends_with("_accuracy") || k.contains("count"))
            .collect();
        let mut header = vec![Cell::from("arm"), Cell::from("params")];
        header.extend(shown.iter().map(|(k, _)| Cell::from(short(k))));
        let rows: Vec<Row> = r
            .arms
            .iter()
            .map(|a| {
                let native = crate::model::presets::preset(&a.preset)
                    .is_some_and(|p| p.config.design == crate::model::Design::Native);
                let mut cells = vec![
                    Cell::from(a.name.clone()).style(Style::new().fg(if native {
                        Color::Cyan
                    } else {
                        Color::Magenta
                    })),
                    Cell::from(a.parameters.to_string()),
                ];
                for (k, _) in &shown {
                    cells.push(Cell::from(a.summary.get(*k).map_or("-".into(), |s| {
                        format!("{:.2}±{:.2}", s.mean, s.half_width)
                    })));
                }
                Row::new(cells)
            })
            .collect();
        let mut widths = vec![Constraint::Fill(1), Constraint::Length(7)];
        widths.extend(std::iter::repeat_n(Constraint::Length(9), shown.len()));
        let [table, budget] = Layout::vertical([
            Constraint::Length(r.arms.len() as u16 + 4),
            Constraint::Fill(1),
        ])
        .areas(area);
        let seeds = r.spec.seeds.len();
        f.render_widget(
            Table::new(rows, widths)
                .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
                .block(Block::default().borders(Borders::ALL).title(format!(
                    " {} ({}/{}) · mean ± 95% interval over {seeds} seeds ",
                    r.spec.name,
                    self.ablation + 1,
                    self.ws.ablations.len() + self.ws.studies.len()
                ))),
            table,
        );
        let mut lines = vec![Line::from(format!(
            " budget {} training FLOPs per arm · {}",
            fmt_count(r.spec.train_flops),
            self.ws.rel(&ab.path)
        ))];
        for a in &r.arms {
            let stages: Vec<String> = a
                .runs
                .first()
                .map(|run| {
                    run.stages
                        .iter()
                        .map(|s| format!("{} {}×{}", s.kind, s.steps, fmt_count(s.flops_per_step)))
                        .collect()
                })
                .unwrap_or_default();
            lines.push(Line::from(format!(
                " {:<10} spent {} ({})",
                a.name,
                fmt_count(a.flops_spent),
                stages.join(" + ")
            )));
        }
        f.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" budgets actually spent (seed 0 stages) "),
            ),
            budget,
        );
    }
}

impl Dashboard {
    /// A scaling study: its frontier (held-out loss against FLOPs, log–log, per design and
    /// tier) and the compute each design needs to reach the targets, with native / design.
    fn render_study(&mut self, f: &mut Frame, area: Rect, k: usize) {
        use crate::ablate::study::report::TARGETS;
        let st = &self.ws.studies[k];
        let a = &st.analysis;
        let n_rows = a.designs.len() as u16;
        let [chart_area, table_area] =
            Layout::vertical([Constraint::Min(8), Constraint::Length(n_rows + 3)]).areas(area);
        const COLOURS: [Color; 6] = [
            Color::Cyan,
            Color::Magenta,
            Color::Yellow,
            Color::Green,
            Color::Red,
            Color::Blue,
        ];
        let designs: Vec<&str> = st
            .spec
            .designs
            .iter()
            .filter(|d| !d.audio_encoder)
            .map(|d| d.name.as_str())
            .collect();
        let tiers = &st.spec.tiers;
        type Series = (String, Color, Vec<(f64, f64)>);
        let series: Vec<Series> = a
            .designs
            .iter()
            .filter(|d| designs.contains(&d.design.as_str()))
            .map(|d| {
                let i = designs.iter().position(|x| *x == d.design).unwrap_or(0);
                let t = tiers.iter().position(|x| *x == d.tier).unwrap_or(0);
                let tier = if t == 0 { "" } else { " (free)" };
                let pts = d
                    .frontier
                    .iter()
                    .filter(|p| p.loss > 0.0)
                    .map(|p| (p.budget.log10(), p.loss.log10()))
                    .collect();
                (
                    format!("{}{tier}", d.design),
                    COLOURS[i % COLOURS.len()],
                    pts,
                )
            })
            .collect();
        let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
        let (x0, x1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (x0, x1) = if all.is_empty() {
            (0.0, 1.0)
        } else {
            (x0 - 0.1, x1 + 0.1)
        };
        let (y0, y1) = if all.is_empty() {
            (0.0, 1.0)
        } else {
            (y0 - 0.02, y1 + 0.02)
        };
        let datasets: Vec<Dataset> = series
            .iter()
            .enumerate()
            .map(|(i, (name, c, pts))| {
                // The second tier's lines are dimmed.
                let style = Style::new().fg(*c);
                Dataset::default()
                    .name(name.clone())
                    .marker(symbols::Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(if i < designs.len() {
                        style
                    } else {
                        style.add_modifier(Modifier::DIM)
                    })
                    .data(pts)
            })
            .collect();
        let pow = |v: f64| format!("1e{v:.1}");
        let loss = |v: f64| format!("{:.3}", 10f64.powf(v));
        f.render_widget(
            Chart::new(datasets)
                .block(Block::default().borders(Borders::ALL).title(format!(
                    " {} ({}/{}) · held-out loss vs FLOPs, log–log frontier ",
                    st.spec.name,
                    self.ablation + 1,
                    self.ws.ablations.len() + self.ws.studies.len()
                )))
                .x_axis(
                    Axis::default()
                        .title("FLOPs")
                        .bounds([x0, x1])
                        .labels([pow(x0), pow(x1)]),
                )
                .y_axis(
                    Axis::default()
                        .bounds([y0, y1])
                        .labels([loss(y0), loss(y1)]),
                )
                // Falling loss curves leave the lower left empty.
                .legend_position(Some(ratatui::widgets::LegendPosition::BottomLeft))
                .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(3, 4))),
            chart_area,
        );
        let short_c = |t: Option<&crate::ablate::study::report::TargetFit>| match t {
            None => "-".to_string(),
            Some(t) => match t.kind.as_str() {
                "at" => format!("{:.1e}", t.flops.value),
                "at_most" => format!("<={:.0e}", t.flops.value),
                _ => format!(">{:.0e}", t.flops.value),
            },
        };
        let mut header = vec![Cell::from("design"), Cell::from("tier")];
        for (_, t, l) in TARGETS {
            header.push(Cell::from(if l.starts_with("count") {
                format!("cnt {t}")
            } else {
                format!("POPE {t}")
            }));
        }
        header.push(Cell::from("nat/des 0.8"));
        header.push(Cell::from("alpha"));
        let rows: Vec<Row> =
            a.designs
                .iter()
                .map(|d| {
                    let t = if tiers.first() == Some(&d.tier) {
                        "aligned"
                    } else {
                        "free"
                    };
                    let mut cells = vec![Cell::from(d.design.clone()), Cell::from(t)];
                    for (m, tv, _) in TARGETS {
                        cells.push(Cell::from(short_c(
                            d.targets.iter().find(|x| x.metric == m && x.target == tv),
                        )));
                    }
                    let r = a.ratios.iter().find(|r| {
                        r.tier == d.tier && r.design == d.design && r.target == TARGETS[0].2
                    });
                    cells.push(match r.and_then(|r| r.ratio.map(|x| (x, r.differs))) {
                        Some((x, differs)) => {
                            let c = Cell::from(format!("{:.2}", x.value));
                            if differs {
                                c.style(Style::new().add_modifier(Modifier::BOLD))
                            } else {
                                c
                            }
                        }
                        None => Cell::from("-"),
                    });
                    cells.push(Cell::from(
                        d.alpha_pure
                            .map_or("-".into(), |x| format!("{:.3}", x.value)),
                    ));
                    Row::new(cells)
                })
                .collect();
        let widths = [
            Constraint::Fill(1),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(6),
        ];
        f.render_widget(
            Table::new(rows, widths)
                .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
                .block(
                    Block::default().borders(Borders::ALL).title(
                        " FLOPs to reach the target (test seed) · bold: interval excludes 1 ",
                    ),
                ),
            table_area,
        );
    }
}

/// Column header of an ablation metric.
fn short(key: &str) -> &str {
    match key {
        "pope_random_f1" => "F1 rnd",
        "pope_popular_f1" => "F1 pop",
        "pope_adversarial_f1" => "F1 adv",
        "pope_random_accuracy" => "acc rnd",
        "pope_popular_accuracy" => "acc pop",
        "pope_adversarial_accuracy" => "acc adv",
        "count_accuracy" => "count",
        "audio_pope_f1" => "aPOPE F1",
        "audio_count_accuracy" => "aCount",
        other => other,
    }
}
