//! In-memory question builders for training: presence (with hard negatives),
//! counting, colour, attribute, spatial, captions, audio and mixed image+audio.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::pope::{pope_text, AUDIO_TEMPLATE, IMAGE_TEMPLATE};
use crate::scene::{Scene, SceneObject};
use crate::sound::SoundScene;
use crate::vocab::{article, number_word, Category, Colour, Shape, SoundClass};

/// What a question asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QaKind {
    /// "Is there a ring in the image?" → yes/no.
    Presence,
    /// "How many rings are there in the image?" → digits.
    Count,
    /// "What colour is the ring?" → colour word.
    Colour,
    /// "Is there a red ring in the image?" → yes/no.
    Attribute,
    /// "Is the ring to the left or right of the star?" → left/right (or above/below).
    Spatial,
    /// "Describe the image." → short caption.
    Caption,
    /// "Is there a siren in the audio?" → yes/no.
    AudioPresence,
    /// "How many beeps are there in the audio?" → digits.
    AudioCount,
    /// "Describe the audio." → short caption in time order.
    AudioCaption,
    /// Questions that need both the image and the audio.
    Mixed,
}

impl QaKind {
    /// The kind's name as written in files ("audio_presence").
    pub fn name(self) -> &'static str {
        match self {
            QaKind::Presence => "presence",
            QaKind::Count => "count",
            QaKind::Colour => "colour",
            QaKind::Attribute => "attribute",
            QaKind::Spatial => "spatial",
            QaKind::Caption => "caption",
            QaKind::AudioPresence => "audio_presence",
            QaKind::AudioCount => "audio_count",
            QaKind::AudioCaption => "audio_caption",
            QaKind::Mixed => "mixed",
        }
    }
}

/// One question with its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QA {
    /// What is asked.
    pub kind: QaKind,
    /// The question text.
    pub question: String,
    /// The exact expected answer ("yes", "3", "red", "left", a caption).
    pub answer: String,
}

/// How absent objects are picked for "no" presence questions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeKind {
    /// Any absent object.
    Random,
    /// One of the most frequent absent objects.
    Popular,
    /// One of the absent objects most associated with the present ones (themes, confusable partners).
    Adversarial,
}

/// How many questions of each kind [`training_questions`] makes per scene.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QaMix {
    /// Presence questions (alternating yes/no; negatives random, popular and adversarial in equal shares).
    pub presence: usize,
    /// Counting questions (the first one about the scene's balanced count probe).
    pub count: usize,
    /// Colour questions.
    pub colour: usize,
    /// Colour+shape presence questions.
    pub attribute: usize,
    /// Left/right and above/below questions.
    pub spatial: usize,
    /// Captions.
    pub caption: usize,
}

impl Default for QaMix {
    fn default() -> Self {
        QaMix {
            presence: 2,
            count: 1,
            colour: 1,
            attribute: 1,
            spatial: 1,
            caption: 1,
        }
    }
}

impl QaMix {
    /// Presence and counting only (what the calibration run trained on).
    pub fn presence_and_count() -> Self {
        QaMix {
            presence: 2,
            count: 1,
            colour: 0,
            attribute: 0,
            spatial: 0,
            caption: 0,
        }
    }
}

