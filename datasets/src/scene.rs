//! Visual scenes: configuration, difficulty tiers and the seeded generator.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::render::coverage_mask;
use crate::rng::{purpose, stream_rng};
use crate::sampling::CategoryPrior;
use crate::vocab::{distinct, tally, Colour, Shape, Size};

/// Version of the scene and sound generators; bumped whenever output bytes change.
pub const GENERATOR_VERSION: &str = "mmlab-datasets/1";

/// How objects are laid out: the difficulty tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A grid of square `cell`-px cells; each object centred (small jitter) in its own cell, no overlap.
    Aligned,
    /// Anywhere in the image, with overlap limited to `max_overlap` of the smaller box.
    Free,
    /// Deliberate overlaps; annotations record each object's visible fraction.
    Occlusion,
}

impl Tier {
    /// The tier's name ("aligned").
    pub fn name(self) -> &'static str {
        match self {
            Tier::Aligned => "aligned",
            Tier::Free => "free",
            Tier::Occlusion => "occlusion",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which colour–shape combinations a generator may produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Composition {
    /// Every combination.
    Any,
    /// Never a held-out pair (training and in-distribution evaluation).
    Seen,
    /// Every scene holds at least one held-out pair (compositional evaluation).
    Unseen,
}

/// Background painting style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundStyle {
    /// One flat colour.
    Plain,
    /// A linear gradient between two related colours.
    Gradient,
    /// A flat colour with light per-pixel grey noise.
    Noise,
}

impl BackgroundStyle {
    /// All styles.
    pub const ALL: [BackgroundStyle; 3] = [
        BackgroundStyle::Plain,
        BackgroundStyle::Gradient,
        BackgroundStyle::Noise,
    ];
}

/// Background base colours: far enough from every object colour that no object disappears.
pub const BACKGROUND_COLOURS: [[u8; 3]; 5] = [
    [18, 18, 22],    // black
    [52, 54, 62],    // charcoal
    [118, 118, 118], // grey
    [242, 242, 242], // white
    [238, 230, 208], // beige
];

/// Gradient end-point pairs (indices into [`BACKGROUND_COLOURS`]).
pub const GRADIENT_PAIRS: [(usize, usize); 3] = [(0, 1), (1, 2), (3, 4)];

/// Largest per-channel offset of noise backgrounds.
pub const NOISE_AMPLITUDE: u8 = 10;

/// The painted background of one scene.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Background {
    /// Painting style.
    pub style: BackgroundStyle,
    /// Base colour (gradient start).
    pub from: [u8; 3],
    /// Gradient end colour (equal to `from` for other styles).
    pub to: [u8; 3],
    /// Gradient runs top-to-bottom when true, left-to-right otherwise.
    pub vertical: bool,
    /// Seed of the noise pattern (0 for other styles).
    pub noise_seed: u64,
}

/// Configuration of the scene generator (serialisable; stored in manifests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SceneConfig {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Layout difficulty tier.
    pub tier: Tier,
    /// Grid cell side in pixels (aligned tier); also the reference for object sizes in every tier.
    pub cell: u32,
    /// Fewest objects in a scene.
    pub min_objects: usize,
    /// Most objects in a scene (capped by the grid capacity in the aligned tier).
    pub max_objects: usize,
    /// Largest count the balanced count probe targets (counts 0..=max_count are equally likely).
    pub max_count: usize,
    /// Largest centre jitter in pixels inside a cell (aligned tier); capped so that
    /// every object keeps a 1-px margin inside its cell.
    pub jitter: u32,
    /// Size classes to draw from.
    pub sizes: Vec<Size>,
    /// Zipf exponent of category frequencies (0 = uniform).
    pub skew: f64,
    /// Probability that an object comes from the scene's co-occurrence theme.
    pub theme_prob: f64,
    /// Background styles to draw from.
    pub backgrounds: Vec<BackgroundStyle>,
    /// Free tier: most overlap between two boxes, as a fraction of the smaller box.
    pub max_overlap: f32,
    /// Occlusion tier: probability that an object is placed over an earlier one.
    pub occlusion_prob: f32,
    /// Occlusion tier: smallest visible fraction any object may keep.
    pub min_visible: f32,
    /// Colour–shape pairs held out of training.
    pub held_out: Vec<(Colour, Shape)>,
    /// Which combinations this generator produces.
    pub composition: Composition,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig::small()
    }
}

