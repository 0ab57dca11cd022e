//! Category priors with a frequency skew and themed co-occurrence, shared by
//! the scene and sound generators.

use rand::Rng;

use crate::rng::weighted_index;
use crate::vocab::Category;

/// A category distribution: Zipf-like global weights plus co-occurrence themes.
#[derive(Clone, Debug)]
pub(crate) struct CategoryPrior {
    /// Global weight of each category index.
    pub weights: Vec<f64>,
    /// Theme membership lists (category indices).
    pub themes: Vec<Vec<usize>>,
    /// Probability that an object is drawn from the scene's theme.
    pub theme_prob: f64,
}

impl CategoryPrior {
    /// Builds a prior: category `i` has weight `1 / (rank(i) + 1)^skew`.
    pub fn new(ranks: &[usize], skew: f64, themes: Vec<Vec<usize>>, theme_prob: f64) -> Self {
        let skew = if skew.is_finite() { skew.max(0.0) } else { 0.0 };
        let weights = ranks
            .iter()
            .map(|r| 1.0 / ((*r as f64) + 1.0).powf(skew))
            .collect();
        CategoryPrior {
            weights,
            themes,
            theme_prob: if theme_prob.is_finite() {
                theme_prob.clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }

    /// The prior over a vocabulary: weights by its popularity order, and its themes.
    pub fn of<T: Category>(skew: f64, theme_prob: f64) -> Self {
        let ranks: Vec<usize> = T::ALL.iter().map(|s| s.popularity_rank()).collect();
        let themes = T::THEMES
            .iter()
            .map(|t| t.iter().map(|s| s.index()).collect())
            .collect();
        CategoryPrior::new(&ranks, skew, themes, theme_prob)
    }

    /// Draws one category, from `theme` with probability `theme_prob`, never one `excluded`.
    pub fn draw<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        theme: usize,
        excluded: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.weights.len();
        let use_theme = rng.random::<f64>() < self.theme_prob;
        let mut w = vec![0.0; n];
        if use_theme {
            if let Some(members) = self.themes.get(theme) {
                for &m in members {
                    if m < n && !excluded(m) {
                        w[m] = self.weights[m];
                    }
                }
            }
        }
        if w.iter().all(|x| *x <= 0.0) {
            for (i, wi) in w.iter_mut().enumerate() {
                if !excluded(i) {
                    *wi = self.weights[i];
                }
            }
        }
        if w.iter().all(|x| *x <= 0.0) {
            return None;
        }
        Some(weighted_index(rng, &w))
    }

    /// Draws the category list of one item: `probe_count` copies of a probe
    /// category, then `total - probe_count` others that are never the probe.
    /// Returns (probe, categories in random order).
    pub fn draw_item<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        total: usize,
        probe_count: usize,
    ) -> (usize, Vec<usize>) {
        let theme = if self.themes.is_empty() {
            0
        } else {
            rng.random_range(0..self.themes.len())
        };
        let probe = self.draw(rng, theme, &|_| false).unwrap_or(0);
        let mut cats = vec![probe; probe_count.min(total)];
        while cats.len() < total {
            match self.draw(rng, theme, &|c| c == probe) {
                Some(c) => cats.push(c),
                None => break,
            }
        }
        // Fisher-Yates shuffle so the probe's objects are not always drawn first.
        for i in (1..cats.len()).rev() {
            let j = rng.random_range(0..=i);
            cats.swap(i, j);
        }
        (probe, cats)
    }
}