/// Picks an absent member for a "no" question: any absent one, one of the most frequent, or
/// one of those most associated with the present members.
fn pick_negative<T: Category, R: Rng + ?Sized>(
    present: &[T],
    kind: NegativeKind,
    rng: &mut R,
) -> Option<T> {
    let absent: Vec<T> = T::ALL
        .iter()
        .copied()
        .filter(|c| !present.contains(c))
        .collect();
    if absent.is_empty() {
        return None;
    }
    let top_by = |score: &dyn Fn(T) -> i64| -> Vec<T> {
        let mut v = absent.clone();
        v.sort_by_key(|c| std::cmp::Reverse(score(*c)));
        let cutoff = v.get(1).map(|c| score(*c)).unwrap_or(i64::MIN);
        v.into_iter()
            .filter(|c| score(*c) >= cutoff)
            .take(2)
            .collect()
    };
    let rank = |c: T| -(c.popularity_rank() as i64);
    let pool = match kind {
        NegativeKind::Random => absent.clone(),
        NegativeKind::Popular => top_by(&rank),
        NegativeKind::Adversarial => {
            let score = |c: T| present.iter().map(|p| p.affinity(c) as i64).sum::<i64>();
            if absent.iter().all(|c| score(*c) == 0) {
                top_by(&rank)
            } else {
                top_by(&score)
            }
        }
    };
    Some(pool[rng.random_range(0..pool.len())])
}

/// What a presence question asks about: a present member when `yes`, else an absent one
/// picked by `negative`.
fn presence_object<T: Category, R: Rng + ?Sized>(
    present: &[T],
    yes: bool,
    negative: NegativeKind,
    rng: &mut R,
) -> Option<T> {
    if yes {
        if present.is_empty() {
            return None;
        }
        Some(present[rng.random_range(0..present.len())])
    } else {
        pick_negative(present, negative, rng)
    }
}

/// "yes" or "no".
fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_string()
}

/// `n` presence questions, alternating yes and no from a random start (all "no" when
/// `has_objects` is false), each with a random kind of negative; `ask` makes one.
fn presence_questions<R: Rng + ?Sized>(
    n: usize,
    has_objects: bool,
    rng: &mut R,
    ask: &dyn Fn(bool, NegativeKind, &mut R) -> Option<QA>,
) -> Vec<QA> {
    let mut out = Vec::new();
    let flip = rng.random_bool(0.5);
    for i in 0..n {
        let yes = ((i % 2 == 0) ^ flip) && has_objects;
        let neg = negative_kind(rng);
        if let Some(q) = ask(yes, neg, rng) {
            out.push(q);
        }
    }
    out
}

/// What count question `i` asks about: the balanced probe first, then present members.
fn count_subject<T: Category, R: Rng + ?Sized>(
    i: usize,
    probe: T,
    present: &[T],
    rng: &mut R,
) -> T {
    if i == 0 || present.is_empty() {
        probe
    } else {
        present[rng.random_range(0..present.len())]
    }
}

fn negative_kind<R: Rng + ?Sized>(rng: &mut R) -> NegativeKind {
    match rng.random_range(0..3) {
        0 => NegativeKind::Random,
        1 => NegativeKind::Popular,
        _ => NegativeKind::Adversarial,
    }
}

/// A presence question: about a present shape when `yes`, else an absent one picked by `negative`.
pub fn presence_question<R: Rng + ?Sized>(
    scene: &Scene,
    yes: bool,
    negative: NegativeKind,
    rng: &mut R,
) -> Option<QA> {
    let shape = presence_object(&scene.categories(), yes, negative, rng)?;
    Some(QA {
        kind: QaKind::Presence,
        question: pope_text(IMAGE_TEMPLATE, shape.name()),
        answer: yes_no(yes),
    })
}

/// "How many {shape}s are there in the image?" with the exact count as digits.
pub fn count_question(scene: &Scene, shape: Shape) -> QA {
    QA {
        kind: QaKind::Count,
        question: format!("How many {} are there in the image?", shape.plural()),
        answer: scene.count(shape).to_string(),
    }
}

/// "What colour is the {shape}?" about a shape that appears exactly once.
pub fn colour_question<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> Option<QA> {
    let unique: Vec<&SceneObject> = scene
        .objects
        .iter()
        .filter(|o| scene.count(o.category) == 1)
        .collect();
    if unique.is_empty() {
        return None;
    }
    let o = unique[rng.random_range(0..unique.len())];
    Some(colour_question_for(o))
}

