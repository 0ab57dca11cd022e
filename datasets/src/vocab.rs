//! The closed vocabularies: shape categories, colours, sizes, sound classes,
//! their popularity order, co-occurrence themes, confusable pairs and synonyms.

use serde::{Deserialize, Serialize};

/// A visual object category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// A disc with a hole (confusable with `Circle`).
    Ring,
    /// A filled square.
    Square,
    /// A hollow square (confusable with `Square`).
    Frame,
    /// An upward-pointing triangle.
    Triangle,
    /// A square standing on a corner.
    Diamond,
    /// An upright plus sign.
    Plus,
    /// A diagonal cross, "x" (confusable with `Plus`).
    Cross,
    /// A five-pointed star.
    Star,
    /// A regular hexagon (confusable with `Star` and `Circle` at small sizes).
    Hexagon,
    /// A heart.
    Heart,
    /// A crescent moon opening to the right.
    Crescent,
    /// A horizontal bar.
    Bar,
    /// An arrow pointing right.
    Arrow,
}

impl Shape {
    /// Every shape, in declaration order.
    pub const ALL: [Shape; 14] = [
        Shape::Circle,
        Shape::Ring,
        Shape::Square,
        Shape::Frame,
        Shape::Triangle,
        Shape::Diamond,
        Shape::Plus,
        Shape::Cross,
        Shape::Star,
        Shape::Hexagon,
        Shape::Heart,
        Shape::Crescent,
        Shape::Bar,
        Shape::Arrow,
    ];

    /// Shapes from most to least frequent in generated scenes (the frequency skew).
    pub const POPULARITY: [Shape; 14] = [
        Shape::Circle,
        Shape::Square,
        Shape::Star,
        Shape::Triangle,
        Shape::Ring,
        Shape::Heart,
        Shape::Plus,
        Shape::Diamond,
        Shape::Cross,
        Shape::Arrow,
        Shape::Hexagon,
        Shape::Frame,
        Shape::Crescent,
        Shape::Bar,
    ];

    /// Co-occurrence themes: a scene picks one theme and draws most objects from it.
    pub const THEMES: [&'static [Shape]; 5] = [
        &[Shape::Circle, Shape::Ring, Shape::Crescent, Shape::Hexagon],
        &[Shape::Square, Shape::Frame, Shape::Diamond, Shape::Bar],
        &[Shape::Plus, Shape::Cross, Shape::Arrow, Shape::Triangle],
        &[Shape::Star, Shape::Crescent, Shape::Circle, Shape::Ring],
        &[Shape::Heart, Shape::Diamond, Shape::Star, Shape::Square],
    ];

    /// The shape's position in [`Shape::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The category word used in questions and annotations ("ring").
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Ring => "ring",
            Shape::Square => "square",
            Shape::Frame => "frame",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Plus => "plus",
            Shape::Cross => "cross",
            Shape::Star => "star",
            Shape::Hexagon => "hexagon",
            Shape::Heart => "heart",
            Shape::Crescent => "crescent",
            Shape::Bar => "bar",
            Shape::Arrow => "arrow",
        }
    }

    /// The plural used in counting questions ("crosses").
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Plus => "pluses",
            Shape::Cross => "crosses",
            other => PLURAL_S[other.index()],
        }
    }

    /// Parses a category word (singular, plural or synonym, case-insensitive).
    pub fn from_name(name: &str) -> Option<Shape> {
        <Shape as Category>::from_name(name)
    }

    /// The shape this one is most easily mistaken for.
    pub fn confusable(self) -> Shape {
        match self {
            Shape::Circle => Shape::Ring,
            Shape::Ring => Shape::Circle,
            Shape::Square => Shape::Frame,
            Shape::Frame => Shape::Square,
            Shape::Plus => Shape::Cross,
            Shape::Cross => Shape::Plus,
            Shape::Star => Shape::Hexagon,
            Shape::Hexagon => Shape::Star,
            Shape::Triangle => Shape::Diamond,
            Shape::Diamond => Shape::Triangle,
            Shape::Heart => Shape::Crescent,
            Shape::Crescent => Shape::Heart,
            Shape::Bar => Shape::Arrow,
            Shape::Arrow => Shape::Bar,
        }
    }

    /// Rank in [`Shape::POPULARITY`] (0 = most frequent).
    pub fn popularity_rank(self) -> usize {
        <Shape as Category>::popularity_rank(self)
    }

    /// How strongly this shape is expected to co-occur with `other` (shared themes, confusable partner).
    pub fn affinity(self, other: Shape) -> u32 {
        <Shape as Category>::affinity(self, other)
    }
}

