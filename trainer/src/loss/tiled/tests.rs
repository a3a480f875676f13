//! The ring-tiled losses give the untiled losses' numbers: the same global loss, feature
//! gradients and scale/bias derivatives, for tiles that do and do not divide a rank's rows,
//! on one rank and around rings of two and three.

use crate::dist::local::LocalGroup;
use crate::dist::Solo;
use crate::loss::global::tests::{inputs, max_diff, on_rank_tiled, reference, Which};

/// Gradients agree within this (f32 features; only summation orders differ).
const TOLERANCE: f64 = 1e-5;

fn assert_close(
    what: &str,
    got: (f64, tch::Tensor, tch::Tensor, f64, f64),
    want: &(f64, tch::Tensor, tch::Tensor, f64, f64),
) {
    assert!(
        (got.0 - want.0).abs() < TOLERANCE,
        "{what}: loss {} vs {}",
        got.0,
        want.0
    );
    let (image, text) = (max_diff(&got.1, &want.1), max_diff(&got.2, &want.2));
    assert!(image < TOLERANCE, "{what}: image gradients differ by {image}");
    assert!(text < TOLERANCE, "{what}: text gradients differ by {text}");
    assert!(
        (got.3 - want.3).abs() < TOLERANCE,
        "{what}: scale gradient {} vs {}",
        got.3,
        want.3
    );
    assert!(
        (got.4 - want.4).abs() < TOLERANCE,
        "{what}: bias gradient {} vs {}",
        got.4,
        want.4
    );
}

#[test]
fn tiled_equals_untiled_on_one_rank() {
    for which in [Which::Clip, Which::SigLip] {
        let inp = inputs(7, 2);
        let want = reference(which, &inp);
        for tile in [1, 2, 3, 7, 50] {
            assert_close(
                &format!("{which:?} tile {tile}"),
                on_rank_tiled(which, &inp, tile, &Solo),
                &want,
            );
        }
    }
}

#[test]
fn tiled_equals_untiled_around_a_ring() {
    for which in [Which::Clip, Which::SigLip] {
        for world in [2usize, 3] {
            // 5 rows per rank: tiles of 2 and 3 do not divide them, 5 does, 8 is larger.
            let inp = inputs(5 * world as i64, world as u64 + 3);
            for tile in [2usize, 3, 5, 8] {
                let untiled = LocalGroup::run(world, |coll| on_rank_tiled(which, &inp, 0, coll));
                let tiled = LocalGroup::run(world, |coll| on_rank_tiled(which, &inp, tile, coll));
                let full = reference(which, &inp);
                for (rank, (t, u)) in tiled.into_iter().zip(&untiled).enumerate() {
                    let what = format!("{which:?} world {world} tile {tile} rank {rank}");
                    // Against the untiled rank, and its loss against the one-process loss.
                    assert!((u.0 - full.0).abs() < TOLERANCE, "{what}: untiled loss");
                    assert_close(&what, t, u);
                }
            }
        }
    }
}
