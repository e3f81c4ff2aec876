//! The roofline benchmark's MAC count (`bench::macs`: `graph::Model::mac_sites` and the
//! output shapes ONNX Runtime reports) against the model's architecture, computed here
//! from its layer sizes alone (Pons et al., MusiCNN; `../shared/MUSICNN.md` section 8).
use chaarfm_child::features::{BANDS, PATCH_FRAMES};
use chaarfm_child::model;
use chaarfm_tests::bench::{macs, Feeds};

#[test]
fn the_mac_count_of_a_patch_is_the_architectures() {
    let path = model::resolve(None).expect("the model (../shared/models or models/fetch.sh)");
    let bytes = std::fs::read(path).expect("reading the model");
    let feeds: Feeds = vec![(
        model::manifest().input.clone(),
        vec![1, PATCH_FRAMES, BANDS],
    )];
    let counted: std::collections::HashMap<String, u64> = macs(&bytes, &feeds)
        .expect("counting MACs")
        .into_iter()
        .collect();
    let (t, f) = (PATCH_FRAMES as u64, BANDS as u64);
    // Each layer: filters x (inputs summed per output) x output positions.
    let expected = [
        ("model/conv2d_2/BiasAdd", 51 * 128 * t * f),
        ("model/conv2d_3/BiasAdd", 51 * 64 * t * f),
        ("model/conv2d_4/BiasAdd", 51 * 32 * t * f),
        ("Conv__134", 204 * 7 * 38 * t * (f - 38 + 1)),
        ("Conv__123", 204 * 7 * 67 * t * (f - 67 + 1)),
        ("Conv__137", 64 * 7 * 561 * t),
        ("Conv__139", 64 * 7 * 64 * t),
        ("Conv__141", 64 * 7 * 64 * t),
        ("model/dense/MatMul", 1506 * 200),
        ("model/dense_1/MatMul", 200 * 50),
    ];
    for (node, want) in expected {
        assert_eq!(counted.get(node), Some(&want), "MACs of {node}");
    }
    assert_eq!(
        counted.len(),
        expected.len(),
        "no other node does MACs: {counted:?}"
    );
    let sum: u64 = counted.values().sum();
    assert!(
        (1_398_000_000..1_399_000_000).contains(&sum),
        "{sum} MACs per patch"
    );
}