/// The default held-out colour–shape pairs: one per colour, each shape keeps seven colours.
pub fn default_held_out() -> Vec<(Colour, Shape)> {
    vec![
        (Colour::Red, Shape::Ring),
        (Colour::Orange, Shape::Circle),
        (Colour::Yellow, Shape::Square),
        (Colour::Green, Shape::Star),
        (Colour::Cyan, Shape::Heart),
        (Colour::Blue, Shape::Triangle),
        (Colour::Purple, Shape::Plus),
        (Colour::Pink, Shape::Diamond),
    ]
}

impl SceneConfig {
    /// 48×48, aligned, 12-px cells (4×4 grid), 1–6 objects: the default for small models.
    pub fn small() -> Self {
        SceneConfig {
            width: 48,
            height: 48,
            tier: Tier::Aligned,
            cell: 12,
            min_objects: 1,
            max_objects: 6,
            max_count: 6,
            jitter: 1,
            sizes: Size::ALL.to_vec(),
            skew: 0.8,
            theme_prob: 0.7,
            backgrounds: BackgroundStyle::ALL.to_vec(),
            max_overlap: 0.1,
            occlusion_prob: 0.6,
            min_visible: 0.4,
            held_out: default_held_out(),
            composition: Composition::Seen,
        }
    }

    /// 96×96, aligned, 16-px cells (6×6 grid), 1–8 objects.
    pub fn medium() -> Self {
        SceneConfig {
            width: 96,
            height: 96,
            cell: 16,
            max_objects: 8,
            max_count: 6,
            ..SceneConfig::small()
        }
    }

    /// 48×48 free placement with the small preset's object sizes.
    pub fn free_small() -> Self {
        SceneConfig {
            tier: Tier::Free,
            ..SceneConfig::small()
        }
    }

    /// 96×96 free placement.
    pub fn free_medium() -> Self {
        SceneConfig {
            tier: Tier::Free,
            ..SceneConfig::medium()
        }
    }

    /// 96×96 with deliberate occlusion.
    pub fn occlusion_medium() -> Self {
        SceneConfig {
            tier: Tier::Occlusion,
            ..SceneConfig::medium()
        }
    }

    /// Named presets: `small`, `medium`, `free-small`, `free-medium`, `occlusion-medium`.
    pub fn preset(name: &str) -> Option<SceneConfig> {
        match name {
            "small" => Some(SceneConfig::small()),
            "medium" => Some(SceneConfig::medium()),
            "free-small" => Some(SceneConfig::free_small()),
            "free-medium" => Some(SceneConfig::free_medium()),
            "occlusion-medium" => Some(SceneConfig::occlusion_medium()),
            _ => None,
        }
    }

    /// Names accepted by [`SceneConfig::preset`].
    pub const PRESETS: [&'static str; 5] = [
        "small",
        "medium",
        "free-small",
        "free-medium",
        "occlusion-medium",
    ];

    /// Grid columns and rows of the aligned tier.
    pub fn grid(&self) -> (u32, u32) {
        let cell = self.cell.max(1);
        (self.width / cell, self.height / cell)
    }

    /// Most objects one scene can hold under this config.
    pub fn capacity(&self) -> usize {
        match self.tier {
            Tier::Aligned => {
                let (c, r) = self.grid();
                (c * r) as usize
            }
            _ => self.max_objects,
        }
    }

    /// Largest object count actually used (max_objects capped by capacity).
    pub fn effective_max_objects(&self) -> usize {
        self.max_objects.min(self.capacity())
    }

    /// Largest count the count probe targets.
    pub fn effective_max_count(&self) -> usize {
        self.max_count.min(self.effective_max_objects())
    }