const PLURAL_S: [&str; 14] = [
    "circles",
    "rings",
    "squares",
    "frames",
    "triangles",
    "diamonds",
    "pluses",
    "crosses",
    "stars",
    "hexagons",
    "hearts",
    "crescents",
    "bars",
    "arrows",
];

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A named object colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// Red (confusable with orange).
    Red,
    /// Orange (confusable with red).
    Orange,
    /// Yellow.
    Yellow,
    /// Green.
    Green,
    /// Cyan (confusable with blue).
    Cyan,
    /// Blue.
    Blue,
    /// Purple (confusable with pink).
    Purple,
    /// Pink.
    Pink,
}

impl Colour {
    /// Every colour, in declaration order.
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Cyan,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
    ];

    /// The colour's position in [`Colour::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The colour word ("red").
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Cyan => "cyan",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
        }
    }

    /// The sRGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 38, 38],
            Colour::Orange => [249, 146, 22],
            Colour::Yellow => [245, 215, 30],
            Colour::Green => [34, 170, 70],
            Colour::Cyan => [20, 200, 220],
            Colour::Blue => [45, 85, 230],
            Colour::Purple => [150, 60, 200],
            Colour::Pink => [248, 120, 190],
        }
    }

    /// The colour this one is most easily mistaken for.
    pub fn confusable(self) -> Colour {
        match self {
            Colour::Red => Colour::Orange,
            Colour::Orange => Colour::Red,
            Colour::Yellow => Colour::Orange,
            Colour::Green => Colour::Cyan,
            Colour::Cyan => Colour::Blue,
            Colour::Blue => Colour::Cyan,
            Colour::Purple => Colour::Pink,
            Colour::Pink => Colour::Purple,
        }
    }

    /// Parses a colour word (case-insensitive).
    pub fn from_name(name: &str) -> Option<Colour> {
        let n = name.trim().to_ascii_lowercase();
        Colour::ALL.into_iter().find(|c| c.name() == n)
    }
}

impl std::fmt::Display for Colour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An object size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// About 0.6 of a cell.
    Small,
    /// About 0.85 of a cell.
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The object's bounding-box side as a fraction of the configured cell size.
    pub fn scale(self) -> f32 {
        match self {
            Size::Small => 0.6,
            Size::Large => 0.85,
        }
    }

    /// The size word ("small").
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// A synthesised sound-event class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SoundClass {
    /// A steady sine tone, 600–1200 Hz.
    #[serde(rename = "beep")]
    Beep,
    /// A rising frequency sweep.
    #[serde(rename = "chirp")]
    Chirp,
    /// A regular train of short clicks.
    #[serde(rename = "click train")]
    ClickTrain,
    /// A burst of white noise.
    #[serde(rename = "noise burst")]
    NoiseBurst,
    /// A tone whose pitch wails up and down.
    #[serde(rename = "siren")]
    Siren,
    /// A decaying low thump with a falling pitch.
    #[serde(rename = "drum hit")]
    DrumHit,
    /// A low harmonic-rich buzz.
    #[serde(rename = "buzz")]
    Buzz,
    /// A high, slightly vibrating tone (confusable with `Beep`).
    #[serde(rename = "whistle")]
    Whistle,
}