fn colour_question_for(o: &SceneObject) -> QA {
    QA {
        kind: QaKind::Colour,
        question: format!("What colour is the {}?", o.category.name()),
        answer: o.colour.name().to_string(),
    }
}

fn attribute_text(colour: Colour, shape: Shape) -> String {
    let phrase = format!("{} {}", colour.name(), shape.name());
    pope_text(IMAGE_TEMPLATE, &phrase)
}

/// "Is there a {colour} {shape} in the image?"; "no" questions keep a present shape
/// and change its colour (often to the confusable one), so only the colour decides.
pub fn attribute_question<R: Rng + ?Sized>(scene: &Scene, yes: bool, rng: &mut R) -> Option<QA> {
    if scene.objects.is_empty() {
        return None;
    }
    let o = &scene.objects[rng.random_range(0..scene.objects.len())];
    let colour = if yes {
        o.colour
    } else {
        let taken = |c: Colour| {
            scene
                .objects
                .iter()
                .any(|p| p.category == o.category && p.colour == c)
        };
        let conf = o.colour.confusable();
        if !taken(conf) && rng.random_bool(0.5) {
            conf
        } else {
            let free: Vec<Colour> = Colour::ALL.iter().copied().filter(|c| !taken(*c)).collect();
            if free.is_empty() {
                return None;
            }
            free[rng.random_range(0..free.len())]
        }
    };
    Some(QA {
        kind: QaKind::Attribute,
        question: attribute_text(colour, o.category),
        answer: yes_no(yes),
    })
}

/// "Is the {a} to the left or right of the {b}?" (or above/below) about two shapes that each appear once.
pub fn spatial_question<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> Option<QA> {
    let unique: Vec<&SceneObject> = scene
        .objects
        .iter()
        .filter(|o| scene.count(o.category) == 1)
        .collect();
    let mut pairs = Vec::new();
    for a in &unique {
        for b in &unique {
            if a.category == b.category {
                continue;
            }
            let margin = a.extent.max(b.extent) / 2.0;
            let dx = a.centre[0] - b.centre[0];
            let dy = a.centre[1] - b.centre[1];
            if dx.abs() >= margin {
                pairs.push((*a, *b, true));
            }
            if dy.abs() >= margin {
                pairs.push((*a, *b, false));
            }
        }
    }
    if pairs.is_empty() {
        return None;
    }
    let (a, b, horizontal) = pairs[rng.random_range(0..pairs.len())];
    let (question, answer) = if horizontal {
        (
            format!(
                "Is the {} to the left or right of the {}?",
                a.category.name(),
                b.category.name()
            ),
            if a.centre[0] < b.centre[0] {
                "left"
            } else {
                "right"
            },
        )
    } else {
        (
            format!(
                "Is the {} above or below the {}?",
                a.category.name(),
                b.category.name()
            ),
            if a.centre[1] < b.centre[1] {
                "above"
            } else {
                "below"
            },
        )
    };
    Some(QA {
        kind: QaKind::Spatial,
        question,
        answer: answer.to_string(),
    })
}