    /// Checks every field; the error names the field and what was wrong.
    pub fn validate(&self) -> Result<()> {
        if self.width < 8 || self.height < 8 || self.width > 4096 || self.height > 4096 {
            return Err(DatasetError::config(
                "width/height",
                format!(
                    "image size {}x{} must be within 8..=4096 on both sides",
                    self.width, self.height
                ),
            ));
        }
        if self.cell < 6 || self.cell > self.width.min(self.height) {
            return Err(DatasetError::config(
                "cell",
                format!(
                    "cell {} must be at least 6 and fit the image ({}x{})",
                    self.cell, self.width, self.height
                ),
            ));
        }
        if self.min_objects > self.max_objects {
            return Err(DatasetError::config(
                "min_objects",
                format!(
                    "min_objects {} exceeds max_objects {}",
                    self.min_objects, self.max_objects
                ),
            ));
        }
        if self.max_objects == 0 {
            return Err(DatasetError::config("max_objects", "must be at least 1"));
        }
        if self.min_objects > self.capacity() {
            return Err(DatasetError::config(
                "min_objects",
                format!(
                    "min_objects {} exceeds the {} cells of the aligned grid",
                    self.min_objects,
                    self.capacity()
                ),
            ));
        }
        if self.sizes.is_empty() {
            return Err(DatasetError::config("sizes", "needs at least one size"));
        }
        if self.backgrounds.is_empty() {
            return Err(DatasetError::config(
                "backgrounds",
                "needs at least one background style",
            ));
        }
        if !(self.skew.is_finite() && self.skew >= 0.0) {
            return Err(DatasetError::config("skew", "must be a finite number >= 0"));
        }
        for (name, v) in [
            ("theme_prob", self.theme_prob as f32),
            ("max_overlap", self.max_overlap),
            ("occlusion_prob", self.occlusion_prob),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(DatasetError::config(
                    name,
                    format!("{v} is not within 0..=1"),
                ));
            }
        }
        if !(self.min_visible.is_finite() && self.min_visible > 0.0 && self.min_visible <= 1.0) {
            return Err(DatasetError::config(
                "min_visible",
                format!("{} is not within (0, 1]", self.min_visible),
            ));
        }
        for shape in Shape::ALL {
            if Colour::ALL
                .iter()
                .all(|c| self.held_out.contains(&(*c, shape)))
            {
                return Err(DatasetError::config(
                    "held_out",
                    format!("every colour of {shape} is held out"),
                ));
            }
        }
        if self.composition == Composition::Unseen {
            if self.held_out.is_empty() {
                return Err(DatasetError::config(
                    "held_out",
                    "composition `unseen` needs at least one held-out pair",
                ));
            }
            if self.min_objects == 0 {
                return Err(DatasetError::config(
                    "min_objects",
                    "composition `unseen` needs at least one object per scene",
                ));
            }
        }
        Ok(())
    }

    fn prior(&self) -> CategoryPrior {
        CategoryPrior::of::<Shape>(self.skew, self.theme_prob)
    }

    /// Expected share of each shape among generated objects (ignoring themes and probes).
    pub fn shape_weights(&self) -> Vec<(Shape, f64)> {
        let p = self.prior();
        let total: f64 = p.weights.iter().sum();
        Shape::ALL
            .iter()
            .map(|s| (*s, p.weights[s.index()] / total))
            .collect()
    }
}

/// One annotated object of a scene.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    /// The object category.
    pub category: Shape,
    /// The fill colour.
    pub colour: Colour,
    /// The size class.
    pub size: Size,
    /// Centre of the bounding box, in pixels (x, y).
    pub centre: [f32; 2],
    /// Side of the (square) bounding box in pixels.
    pub extent: f32,
    /// Bounding box `[x0, y0, x1, y1]` in pixels.
    pub bbox: [f32; 4],
    /// A point that lies on the painted shape (the centre for filled shapes), in pixels.
    pub anchor: [f32; 2],
    /// Grid cell `[column, row]` in the aligned tier.
    pub cell: Option<[u32; 2]>,
    /// Fraction of the shape's painted area not covered by later objects (1 = fully visible).
    pub visible: f32,
}

impl SceneObject {
    fn new(category: Shape, colour: Colour, size: Size, centre: [f32; 2], extent: f32) -> Self {
        let h = extent / 2.0;
        let a = anchor_unit(category);
        SceneObject {
            category,
            colour,
            size,
            centre,
            extent,
            bbox: [centre[0] - h, centre[1] - h, centre[0] + h, centre[1] + h],
            anchor: [centre[0] + a[0] * h, centre[1] + a[1] * h],
            cell: None,
            visible: 1.0,
        }
    }

    /// Bounding box in COCO form `[x, y, width, height]`.
    pub fn bbox_xywh(&self) -> [f32; 4] {
        [
            self.bbox[0],
            self.bbox[1],
            self.bbox[2] - self.bbox[0],
            self.bbox[3] - self.bbox[1],
        ]
    }
}