impl SoundClass {
    /// Every class, in declaration order.
    pub const ALL: [SoundClass; 8] = [
        SoundClass::Beep,
        SoundClass::Chirp,
        SoundClass::ClickTrain,
        SoundClass::NoiseBurst,
        SoundClass::Siren,
        SoundClass::DrumHit,
        SoundClass::Buzz,
        SoundClass::Whistle,
    ];

    /// Classes from most to least frequent in generated clips.
    pub const POPULARITY: [SoundClass; 8] = [
        SoundClass::Beep,
        SoundClass::DrumHit,
        SoundClass::ClickTrain,
        SoundClass::Siren,
        SoundClass::Chirp,
        SoundClass::NoiseBurst,
        SoundClass::Whistle,
        SoundClass::Buzz,
    ];

    /// Co-occurrence themes for sounds.
    pub const THEMES: [&'static [SoundClass]; 4] = [
        &[SoundClass::Beep, SoundClass::Whistle, SoundClass::Chirp],
        &[SoundClass::Siren, SoundClass::Buzz, SoundClass::Beep],
        &[
            SoundClass::DrumHit,
            SoundClass::ClickTrain,
            SoundClass::NoiseBurst,
        ],
        &[
            SoundClass::Chirp,
            SoundClass::Whistle,
            SoundClass::ClickTrain,
        ],
    ];

    /// The class's position in [`SoundClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class name used in questions ("noise burst").
    pub fn name(self) -> &'static str {
        match self {
            SoundClass::Beep => "beep",
            SoundClass::Chirp => "chirp",
            SoundClass::ClickTrain => "click train",
            SoundClass::NoiseBurst => "noise burst",
            SoundClass::Siren => "siren",
            SoundClass::DrumHit => "drum hit",
            SoundClass::Buzz => "buzz",
            SoundClass::Whistle => "whistle",
        }
    }

    /// The plural used in counting questions ("beeps").
    pub fn plural(self) -> &'static str {
        match self {
            SoundClass::Beep => "beeps",
            SoundClass::Chirp => "chirps",
            SoundClass::ClickTrain => "click trains",
            SoundClass::NoiseBurst => "noise bursts",
            SoundClass::Siren => "sirens",
            SoundClass::DrumHit => "drum hits",
            SoundClass::Buzz => "buzzes",
            SoundClass::Whistle => "whistles",
        }
    }

    /// Parses a class name (singular, plural or synonym, case-insensitive).
    pub fn from_name(name: &str) -> Option<SoundClass> {
        <SoundClass as Category>::from_name(name)
    }

    /// The class this one is most easily mistaken for.
    pub fn confusable(self) -> SoundClass {
        match self {
            SoundClass::Beep => SoundClass::Whistle,
            SoundClass::Whistle => SoundClass::Beep,
            SoundClass::Chirp => SoundClass::Siren,
            SoundClass::Siren => SoundClass::Chirp,
            SoundClass::ClickTrain => SoundClass::Buzz,
            SoundClass::Buzz => SoundClass::ClickTrain,
            SoundClass::NoiseBurst => SoundClass::DrumHit,
            SoundClass::DrumHit => SoundClass::NoiseBurst,
        }
    }

    /// Rank in [`SoundClass::POPULARITY`] (0 = most frequent).
    pub fn popularity_rank(self) -> usize {
        <SoundClass as Category>::popularity_rank(self)
    }

    /// How strongly this class is expected to co-occur with `other`.
    pub fn affinity(self, other: SoundClass) -> u32 {
        <SoundClass as Category>::affinity(self, other)
    }
}

