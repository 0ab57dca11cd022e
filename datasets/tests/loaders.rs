//! Loaders for real benchmark formats: exact reading and errors naming file and line.

use std::path::Path;

use mmlab_datasets::*;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn pope_lines_load_and_malformed_lines_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(
        dir.path(),
        "ok.json",
        "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a dog in the image?\", \"label\": \"yes\"}\n\n{\"question_id\": 2, \"image\": \"a.jpg\", \"text\": \"Is there an apple in the image?\", \"label\": \"no\"}\n",
    );
    let qs = load_pope(&ok).unwrap();
    assert_eq!(qs.len(), 2);
    assert_eq!(qs[1].object(), Some("apple"));
    assert_eq!(qs[1].label, YesNo::No);

    let bad = write(
        dir.path(),
        "bad.json",
        "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"t\", \"label\": \"yes\"}\n{\"question_id\": 2, \"image\": \"a.jpg\", \"text\": \"t\", \"label\": \"yes\"}\n{\"question_id\": 3, \"image\": \"a.jpg\" \"text\": \"t\"}\n",
    );
    let e = load_pope(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json:3:"), "{e}");
    let bad = write(
        dir.path(),
        "label.json",
        "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"t\", \"label\": \"maybe\"}\n",
    );
    let e = load_pope(&bad).unwrap_err().to_string();
    assert!(e.contains("label.json:1:") && e.contains("maybe"), "{e}");
    let missing = write(
        dir.path(),
        "missing.json",
        "{\"question_id\": 1, \"text\": \"t\", \"label\": \"no\"}\n",
    );
    let e = load_pope(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.json:1:") && e.contains("image"), "{e}");

    // With an image folder.
    std::fs::create_dir(dir.path().join("imgs")).unwrap();
    std::fs::write(dir.path().join("imgs/a.jpg"), b"x").unwrap();
    let f = load_pope_with_images(&ok, &dir.path().join("imgs")).unwrap();
    assert_eq!(f.images(), vec!["a.jpg"]);
    assert!(f.image_path(&f.questions[0]).ends_with("imgs/a.jpg"));
    let other = write(
        dir.path(),
        "other.json",
        "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"t\", \"label\": \"yes\"}\n{\"question_id\": 2, \"image\": \"b.jpg\", \"text\": \"t\", \"label\": \"yes\"}\n",
    );
    let e = load_pope_with_images(&other, &dir.path().join("imgs"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("other.json:2:") && e.contains("b.jpg"), "{e}");
}

#[test]
fn coco_instances_load_and_bad_references_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let coco = r#"{
  "info": {"year": 2014},
  "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "width": 640, "height": 480},
             {"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "width": 640, "height": 480}],
  "annotations": [
    {"id": 10, "image_id": 1, "category_id": 18, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0, "segmentation": [[1,2,3,4]]},
    {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
    {"id": 12, "image_id": 1, "category_id": 18, "bbox": [5, 2, 3, 4], "area": 12, "iscrowd": 0}
  ],
  "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}]
}"#;
    let p = write(dir.path(), "instances.json", coco);
    let c = load_coco(&p).unwrap();
    assert_eq!(c.images.len(), 2);
    let lists = c.object_lists();
    assert_eq!(lists[0].objects, vec!["dog", "person"]);
    assert!(lists[1].objects.is_empty());
    let counts = c.count_items();
    assert!(counts[0].counts.contains(&("dog".to_string(), 2)));
    assert!(counts[1].counts.contains(&("dog".to_string(), 0)));

    let bad = coco.replace("\"category_id\": 1,", "\"category_id\": 99,");
    let p = write(dir.path(), "bad.json", &bad);
    let e = load_coco(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.json") && e.contains("annotations[1]") && e.contains("99"),
        "{e}"
    );
    let broken = coco.replace("\"images\": [", "\"images\": [,");
    let p = write(dir.path(), "broken.json", &broken);
    let e = load_coco(&p).unwrap_err().to_string();
    assert!(e.contains("broken.json:3:"), "{e}");
}

#[test]
fn counting_files_in_three_shapes_load() {
    let dir = tempfile::tempdir().unwrap();
    let countbench = write(
        dir.path(),
        "countbench.jsonl",
        "{\"image\": \"a.jpg\", \"question\": \"How many dogs are in the photo?\", \"number\": 3}\n",
    );
    let r = load_count_qa(&countbench).unwrap();
    assert_eq!(r[0].count, 3);
    assert_eq!(
        r[0].question.as_deref(),
        Some("How many dogs are in the photo?")
    );

    let pixmo = write(
        dir.path(),
        "pixmo.json",
        "[\n  {\"image_url\": \"http://x/a.jpg\", \"label\": \"dog\", \"count\": 5},\n  {\"image_url\": \"http://x/b.jpg\", \"label\": \"cat\", \"count\": 0}\n]\n",
    );
    let r = load_count_qa(&pixmo).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].object.as_deref(), Some("dog"));
    assert_eq!(r[1].count, 0);
    assert_eq!(r[1].line, 3);
    assert_eq!(
        r[0].question_text().unwrap(),
        "How many dog are there in the image?"
    );

    let tally = write(
        dir.path(),
        "tally.json",
        "[{\"image\": \"VG_100K/2.jpg\", \"question\": \"How many cars?\", \"answer\": 2, \"image_id\": 2, \"data_source\": \"imported_genome\"}]",
    );
    assert_eq!(load_count_qa(&tally).unwrap()[0].count, 2);

    let ours = write(
        dir.path(),
        "count.jsonl",
        "{\"question_id\": 1, \"image\": \"000000.png\", \"text\": \"How many rings are there in the image?\", \"label\": \"4\", \"object\": \"ring\"}\n",
    );
    let r = load_count_qa(&ours).unwrap();
    assert_eq!((r[0].count, r[0].object.as_deref()), (4, Some("ring")));

    // Errors name the file and the line, in JSON lines and in arrays.
    let bad = write(
        dir.path(),
        "bad.jsonl",
        "{\"image\": \"a.jpg\", \"number\": 1}\n{\"image\": \"b.jpg\", \"number\": -2}\n",
    );
    let e = load_count_qa(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2:") && e.contains("number"), "{e}");
    let bad = write(
        dir.path(),
        "bad_array.json",
        "[\n {\"image\": \"a.jpg\", \"count\": 1},\n {\"image\": \"b.jpg\", \"count\": 2},\n {\"count\": 3}\n]",
    );
    let e = load_count_qa(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad_array.json:4:") && e.contains("image"),
        "{e}"
    );
    let bad = write(
        dir.path(),
        "syntax.json",
        "[\n {\"image\": \"a.jpg\", \"count\": 1},\n {\"image\" \"b\"}\n]",
    );
    let e = load_count_qa(&bad).unwrap_err().to_string();
    assert!(e.contains("syntax.json:3:"), "{e}");
    let e = load_count_qa(&dir.path().join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.json"), "{e}");
}

#[test]
fn pope_ground_truth_object_lists_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "gt.json",
        "{\"image\": \"COCO_val2014_000000131089.jpg\", \"objects\": [\"person\", \"baseball bat\", \"person\"]}\n{\"image\": \"b.jpg\", \"objects\": 3}\n",
    );
    let e = load_object_lists(&p).unwrap_err().to_string();
    assert!(e.contains("gt.json:2:"), "{e}");
    let p = write(
        dir.path(),
        "gt2.json",
        "{\"image\": \"COCO_val2014_000000131089.jpg\", \"objects\": [\"person\", \"baseball bat\", \"person\"]}\n",
    );
    let items = load_object_lists(&p).unwrap();
    assert_eq!(items[0].objects, vec!["person", "baseball bat"]);
}