/// A point inside each shape, in unit coordinates (the box is [-1, 1]²).
pub(crate) fn anchor_unit(shape: Shape) -> [f32; 2] {
    match shape {
        Shape::Ring => [0.0, -0.75],
        Shape::Frame => [0.0, -0.75],
        Shape::Triangle => [0.0, 0.3],
        Shape::Heart => [0.0, 0.15],
        Shape::Crescent => [-0.7, 0.0],
        Shape::Arrow => [-0.35, 0.0],
        _ => [0.0, 0.0],
    }
}

/// A generated scene with its exact annotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Layout tier the scene was generated under.
    pub tier: Tier,
    /// The background.
    pub background: Background,
    /// Objects in drawing order (later ones paint over earlier ones).
    pub objects: Vec<SceneObject>,
    /// The category whose count this scene was balanced around (may be absent: count 0).
    pub probe: Shape,
    /// Generator seed.
    pub seed: u64,
    /// Index within the seed's stream.
    pub index: u64,
}

impl Scene {
    /// How many objects of `shape` the scene holds.
    pub fn count(&self, shape: Shape) -> usize {
        self.objects.iter().filter(|o| o.category == shape).count()
    }

    /// Whether at least one object of `shape` is present.
    pub fn contains(&self, shape: Shape) -> bool {
        self.objects.iter().any(|o| o.category == shape)
    }

    /// Distinct categories in order of first appearance.
    pub fn categories(&self) -> Vec<Shape> {
        distinct(self.objects.iter().map(|o| o.category))
    }

    /// Count of every shape in the vocabulary (zero included), in [`Shape::ALL`] order.
    pub fn counts(&self) -> Vec<(Shape, usize)> {
        tally(|s| self.count(s))
    }
}

/// Generates scene `index` of the stream `seed`; deterministic per (config, seed, index).
///
/// The count probe is uniform over `0..=effective_max_count()`, so counting
/// questions about [`Scene::probe`] have a balanced answer spread.
pub fn generate_scene(cfg: &SceneConfig, seed: u64, index: u64) -> Scene {
    let mut rng = stream_rng(seed, index, purpose::SCENE);
    let kmax = cfg.effective_max_count();
    let k = rng.random_range(0..=kmax);
    generate_with(cfg, seed, index, &mut rng, k)
}

/// Like [`generate_scene`] but the probe category appears exactly `count` times
/// (clamped to what the config allows).
pub fn generate_scene_with_count(cfg: &SceneConfig, seed: u64, index: u64, count: usize) -> Scene {
    let mut rng = stream_rng(seed, index, purpose::SCENE);
    let _ = rng.random_range(0..=cfg.effective_max_count());
    generate_with(
        cfg,
        seed,
        index,
        &mut rng,
        count.min(cfg.effective_max_count()),
    )
}

fn generate_with<R: Rng>(cfg: &SceneConfig, seed: u64, index: u64, rng: &mut R, k: usize) -> Scene {
    let max_n = cfg.effective_max_objects();
    let min_n = cfg.min_objects.min(max_n).max(k);
    let n = if max_n >= min_n {
        rng.random_range(min_n..=max_n)
    } else {
        max_n
    };
    let prior = cfg.prior();
    let (probe, cats) = prior.draw_item(rng, n, k);
    let probe = Shape::ALL[probe.min(Shape::ALL.len() - 1)];
    let sizes = if cfg.sizes.is_empty() {
        vec![Size::Small]
    } else {
        cfg.sizes.clone()
    };
    let specs: Vec<(Shape, Colour, Size)> = cats
        .iter()
        .map(|&c| {
            let shape = Shape::ALL[c.min(Shape::ALL.len() - 1)];
            let colour = draw_colour(cfg, rng, shape);
            let size = sizes[rng.random_range(0..sizes.len())];
            (shape, colour, size)
        })
        .collect();
    let mut objects = match cfg.tier {
        Tier::Aligned => layout_aligned(cfg, rng, &specs),
        Tier::Free => layout_free(cfg, rng, &specs, false),
        Tier::Occlusion => layout_free(cfg, rng, &specs, true),
    };
    if cfg.composition == Composition::Unseen && !cfg.held_out.is_empty() {
        force_held_out(cfg, rng, &mut objects);
    }
    compute_visibility(&mut objects);
    let background = draw_background(cfg, rng);
    Scene {
        width: cfg.width,
        height: cfg.height,
        tier: cfg.tier,
        background,
        objects,
        probe,
        seed,
        index,
    }
}