impl std::fmt::Display for SoundClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A closed vocabulary that questions ask about: shapes in images, classes of sounds. What the
/// generators' priors, POPE's negatives and the question builders need of one.
pub trait Category: Copy + PartialEq + 'static {
    /// Every member, in index order.
    const ALL: &'static [Self];
    /// Members from most to least frequent (the frequency skew).
    const POPULARITY: &'static [Self];
    /// Co-occurrence themes: an item picks one and draws most of its members from it.
    const THEMES: &'static [&'static [Self]];

    /// The member's position in [`Category::ALL`].
    fn index(self) -> usize;
    /// The word used in questions and annotations.
    fn name(self) -> &'static str;
    /// The plural used in counting questions.
    fn plural(self) -> &'static str;
    /// The member this one is most easily mistaken for.
    fn confusable(self) -> Self;
    /// The words that mean this member, its name first.
    fn synonyms(self) -> &'static [&'static str];

    /// Parses a word (singular, plural or synonym, case-insensitive).
    fn from_name(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase();
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.name() == n || s.plural() == n || s.synonyms().iter().any(|syn| *syn == n))
    }

    /// Rank in [`Category::POPULARITY`] (0 = most frequent).
    fn popularity_rank(self) -> usize {
        Self::POPULARITY
            .iter()
            .position(|s| *s == self)
            .unwrap_or(Self::ALL.len())
    }

    /// How strongly this member is expected to co-occur with `other` (shared themes,
    /// confusable partner).
    fn affinity(self, other: Self) -> u32 {
        if self == other {
            return 0;
        }
        let shared = Self::THEMES
            .iter()
            .filter(|t| t.contains(&self) && t.contains(&other))
            .count() as u32;
        shared * 2 + u32::from(self.confusable() == other)
    }

    /// Every member with its synonyms (the name first), for CHAIR.
    fn synonym_table() -> Vec<(&'static str, Vec<&'static str>)> {
        Self::ALL
            .iter()
            .map(|s| (s.name(), s.synonyms().to_vec()))
            .collect()
    }
}

impl Category for Shape {
    const ALL: &'static [Shape] = &Shape::ALL;
    const POPULARITY: &'static [Shape] = &Shape::POPULARITY;
    const THEMES: &'static [&'static [Shape]] = &Shape::THEMES;

    fn index(self) -> usize {
        Shape::index(self)
    }
    fn name(self) -> &'static str {
        Shape::name(self)
    }
    fn plural(self) -> &'static str {
        Shape::plural(self)
    }
    fn confusable(self) -> Shape {
        Shape::confusable(self)
    }
    fn synonyms(self) -> &'static [&'static str] {
        shape_synonyms(self)
    }
}

impl Category for SoundClass {
    const ALL: &'static [SoundClass] = &SoundClass::ALL;
    const POPULARITY: &'static [SoundClass] = &SoundClass::POPULARITY;
    const THEMES: &'static [&'static [SoundClass]] = &SoundClass::THEMES;

    fn index(self) -> usize {
        SoundClass::index(self)
    }
    fn name(self) -> &'static str {
        SoundClass::name(self)
    }
    fn plural(self) -> &'static str {
        SoundClass::plural(self)
    }
    fn confusable(self) -> SoundClass {
        SoundClass::confusable(self)
    }
    fn synonyms(self) -> &'static [&'static str] {
        sound_synonyms(self)
    }
}

/// Distinct members in order of first appearance.
pub(crate) fn distinct<T: Copy + PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for c in items {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// `count` of every member of the vocabulary (zero included), in [`Category::ALL`] order.
pub(crate) fn tally<T: Category>(count: impl Fn(T) -> usize) -> Vec<(T, usize)> {
    T::ALL.iter().map(|c| (*c, count(*c))).collect()
}

fn shape_synonyms(s: Shape) -> &'static [&'static str] {
    match s {
        Shape::Circle => &[
            "circle",
            "disc",
            "disk",
            "dot",
            "ball",
            "round shape",
            "filled circle",
        ],
        Shape::Ring => &[
            "ring",
            "hoop",
            "donut",
            "doughnut",
            "annulus",
            "circle outline",
            "hollow circle",
        ],
        Shape::Square => &["square", "block", "tile", "filled square"],
        Shape::Frame => &[
            "frame",
            "hollow square",
            "square outline",
            "outlined square",
            "square frame",
        ],
        Shape::Triangle => &["triangle", "pyramid"],
        Shape::Diamond => &["diamond", "rhombus", "lozenge"],
        Shape::Plus => &["plus", "plus sign"],
        Shape::Cross => &["cross", "x", "x mark", "x shape", "saltire"],
        Shape::Star => &["star", "pentagram"],
        Shape::Hexagon => &["hexagon"],
        Shape::Heart => &["heart"],
        Shape::Crescent => &["crescent", "moon", "crescent moon"],
        Shape::Bar => &["bar", "stripe", "dash", "rectangle"],
        Shape::Arrow => &["arrow"],
    }
}

