//! Generation speed: scenes with their questions, rendered in memory; sound clips.
//!
//! Target: 10,000 scenes of 96×96 with their questions in under 10 s on 2 cores.
//! Run: `cargo bench -p mmlab-datasets --bench generate`.

use criterion::{criterion_group, criterion_main, Criterion};
use mmlab_datasets::*;
use rayon::prelude::*;

fn scenes_with_questions(cfg: &SceneConfig, n: u64, pool: &rayon::ThreadPool) -> usize {
    let mix = QaMix::default();
    pool.install(|| {
        (0..n)
            .into_par_iter()
            .map(|i| {
                let scene = generate_scene(cfg, 7, i);
                let img = render(&scene);
                let mut rng = stream_rng(7, i, 3);
                let qs = training_questions(&scene, &mix, &mut rng);
                img.as_raw().len() + qs.len()
            })
            .sum()
    })
}

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("thread pool");
    let mut g = c.benchmark_group("generate");
    g.sample_size(10);
    let medium = SceneConfig::medium();
    g.bench_function("10k_scenes_96x96_with_questions_2_threads", |b| {
        b.iter(|| scenes_with_questions(&medium, 10_000, &pool))
    });
    let free = SceneConfig::free_medium();
    g.bench_function("10k_scenes_96x96_free_with_questions_2_threads", |b| {
        b.iter(|| scenes_with_questions(&free, 10_000, &pool))
    });
    let small = SceneConfig::small();
    g.bench_function("10k_scenes_48x48_aligned_with_questions_2_threads", |b| {
        b.iter(|| scenes_with_questions(&small, 10_000, &pool))
    });
    let sound = SoundConfig::short();
    g.bench_function("1k_sound_clips_1.5s_2_threads", |b| {
        b.iter(|| {
            pool.install(|| {
                (0..1000u64)
                    .into_par_iter()
                    .map(|i| synthesise(&generate_sound(&sound, 7, i)).len())
                    .sum::<usize>()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