fn join_phrases(parts: &[String]) -> String {
    match parts.len() {
        0 => String::new(),
        1 => parts[0].clone(),
        n => format!("{} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    }
}

/// A short caption listing the objects in reading order: "a red circle, two blue rings and a green star".
pub fn caption(scene: &Scene) -> String {
    if scene.objects.is_empty() {
        return "nothing".to_string();
    }
    let mut order: Vec<&SceneObject> = scene.objects.iter().collect();
    let band = order.iter().map(|o| o.extent).fold(1.0f32, f32::max);
    order.sort_by(|a, b| {
        let ka = ((a.centre[1] / band).floor() as i64, a.centre[0]);
        let kb = ((b.centre[1] / band).floor() as i64, b.centre[0]);
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
    });
    let mut groups: Vec<(Colour, Shape, usize)> = Vec::new();
    for o in order {
        if let Some(g) = groups
            .iter_mut()
            .find(|g| g.0 == o.colour && g.1 == o.category)
        {
            g.2 += 1;
        } else {
            groups.push((o.colour, o.category, 1));
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(c, s, n)| {
            if *n == 1 {
                format!("{} {} {}", article(c.name()), c.name(), s.name())
            } else {
                format!("{} {} {}", number_word(*n), c.name(), s.plural())
            }
        })
        .collect();
    join_phrases(&parts)
}

/// "Describe the image." → [`caption`].
pub fn caption_question(scene: &Scene) -> QA {
    QA {
        kind: QaKind::Caption,
        question: "Describe the image.".to_string(),
        answer: caption(scene),
    }
}

/// Training questions for one scene, as set by `mix`: presence questions alternate
/// yes/no with hard negatives, the first count question asks about the balanced probe.
pub fn training_questions<R: Rng + ?Sized>(scene: &Scene, mix: &QaMix, rng: &mut R) -> Vec<QA> {
    let mut out = presence_questions(
        mix.presence,
        !scene.objects.is_empty(),
        rng,
        &|yes, neg, rng| presence_question(scene, yes, neg, rng),
    );
    let present = scene.categories();
    for i in 0..mix.count {
        let shape = count_subject(i, scene.probe, &present, rng);
        out.push(count_question(scene, shape));
    }
    for _ in 0..mix.colour {
        if let Some(q) = colour_question(scene, rng) {
            out.push(q);
        }
    }
    let flip = rng.random_bool(0.5);
    for i in 0..mix.attribute {
        if let Some(q) = attribute_question(scene, (i % 2 == 0) ^ flip, rng) {
            out.push(q);
        }
    }
    for _ in 0..mix.spatial {
        if let Some(q) = spatial_question(scene, rng) {
            out.push(q);
        }
    }
    for _ in 0..mix.caption {
        out.push(caption_question(scene));
    }
    out
}

/// Questions about held-out colour–shape pairs in a scene: "yes" about a held-out
/// object, "no" about an absent held-out pair, and its colour when its shape is unique.
pub fn compositional_questions<R: Rng + ?Sized>(
    scene: &Scene,
    held_out: &[(Colour, Shape)],
    rng: &mut R,
) -> Vec<QA> {
    let mut out = Vec::new();
    let held: Vec<&SceneObject> = scene
        .objects
        .iter()
        .filter(|o| held_out.contains(&(o.colour, o.category)))
        .collect();
    if let Some(o) = held.get(rng.random_range(0..held.len().max(1))) {
        out.push(QA {
            kind: QaKind::Attribute,
            question: attribute_text(o.colour, o.category),
            answer: "yes".to_string(),
        });
        if scene.count(o.category) == 1 {
            out.push(colour_question_for(o));
        }
    }
    let absent: Vec<&(Colour, Shape)> = held_out
        .iter()
        .filter(|(c, s)| {
            !scene
                .objects
                .iter()
                .any(|o| o.colour == *c && o.category == *s)
        })
        .collect();
    if !absent.is_empty() {
        let (c, s) = absent[rng.random_range(0..absent.len())];
        out.push(QA {
            kind: QaKind::Attribute,
            question: attribute_text(*c, *s),
            answer: "no".to_string(),
        });
    }
    out
}

/// The same three question types as [`compositional_questions`], on seen pairs (the control).
pub fn seen_attribute_questions<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> Vec<QA> {
    let mut out = Vec::new();
    if let Some(q) = attribute_question(scene, true, rng) {
        out.push(q);
    }
    if let Some(q) = colour_question(scene, rng) {
        out.push(q);
    }
    if let Some(q) = attribute_question(scene, false, rng) {
        out.push(q);
    }
    out
}

/// An audio presence question: a present class when `yes`, else an absent one picked by `negative`.
pub fn audio_presence_question<R: Rng + ?Sized>(
    clip: &SoundScene,
    yes: bool,
    negative: NegativeKind,
    rng: &mut R,
) -> Option<QA> {
    let class = presence_object(&clip.classes(), yes, negative, rng)?;
    Some(QA {
        kind: QaKind::AudioPresence,
        question: pope_text(AUDIO_TEMPLATE, class.name()),
        answer: yes_no(yes),
    })
}

/// "How many {class}s are there in the audio?" with the exact count.
pub fn audio_count_question(clip: &SoundScene, class: SoundClass) -> QA {
    QA {
        kind: QaKind::AudioCount,
        question: format!("How many {} are there in the audio?", class.plural()),
        answer: clip.count(class).to_string(),
    }
}

/// A caption of the clip in time order: "a beep, then two sirens".
pub fn audio_caption(clip: &SoundScene) -> String {
    if clip.events.is_empty() {
        return "silence".to_string();
    }
    let mut runs: Vec<(SoundClass, usize)> = Vec::new();
    for e in &clip.events {
        match runs.last_mut() {
            Some(last) if last.0 == e.class => last.1 += 1,
            _ => runs.push((e.class, 1)),
        }
    }
    runs.iter()
        .map(|(c, n)| {
            if *n == 1 {
                format!("{} {}", article(c.name()), c.name())
            } else {
                format!("{} {}", number_word(*n), c.plural())
            }
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

/// Training questions for one clip: presence (hard negatives), count (probe first) and captions per `mix`.
pub fn audio_training_questions<R: Rng + ?Sized>(
    clip: &SoundScene,
    mix: &QaMix,
    rng: &mut R,
) -> Vec<QA> {
    let mut out = presence_questions(
        mix.presence,
        !clip.events.is_empty(),
        rng,
        &|yes, neg, rng| audio_presence_question(clip, yes, neg, rng),
    );
    let present = clip.classes();
    for i in 0..mix.count {
        let class = count_subject(i, clip.probe, &present, rng);
        out.push(audio_count_question(clip, class));
    }
    for _ in 0..mix.caption {
        out.push(QA {
            kind: QaKind::AudioCaption,
            question: "Describe the audio.".to_string(),
            answer: audio_caption(clip),
        });
    }
    out
}

/// Questions that need both modalities: a conjunction of presences, a cross-modal
/// comparison of counts, and a total count.
pub fn mixed_questions<R: Rng + ?Sized>(scene: &Scene, clip: &SoundScene, rng: &mut R) -> Vec<QA> {
    let shapes = scene.categories();
    let classes = clip.classes();
    let shape = if !shapes.is_empty() && rng.random_bool(0.7) {
        shapes[rng.random_range(0..shapes.len())]
    } else {
        Shape::ALL[rng.random_range(0..Shape::ALL.len())]
    };
    let class = if !classes.is_empty() && rng.random_bool(0.7) {
        classes[rng.random_range(0..classes.len())]
    } else {
        SoundClass::ALL[rng.random_range(0..SoundClass::ALL.len())]
    };
    let both = scene.contains(shape) && clip.contains(class);
    let (ns, nc) = (scene.count(scene.probe), clip.count(clip.probe));
    vec![
        QA {
            kind: QaKind::Mixed,
            question: format!(
                "Is there {} {} in the image and {} {} in the audio?",
                article(shape.name()),
                shape.name(),
                article(class.name()),
                class.name()
            ),
            answer: if both { "yes" } else { "no" }.to_string(),
        },
        QA {
            kind: QaKind::Mixed,
            question: format!(
                "Are there more {} in the image than {} in the audio?",
                scene.probe.plural(),
                clip.probe.plural()
            ),
            answer: if ns > nc { "yes" } else { "no" }.to_string(),
        },
        QA {
            kind: QaKind::Mixed,
            question: format!(
                "How many {} and {} are there in total?",
                scene.probe.plural(),
                clip.probe.plural()
            ),
            answer: (ns + nc).to_string(),
        },
    ]
}