fn sound_synonyms(s: SoundClass) -> &'static [&'static str] {
    match s {
        SoundClass::Beep => &["beep", "tone", "bleep"],
        SoundClass::Chirp => &["chirp", "sweep"],
        SoundClass::ClickTrain => &["click train", "clicks", "clicking", "ticking"],
        SoundClass::NoiseBurst => &["noise burst", "burst", "hiss", "static"],
        SoundClass::Siren => &["siren", "wail"],
        SoundClass::DrumHit => &["drum hit", "drum", "thump"],
        SoundClass::Buzz => &["buzz", "buzzer", "hum"],
        SoundClass::Whistle => &["whistle"],
    }
}

/// Shape categories with their synonyms (the category word comes first), for CHAIR.
pub fn synonyms() -> Vec<(&'static str, Vec<&'static str>)> {
    Shape::synonym_table()
}

/// Sound classes with their synonyms (the class name comes first), for CHAIR on captions of audio.
pub fn sound_class_synonyms() -> Vec<(&'static str, Vec<&'static str>)> {
    SoundClass::synonym_table()
}

/// "a" or "an" before `word`, by POPE's rule (vowel letter → "an").
pub fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// The English number word for small counts ("two"), digits above twelve.
pub fn number_word(n: usize) -> String {
    const WORDS: [&str; 13] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    WORDS
        .get(n)
        .map(|w| (*w).to_string())
        .unwrap_or_else(|| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_are_complete_and_consistent() {
        assert!(Shape::ALL.len() >= 12);
        assert!(SoundClass::ALL.len() >= 6);
        assert_eq!(Colour::ALL.len(), 8);
        for (i, s) in Shape::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(Shape::from_name(s.name()), Some(*s));
            assert_eq!(Shape::from_name(s.plural()), Some(*s));
            assert_eq!(s.confusable().confusable(), *s, "{s} pair is not symmetric");
            assert!(
                Shape::THEMES.iter().any(|t| t.contains(s)),
                "{s} in no theme"
            );
            assert!(Shape::POPULARITY.contains(s));
        }
        for s in SoundClass::ALL {
            assert_eq!(SoundClass::from_name(s.name()), Some(s));
            assert_eq!(SoundClass::from_name(s.plural()), Some(s));
            assert!(SoundClass::THEMES.iter().any(|t| t.contains(&s)));
            assert!(SoundClass::POPULARITY.contains(&s));
        }
        // Serde names equal the question words.
        for s in Shape::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        for s in SoundClass::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        for c in Colour::ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
    }

    #[test]
    fn synonyms_do_not_collide_between_categories() {
        let all = synonyms();
        for (i, (_, a)) in all.iter().enumerate() {
            for (j, (_, b)) in all.iter().enumerate() {
                if i != j {
                    assert!(a.iter().all(|w| !b.contains(w)), "{a:?} vs {b:?}");
                }
            }
        }
        assert_eq!(all[0].1[0], "circle");
    }

    #[test]
    fn articles_and_numbers() {
        assert_eq!(article("arrow"), "an");
        assert_eq!(article("ring"), "a");
        assert_eq!(number_word(2), "two");
        assert_eq!(number_word(20), "20");
    }
}