fn draw_colour<R: Rng>(cfg: &SceneConfig, rng: &mut R, shape: Shape) -> Colour {
    let allowed: Vec<Colour> = Colour::ALL
        .iter()
        .copied()
        .filter(|c| cfg.composition == Composition::Any || !cfg.held_out.contains(&(*c, shape)))
        .collect();
    if allowed.is_empty() {
        Colour::ALL[rng.random_range(0..Colour::ALL.len())]
    } else {
        allowed[rng.random_range(0..allowed.len())]
    }
}

fn extent_of(cfg: &SceneConfig, size: Size) -> f32 {
    (size.scale() * cfg.cell as f32).round().max(3.0)
}

fn layout_aligned<R: Rng>(
    cfg: &SceneConfig,
    rng: &mut R,
    specs: &[(Shape, Colour, Size)],
) -> Vec<SceneObject> {
    let (cols, rows) = cfg.grid();
    let mut cells: Vec<u32> = (0..cols * rows).collect();
    let n = specs.len().min(cells.len());
    for i in 0..n {
        let j = rng.random_range(i..cells.len());
        cells.swap(i, j);
    }
    let cell = cfg.cell as f32;
    specs
        .iter()
        .take(n)
        .zip(cells.iter())
        .map(|(&(shape, colour, size), &c)| {
            let (col, row) = (c % cols, c / cols);
            let e = extent_of(cfg, size);
            // Keep a 1-px margin inside the cell so neighbours never touch.
            let margin = ((cell - e) / 2.0).floor() as i32 - 1;
            let j = margin.clamp(0, cfg.jitter as i32);
            let dx = if j > 0 { rng.random_range(-j..=j) } else { 0 };
            let dy = if j > 0 { rng.random_range(-j..=j) } else { 0 };
            let centre = [
                col as f32 * cell + (cell / 2.0).floor() + dx as f32,
                row as f32 * cell + (cell / 2.0).floor() + dy as f32,
            ];
            let mut o = SceneObject::new(shape, colour, size, centre, e);
            o.cell = Some([col, row]);
            o
        })
        .collect()
}

