//! NCHW spatial ops: zero padding, nearest ×2 upsampling and the space/depth
//! rearrangements used to patchify latents, each checked against its index formula.

use flux2_graphs::{shape, DType, Graph, Model, Target};
use flux2_runtime::Input;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

use super::common::{check, config, f32_in, tensor, Approximation, OpProblem};

#[derive(Copy, Clone, Debug)]
enum Spatial {
    /// `pad2d(top, bottom, left, right)`, negative values crop.
    Pad(i64, i64, i64, i64),
    Upsample2x,
    /// SpaceToDepth: y[b, (i·k + j)·C + c, h, w] = x[b, c, h·k + i, w·k + j].
    SpaceToDepth(usize),
    /// DepthToSpace CRD: y[b, c, h·k + i, w·k + j] = x[b, c·k² + i·k + j, h, w].
    DepthToSpaceCrd(usize),
}

/// One spatial op on a small NCHW tensor with symbolic batch and spatial dims.
#[derive(Debug)]
struct SpatialProblem {
    op: Spatial,
    x: ArrayD<f32>,
}

impl Arbitrary for SpatialProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        let pad =
            (-1i64..=2, -1i64..=2, -1i64..=2, -1i64..=2).prop_map(|(t, b, l, r)| Spatial::Pad(t, b, l, r));
        let op = prop_oneof![
            pad,
            Just(Spatial::Upsample2x),
            (1usize..=3).prop_map(Spatial::SpaceToDepth),
            (1usize..=3).prop_map(Spatial::DepthToSpaceCrd),
        ];
        (op, 1usize..=2, 1usize..=3, 2usize..=4, 2usize..=4)
            .prop_flat_map(|(op, b, c, h, w)| {
                let shape = match op {
                    Spatial::SpaceToDepth(k) => vec![b, c, h * k, w * k],
                    Spatial::DepthToSpaceCrd(k) => vec![b, c * k * k, h, w],
                    _ => vec![b, c, h, w],
                };
                (Just(op), tensor(shape))
            })
            .prop_map(|(op, x)| SpatialProblem { op, x })
            .boxed()
    }
}

impl OpProblem for SpatialProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let x = g.input("x", DType::F32, shape!["B", self.x.shape()[1], "H", "W"])?;
        let y = match self.op {
            Spatial::Pad(t, b, l, r) => g.pad2d(x, t, b, l, r)?,
            Spatial::Upsample2x => g.upsample_nearest2x(x)?,
            Spatial::SpaceToDepth(k) => g.space_to_depth(x, k as i64)?,
            Spatial::DepthToSpaceCrd(k) => g.depth_to_space_crd(x, k as i64)?,
        };
        g.output(y, "y0")?;
        Ok(g.finish("spatial")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let s = self.x.shape();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let out_shape = match self.op {
            Spatial::Pad(t, bo, l, r) => {
                vec![b, c, (h as i64 + t + bo) as usize, (w as i64 + l + r) as usize]
            }
            Spatial::Upsample2x => vec![b, c, 2 * h, 2 * w],
            Spatial::SpaceToDepth(k) => vec![b, c * k * k, h / k, w / k],
            Spatial::DepthToSpaceCrd(k) => vec![b, c / (k * k), h * k, w * k],
        };
        let mut y = ArrayD::zeros(IxDyn(&out_shape));
        for (idx, v) in y.indexed_iter_mut() {
            let (n, o, i, j) = (idx[0], idx[1], idx[2], idx[3]);
            *v = match self.op {
                Spatial::Pad(t, _, l, _) => {
                    let (si, sj) = (i as i64 - t, j as i64 - l);
                    let inside = (0..h as i64).contains(&si) && (0..w as i64).contains(&sj);
                    if inside {
                        self.x[[n, o, si as usize, sj as usize]]
                    } else {
                        0.0
                    }
                }
                Spatial::Upsample2x => self.x[[n, o, i / 2, j / 2]],
                Spatial::SpaceToDepth(k) => {
                    let (cc, blk) = (o % c, o / c);
                    self.x[[n, cc, i * k + blk / k, j * k + blk % k]]
                }
                Spatial::DepthToSpaceCrd(k) => {
                    let (bi, bj) = (i % k, j % k);
                    self.x[[n, o * k * k + bi * k + bj, i / k, j / k]]
                }
            };
        }
        vec![y]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pad_upsample_space_depth(p in any::<SpatialProblem>()) {
        check(&p, Target::Ort)?;
    }
}

/// DepthToSpace CRD on channels 0..8 (block 2): output pixel (i, j) of channel c must hold
/// input channel c·4 + i·2 + j, the order the VAE's patchify inverse relies on.
#[test]
fn depth_to_space_crd_channel_order() {
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 8, 1, 1]), (0..8).map(|c| c as f32).collect()).expect("len");
    let p = SpatialProblem { op: Spatial::DepthToSpaceCrd(2), x };
    let want =
        ArrayD::from_shape_vec(IxDyn(&[1, 2, 2, 2]), vec![0., 1., 2., 3., 4., 5., 6., 7.]).expect("len");
    assert_eq!(p.reference()[0], want, "reference formula");
    check(&p, Target::Ort).unwrap_or_else(|e| panic!("{e}"));
}