fn inter_area(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

fn box_area(a: &[f32; 4]) -> f32 {
    (a[2] - a[0]) * (a[3] - a[1])
}

fn layout_free<R: Rng>(
    cfg: &SceneConfig,
    rng: &mut R,
    specs: &[(Shape, Colour, Size)],
    occlude: bool,
) -> Vec<SceneObject> {
    let (w, h) = (cfg.width as f32, cfg.height as f32);
    let mut placed: Vec<SceneObject> = Vec::with_capacity(specs.len());
    for &(shape, colour, size) in specs {
        let e = extent_of(cfg, size).min(w.min(h));
        let half = e / 2.0;
        let mut done = false;
        if occlude && !placed.is_empty() && rng.random::<f32>() < cfg.occlusion_prob {
            for _ in 0..16 {
                let t = &placed[rng.random_range(0..placed.len())];
                let angle = rng.random::<f32>() * std::f32::consts::TAU;
                let dist = rng.random_range(0.45f32..0.8) * (e + t.extent) / 2.0;
                let cx = (t.centre[0] + angle.cos() * dist).round();
                let cy = (t.centre[1] + angle.sin() * dist).round();
                if cx - half < 0.0 || cy - half < 0.0 || cx + half > w || cy + half > h {
                    continue;
                }
                let cand = SceneObject::new(shape, colour, size, [cx, cy], e);
                if occlusion_ok(&placed, &cand, cfg.min_visible) {
                    placed.push(cand);
                    done = true;
                    break;
                }
            }
        }
        if !done {
            for _ in 0..64 {
                let cx = rng.random_range(half..=(w - half).max(half)).round();
                let cy = rng.random_range(half..=(h - half).max(half)).round();
                let cand = SceneObject::new(shape, colour, size, [cx, cy], e);
                let limit = if occlude { 0.0 } else { cfg.max_overlap };
                let ok = placed.iter().all(|p| {
                    inter_area(&p.bbox, &cand.bbox)
                        <= limit * box_area(&p.bbox).min(box_area(&cand.bbox))
                });
                if ok && (!occlude || occlusion_ok(&placed, &cand, cfg.min_visible)) {
                    placed.push(cand);
                    break;
                }
            }
        }
    }
    placed
}

/// Whether putting `cand` on top keeps every earlier object at least `min_visible` visible.
fn occlusion_ok(placed: &[SceneObject], cand: &SceneObject, min_visible: f32) -> bool {
    let mut all: Vec<SceneObject> = placed.to_vec();
    all.push(cand.clone());
    let last = all.len() - 1;
    for i in 0..last {
        if inter_area(&all[i].bbox, &cand.bbox) > 0.0 && visible_fraction(&all, i) < min_visible {
            return false;
        }
    }
    true
}

fn force_held_out<R: Rng>(cfg: &SceneConfig, rng: &mut R, objects: &mut [SceneObject]) {
    if objects.is_empty() {
        return;
    }
    let candidates: Vec<usize> = (0..objects.len())
        .filter(|&i| cfg.held_out.iter().any(|(_, s)| *s == objects[i].category))
        .collect();
    if candidates.is_empty() {
        let i = rng.random_range(0..objects.len());
        let (colour, shape) = cfg.held_out[rng.random_range(0..cfg.held_out.len())];
        let o = &objects[i];
        let mut n = SceneObject::new(shape, colour, o.size, o.centre, o.extent);
        n.cell = o.cell;
        objects[i] = n;
    } else {
        let i = candidates[rng.random_range(0..candidates.len())];
        let shape = objects[i].category;
        let colours: Vec<Colour> = cfg
            .held_out
            .iter()
            .filter(|(_, s)| *s == shape)
            .map(|(c, _)| *c)
            .collect();
        objects[i].colour = colours[rng.random_range(0..colours.len())];
    }
}

/// Visible fraction of object `i` given every later object in `objects`.
fn visible_fraction(objects: &[SceneObject], i: usize) -> f32 {
    let o = &objects[i];
    let later: Vec<&SceneObject> = objects[i + 1..]
        .iter()
        .filter(|p| inter_area(&p.bbox, &o.bbox) > 0.0)
        .collect();
    if later.is_empty() {
        return 1.0;
    }
    let x0 = o.bbox[0].floor();
    let y0 = o.bbox[1].floor();
    let w = (o.bbox[2].ceil() - x0).max(1.0) as u32;
    let h = (o.bbox[3].ceil() - y0).max(1.0) as u32;
    let Some(own) = coverage_mask(o, x0, y0, w, h) else {
        return 1.0;
    };
    let covers: Vec<Vec<u8>> = later
        .iter()
        .filter_map(|p| coverage_mask(p, x0, y0, w, h))
        .collect();
    let mut total = 0.0f32;
    let mut vis = 0.0f32;
    for (k, &m) in own.iter().enumerate() {
        if m == 0 {
            continue;
        }
        let m = m as f32 / 255.0;
        let mut keep = m;
        for c in &covers {
            keep *= 1.0 - c[k] as f32 / 255.0;
        }
        total += m;
        vis += keep;
    }
    if total <= 0.0 {
        1.0
    } else {
        vis / total
    }
}

fn compute_visibility(objects: &mut [SceneObject]) {
    let vis: Vec<f32> = (0..objects.len())
        .map(|i| visible_fraction(objects, i))
        .collect();
    for (o, v) in objects.iter_mut().zip(vis) {
        o.visible = (v * 1000.0).round() / 1000.0;
    }
}

fn draw_background<R: Rng>(cfg: &SceneConfig, rng: &mut R) -> Background {
    let styles = if cfg.backgrounds.is_empty() {
        vec![BackgroundStyle::Plain]
    } else {
        cfg.backgrounds.clone()
    };
    let style = styles[rng.random_range(0..styles.len())];
    match style {
        BackgroundStyle::Gradient => {
            let (a, b) = GRADIENT_PAIRS[rng.random_range(0..GRADIENT_PAIRS.len())];
            let (a, b) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
            Background {
                style,
                from: BACKGROUND_COLOURS[a],
                to: BACKGROUND_COLOURS[b],
                vertical: rng.random_bool(0.5),
                noise_seed: 0,
            }
        }
        _ => {
            let c = BACKGROUND_COLOURS[rng.random_range(0..BACKGROUND_COLOURS.len())];
            Background {
                style,
                from: c,
                to: c,
                vertical: false,
                noise_seed: if style == BackgroundStyle::Noise {
                    rng.random()
                } else {
                    0
                },
            }
        }
    }
}

/// The seed of a named split derived from a dataset seed, so splits never share scenes.
pub fn split_seed(seed: u64, split: &str) -> u64 {
    let mut h = seed;
    for b in split.bytes() {
        h = crate::rng::splitmix64(h ^ u64::from(b));
    }
    crate::rng::splitmix64(h ^ purpose::SPLIT)
}
